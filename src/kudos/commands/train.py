"""The ``kudos train`` subcommand: options, live display, resume."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kudos import STARTUP_LOG
from kudos.errors import KudosError
from kudos.commands.rllib import add_engine_arguments, run_engine

console = Console()

# (figure key, label, format) shown in the live table, in order; absent figures are skipped.
_DISPLAY: tuple[tuple[str, str, str], ...] = (
    ("throughput/env_steps_per_s", "env steps/s", "{:,.0f}"),
    ("episode/return", "episode return (last 100)", "{:.2f}"),
    ("episode/length", "episode length", "{:.0f}"),
    ("episode/success_rate", "success rate", "{:.0%}"),
    ("intrinsic/mean", "intrinsic reward mean", "{:.4f}"),
    ("intrinsic/nonzero_fraction", "intrinsic reward non-zero", "{:.1%}"),
    ("llm/classify/labels", "labels (classify)", "{:,.0f}"),
    ("llm/classify/queue_depth", "LLM queue (classify)", "{:,.0f}"),
    ("llm/classify/labels_per_s", "labels/s (classify)", "{:.2f}"),
    ("llm/rank/labels", "labels (rank)", "{:,.0f}"),
    ("llm/rank/queue_depth", "LLM queue (rank)", "{:,.0f}"),
    ("llm/rank/labels_per_s", "labels/s (rank)", "{:.2f}"),
    ("llm/classify/server_errors", "LLM server errors (classify)", "{:,.0f}"),
    ("llm/rank/server_errors", "LLM server errors (rank)", "{:,.0f}"),
    ("llm/endpoints/failed_requests", "LLM requests failed (after retries)", "{:,.0f}"),
    ("llm/classify/dropped", "captions dropped, backlog full (classify)", "{:,.0f}"),
    ("llm/rank/dropped", "pairs dropped, backlog full (rank)", "{:,.0f}"),
    ("reward_model/0/validation_accuracy", "reward model val. accuracy", "{:.1%}"),
    ("reward_model/0/errors", "reward model training errors", "{:,.0f}"),
    ("learner/policy_loss", "policy loss", "{:.4f}"),
    ("learner/entropy", "entropy", "{:.3f}"),
)


def register(subparsers: Any) -> None:
    train = subparsers.add_parser(
        "train",
        help="train an agent with online intrinsic rewards from LLM feedback",
        description="Train with APPO on a NetHack task while the LLM labels captions and the reward "
        "model learns. Any option of the config tree can be set with --set section.key=value "
        "(sections: env, reward, llm, appo, policy, cpu, run, diagnostics; --print-config shows them all).",
    )
    train.add_argument("--task", help="task name (see `kudos tasks`); default Score")
    train.add_argument(
        "--reward",
        help="intrinsic reward: none, retrieval, classification (default), ranking, motif, cosine, ensemble",
    )
    train.add_argument("--llm", help="'embedded' (default) or OpenAI-compatible endpoints, comma-separated")
    train.add_argument("--llm-model", help="model the endpoints serve (default: the one listed by GET /v1/models)")
    train.add_argument("--store", help="label store: SQLite path or postgresql:// URL (default: per-user store)")
    train.add_argument("--steps", type=int, help="env steps to train on")
    train.add_argument("--seed", type=int)
    train.add_argument("--num-envs", type=int, help="envs stepped in parallel")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="the learner's device (default auto: cuda when a GPU is visible)")
    train.add_argument("--output", help="output directory (checkpoints, TensorBoard, config)")
    train.add_argument("--config", help="YAML config file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR (its config, plus overrides)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    add_engine_arguments(train)
    train.set_defaults(handler=run_train)


def _overrides(args: argparse.Namespace) -> list[str]:
    flags = {
        "env.task": args.task,
        "reward.type": args.reward,
        "llm.backend": args.llm,
        "llm.model": args.llm_model,
        "llm.store": args.store,
        "run.steps": args.steps,
        "env.seed": args.seed,
        "env.num_envs": args.num_envs,
        "run.device": args.device,
        "run.output_dir": args.output,
    }
    return [f"{key}={value}" for key, value in flags.items() if value is not None] + list(args.set)


def _table(progress: Any, figures: dict[str, float], total: int) -> Table:
    table = Table(title=f"kudos train: {progress.env_steps:,} / {total:,} env steps", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("updates", f"{progress.updates:,}")
    table.add_row("episodes", f"{progress.episodes:,}")
    for key, label, fmt in _DISPLAY:
        if key in figures:
            table.add_row(label, fmt.format(figures[key]))
    for component, shares in time_shares(figures).items():
        table.add_row(f"time: {component}", shares)
    return table


def time_shares(figures: dict[str, float]) -> dict[str, str]:
    """Where time goes, one line per component, from the ``time/<component>/<part>`` figures:
    ``{"workers": "env 61% · inference 25% · waiting_for_learner 9%", ...}``."""
    lines: dict[str, list[str]] = {}
    for key, share in figures.items():
        if key.startswith("time/"):
            _, component, part = key.split("/", 2)
            lines.setdefault(component, []).append(f"{part.replace('_', ' ')} {share:.0%}")
    return {component: " · ".join(parts) for component, parts in lines.items()}


def no_label_warning(figures: dict[str, float]) -> str | None:
    """A warning when the run's LLM labelled nothing (its reward model never learned), from the
    last report's ``llm/<question>/labels`` and ``queue_depth`` figures; None otherwise (or when
    the reward asks no LLM)."""
    labels = [v for k, v in figures.items() if k.startswith("llm/") and k.endswith("/labels")]
    if not labels or sum(labels) > 0:
        return None
    waiting = sum(v for k, v in figures.items() if k.startswith("llm/") and k.endswith("/queue_depth"))
    return (f"warning: the LLM labelled nothing while this run trained, so its intrinsic reward never learned ({waiting:,.0f} "
            "items wait, asked first if the run resumes): train longer, give the LLM more of the CPU "
            "(--set cpu.llm_nice=0 or cpu.env_workers=1) or use a faster endpoint (--llm URL)")


def run_train(args: argparse.Namespace) -> int:
    from kudos.config import dump_config
    from kudos.rl.experiment import load_config, resume_config
    from kudos.rl.runner import TrainingRun
    from kudos.rl.runstats import warning_lines

    if args.resume and args.config:
        raise KudosError("--resume takes the run's own config; leave out --config (use --set to change options)")
    if args.resume:
        config = resume_config(args.resume, _overrides(args) + [f"run.output_dir={args.resume}"])
    else:
        config = load_config(args.config, _overrides(args))
    if args.print_config:
        console.out(dump_config(config), end="", highlight=False)
        return 0
    if config.run.steps < 1:
        raise KudosError(f"run.steps must be >= 1, got {config.run.steps}")
    engine_status = run_engine(args, config)  # --engine rllib runs here; None: kudos's own trainer
    if engine_status is not None:
        return engine_status

    # Start-up phases that take seconds (loading the LLM, fitting offline Motif, starting env
    # workers) log to STARTUP_LOG; show them, so start-up is never a silent wait.
    logging.getLogger(STARTUP_LOG).setLevel(logging.INFO)
    interactive = console.is_terminal
    live = Live(console=console, auto_refresh=False) if interactive else None
    last_line = 0.0
    last_warnings: list[str] = []

    last_figures: dict[str, float] = {}

    def show(progress: Any, figures: dict[str, float]) -> None:
        nonlocal last_line, last_warnings, last_figures
        last_figures = figures
        # Reward-hacking diagnostics over their thresholds: a yellow line each (printed once).
        warnings = [f"warning: {line}" for line in warning_lines(figures, config.diagnostics)]
        if live is None and warnings and warnings != last_warnings:
            print("\n".join(warnings), flush=True)
        last_warnings = warnings
        if live is not None:
            table = _table(progress, figures, config.run.steps)
            live.update(Group(table, *(Text(w, style="bold yellow") for w in warnings)), refresh=True)
        elif time.monotonic() - last_line >= 10 or progress.env_steps >= config.run.steps:
            last_line = time.monotonic()
            rate = figures.get("throughput/env_steps_per_s", 0.0)
            ret = figures.get("episode/return")
            labels = sum(v for k, v in figures.items() if k.endswith("/labels") and k.startswith("llm/"))
            print(
                f"steps {progress.env_steps:,}/{config.run.steps:,}  {rate:,.0f} steps/s  "
                f"return {'n/a' if ret is None else f'{ret:.2f}'}  labels {labels:,.0f}",
                flush=True,
            )
            for component, shares in time_shares(figures).items():
                print(f"  time: {component}: {shares}", flush=True)

    trainer = TrainingRun(config, resume=bool(args.resume), on_progress=show)
    if live is not None:
        live.start()
    try:
        progress = trainer.train()
    finally:
        if live is not None:
            live.stop()
    print(f"done: {progress.env_steps:,} env steps, {progress.updates:,} updates; outputs in {config.run.output_dir}",
          file=sys.stdout)
    warning = no_label_warning(last_figures)
    if warning is not None:  # never a silent run with zero labels
        print(warning, flush=True)
    return 0
