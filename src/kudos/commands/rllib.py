"""``kudos train --engine rllib``: the options and the run loop's console output.

:mod:`kudos.commands.train` adds these options to ``kudos train`` with :func:`add_engine_arguments`
and hands a run to :func:`run_engine` before building its own trainer.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from kudos.errors import KudosError

console = Console()

ENGINES = ("kudos", "rllib")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=ENGINES, default="kudos",
                        help="training engine: kudos's own APPO (default) or Ray RLlib's APPO (needs kudos[ray])")
    parser.add_argument("--ray-address", help="rllib engine: address of a running Ray cluster (default: start one here)")
    parser.add_argument("--env-runners", type=int, default=2, help="rllib engine: env-runner actors (default 2)")


def run_engine(args: argparse.Namespace, config: Any) -> int | None:
    """Run ``config`` on the engine ``args.engine`` names; None for kudos's own (the caller runs it)."""
    if getattr(args, "engine", "kudos") == "kudos":
        return None
    from kudos.integrations import require_ray

    require_ray()
    from kudos.integrations import rllib

    if args.env_runners < 1:
        raise KudosError(f"--env-runners must be >= 1, got {args.env_runners}")

    def show(steps: int, result: dict[str, Any]) -> None:
        runners = result.get("env_runners", {})
        ret = runners.get("episode_return_mean")
        service = result.get("kudos", {})
        labels = sum(v for k, v in service.items() if k.startswith("llm/") and k.endswith("/labels"))
        console.print(f"steps {steps:,}/{config.run.steps:,}  return {'n/a' if ret is None else f'{ret:.2f}'}  "
                      f"labels {labels:,.0f}  snapshot {service.get('reward_service/snapshot_version', 0):.0f}",
                      highlight=False)

    steps = rllib.train(config, resume=bool(args.resume), address=args.ray_address,
                        num_env_runners=args.env_runners, on_progress=show)
    console.print(f"done: {steps:,} env steps on RLlib; outputs in {config.run.output_dir}")
    return 0
