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
import collections
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from train_throughput import ROLLOUT, run_child, window_rate


class InstantStandInLLM:
    """A stand-in for an LLM server (OpenAI chat API, ``GET /v1/models``) that answers every
    request at once (or after ``delay_s``): "1" or "0" by a hash of the prompt, with answer-token
    log-probs. Counts the requests per prompt in ``asked``. Not a model: for measuring what is
    around the LLM, and for races between runs that share a store."""

    def __init__(self, model_id: str, delay_s: float = 0.0) -> None:
        self.model_id = model_id
        self.delay_s = delay_s
        self.asked: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": stand_in.model_id, "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                prompt = body["messages"][-1]["content"]
                with stand_in._lock:
                    stand_in.asked[prompt] += 1
                time.sleep(stand_in.delay_s)
                answer = "1" if hashlib.blake2b(prompt.encode(), digest_size=1).digest()[0] % 2 else "0"
                other = "0" if answer == "1" else "1"
                top = [{"token": answer, "logprob": -0.1}, {"token": other, "logprob": -2.4}]
                self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                         "logprobs": {"content": [{"token": answer, "logprob": -0.1,
                                                                   "top_logprobs": top}]}}]})

            def _send(self, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def duplicates(self) -> int:
        """Requests beyond the first for each prompt."""
        with self._lock:
            return sum(n - 1 for n in self.asked.values())

    def reset(self) -> None:
        with self._lock:
            self.asked.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def child_rllib(args: argparse.Namespace) -> dict[str, Any]:
    """Runs KudosAPPO until ``warmup + seconds`` after its first iteration; figures as a dict."""
    import ray

    from kudos.config import load_config
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

    from kudos.feedback.embedded import MODEL_ID

    print(f"NetHackScore, {args.envs} envs over {args.workers} workers, T={ROLLOUT}; {args.warmup:.0f} s warm-up, "
          f"{args.seconds:.0f} s measured; {args.rounds} rounds; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    stand_in = InstantStandInLLM(MODEL_ID)
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
