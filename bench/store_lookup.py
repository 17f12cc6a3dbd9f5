"""Second pass over the same 1,000 captions: LLM calls (target 0) and label-store lookups/s
(target >= 50,000/s).

The store is filled with 1,000 labelled captions (first pass), then:
  get_many   lookups/s of LabelStore.get_many over all 1,000 captions (one call), and in the
             learner's chunk size (64 per call);
  annotator  a fresh Annotator (as a resumed run starts) gets all 1,000 submitted: time until idle,
             LLM requests made (must be 0), cache hit rate.
The first pass writes records directly (labelling 1,000 captions with the embedded model takes
minutes); the annotator's backend is the real embedded model when it is installed, so any call
would show in its request count, else a backend that fails every call (named so in the output).

    python bench/store_lookup.py [--store PATH_OR_POSTGRES_URL] [--captions 1000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from kudos.errors import KudosError
from kudos.feedback.annotator import Annotator
from kudos.feedback.backend import LLMBackend, LLMError, LLMReply, LLMRequest
from kudos.feedback.prompts import PromptTemplate
from kudos.feedback.store import LabelRecord, LabelStore, open_store

MONSTERS = ["newt", "jackal", "grid bug", "kobold", "sewer rat", "gnome lord", "hill orc", "floating eye"]


def captions(n: int) -> list[str]:
    """n distinct NetHack-like messages."""
    forms = ["You kill the {m}!", "The {m} bites!", "You hit the {m}.", "You see here {i} gold pieces.",
             "The {m} misses!", "You hear some noises in the distance. ({i})"]
    return [forms[i % len(forms)].format(m=MONSTERS[i % len(MONSTERS)], i=i) + f" [{i}]" for i in range(n)]


class FailingBackend:
    """Stand-in when the embedded model is not installed: every call fails, so a call is visible."""

    model_id = "qwen2.5-coder-1.5b-instruct-q4_k_m"

    def generate(self, requests: Sequence[LLMRequest], cancel: threading.Event | None = None) -> list[LLMReply]:
        raise LLMError("FailingBackend: the second pass must not call the LLM")

    def close(self) -> None:
        pass


def make_backend() -> tuple[LLMBackend, str]:
    try:
        from kudos.feedback.embedded import EmbeddedLLM

        return EmbeddedLLM(threads=1), "embedded model (real)"
    except (ImportError, KudosError) as exc:
        return FailingBackend(), f"FailingBackend (embedded model unavailable: {exc})"


def rate(store: LabelStore, prompt_hash: str, model_id: str, items: list[str], chunk: int, seconds: float) -> float:
    """Lookups/s of get_many in calls of ``chunk`` captions, over about ``seconds``."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(0, len(items), chunk):
            found = store.get_many(prompt_hash, model_id, items[i : i + chunk])
            assert len(found) == len(items[i : i + chunk])
            done += len(found)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=None, help="SQLite path or postgresql:// URL (default: a temp file)")
    parser.add_argument("--captions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each lookup measurement")
    args = parser.parse_args()

    template = PromptTemplate()
    backend, backend_name = make_backend()
    items = captions(args.captions)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(args.store or Path(tmp) / "labels.sqlite")
        now = time.time()
        store.put_many([LabelRecord(template.version_hash, backend.model_id, "classify", c, None, i % 2,
                                    0.25 + 0.5 * (i % 2), str(i % 2), 0.4, now) for i, c in enumerate(items)])
        print(f"store: {store.location}; backend: {backend_name}")
        for chunk in (len(items), 64):
            lookups = rate(store, template.version_hash, backend.model_id, items, chunk, args.seconds)
            print(f"get_many, {chunk:>4} captions per call: {lookups:>10,.0f} lookups/s  (target >= 50,000)")

        annotator = Annotator(backend, store, template).start()
        start = time.perf_counter()
        annotator.submit(items)
        assert annotator.wait_idle(120), "the second pass did not finish"
        elapsed = time.perf_counter() - start
        m = annotator.metrics()
        annotator.close()
        print(f"annotator second pass: {len(items)} captions in {elapsed * 1e3:.1f} ms "
              f"({len(items) / elapsed:,.0f} captions/s), LLM requests: {m.llm_requests} (target 0), "
              f"cache hit rate: {m.cache_hit_rate:.3f}")
        store.close()
    backend.close()


if __name__ == "__main__":
    main()
