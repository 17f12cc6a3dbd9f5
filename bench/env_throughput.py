"""Environment throughput, all measured in one run (ratios are what matter on a noisy machine).

Prints random-action steps/s of:
  bare     NLE's own NetHackScore-v0 (same observation keys), one env, this process;
  wrapped  kudos's Score task (macros, captions, caption counts), one env, same action stream;
  vector   kudos's VectorNetHack with B envs over W worker processes;
and the ratios wrapped/bare (target >= 0.85) and vector/wrapped (target >= 1.6 on 2 cores).
``bench/vector_ceiling.py`` measures what any vector design could reach on this machine.

Both single-env runs replay one action stream drawn from NLE's 23 task actions (which both action
sets share) minus EAT: kudos's eat macro answers the item prompt that bare NLE leaves open, so with
EAT the two would play different games (kudos's random agent eats, chokes and resets far more
often), and the ratio would measure that instead of the wrapper. The vector run uses all 28
extended actions, as training does; "wrapped-28" gives the single-env figure for that mix.

    python bench/env_throughput.py [--steps 20000] [--envs 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def run_single(env, steps: int, choices: np.ndarray, seed: int) -> tuple[float, float, int]:
    """Steps/s, the share of the time spent in resets, and the number of episodes that ended."""
    actions = np.random.default_rng(seed).choice(choices, size=steps)
    env.reset(seed=seed)
    resetting, episodes = 0.0, 0
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(int(a))
        if terminated or truncated:
            began = time.perf_counter()
            env.reset()
            resetting += time.perf_counter() - began
            episodes += 1
    elapsed = time.perf_counter() - start
    return steps / elapsed, resetting / elapsed, episodes


def run_vector(num_envs: int, workers: int, steps: int, seed: int) -> float:
    from kudos.envs.vector import VectorNetHack

    with VectorNetHack("Score", num_envs, num_workers=workers, seed=seed) as vec:
        vec.reset()
        rng = np.random.default_rng(seed)
        n_batches = max(1, steps // num_envs)
        batches = rng.integers(vec.single_action_space.n, size=(n_batches, num_envs))
        vec.step(batches[0])  # warm-up
        start = time.perf_counter()
        for actions in batches:
            vec.step(actions)
        return n_batches * num_envs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    args = parser.parse_args()

    import gymnasium as gym
    import nle  # noqa: F401  (registers NetHackScore-v0)
    from nle import nethack

    from kudos.envs import DEFAULT_OBSERVATION_KEYS, make_env

    bare = gym.make("NetHackScore-v0", observation_keys=DEFAULT_OBSERVATION_KEYS).unwrapped
    wrapped = make_env("Score")
    # The 23 task actions are a prefix of the extended set; same index, same key in both envs.
    shared = np.array([i for i in range(bare.action_space.n) if bare.actions[i] != nethack.Command.EAT])
    extended = np.arange(wrapped.action_space.n)
    figures: dict[str, list[float]] = {"bare": [], "wrapped": [], "wrapped-28": [], "vector": []}
    reset_share, episodes = [], 0
    for r in range(args.repeats):
        figures["bare"].append(run_single(bare, args.steps, shared, seed=r)[0])
        figures["wrapped"].append(run_single(wrapped, args.steps, shared, seed=r)[0])
        rate, share, ended = run_single(wrapped, args.steps, extended, seed=r)
        figures["wrapped-28"].append(rate)
        reset_share.append(share)
        episodes += ended
        figures["vector"].append(run_vector(args.envs, args.workers, args.steps, seed=r))
    med = {k: float(np.median(v)) for k, v in figures.items()}
    for name, value in med.items():
        print(f"{name:>11}: {value:10.0f} steps/s   (runs: {', '.join(f'{x:.0f}' for x in figures[name])})")
    print(
        f"wrapped-28 spends {100 * np.mean(reset_share):.0f}% of its time in reset() "
        f"(episodes of {args.steps * args.repeats / max(episodes, 1):.0f} steps on average): a "
        "lockstep step waits for the worker that is resetting"
    )
    print(f"wrapped / bare      = {med['wrapped'] / med['bare']:.2f}   (target >= 0.85)")
    print(
        f"vector / wrapped-28 = {med['vector'] / med['wrapped-28']:.2f}   "
        f"(target >= 1.6; B={args.envs}, workers={args.workers})"
    )


if __name__ == "__main__":
    main()
