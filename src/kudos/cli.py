"""The ``kudos`` command.

Subcommands live next to what they drive; each module in :data:`COMMAND_MODULES` exposes
``register(subparsers)`` and keeps its heavy imports inside its handlers, so ``kudos --help``
stays fast. Errors a user can cause (:class:`~kudos.errors.KudosError`) print as one line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from kudos import __version__
from kudos.errors import KudosError

#: Modules that add subcommands (each has ``register(subparsers)``).
COMMAND_MODULES: tuple[str, ...] = ("kudos.feedback.commands", "kudos.feedback.llm_commands", "kudos.rl.commands", "kudos.eval.compare_command")

console = Console()
err_console = Console(stderr=True)


def _cmd_tasks(args: argparse.Namespace) -> int:
    from kudos.envs import TASKS

    table = Table(title="NetHack tasks", title_justify="left")
    table.add_column("task", style="bold cyan")
    table.add_column("extrinsic reward")
    table.add_column("character")
    table.add_column("max steps", justify="right")
    for spec in TASKS.values():
        table.add_row(spec.name, spec.reward, spec.character, f"{spec.max_episode_steps:,}")
    console.print(table)
    console.print("All tasks use the 28-action extended set with ONI's prompt macros.")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from kudos.envs import get_task
    from kudos.eval.episodes import RandomPolicy, run_episodes

    spec = get_task(args.task)  # fail fast, in one line, on an unknown task
    if args.episodes < 1:
        raise KudosError(f"--episodes must be >= 1, got {args.episodes}")
    if args.max_steps is not None and args.max_steps < 1:
        raise KudosError(f"--max-steps must be >= 1, got {args.max_steps}")

    def show(episode: int, step: int, caption: str, count: int, reward: float) -> None:
        if caption and count == 1:  # each caption once per episode, as the LLM would see it
            reward_text = f" [green]r={reward:+g}[/]" if reward else ""
            console.print(f"[dim]ep {episode} step {step:>5}[/] {escape(caption)}{reward_text}", highlight=False)

    reports = run_episodes(
        spec.name,
        lambda env: RandomPolicy(env.action_space, seed=args.seed),
        args.episodes,
        seed=args.seed,
        max_steps=args.max_steps,
        on_step=show if args.show_captions else None,
    )
    table = Table(title=f"{spec.name}: {args.policy} policy", title_justify="left")
    for column in ("episode", "return", "steps", "end", "distinct captions"):
        table.add_column(column, justify="right" if column != "end" else "left")
    for i, report in enumerate(reports):
        distinct = len([c for c in report.captions if c])
        table.add_row(str(i), f"{report.ret:.2f}", str(report.length), report.end_status.name, str(distinct))
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kudos",
        description="RL on NetHack with intrinsic rewards learned online from LLM feedback.",
    )
    parser.add_argument("--version", action="version", version=f"kudos {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tasks = sub.add_parser("tasks", help="list the NetHack tasks and their rewards")
    tasks.set_defaults(handler=_cmd_tasks)

    ev = sub.add_parser("eval", help="play evaluation episodes and summarise them")
    ev.add_argument("--task", default="Score", help="task name (see `kudos tasks`)")
    ev.add_argument("--policy", choices=["random"], default="random", help="policy to play")
    ev.add_argument("--episodes", type=int, default=1)
    ev.add_argument("--max-steps", type=int, default=None, help="step limit per episode (default: the task's)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--show-captions", action="store_true", help="print each new caption as it happens")
    ev.set_defaults(handler=_cmd_eval)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )
    try:
        return int(args.handler(args) or 0)
    except KudosError as exc:
        err_console.print(f"kudos: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("kudos: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
