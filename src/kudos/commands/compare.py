"""The ``kudos compare`` subcommand: mean and 95% bootstrap intervals over seeds, plots and a table."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from kudos.errors import KudosError

console = Console()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare runs: mean and 95%% bootstrap interval over seeds, plots and a markdown table",
        description="Group runs by every config value that differs between them except the seed (and "
        "output directory, label store, recorded commit), align their curves on a common env-step grid, "
        "plot mean and 95%% percentile-bootstrap band over seeds of return, success rate, in-game score "
        "and depth (one PNG per task), and print a markdown table of final figures (mean over the last "
        "10%% of the steps) with intervals and the number of seeds, then each LLM run's labels, labels/s and "
        "share of distinct captions labelled.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="`kudos train` output directories, or folders of them")
    parser.add_argument("--plots", metavar="DIR", help="write <DIR>/<task>.png (default: no plots)")
    parser.add_argument("--points", type=int, default=200, help="points of the common step grid")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (reproducible intervals)")
    parser.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from kudos.eval.compare import compare, find_runs, load_run

    if args.points < 2 or args.resamples < 1:
        raise KudosError("--points must be >= 2 and --resamples >= 1")
    runs = [load_run(path) for path in find_runs(args.runs)]
    result = compare(runs, points=args.points, resamples=args.resamples, seed=args.seed)
    console.print(result.table(), markup=False, highlight=False, soft_wrap=True)
    if labels := result.labels_table():
        console.print("\n" + labels, markup=False, highlight=False, soft_wrap=True)
    if args.plots:
        for path in result.plot(args.plots):
            console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)
    return 0
