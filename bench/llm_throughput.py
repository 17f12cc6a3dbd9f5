"""Embedded LLM throughput, alone and sharing the cores with a trainer, all measured in one run.

Each setting runs in fresh child processes (OpenMP reads its wait policy once per process), all
for the same number of seconds after a common start signal. Prints:

  llm alone      labels/s of the embedded model on the short classification prompt (distinct
                 captions, the shared instruction prefix kept in the KV cache), for 1 thread,
                 2 threads, and 2 threads with passive OpenMP waiting;
  llm no-cache   labels/s with 1 thread when every prompt is evaluated whole (the KV cache
                 cleared before each label), i.e. what the prefix cache saves;
  trainer alone  optimizer steps/s of a real torch training loop (an MLP on random data);
  shared         each LLM setting together with the trainer: labels/s, the trainer's steps/s, and
                 steps/s as a fraction of the trainer alone.

Targets: >= 2.5 labels/s on 2 idle cores (classification); with a trainer on the cores, report
both rates.

    python bench/llm_throughput.py [--seconds 20] [--trainer-threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HAND_LABELS = Path(__file__).resolve().parent.parent / "tests" / "data" / "hand_labels.jsonl"


def run_llm(threads: int, passive: bool, cold: bool, seconds: float) -> dict[str, float]:
    """Child: label captions for ``seconds`` after "go" on stdin; labels/s and cache figures."""
    from kudos.feedback.embedded import EmbeddedLLM
    from kudos.feedback.prompts import PromptTemplate

    captions = [json.loads(line)["caption"] for line in HAND_LABELS.read_text().splitlines()]
    template = PromptTemplate()
    llm = EmbeddedLLM(threads=threads, passive_wait=passive)
    llm.generate([template.request("warm-up")])
    _ready_then_wait()
    before = dict(llm.stats)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        if cold:
            llm.clear_cache()
        llm.generate([template.request(captions[n % len(captions)])])
        n += 1
    elapsed = time.perf_counter() - start
    evaluated = llm.stats["evaluated_tokens"] - before["evaluated_tokens"]
    prompt = llm.stats["prompt_tokens"] - before["prompt_tokens"]
    return {"labels_per_s": n / elapsed, "evaluated_per_label": evaluated / n, "prompt_per_label": prompt / n}


def run_trainer(threads: int, seconds: float) -> dict[str, float]:
    """Child: a small supervised training loop (MLP, Adam, batch 512); optimizer steps/s."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(4096, 256), torch.randint(0, 10, (4096,))

    def step(i: int) -> None:
        batch = slice((i * 512) % 4096, (i * 512) % 4096 + 512)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for i in range(20):  # warm-up
        step(i)
    _ready_then_wait()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step(n)
        n += 1
    return {"steps_per_s": n / (time.perf_counter() - start)}


def _ready_then_wait() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


@dataclass(frozen=True)
class Child:
    name: str
    args: list[str]


def run_together(children: list[Child], seconds: float) -> dict[str, dict[str, float]]:
    """Start the children, wait until all are loaded, start them at once, collect their results."""
    procs = {
        c.name: subprocess.Popen(
            [sys.executable, __file__, "--seconds", str(seconds), *c.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for c in children
    }
    for name, proc in procs.items():
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"{name} failed to start (exit code {proc.wait()})")
    for proc in procs.values():
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = {}
    for name, proc in procs.items():
        out, _ = proc.communicate()
        results[name] = json.loads(out.strip().splitlines()[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per setting")
    parser.add_argument("--trainer-threads", type=int, default=1, help="torch threads of the trainer")
    parser.add_argument("--role", choices=["llm", "trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--passive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role == "llm":
        print(json.dumps(run_llm(args.threads, args.passive, args.cold, args.seconds)))
        return
    if args.role == "trainer":
        print(json.dumps(run_trainer(args.threads, args.seconds)))
        return

    from kudos.feedback.model_files import ensure_embedded_model

    ensure_embedded_model()  # assemble once, outside the timed runs
    settings = {
        "1 thread": ["--role", "llm", "--threads", "1"],
        "2 threads": ["--role", "llm", "--threads", "2"],
        "2 threads, passive wait": ["--role", "llm", "--threads", "2", "--passive"],
    }
    trainer = Child("trainer", ["--role", "trainer", "--threads", str(args.trainer_threads)])
    print(
        f"window {args.seconds:.0f} s per setting; trainer: MLP 256-512-512-10, Adam, batch 512, "
        f"{args.trainer_threads} torch thread(s); {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
        "(other processes on the cores distort every figure, most of all with 2 llama.cpp threads)"
    )

    alone = run_together([trainer], args.seconds)["trainer"]["steps_per_s"]
    print(f"trainer alone: {alone:8.1f} steps/s")
    for name, child_args in settings.items():
        r = run_together([Child("llm", child_args)], args.seconds)["llm"]
        print(
            f"llm alone, {name:24s} {r['labels_per_s']:5.2f} labels/s  "
            f"({r['evaluated_per_label']:.0f} of {r['prompt_per_label']:.0f} prompt tokens evaluated per label)"
        )
    r = run_together([Child("llm", ["--role", "llm", "--threads", "1", "--cold"])], args.seconds)["llm"]
    print(
        f"llm no-cache, 1 thread:            {r['labels_per_s']:5.2f} labels/s  "
        f"({r['evaluated_per_label']:.0f} of {r['prompt_per_label']:.0f} prompt tokens evaluated per label)"
    )
    for name, child_args in settings.items():
        both = run_together([trainer, Child("llm", child_args)], args.seconds)
        steps = both["trainer"]["steps_per_s"]
        print(
            f"shared, llm {name:24s} {both['llm']['labels_per_s']:5.2f} labels/s  "
            f"trainer {steps:8.1f} steps/s ({steps / alone:.2f} of alone)"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
