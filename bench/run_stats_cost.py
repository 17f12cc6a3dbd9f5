"""What recording per-caption run statistics costs the learner thread of `kudos train`.

  record      RunStats.record per rollout (T x B steps of real random-play captions on Score,
              T = appo.rollout and B = env.num_envs at their defaults), in microseconds per
              rollout and nanoseconds per env step;
  diagnose    the diagnostics computed at each report (every run.log_every_s) with N captions;
  checkpoint  RunStats.state_dict at N distinct captions;
  rescore     scoring all N captions with a fresh (nothing cached) classifier: what a column of
              every caption's reward under the final model would cost at each checkpoint (the
              statistics keep each caption's reward at its last sighting instead).

    python bench/run_stats_cost.py [--captions 20000 100000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kudos.envs import make_env
from kudos.rl.experiment import load_config
from kudos.rewards import ClassifierReward
from kudos.rl.runstats import DiagnosticsConfig, RunStats


def play(steps: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Captions, per-episode counts and episode ends of ``steps`` random steps on Score."""
    env = make_env("Score")
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    captions, counts, ends = [], [], []
    for _ in range(steps):
        _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        captions.append(info["caption"])
        counts.append(info["caption_count"])
        ends.append(terminated or truncated)
        if terminated or truncated:
            env.reset()
    env.close()
    return captions, np.array(counts, dtype=np.int32), np.array(ends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, nargs="+", default=[20_000, 100_000])
    args = parser.parse_args()
    config = load_config()
    T, B = config.appo.rollout, config.env.num_envs
    rollouts = 200
    captions, counts, ends = play(T * B * 20)
    stats = RunStats(DiagnosticsConfig(), B)
    rng = np.random.default_rng(0)
    times = []
    for k in range(rollouts):
        start = (k % 20) * T * B
        rows = [captions[start + t * B:start + (t + 1) * B] for t in range(T)]
        cnt = counts[start:start + T * B].reshape(T, B)
        dones = np.zeros((T + 1, B), dtype=bool)
        dones[1:] = ends[start:start + T * B].reshape(T, B)
        r_int = rng.random((T, B)).astype(np.float32)
        began = time.perf_counter()
        stats.record(rows, cnt, dones, np.zeros((T, B), np.float32), r_int)
        times.append(time.perf_counter() - began)
    per_rollout = float(np.median(times))
    print(f"record: {per_rollout * 1e6:,.0f} us per rollout of {T}x{B} steps ({per_rollout / (T * B) * 1e9:,.0f} ns per env step)")

    for n in args.captions:
        big = RunStats(DiagnosticsConfig(), n)
        texts = [f"{captions[i % len(captions)] or 'You see here something.'} ({i})" for i in range(n)]
        big.record([texts], np.ones((1, n), np.int32), np.zeros((2, n), bool), np.zeros((1, n), np.float32),
                   rng.random((1, n)).astype(np.float32))
        began = time.perf_counter()
        big.diagnose(None)
        diagnose_s = time.perf_counter() - began
        began = time.perf_counter()
        big.state_dict()
        checkpoint_s = time.perf_counter() - began
        model = ClassifierReward()
        began = time.perf_counter()
        model(big.captions)
        rescore_s = time.perf_counter() - began
        print(f"{n:,} captions: diagnose {diagnose_s * 1e3:,.1f} ms, checkpoint {checkpoint_s * 1e3:,.1f} ms, "
              f"rescore {rescore_s:,.2f} s")


if __name__ == "__main__":
    main()
