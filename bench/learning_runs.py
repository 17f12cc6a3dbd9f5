"""Learning results: reward none vs retrieval vs classification, on NetHackScore and StaircaseLvl3,
several seeds, the same env-step budget for every run.

Runs ``kudos train`` once per (seed, task, reward), one after another (seed outermost, so a cut
short sweep still covers every task and reward for the seeds it finished). Each run writes to
``<root>/<task>-<reward>-s<seed>/`` and its console lines to ``<root>/<name>.log``; a run whose
log ends with ``done:`` is skipped, so the sweep can be restarted. The LLM runs share one label
store, ``<root>/labels.sqlite``: labels are reused across seeds and between retrieval and
classification (both use the same classification prompt), which is what the store is for.

Then prints, per run, the mean episode return over the last 100 episodes (the final
``episode/return`` TensorBoard scalar, which is that rolling mean) and the success rate, and a
table of mean +- std over seeds per task and reward.

    python bench/learning_runs.py [--steps 50000] [--seeds 0 1 2] [--root runs/learning]
    python bench/learning_runs.py --summary-only
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("Score", "StaircaseLvl3")
REWARDS = ("none", "retrieval", "classification")


def run_name(task: str, reward: str, seed: int) -> str:
    return f"{task}-{reward}-s{seed}"


def finished(log: Path) -> bool:
    return log.is_file() and "done:" in log.read_text()


def train(task: str, reward: str, seed: int, steps: int, root: Path) -> None:
    """One ``kudos train`` run; its console output goes to ``<root>/<name>.log``."""
    name = run_name(task, reward, seed)
    log = root / f"{name}.log"
    if finished(log):
        print(f"{name}: already done", flush=True)
        return
    command = [
        str(Path(sys.executable).with_name("kudos")), "train", "--task", task, "--reward", reward,
        "--seed", str(seed), "--steps", str(steps), "--output", str(root / name),
        "--store", str(root / "labels.sqlite"),
    ]
    started = time.monotonic()
    with log.open("w") as out:
        out.write(" ".join(command) + "\n")
        out.flush()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
    print(f"{name}: exit {code} after {time.monotonic() - started:.0f} s, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)


def final_scalars(run_dir: Path) -> dict[str, float]:
    """The last value of each TensorBoard scalar of a run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def summarise(root: Path, seeds: list[int]) -> None:
    print(f"{'run':34} {'return (last 100 ep.)':>22} {'success':>8} {'labels':>7} {'steps/s':>8}")
    table: dict[tuple[str, str], list[float]] = {}
    for task in TASKS:
        for reward in REWARDS:
            for seed in seeds:
                name = run_name(task, reward, seed)
                if not finished(root / f"{name}.log"):
                    continue
                s = final_scalars(root / name)
                labels = sum(v for k, v in s.items() if k.startswith("llm/") and k.endswith("/labels"))
                print(f"{name:34} {s.get('episode/return', float('nan')):22.3f} "
                      f"{s.get('episode/success_rate', float('nan')):8.1%} {labels:7.0f} "
                      f"{s.get('throughput/env_steps_per_s', float('nan')):8.0f}")
                table.setdefault((task, reward), []).append(s.get("episode/return", float("nan")))
    print()
    print("| task | " + " | ".join(REWARDS) + " |")
    print("|---|" + "---|" * len(REWARDS))
    for task in TASKS:
        cells = []
        for reward in REWARDS:
            values = table.get((task, reward), [])
            if not values:
                cells.append("n/a")
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} +- {std:.2f} (n={len(values)})")
        print(f"| {task} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50_000, help="env steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("runs/learning"))
    parser.add_argument("--summary-only", action="store_true", help="only print the results of finished runs")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        print(f"{args.steps:,} env steps per run; {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.2f}", flush=True)
        for seed in args.seeds:
            for task in TASKS:
                for reward in REWARDS:
                    train(task, reward, seed, args.steps, args.root)
    summarise(args.root, args.seeds)


if __name__ == "__main__":
    main()
