"""Learning benchmark: a grid of `kudos train` runs (tasks x reward types x seeds, plus config
variants), one run at a time, then `kudos compare` over them (docs/results.md).

Each run writes to ``<root>/<task>/<name>-s<seed>/`` with its own label store
(``<run>/labels.sqlite``), so seeds are independent (no run starts with labels an earlier one
paid for); ``--shared-store`` puts every run on ``<root>/labels.sqlite`` instead. The grid is
resumable after any interruption: a run whose directory has the ``done`` marker is skipped, an
unfinished one with a checkpoint continues with ``kudos train --resume``, the rest start fresh.
It ends with ``kudos compare <root>/<task> --plots <root>/plots`` per task, which prints the
markdown tables and writes one PNG per task.

Tasks and budgets are chosen on selection seeds (``--phase selection``: seeds
``--selection-seeds``, outputs under ``<root>/selection``) and reported on other seeds
(``--phase report``, the default: ``--seeds``), so the reported runs did not pick their own setup.

    python bench/learning.py --smoke                       # CI-sized grid (< 3 min)
    python bench/learning.py --grid results --dry-run      # the grid and its estimated box time
    python bench/learning.py --grid results                # the grid of docs/results.md (~6 h)
    python bench/learning.py --grid results --phase selection
    python bench/learning.py --grid results --phase selection --tasks MiniHack-River --rewards none --steps 100000
    python bench/learning.py --measure 2000                # env steps/s per reward type, to set budgets
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REWARDS = ("none", "retrieval", "classification", "ranking")
MINIHACK_TASKS = ("MiniHack-KeyRoom-S5", "MiniHack-River")
DONE = "done"

#: Env steps per run of the results grid, fixed up front so that the grid fits ~6 h of the 2-core
#: box at the rates below. MiniHack: the budget must be one where `none` has plateaued; check it on
#: the selection seeds and raise it (and the grid's time) if it has not.
MINIHACK_STEPS = 250_000
NETHACK_STEPS = 150_000
#: ONI's extrinsic coefficient on NetHackScore is the task's (0.1); c_ext=0 is the reward-free run.
NETHACK_VARIANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("none", "none", ()),
    ("classification", "classification", ()),
    ("classification-cext0", "classification", ("reward.shaping.c_ext=0",)),
)
#: Env steps/s per reward type over a whole run (start-up included), only for the time estimate
#: printed before a grid starts: `--measure 30000` on MiniHack-KeyRoom-S5 on 2026-11-27 with the
#: 2-core box busy (load average 7-9.7: other sessions' tests), see docs/results.md. Noisy: the
#: order of the reward types is not meaningful. Measure again on the box that runs the grid.
STEPS_PER_S = {"none": 600.0, "retrieval": 405.0, "classification": 516.0, "ranking": 731.0}
#: Smoke runs: small batches, and 64-step episodes so that every run (a resumed one too) logs
#: finished episodes within its 2,048 steps.
SMOKE_OPTIONS = ("env.num_envs=8", "appo.rollout=16", "env.max_episode_steps=64", "run.log_every_s=0.5")


@dataclass(frozen=True)
class RunSpec:
    """One `kudos train` run of the grid."""

    task: str
    name: str  # method label: the reward type, or a variant such as classification-cext0
    reward: str
    seed: int
    steps: int
    options: tuple[str, ...] = ()

    def directory(self, root: Path) -> Path:
        return root / self.task / f"{self.name}-s{self.seed}"


def results_grid(seeds: list[int], nethack_seeds: list[int]) -> list[RunSpec]:
    """The grid of docs/results.md: each MiniHack task x 4 reward types x ``seeds``; NetHackScore:
    none, classification at ONI's c_ext and at c_ext=0, x ``nethack_seeds``. Seed-major, so an
    interrupted grid covers every method for the seeds it finished."""
    runs = []
    for i, seed in enumerate(seeds):
        runs += [RunSpec(t, r, r, seed, MINIHACK_STEPS) for t in MINIHACK_TASKS for r in REWARDS]
        if i < len(nethack_seeds):
            runs += [RunSpec("Score", n, r, nethack_seeds[i], NETHACK_STEPS, o) for n, r, o in NETHACK_VARIANTS]
    return runs


def smoke_grid(seeds: list[int]) -> list[RunSpec]:
    """1 MiniHack task x {none, retrieval} x 2 seeds x 2,048 steps, small batches, short episodes."""
    return [
        RunSpec("MiniHack-KeyRoom-S5", r, r, s, 2048, SMOKE_OPTIONS) for s in seeds[:2] for r in ("none", "retrieval")
    ]


def estimate_seconds(runs: list[RunSpec]) -> float:
    return sum(run.steps / STEPS_PER_S[run.reward] for run in runs)


def kudos() -> list[str]:
    return [sys.executable, "-c", "import sys; from kudos.commands.main import main; sys.exit(main())"]


def train(run: RunSpec, root: Path, shared_store: bool) -> int:
    """Run (or resume, or skip) one grid run; its console output is appended to ``<run>/train.log``."""
    directory = run.directory(root)
    if (directory / DONE).is_file():
        print(f"{directory}: done, skipped", flush=True)
        return 0
    store = root / "labels.sqlite" if shared_store else directory / "labels.sqlite"
    if (directory / "checkpoint.pt").is_file():
        command = kudos() + ["train", "--resume", str(directory), "--steps", str(run.steps)]
        how = "resumed"
    else:
        # A run killed before its first checkpoint starts again: drop its partial curves.
        shutil.rmtree(directory / "tensorboard", ignore_errors=True)
        command = kudos() + [
            "train", "--task", run.task, "--reward", run.reward, "--seed", str(run.seed),
            "--steps", str(run.steps), "--output", str(directory), "--store", str(store),
        ]
        how = "started"
    for option in run.options:
        command += ["--set", option]
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with (directory / "train.log").open("a") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if code == 0:
        (directory / DONE).write_text(f"{run.steps} env steps; last sitting {seconds:.0f} s\n")
    print(
        f"{directory}: {how}, exit {code} after {seconds:.0f} s "
        f"({run.steps / max(seconds, 1e-9):,.0f} env steps/s incl. start-up), load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return code


def compare(root: Path, tasks: list[str]) -> int:
    code = 0
    for task in tasks:
        print(f"\n## {task}\n", flush=True)
        code |= subprocess.call(kudos() + ["compare", str(root / task), "--plots", str(root / "plots")])
    return code


def measure(steps: int, root: Path) -> None:
    """Env steps/s of each reward type on MiniHack-KeyRoom-S5, one after another in this process
    (fresh label stores): over the whole run (start-up included) and as `kudos train` reports it
    (its final ``throughput/env_steps_per_s``, start-up excluded)."""
    from kudos.eval.scalars import read_scalars

    for reward in REWARDS:
        run = RunSpec("MiniHack-KeyRoom-S5", reward, reward, 0, steps)
        directory = run.directory(root / "measure")
        shutil.rmtree(directory, ignore_errors=True)
        started = time.monotonic()
        subprocess.call(
            kudos() + ["train", "--task", run.task, "--reward", reward, "--steps", str(steps), "--output",
                       str(directory), "--store", str(directory / "labels.sqlite")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        seconds = time.monotonic() - started
        training = read_scalars(directory, ["throughput/env_steps_per_s"])["throughput/env_steps_per_s"].values[-1]
        print(f"{reward:15} {steps / seconds:8,.0f} env steps/s over the whole {seconds:.0f} s run, "
              f"{training:8,.0f} while training; load average {os.getloadavg()[0]:.2f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=("results", "smoke"), default="results")
    parser.add_argument("--smoke", action="store_true", help="same as --grid smoke")
    parser.add_argument("--phase", choices=("report", "selection"), default="report")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104], help="report seeds")
    parser.add_argument("--nethack-seeds", type=int, nargs="+", default=[100, 101, 102], help="report seeds, NetHackScore")
    parser.add_argument("--selection-seeds", type=int, nargs="+", default=[0, 1], help="seeds for choosing tasks and budgets")
    parser.add_argument("--root", type=Path, default=Path("runs/learning"))
    parser.add_argument("--shared-store", action="store_true", help="one label store for every run")
    parser.add_argument("--tasks", nargs="+", help="only these tasks of the grid")
    parser.add_argument("--rewards", nargs="+", help="only these methods of the grid (none, classification-cext0, ...)")
    parser.add_argument("--steps", type=int, help="override every run's budget (e.g. a short selection check)")
    parser.add_argument("--dry-run", action="store_true", help="print the grid and its estimated time, run nothing")
    parser.add_argument("--measure", type=int, metavar="STEPS", help="measure env steps/s per reward type and exit")
    args = parser.parse_args()

    if args.measure:
        measure(args.measure, args.root)
        return 0
    grid = "smoke" if args.smoke else args.grid
    root = args.root / "selection" if args.phase == "selection" else args.root
    seeds = args.selection_seeds if args.phase == "selection" else args.seeds
    nethack_seeds = args.selection_seeds if args.phase == "selection" else args.nethack_seeds
    runs = smoke_grid(seeds) if grid == "smoke" else results_grid(seeds, nethack_seeds)
    runs = [
        dataclasses.replace(run, steps=args.steps or run.steps)
        for run in runs
        if (not args.tasks or run.task in args.tasks) and (not args.rewards or run.name in args.rewards)
    ]
    if not runs:
        parser.error("--tasks/--rewards leave no run in the grid")
    todo = [r for r in runs if not (r.directory(root) / DONE).is_file()]
    hours = estimate_seconds(todo) / 3600
    print(f"{grid} grid, {args.phase} seeds: {len(runs)} runs ({len(runs) - len(todo)} done), "
          f"estimated {hours:.1f} h of box time left at {STEPS_PER_S} env steps/s", flush=True)
    for run in runs:
        print(f"  {run.directory(root)}  {run.reward}  {run.steps:,} steps  {' '.join(run.options)}", flush=True)
    if args.dry_run:
        return 0
    failed = [run for run in runs if train(run, root, args.shared_store) != 0]
    code = compare(root, list(dict.fromkeys(r.task for r in runs)))
    if failed:
        print(f"{len(failed)} runs failed: {', '.join(str(r.directory(root)) for r in failed)}", flush=True)
    return 1 if failed or code else 0


if __name__ == "__main__":
    sys.exit(main())
