"""The ``kudos`` command (the console script and ``python -m kudos``).

Each module in :data:`COMMAND_MODULES` (all in :mod:`kudos.commands`) exposes
``register(subparsers)`` and keeps its heavy imports inside its handlers, so ``kudos --help``
stays fast. Errors a user can cause (:class:`~kudos.errors.KudosError`) print as one line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from typing import Sequence

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from kudos import __version__
from kudos.errors import KudosError

#: Modules that add subcommands (each has ``register(subparsers)``).
COMMAND_MODULES: tuple[str, ...] = (
    "kudos.commands.annotate", "kudos.commands.llm", "kudos.commands.train", "kudos.commands.eval",
    "kudos.commands.compare",
)

console = Console()
err_console = Console(stderr=True)


def _cmd_tasks(args: argparse.Namespace) -> int:
    from kudos.envs import TASKS

    table = Table(title="NetHack and MiniHack tasks", title_justify="left")
    table.add_column("task", style="bold cyan")
    table.add_column("extrinsic reward")
    table.add_column("character")
    table.add_column("actions", justify="right")
    table.add_column("max steps", justify="right")
    for spec in TASKS.values():
        table.add_row(spec.name, spec.reward, spec.character, str(spec.num_actions), f"{spec.max_episode_steps:,}")
    console.print(table)
    console.print("NetHack tasks use the 28-action extended set; every task uses ONI's prompt macros (env.macros).")
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
