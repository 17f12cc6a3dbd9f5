"""The ``kudos eval`` and ``kudos report`` subcommands."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kudos.errors import KudosError

console = Console()

# (EpisodeReport field, column title, format) of the eval table.
_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ret", "return", "{:.2f}"),
    ("score", "score", "{:.0f}"),
    ("max_depth", "depth", "{:.0f}"),
    ("gold", "gold", "{:.0f}"),
    ("level", "level", "{:.0f}"),
    ("turns", "turns", "{:.0f}"),
    ("length", "steps", "{:.0f}"),
)


def register(subparsers: Any) -> None:
    ev = subparsers.add_parser(
        "eval",
        help="play evaluation episodes (a run's checkpoint, or random) and summarise them",
        description="Play episodes with the policy of a run's checkpoint (RUN_DIR) or a random policy "
        "(no RUN_DIR) and report return, in-game score, max depth, gold, experience level, turns and "
        "how each episode ended.",
    )
    ev.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a `kudos train` output directory")
    ev.add_argument("--task", help="task name (see `kudos tasks`); default: the run's task, or Score")
    ev.add_argument("--policy", choices=["random"], default="random", help="policy to play without RUN_DIR")
    ev.add_argument("--greedy", action="store_true", help="take the most likely action (default: sample)")
    ev.add_argument("--episodes", type=int, default=1)
    ev.add_argument("--max-steps", type=int, default=None, help="step limit per episode (default: the task's)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--record", metavar="DIR", help="write each episode as JSONL (tty frames + captions) to DIR")
    ev.add_argument("--show-captions", action="store_true", help="print each new caption as it happens")
    ev.set_defaults(handler=run_eval)

    report = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a training run",
        description="Curves, reward-hacking diagnostics, the label browser and the episode replay viewer "
        "of a run, in one HTML file that needs no network.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a `kudos train` output directory")
    report.add_argument("--output", "-o", help="HTML file to write (default: RUN_DIR/report.html)")
    report.add_argument("--episodes", metavar="DIR", help="recorded episodes (default: RUN_DIR/episodes)")
    report.add_argument("--max-captions", type=int, default=None, help="label-browser rows to embed (default 100,000)")
    report.add_argument("--max-episodes", type=int, default=None, help="recorded episodes to embed (default 10)")
    report.set_defaults(handler=run_report)


def run_eval(args: argparse.Namespace) -> int:
    from kudos.envs import get_task
    from kudos.eval.episodes import RandomPolicy, evaluate_run, run_episodes

    if args.episodes < 1:
        raise KudosError(f"--episodes must be >= 1, got {args.episodes}")
    if args.max_steps is not None and args.max_steps < 1:
        raise KudosError(f"--max-steps must be >= 1, got {args.max_steps}")

    def show(episode: int, step: int, caption: str, count: int, reward: float) -> None:
        if caption and count == 1:  # each caption once per episode, as the LLM would see it
            reward_text = f" [green]r={reward:+g}[/]" if reward else ""
            console.print(f"[dim]ep {episode} step {step:>5}[/] {escape(caption)}{reward_text}", highlight=False)

    on_step = show if args.show_captions else None
    if args.run_dir is not None:
        task, reports = evaluate_run(
            args.run_dir, args.episodes, task=args.task, greedy=args.greedy, seed=args.seed,
            max_steps=args.max_steps, record_dir=args.record, on_step=on_step,
        )
        title = f"{task}: checkpoint of {args.run_dir} ({'greedy' if args.greedy else 'sampled'})"
    else:
        task = get_task(args.task or "Score").name  # fail fast, in one line, on an unknown task
        reports = run_episodes(
            task, lambda env: RandomPolicy(env.action_space, seed=args.seed), args.episodes,
            seed=args.seed, max_steps=args.max_steps, on_step=on_step, record_dir=args.record,
        )
        title = f"{task}: {args.policy} policy"
    table = Table(title=title, title_justify="left")
    table.add_column("ep", justify="right")
    for _, name, _ in _COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("end", overflow="ellipsis", no_wrap=True)
    for i, report in enumerate(reports):
        table.add_row(str(i), *(fmt.format(getattr(report, key)) for key, _, fmt in _COLUMNS), escape(report.death))
    console.print(table)
    if len(reports) > 1:
        import numpy as np

        summary = Table(title=f"over {len(reports)} episodes", title_justify="left")
        for column in ("figure", "mean", "sd", "min", "max"):
            summary.add_column(column, justify="left" if column == "figure" else "right")
        for key, name, fmt in _COLUMNS:
            values = np.array([getattr(r, key) for r in reports], dtype=np.float64)
            spread = "{:.2f}" if key == "ret" else "{:.1f}"  # means of counts need a decimal
            summary.add_row(name, *(f.format(v) for f, v in zip((spread, spread, fmt, fmt),
                                                                   (values.mean(), values.std(), values.min(), values.max()))))
        ends = Counter(r.death.split(":")[0] for r in reports)
        summary.add_row("end", ", ".join(f"{n}x {escape(e)}" for e, n in ends.most_common()), "", "", "")
        console.print(summary)
    if args.record:
        console.print(f"recorded {len(reports)} episode(s) in {args.record}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from kudos.eval.report import ReportLimits, build_report

    limits = ReportLimits()
    for name in ("max_captions", "max_episodes"):
        value = getattr(args, name)
        if value is not None:
            if value < 0:
                raise KudosError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
            setattr(limits, name, value)
    report = build_report(args.run_dir, args.output, episodes_dir=args.episodes, limits=limits)
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)
    for warning in report.warnings:
        console.print(f"[bold yellow]warning: {escape(warning)}[/]", highlight=False)
    console.print(f"report: {Path(report.path)} ({report.size / 1e6:.2f} MB)", highlight=False)
    return 0
