"""How long Annotator.submit() blocks a producer that submits 100,000 captions/s while the LLM is
busy (target: p99 <= 1 ms per call).

The producer (the main thread, as the learner) calls submit() with ``--per-call`` captions every
``per_call / rate`` seconds for ``--seconds``: most captions repeat (NetHack repeats its messages),
``--new-share`` of them were never seen, so the backlog grows, the worker admits and deduplicates
them against the store between LLM batches (small batches, so it does so often), and the LLM (the
real embedded model, 1 thread) is busy the whole time. Without the embedded model the bench uses DeliberatelySlowBackend (sleeps 0.4 s per caption,
as the embedded model takes on one core) and says so.

    python bench/annotator_submit.py [--rate 100000] [--per-call 100] [--seconds 10] [--new-share 0.05]
                                     [--batch-size 2]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kudos.errors import KudosError
from kudos.feedback.annotator import Annotator, AnnotatorConfig
from kudos.feedback.backend import LLMBackend, LLMReply, LLMRequest
from kudos.feedback.prompts import PromptTemplate
from kudos.feedback.store import open_store

MONSTERS = ["newt", "jackal", "grid bug", "kobold", "sewer rat", "gnome lord", "hill orc", "floating eye"]


class DeliberatelySlowBackend:
    """Not an LLM: answers "0" after sleeping ``seconds_per_request`` per request (a busy server)."""

    model_id = "deliberately-slow-backend"

    def __init__(self, seconds_per_request: float = 0.4) -> None:
        self.seconds_per_request = seconds_per_request

    def generate(self, requests: Sequence[LLMRequest], cancel: threading.Event | None = None) -> list[LLMReply]:
        time.sleep(self.seconds_per_request * len(requests))
        return [LLMReply("0", 0.1, self.seconds_per_request, self.model_id) for _ in requests]

    def close(self) -> None:
        pass


def make_backend() -> tuple[LLMBackend, str]:
    try:
        from kudos.feedback.embedded import EmbeddedLLM

        return EmbeddedLLM(threads=1), "the embedded model (real, 1 llama.cpp thread)"
    except (ImportError, KudosError) as exc:
        return DeliberatelySlowBackend(), f"DeliberatelySlowBackend, NOT an LLM (embedded model unavailable: {exc})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100_000, help="captions submitted per second")
    parser.add_argument("--per-call", type=int, default=100, help="captions per submit() call")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--new-share", type=float, default=0.05, help="share of never-seen captions")
    parser.add_argument("--batch-size", type=int, default=2, help="LLM batch: small, so the worker admits often")
    args = parser.parse_args()

    rng = random.Random(0)
    vocabulary = [f"You kill the {m}!" for m in MONSTERS] + [f"You see here {i} gold pieces." for i in range(500)]
    backend, backend_name = make_backend()
    interval = args.per_call / args.rate
    blocked_ns: list[int] = []
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "labels.sqlite") as store:
        annotator = Annotator(backend, store, PromptTemplate(), AnnotatorConfig(max_backlog=100_000, batch_size=args.batch_size)).start()
        annotator.submit(vocabulary[:8])
        while annotator.metrics().in_flight == 0:  # measure only while the LLM is busy
            time.sleep(0.01)
        fresh = 0
        start = next_call = time.perf_counter()
        while (now := time.perf_counter()) - start < args.seconds:
            if now < next_call:
                continue  # busy-wait: a sleep would be coarser than the 1 ms interval
            batch = []
            for _ in range(args.per_call):
                if rng.random() < args.new_share:
                    fresh += 1
                    batch.append(f"You hear a sound #{fresh}.")
                else:
                    batch.append(rng.choice(vocabulary))
            t0 = time.perf_counter_ns()
            annotator.submit(batch)
            blocked_ns.append(time.perf_counter_ns() - t0)
            next_call += interval
        elapsed = time.perf_counter() - start
        m = annotator.metrics()
        annotator.close(timeout=60)
    backend.close()

    ms = np.array(blocked_ns) / 1e6
    submitted = len(blocked_ns) * args.per_call
    print(f"backend: {backend_name}")
    print(f"producer: {len(blocked_ns):,} submit() calls of {args.per_call} captions in {elapsed:.1f} s = "
          f"{submitted / elapsed:,.0f} captions/s (asked for {args.rate:,.0f}/s), {fresh:,} never seen before")
    print(f"time blocked per submit() call: p50 {np.percentile(ms, 50):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms "
          f"(target <= 1 ms), p99.9 {np.percentile(ms, 99.9):.3f} ms, max {ms.max():.3f} ms")
    print(f"annotator meanwhile: {m.labels} labels ({m.labels_per_s:.2f}/s), {m.llm_requests} LLM requests, "
          f"queue depth {m.queue_depth:,}, dropped {m.dropped:,}, duplicates skipped {m.duplicates:,}")


if __name__ == "__main__":
    main()
