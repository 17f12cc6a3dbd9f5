"""Does a failing LLM endpoint slow training? `kudos train --reward classification` against a healthy
and a faulty local OpenAI-compatible server, alternated, printing env steps/s and the median ratio.

Both servers are instant local stand-ins for a fast remote LLM (bench/stand_in_llm.py; this bench
measures what faults cost the trainer, not what an LLM costs): the healthy one answers every
completion with "1" or "0" and its top log-probabilities; the faulty one cycles through a
non-JSON body, HTTP 500 and a reply with no choices. Both list one model at GET /v1/models. Each run is a fresh `kudos train`
process on its own label store, so no label is reused. Target (issue 17): faulty/healthy >= 0.9.

By default the runs train with ``reward.shaping.c_int=0``: the whole reward side runs (annotator, reward
trainer, scoring every rollout) but the intrinsic reward does not steer the policy, so both runs
play alike and the ratio is the cost of the faults alone. With ``--c-int 0.4`` (kudos's default)
the healthy run's labels also change what the agent does, and with it how often games reset
(about a third of random play's env time is spent in ``reset``), which moves steps/s either way.

    .venv/bin/python bench/llm_faults.py [--steps 16384] [--repeats 3] [--c-int 0] [--faults http500 ...]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from stand_in_llm import FAULTS, StandInLLM

MODEL = "bench-stand-in"


def train_rate(url: str, steps: int, c_int: float, workdir: Path, name: str) -> tuple[float, str]:
    """env steps/s of one `kudos train` run (its last progress line) and that line."""
    cmd = [
        sys.executable, "-m", "kudos", "train", "--task", "Score", "--reward", "classification",
        "--llm", url, "--steps", str(steps), "--output", str(workdir / name),
        "--store", str(workdir / f"{name}.sqlite"), "--set", "run.log_every_s=1", "--set", f"reward.shaping.c_int={c_int}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{name}: kudos train failed:\n{out.stderr[-2000:]}")
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("steps ")]
    match = re.search(r"([\d,]+) steps/s", lines[-1])
    assert match, lines[-1]
    return float(match.group(1).replace(",", "")), lines[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16384, help="env steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per server, alternated")
    parser.add_argument("--c-int", type=float, default=0.0, help="intrinsic reward coefficient of the runs")
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS),
                        help="what the faulty server answers, in turn")
    args = parser.parse_args()
    healthy, faulty = StandInLLM(MODEL), StandInLLM(MODEL, faults=args.faults)
    rates: dict[str, list[float]] = {"healthy": [], "faulty": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeats):
                for name, server in (("healthy", healthy), ("faulty", faulty)):
                    rate, line = train_rate(server.url, args.steps, args.c_int, Path(tmp), f"{name}{i}")
                    rates[name].append(rate)
                    print(f"run {i} {name:8s} {rate:8.0f} env steps/s   ({line})", flush=True)
    finally:
        healthy.close()
        faulty.close()
    ratios = [f / h for f, h in zip(rates["faulty"], rates["healthy"])]
    print(f"healthy median {statistics.median(rates['healthy']):.0f} env steps/s, "
          f"faulty median {statistics.median(rates['faulty']):.0f} env steps/s")
    print(f"faulty/healthy per pair: {', '.join(f'{r:.2f}' for r in ratios)}; median ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
