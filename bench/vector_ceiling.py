"""How fast could any vector of NetHack envs be on this machine? Design ceilings, in one run.

``bench/env_throughput.py`` measures kudos's VectorNetHack; this script measures idealised
designs that a real vector can only approach, each against one env stepping alone in this
process (``single``), all with random actions of the 28-action set:

  free         W processes stepping their share of the B envs with no coordination at all;
  lockstep     this process steps half the envs and one worker process the other half, in
               lockstep, both spinning on shared-memory counters (no pipes, no pickling, no
               sleeping: the cheapest possible synchronisation);
  async        like lockstep, but a step only needs any B/2 of the envs to be ready (envpool's
               asynchronous mode): nobody waits for a game that is resetting.

The figures say which loss is structural: ``free`` below the target means more games per core
cost more than the second core gives; ``lockstep`` far below ``free`` means lockstep waiting
(NetHack's 1.3 ms resets) dominates; ``async`` below the target means even not waiting is not
enough once one process both steps games and hands out actions.

    python bench/vector_ceiling.py [--seconds 5] [--envs 2 4 16]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np

from kudos.envs import make_env

ACTIONS = 28


def _step(env, action: int) -> None:
    _, _, terminated, truncated, _ = env.step(action)
    if terminated or truncated:
        env.reset()


def round_robin(num_envs: int, seconds: float, seed: int) -> float:
    """Steps/s of ``num_envs`` envs stepped in turn by this process for ``seconds``."""
    envs = [make_env("Score") for _ in range(num_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=seed + i)
    rng = np.random.default_rng(seed)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for t, a in enumerate(rng.integers(ACTIONS, size=256)):
            _step(envs[t % num_envs], int(a))
        steps += 256
    return steps / (time.perf_counter() - start)


def single(seconds: float) -> float:
    return round_robin(1, seconds, seed=0)


def _free_worker(num_envs: int, seconds: float, seed: int, results: "mp.Queue[float]") -> None:
    results.put(round_robin(num_envs, seconds, seed))


def free(num_envs: int, seconds: float, workers: int = 2) -> float:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    shares = [len(s) for s in np.array_split(np.arange(num_envs), workers)]
    procs = [ctx.Process(target=_free_worker, args=(n, seconds, 100 * w, results)) for w, n in enumerate(shares)]
    for proc in procs:
        proc.start()
    total = sum(results.get() for _ in procs)
    for proc in procs:
        proc.join()
    return total


def _spinning_worker(buffers: list, env_ids: list[int], seed: int) -> None:
    """Steps env i whenever its action counter moves past its done counter; -1 stops it."""
    actions, requested, done = (np.frombuffer(b, dtype=np.int64) for b in buffers)
    envs = {i: make_env("Score") for i in env_ids}
    for i, env in envs.items():
        env.reset(seed=seed + i)
    while requested[0] >= 0:
        for i, env in envs.items():
            if requested[i] != done[i]:
                _step(env, int(actions[i]))
                done[i] = requested[i]


def shared_memory_pair(num_envs: int, seconds: float, batch: int) -> float:
    """Env steps/s with this process stepping envs [0, B/2) and a spinning worker the rest;
    each step hands out actions to ``batch`` envs that are ready (``batch == num_envs``:
    lockstep)."""
    ctx = mp.get_context("spawn")
    buffers = [ctx.RawArray("b", 8 * num_envs) for _ in range(3)]
    actions, requested, done = (np.frombuffer(b, dtype=np.int64) for b in buffers)
    num_local = num_envs // 2
    worker = ctx.Process(target=_spinning_worker, args=(buffers, list(range(num_local, num_envs)), 100), daemon=True)
    worker.start()
    local = [make_env("Score") for _ in range(num_local)]
    for i, env in enumerate(local):
        env.reset(seed=i)
    rng = np.random.default_rng(0)
    requested[1:] = 1
    time.sleep(3.0)  # the worker's games are made; env 0 is always local, so its counter can wait
    requested[0] = 1
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ready = np.flatnonzero(done == requested)
        if len(ready) >= batch:
            ready = ready[:batch]
            actions[ready] = rng.integers(ACTIONS, size=len(ready))
            requested[ready] += 1
            steps += len(ready)
            continue
        pending = np.flatnonzero(done[:num_local] != requested[:num_local])
        if len(pending):
            i = int(pending[0])
            _step(local[i], int(actions[i]))
            done[i] = requested[i]
    rate = steps / (time.perf_counter() - start)
    requested[0] = -1
    worker.join()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--envs", type=int, nargs="+", default=[2, 4, 16])
    args = parser.parse_args()
    base = single(args.seconds)
    print(f"single env: {base:,.0f} steps/s (target for a vector on 2 cores: >= {1.6 * base:,.0f}, 1.6x)")
    for n in args.envs:
        row = {
            "free": free(n, args.seconds),
            "lockstep": shared_memory_pair(n, args.seconds, batch=n),
            "async": shared_memory_pair(n, args.seconds, batch=max(1, n // 2)),
        }
        print(f"B={n:>3}: " + "   ".join(f"{k} {v:,.0f} ({v / base:.2f}x)" for k, v in row.items()))
    print(f"single env again: {single(args.seconds):,.0f} steps/s")


if __name__ == "__main__":
    main()
