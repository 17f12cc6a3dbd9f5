"""The cost of kudos's reward on Ray RLlib, and Ray's own overhead, on this box (one run).

Each configuration runs in its own child process, for ``--warmup`` seconds after its first
training iteration and then ``--seconds`` of measurement (env steps the learner trained on, per
second of the window; start-up excluded):

  rllib kudos   ``KudosAPPO`` with reward ``classification``, labelled by an instant local stand-in
                LLM (an OpenAI-compatible server in this process that answers at once), so the
                figure is the integration's own cost: connector, snapshots, service, annotator;
  rllib none    the same APPO, reward ``none`` (the connector only shapes the extrinsic reward);
  kudos none    kudos's own trainer, reward ``none`` (``bench/train_throughput.py``'s child).

The two RLlib configurations alternate for ``--rounds`` rounds (order flipped every round) and
medians are compared: rllib kudos / rllib none (target >= 0.9) and rllib none / kudos none
(Ray's overhead here; no target). The stand-in also counts how often each prompt was asked:
duplicate asks within a run are printed (0 expected).

    python bench/rllib_scale.py [--envs 8] [--workers 2] [--warmup 20] [--seconds 40] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stand_in_llm import StandInLLM
from train_throughput import ROLLOUT, run_child, window_rate


def child_rllib(args: argparse.Namespace) -> dict[str, Any]:
    """Runs KudosAPPO until ``warmup + seconds`` after its first iteration; figures as a dict."""
    import ray

    from kudos.rl.experiment import load_config
    from kudos.integrations.rllib import appo_config, env_steps_trained

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, [
            "env.task=Score", f"reward.type={args.reward}", f"env.num_envs={args.envs}", f"appo.rollout={ROLLOUT}",
            f"appo.recurrence={ROLLOUT}", f"llm.backend={args.llm}", f"llm.store={tmp}/labels.sqlite",
        ])
        # Env runners reserve one logical CPU each; the learner runs in this process.
        ray.init(num_cpus=args.workers + 1, include_dashboard=False, log_to_driver=False)
        algo = appo_config(config, num_env_runners=args.workers).reporting(min_time_s_per_iteration=1).build_algo()
        steps: list[tuple[float, float]] = []
        labels: list[float] = []
        first = None
        while True:
            result = algo.train()
            now = time.monotonic()
            first = now if first is None else first
            steps.append((now - first, float(env_steps_trained(result))))
            labels.append(float(result.get("kudos", {}).get("llm/classify/labels", 0.0)))
            if now - first >= args.warmup + args.seconds:
                break
        algo.stop()
        ray.shutdown()
    rate, seconds = window_rate(steps, args.warmup)
    return {"steps_per_s": rate, "window_s": seconds, "labels": labels[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=8, help="envs in all (B)")
    parser.add_argument("--workers", type=int, default=2, help="env runners (RLlib) / env worker processes (kudos)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of start-up left out")
    parser.add_argument("--seconds", type=float, default=40.0, help="seconds measured")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two RLlib configurations")
    parser.add_argument("--child", choices=("rllib", "kudos"), help=argparse.SUPPRESS)
    parser.add_argument("--reward", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--llm", default="embedded", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "rllib":
        print(json.dumps(child_rllib(args)))
        return

    from kudos.feedback.model_files import MODEL_ID

    print(f"NetHackScore, {args.envs} envs over {args.workers} workers, T={ROLLOUT}; {args.warmup:.0f} s warm-up, "
          f"{args.seconds:.0f} s measured; {args.rounds} rounds; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    stand_in = StandInLLM(MODEL_ID)
    rates: dict[str, list[float]] = {"rllib kudos": [], "rllib none": []}
    try:
        for round_ in range(args.rounds):
            order = ("classification", "none") if round_ % 2 == 0 else ("none", "classification")
            for reward in order:
                stand_in.reset()
                extra = ["--reward", reward, "--llm", stand_in.url]
                result = run_child(Path(sys.executable), args, "rllib", extra, script=__file__)
                name = "rllib kudos" if reward == "classification" else "rllib none"
                rates[name].append(result["steps_per_s"])
                line = f"round {round_ + 1} {name:12} {result['steps_per_s']:7,.0f} env steps/s over {result['window_s']:.0f} s"
                if reward == "classification":
                    line += f"; {result['labels']:.0f} labels, {stand_in.duplicates()} duplicate asks"
                print(f"{line}; load average {result['load_before']:.2f} -> {result['load_after']:.2f}", flush=True)
    finally:
        stand_in.close()
    native = run_child(Path(sys.executable), args, "kudos", ["--reward", "none"])
    print(f"kudos none         {native['steps_per_s']:7,.0f} env steps/s over {native['window_s']:.0f} s; "
          f"load average {native['load_before']:.2f} -> {native['load_after']:.2f}")
    kudos, none = statistics.median(rates["rllib kudos"]), statistics.median(rates["rllib none"])
    print(f"medians: rllib kudos {kudos:,.0f}, rllib none {none:,.0f}, kudos none {native['steps_per_s']:,.0f} env steps/s")
    print(f"rllib kudos / rllib none: {kudos / none:.2f}x (target >= 0.9)")
    print(f"rllib none / kudos none: {none / native['steps_per_s']:.2f}x (Ray's overhead on this box; no target)")


if __name__ == "__main__":
    main()
