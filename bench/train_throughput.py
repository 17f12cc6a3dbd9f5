"""Training throughput on NetHackScore: kudos vs an established trainer, measured in one run.

Each configuration runs in its own child process, one after another, for ``--warmup`` seconds of
start-up and then ``--seconds`` of measurement; env steps/s is computed over the measurement
window only (start-up, env spawning, model loading and the first updates excluded):

  kudos none            ``kudos train --reward none`` (extrinsic only);
  kudos classification  ``--reward classification`` with the embedded LLM labelling captions into
                        a fresh, empty label store (so the LLM is busy the whole time); also
                        prints how many labels it produced in the window and at what rate;
  rllib ppo             Ray RLlib PPO (new API stack) on NLE's NetHackScore-v0, from the
                        ``kudos[ray]`` extra (``pip install 'kudos[ray]'``): the same
                        env count over the same number of worker processes, the same batch
                        (T x B transitions, one pass), an MLP + LSTM(128) model over the hero's
                        9x9 tty crop, blstats and message (see ``rllib_flat_env``).

Then the ratios: kudos none / rllib (target >= 1.0) and kudos classification / kudos none
(target >= 0.7), with the load average before and after each part (the 2 cores are shared).

``--placements thread,process`` measures ``kudos classification`` once per
``run.reward_placement`` (the LLM, annotator and reward-model trainer as threads of the learner's
process, or in a reward process of their own), each with its ratio to ``kudos none``;
``--rounds N`` alternates all the kudos configurations N times and reports medians, so a busy
box's drift hits each configuration alike.

``--splits W:L:Q:N,...`` measures kudos's configurations once per CPU budget (the ``cpu`` config
section): W env workers, L learner threads, Q embedded-LLM threads, LLM niceness N. ``kudos none``
runs once per distinct W:L (the LLM's share does not touch it) and each classification run is
compared with the ``none`` run of its W:L; the table at the end is the trade-off between env
steps/s and labels/s. The default is one split, ``--workers``:1:1:5 (kudos's budget on 2 cores).

    python bench/train_throughput.py [--envs 32] [--workers 2] [--warmup 30] [--seconds 90]
        [--placements thread] [--rounds 1] [--splits 2:1:1:5,2:1:1:0,...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROLLOUT = 32  # T, for both trainers


def window_rate(samples: list[tuple[float, float]], warmup: float) -> tuple[float, float]:
    """Steps/s over the samples ``(seconds since the first sample, counter)`` at or after ``warmup``,
    and the window's length in seconds."""
    window = [s for s in samples if s[0] >= warmup]
    if len(window) < 2:
        raise RuntimeError(f"too few progress samples after the {warmup:.0f} s warm-up: {samples}")
    seconds = window[-1][0] - window[0][0]
    return (window[-1][1] - window[0][1]) / seconds, seconds


def parse_split(text: str) -> tuple[int, int, int, int]:
    """``"W:L:Q:N"`` -> (env workers, learner threads, LLM threads, LLM niceness)."""
    parts = text.split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise SystemExit(f"a split is W:L:Q:N (four whole numbers), got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def split_overrides(text: str) -> list[str]:
    """The ``cpu`` config overrides of a split."""
    workers, learner, llm, nice = parse_split(text)
    return [f"cpu.env_workers={workers}", f"cpu.learner_threads={learner}", f"cpu.llm_threads={llm}",
            f"cpu.llm_nice={nice}"]


def child_kudos(args: argparse.Namespace) -> dict[str, Any]:
    """Runs kudos's TrainingRun until ``warmup + seconds`` after its first update; figures as a dict."""
    import time

    from kudos.rl.experiment import load_config
    from kudos.rl.runner import TrainingRun

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            "env.task=Score", f"reward.type={args.reward}", f"env.num_envs={args.envs}",
            *split_overrides(args.budget), f"appo.rollout={ROLLOUT}", f"appo.recurrence={ROLLOUT}",
            "run.steps=1000000000", f"run.output_dir={tmp}/run", "run.log_every_s=1.0",
            "run.checkpoint_every_s=100000", f"llm.store={tmp}/labels.sqlite",
            f"run.reward_placement={args.placement}",
        ]
        config = load_config(None, overrides)
        steps: list[tuple[float, float]] = []
        labels: list[tuple[float, float]] = []
        first: list[float] = []
        trainer: TrainingRun

        def on_progress(progress: Any, figures: dict[str, float]) -> None:
            now = time.monotonic()
            if not first:
                first.append(now)
            steps.append((now - first[0], float(progress.env_steps)))
            labels.append((now - first[0], figures.get("llm/classify/labels", 0.0)))
            if now - first[0] >= args.warmup + args.seconds:
                trainer.config.run.steps = progress.env_steps  # ends the training loop cleanly

        trainer = TrainingRun(config, on_progress=on_progress)
        num_params = sum(p.numel() for p in trainer.policy.parameters())
        trainer.train()
    rate, seconds = window_rate(steps, args.warmup)
    label_rate, _ = window_rate(labels, args.warmup)
    window_labels = label_rate * seconds
    return {"steps_per_s": rate, "window_s": seconds, "labels": window_labels, "labels_per_s": label_rate,
            "labels_total": labels[-1][1], "params": num_params}


def rllib_flat_env(env_config: dict[str, Any]) -> Any:
    """NLE's NetHackScore-v0 (same observation keys as kudos) with a flat float observation:
    the 9x9 tty chars and colours around the cursor (/255), signed log1p of the 27 blstats and
    the 256 message bytes (/255): shape (81 + 81 + 27 + 256,) float32."""
    import gymnasium as gym
    import nle  # noqa: F401  (registers the NetHack envs)
    import numpy as np

    keys = ("tty_chars", "tty_colors", "tty_cursor", "blstats", "message", "glyphs")
    radius = 4

    class FlatObservation(gym.ObservationWrapper):
        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            size = 2 * (2 * radius + 1) ** 2 + 27 + 256
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)

        def observation(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            row, col = int(obs["tty_cursor"][0]), int(obs["tty_cursor"][1])
            parts = []
            for key in ("tty_chars", "tty_colors"):
                padded = np.pad(obs[key], radius)
                parts.append(padded[row:row + 2 * radius + 1, col:col + 2 * radius + 1].ravel() / 255.0)
            blstats = obs["blstats"].astype(np.float32)
            parts.append(np.sign(blstats) * np.log1p(np.abs(blstats)))
            parts.append(obs["message"] / 255.0)
            return np.concatenate(parts).astype(np.float32)

    return FlatObservation(gym.make("NetHackScore-v0", observation_keys=keys))


def child_rllib(args: argparse.Namespace) -> dict[str, Any]:
    """Runs RLlib PPO until ``warmup + seconds`` after its first iteration; figures as a dict."""
    import time

    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    # Every env runner and the learner (in this process) each reserve one logical CPU.
    ray.init(num_cpus=args.workers + 1, include_dashboard=False, log_to_driver=False)
    register_env("nethack_score_flat", rllib_flat_env)
    batch = args.envs * ROLLOUT
    config = (
        PPOConfig()
        .environment("nethack_score_flat")
        .framework("torch")
        .env_runners(num_env_runners=args.workers, num_envs_per_env_runner=args.envs // args.workers,
                     rollout_fragment_length=ROLLOUT)
        .training(train_batch_size_per_learner=batch, minibatch_size=batch, num_epochs=1, lr=1e-4)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[128, 128], use_lstm=True, lstm_cell_size=128,
                                                   max_seq_len=ROLLOUT))
    )
    algo = config.build_algo()
    module = algo.get_module()
    num_params = sum(p.numel() for p in module.parameters())
    steps: list[tuple[float, float]] = []
    first = None
    while True:
        result = algo.train()
        now = time.monotonic()
        first = now if first is None else first
        sampled = result["env_runners"]["num_env_steps_sampled_lifetime"]
        steps.append((now - first, float(sampled)))
        if now - first >= args.warmup + args.seconds:
            break
    algo.stop()
    ray.shutdown()
    rate, seconds = window_rate(steps, args.warmup)
    return {"steps_per_s": rate, "window_s": seconds, "params": num_params, "ray": ray.__version__}


def run_child(python: Path, args: argparse.Namespace, name: str, extra: list[str], script: str = __file__) -> dict[str, Any]:
    """Runs ``script`` (default: this one) as ``--child name`` under ``python``; its last stdout line is
    the JSON result."""
    command = [str(python), script, "--child", name, "--envs", str(args.envs), "--workers", str(args.workers),
               "--warmup", str(args.warmup), "--seconds", str(args.seconds), *extra]
    before = os.getloadavg()[0]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_before"], result["load_after"] = before, os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=32, help="envs in all (B)")
    parser.add_argument("--workers", type=int, default=2, help="env worker processes")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of start-up left out")
    parser.add_argument("--seconds", type=float, default=90.0, help="seconds measured")
    parser.add_argument("--skip-rllib", action="store_true", help="only the kudos configurations")
    parser.add_argument("--placements", default="thread",
                        help="run.reward_placement values to measure `kudos classification` with, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="times the kudos configurations are alternated")
    parser.add_argument("--splits", help="CPU budgets W:L:Q:N (env workers, learner threads, LLM threads, LLM "
                                         "niceness), comma-separated; default --workers:1:1:5")
    parser.add_argument("--budget", default="2:1:1:5", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("kudos", "rllib"), help=argparse.SUPPRESS)
    parser.add_argument("--reward", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--placement", default="thread", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "kudos":
        print(json.dumps(child_kudos(args)))
        return
    if args.child == "rllib":
        print(json.dumps(child_rllib(args)))
        return

    print(f"NetHackScore, {args.envs} envs over {args.workers} workers, T={ROLLOUT}; {args.warmup:.0f} s warm-up, "
          f"{args.seconds:.0f} s measured; {os.cpu_count()} cores", flush=True)
    results: dict[str, dict[str, Any]] = {}
    if not args.skip_rllib:
        if importlib.util.find_spec("ray") is None:
            sys.exit("Ray RLlib is not installed: pip install 'kudos[ray]' (or pass --skip-rllib)")
        results["rllib ppo"] = run_child(Path(sys.executable), args, "rllib", [])
    splits = (args.splits or f"{args.workers}:1:1:5").split(",")
    for split in splits:
        workers = parse_split(split)[0]
        if args.envs % (2 * workers):
            sys.exit(f"--envs {args.envs} must be a multiple of 2 x the split's workers ({split})")
    single = len(splits) == 1
    kudos: dict[str, list[str]] = {}
    baseline: dict[str, str] = {}  # classification configuration -> its `none` configuration
    for split in splits:
        none = "kudos none" + ("" if single else " " + ":".join(split.split(":")[:2]))
        kudos[none] = ["--reward", "none", "--budget", split]
        for placement in args.placements.split(","):
            name = ("kudos classification" + ("" if placement == "thread" else f" ({placement})")
                    + ("" if single else f" {split}"))
            kudos[name] = ["--reward", "classification", "--placement", placement, "--budget", split]
            baseline[name] = none
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in kudos}
    for _ in range(args.rounds):
        for name, extra in kudos.items():
            rounds[name].append(run_child(Path(sys.executable), args, "kudos", extra))
    for name, runs in rounds.items():
        if len(runs) > 1:
            print(f"{name:22} rounds: " + ", ".join(f"{r['steps_per_s']:,.0f}" for r in runs) + " env steps/s")
        results[name] = {**runs[0], **{key: statistics.median(r[key] for r in runs)
                                       for key in ("steps_per_s", "window_s", "labels", "labels_per_s", "labels_total")
                                       if key in runs[0]}}
    for name, r in results.items():
        line = f"{name:22} {r['steps_per_s']:8,.0f} env steps/s over {r['window_s']:.0f} s"
        if "labels" in r and "classification" in name:
            line += f"; {r['labels']:.0f} labels in the window ({r['labels_per_s']:.2f}/s), {r['labels_total']:.0f} in all"
        if "ray" in r:
            line += f"; ray {r['ray']}"
        line += f"; {r['params']:,} parameters"
        print(f"{line}; load average {r['load_before']:.2f} -> {r['load_after']:.2f}")
    if "rllib ppo" in results:
        none = results[baseline[next(iter(baseline))]]["steps_per_s"]
        ratio = none / results["rllib ppo"]["steps_per_s"]
        print(f"kudos none / rllib ppo: {ratio:.2f}x (target >= 1.0)")
    for name, none_name in baseline.items():
        print(f"{name} / {none_name}: {results[name]['steps_per_s'] / results[none_name]['steps_per_s']:.2f}x "
              "(target >= 0.75 at the default budget)")
    if not single:
        print("\nCPU budget trade-off (W:L:Q:N = env workers : learner threads : LLM threads : LLM niceness)")
        print("| split | none env steps/s | classification env steps/s | ratio | labels/s |")
        print("|---|---|---|---|---|")
        for name, none_name in baseline.items():
            r, n = results[name], results[none_name]
            print(f"| {name.removeprefix('kudos classification ')} | {n['steps_per_s']:,.0f} | "
                  f"{r['steps_per_s']:,.0f} | {r['steps_per_s'] / n['steps_per_s']:.2f}x | {r['labels_per_s']:.2f} |")


if __name__ == "__main__":
    main()
