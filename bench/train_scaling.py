"""Training throughput as the rollout workers grow, next to what the same processes step with no
policy at all, and the learner's own throughput; all in one run.

For each W in ``--workers`` (capped at the cores found), measured one after the other:

  raw      W processes, each stepping ``--envs-per-worker`` kudos envs (the policy's observation
           keys) with random actions, no policy, no coordination: the ceiling for those W;
  DEV:MODE the new trainer (kudos.rl.sampler + kudos.rl.learner, not ``kudos train``): W rollout
           workers with the same envs per process, inference in each worker (``worker``) or
           batched in a policy worker on the learner's device (``policy-worker``), the learner
           on DEV; env steps/s that reached the learner and were trained on, over ``--seconds``
           after ``--warmup`` seconds (reward none: the learner trains on the env reward).

Then the learner alone (``Learner.update``) in transitions/s for each ``--presets`` at T=32 and
batches of ``--learner-batches`` envs, on ``--learner-device``, on real observations.

    PYTHONPATH=src python bench/train_scaling.py [--workers 1,2,4,8,15] [--envs-per-worker 64]
        [--modes cuda:worker,cuda:policy-worker,cpu:worker] [--warmup 5] [--seconds 8]

Modes naming cuda are skipped without a GPU. The run prints its estimated duration first (6.5
minutes for the defaults on a 16-core GPU box; the last full run there, with 16 envs per process
and 6 s + 10 s windows, took 7.2); ``--dry-run`` prints only that.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from kudos.envs import get_task, make_env
from kudos.rl.appo import APPOConfig
from kudos.rl.learner import Learner, RolloutBatch
from kudos.rl.policy import POLICY_OBSERVATION_KEYS, NetHackPolicy, get_policy_config
from kudos.rl.sampler import Sampler, SamplerConfig, resolve_device

TASK = "Score"
NUM_ACTIONS = get_task(TASK).num_actions
T = 32
_STARTUP_S = 7.0  # per-measurement start-up seen on the 16-core box, for the time estimate


# --- raw env stepping ----------------------------------------------------------------------------


def _raw_worker(index: int, envs_per_process: int, counters, stop) -> None:
    envs = [make_env(TASK, observation_keys=POLICY_OBSERVATION_KEYS) for _ in range(envs_per_process)]
    rng = np.random.default_rng(index)
    for j, env in enumerate(envs):
        env.reset(seed=1000 * index + j)
    steps = 0
    while not stop.is_set():
        for env in envs:
            _, _, terminated, truncated, _ = env.step(int(rng.integers(NUM_ACTIONS)))
            if terminated or truncated:
                env.reset()
        steps += len(envs)
        counters[index] = steps


def measure_raw(workers: int, envs_per_process: int, warmup: float, seconds: float) -> float:
    """Env steps/s of ``workers`` uncoordinated processes stepping random actions."""
    ctx = mp.get_context("spawn")
    counters = ctx.RawArray("q", workers)
    stop = ctx.Event()
    procs = [ctx.Process(target=_raw_worker, args=(i, envs_per_process, counters, stop), daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    try:
        while min(counters) == 0:
            time.sleep(0.05)
        time.sleep(warmup)
        start, began = sum(counters), time.perf_counter()
        time.sleep(seconds)
        return (sum(counters) - start) / (time.perf_counter() - began)
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


# --- training ----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    steps_per_s: float
    updates: int
    mean_lag: float
    dropped: int
    restarts: int


def measure_training(
    workers: int, envs_per_worker: int, device: torch.device, inference: str, preset: str,
    batch_envs: int, learner_threads: int, warmup: float, seconds: float,
) -> TrainResult:
    """Env steps/s trained on by the sampler + learner, over ``seconds`` after ``warmup``."""
    torch.set_num_threads(learner_threads)
    config = get_policy_config(preset)
    policy = NetHackPolicy(config, NUM_ACTIONS).to(device)
    learner = Learner(policy, APPOConfig(rollout=T))
    half = envs_per_worker // 2
    sampler_config = SamplerConfig(
        num_workers=workers, envs_per_worker=envs_per_worker, rollout=T,
        batch_slots=max(1, batch_envs // half), inference=inference, seed=0,
    )
    with Sampler(TASK, config, policy.state_dict(), sampler_config, device=device) as sampler:
        sample = sampler.next_batch(timeout=300)
        measure_from = time.perf_counter() + warmup
        steps, lags, began, updates = 0, [], None, 0
        dropped_at_start = 0
        while True:
            learner.update(sample.batch)  # reward none: the env reward as it came
            sampler.publish(policy.state_dict(), learner.updates)
            now = time.perf_counter()
            if began is None and now >= measure_from:
                began, dropped_at_start = now, sampler.slots_dropped
            elif began is not None:
                steps += sample.num_steps
                updates += 1
                lags.extend(sample.policy_lag.tolist())
                if now - began >= seconds:
                    break
            sample = sampler.next_batch(timeout=300)
        elapsed = time.perf_counter() - began
        return TrainResult(
            steps / elapsed, updates, float(np.mean(lags)) if lags else float("nan"),
            sampler.slots_dropped - dropped_at_start, sampler.worker_restarts,
        )


# --- learner alone -------------------------------------------------------------------------------


def real_observations(frames: int) -> dict[str, np.ndarray]:
    """``frames`` observations of random play, stacked."""
    env = make_env(TASK, observation_keys=POLICY_OBSERVATION_KEYS)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(frames):
        rows.append({k: obs[k].copy() for k in POLICY_OBSERVATION_KEYS})
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(NUM_ACTIONS)))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return {k: np.stack([r[k] for r in rows]) for k in POLICY_OBSERVATION_KEYS}


def measure_learner(preset: str, batch_envs: int, device: torch.device, frames: dict[str, np.ndarray], seconds: float) -> float:
    """Transitions/s of ``Learner.update`` on (T, batch_envs) batches of real observations."""
    policy = NetHackPolicy(get_policy_config(preset), NUM_ACTIONS).to(device)
    learner = Learner(policy, APPOConfig(rollout=T))
    rng = np.random.default_rng(0)
    pick = rng.integers(len(frames["blstats"]), size=(T + 1, batch_envs))
    batch = RolloutBatch(
        obs={k: torch.from_numpy(v[pick]).to(device) for k, v in frames.items()},
        actions=torch.from_numpy(rng.integers(NUM_ACTIONS, size=(T, batch_envs))).to(device),
        behaviour_log_probs=torch.full((T, batch_envs), -float(np.log(NUM_ACTIONS)), device=device),
        behaviour_values=torch.zeros(T, batch_envs, device=device),
        rewards=torch.from_numpy(rng.normal(0, 0.1, size=(T, batch_envs)).astype(np.float32)).to(device),
        dones=torch.from_numpy(rng.random((T + 1, batch_envs)) < 0.01).to(device),
        initial_core_state=policy.initial_state(batch_envs),
    )
    learner.update(batch)  # warm-up: allocations, kernel selection
    if device.type == "cuda":
        torch.cuda.synchronize()
    began, updates = time.perf_counter(), 0
    while updates < 2 or time.perf_counter() - began < seconds:
        learner.update(batch)
        updates += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return updates * T * batch_envs / (time.perf_counter() - began)


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8,15", help="W values, capped at the cores found")
    parser.add_argument("--envs-per-worker", type=int, default=64, help="envs per process (even)")
    parser.add_argument("--modes", default="cuda:worker,cuda:policy-worker,cpu:worker",
                        help="DEVICE:INFERENCE pairs (DEVICE: cpu or cuda; INFERENCE: worker or policy-worker)")
    parser.add_argument("--preset", default="small", help="policy preset of the training runs")
    parser.add_argument("--batch-envs", type=int, default=128, help="envs per learner batch (T=32 steps each)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before each training window")
    parser.add_argument("--seconds", type=float, default=8.0, help="training window, seconds")
    parser.add_argument("--raw-warmup", type=float, default=2.0)
    parser.add_argument("--raw-seconds", type=float, default=5.0)
    parser.add_argument("--presets", default="small,gpu", help="presets of the learner-alone rows")
    parser.add_argument("--learner-batches", default="1024,4096", help="batch sizes (envs) of the learner-alone rows")
    parser.add_argument("--learner-device", default="auto")
    parser.add_argument("--learner-seconds", type=float, default=3.0)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its estimated duration")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    workers = sorted({min(int(w), cores) for w in args.workers.split(",")})
    has_cuda = torch.cuda.is_available()
    modes = []
    for item in args.modes.split(","):
        device, inference = item.split(":")
        if device == "cuda" and not has_cuda:
            print(f"skipping {item}: no GPU")
            continue
        modes.append((torch.device(device), inference))
    learner_device = resolve_device(args.learner_device)
    learner_rows = [(p, int(b)) for p in args.presets.split(",") for b in args.learner_batches.split(",") if b]
    estimate = len(workers) * (args.raw_warmup + args.raw_seconds + _STARTUP_S) + len(workers) * len(modes) * (
        args.warmup + args.seconds + _STARTUP_S
    ) + len(learner_rows) * (args.learner_seconds + 2)
    gpu = torch.cuda.get_device_name(0) if has_cuda else "none"
    print(f"cores {cores}, GPU {gpu}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}; "
          f"W {workers}, {args.envs_per_worker} envs per process, T={T}, learner batch {args.batch_envs} envs, "
          f"preset {args.preset}; estimated {estimate / 60:.1f} min", flush=True)
    if args.dry_run:
        return

    columns = ["raw"] + [f"{d.type}:{m}" for d, m in modes]
    table: dict[int, dict[str, float]] = {}
    for w in workers:
        row = table.setdefault(w, {})
        row["raw"] = measure_raw(w, args.envs_per_worker, args.raw_warmup, args.raw_seconds)
        print(f"W={w:2d} raw {row['raw']:,.0f} env steps/s", flush=True)
        for device, inference in modes:
            threads = max(1, cores - w) if device.type == "cpu" else 1
            result = measure_training(w, args.envs_per_worker, device, inference, args.preset, args.batch_envs,
                                      threads, args.warmup, args.seconds)
            name = f"{device.type}:{inference}"
            row[name] = result.steps_per_s
            print(f"W={w:2d} {name} {result.steps_per_s:,.0f} env steps/s trained on "
                  f"({result.updates} updates, mean policy lag {result.mean_lag:.2f}, {result.dropped} slots dropped, "
                  f"{result.restarts} worker restarts, learner threads {threads})", flush=True)

    print("\nenv steps/s (trained on, for the trainer columns; trained/raw in brackets)")
    print("| W | envs | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for w in workers:
        cells = [f"{table[w]['raw']:,.0f}"] + [
            f"{table[w][c]:,.0f} ({table[w][c] / table[w]['raw']:.2f})" for c in columns[1:]
        ]
        print(f"| {w} | {w * args.envs_per_worker} | " + " | ".join(cells) + " |")
    if len(workers) > 1:
        top, one = workers[-1], workers[0]
        for c in columns:
            print(f"{c}: W={top} / W={one} = {table[top][c] / table[one][c]:.2f}x")

    torch.set_num_threads(cores if learner_device.type == "cpu" else 1)
    frames = real_observations(2000)
    print(f"\nlearner alone on {learner_device} (T={T}, {torch.get_num_threads()} torch threads), transitions/s")
    print("| preset | batch envs | transitions/s |")
    print("|---|---|---|")
    for preset, batch in learner_rows:
        rate = measure_learner(preset, batch, learner_device, frames, args.learner_seconds)
        print(f"| {preset} | {batch} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
