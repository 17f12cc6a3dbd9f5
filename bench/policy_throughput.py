"""Policy network throughput on CPU, every preset measured in one run (compare the ratios).

Prints, per preset of ``kudos.rl.POLICY_PRESETS`` (parameters in brackets):
  act      inference: one ``NetHackPolicy.act`` call for B envs (what the actors do per env
           step), as env steps/s = B x calls/s;
  train    one ``Learner.update`` on a T x B rollout (forward, V-trace, APPO loss, backward,
           gradient clipping, Adam), as trained transitions/s;
and the small/baseline ratios. The observations are real: B random-action Score games, so the
message encoder sees the usual mix of repeated and new captions.

    python bench/policy_throughput.py [--envs 16] [--rollout 32] [--threads 1] [--seconds 3]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch


def collect_rollout(steps: int, envs: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``(steps, envs, ...)`` observations of ``envs`` random-action Score games."""
    from kudos.envs import NUM_ACTIONS
    from kudos.envs.vector import VectorNetHack

    rng = np.random.default_rng(seed)
    with VectorNetHack("Score", envs, seed=seed) as vec:
        frames = [vec.reset()]
        while len(frames) < steps:
            frames.append(vec.step(rng.integers(NUM_ACTIONS, size=envs)).obs)
    return {k: np.stack([f[k] for f in frames]) for k in frames[0]}


def rate(fn: Callable[[], None], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=16, help="B")
    parser.add_argument("--rollout", type=int, default=32, help="T")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from kudos.envs import NUM_ACTIONS
    from kudos.rl import POLICY_OBSERVATION_KEYS, APPOConfig, Learner, NetHackPolicy, RolloutBatch, obs_to_tensors
    from kudos.rl.policy import POLICY_PRESETS

    steps, envs = args.rollout, args.envs
    obs = obs_to_tensors(collect_rollout(steps + 1, envs))  # (T+1, B, ...)
    first = {k: obs[k][0] for k in POLICY_OBSERVATION_KEYS}
    torch.manual_seed(0)

    figures: dict[str, dict[str, float]] = {}
    for name, config in POLICY_PRESETS.items():
        policy = NetHackPolicy(config, NUM_ACTIONS)
        num_params = sum(p.numel() for p in policy.parameters())
        state, done = policy.initial_state(envs), torch.zeros(envs, dtype=torch.bool)
        act_rate = rate(lambda: policy.act(first, state, done), args.seconds)

        learner = Learner(policy, APPOConfig(rollout=steps, recurrence=steps))
        batch = RolloutBatch(
            obs=obs,
            actions=torch.randint(NUM_ACTIONS, (steps, envs)),
            behaviour_log_probs=torch.full((steps, envs), -float(np.log(NUM_ACTIONS))),
            behaviour_values=torch.zeros(steps, envs),
            rewards=torch.randn(steps, envs),
            dones=torch.zeros(steps + 1, envs, dtype=torch.bool),
            initial_core_state=policy.initial_state(envs),
        )
        train_rate = rate(lambda: learner.update(batch), args.seconds)
        figures[name] = {"act": act_rate * envs, "train": train_rate * steps * envs}
        print(
            f"{name:>9} [{num_params / 1e6:5.2f} M params]: "
            f"act {act_rate * envs:8.0f} env steps/s (B={envs}, {1e3 / act_rate:6.2f} ms/call)   "
            f"train {train_rate * steps * envs:7.0f} transitions/s (T={steps}, B={envs}, {1e3 / train_rate:6.1f} ms/update)"
        )
    if {"small", "baseline"} <= set(figures):
        small, baseline = figures["small"], figures["baseline"]
        print(
            f"small / baseline: act {small['act'] / baseline['act']:.1f}x, "
            f"train {small['train'] / baseline['train']:.1f}x   (torch threads: {args.threads})"
        )


if __name__ == "__main__":
    main()
