"""Start-up time of `kudos train --reward motif`: seconds from launch to the first training step,
with the start-up phases the command shows (each line timed from launch).

The label store is prepared first (not timed) with ``--pairs`` pair labels for the embedded model,
derived as the annotator derives them for a small model: from the embedded model's own per-caption
labels in bench/data/reward_caption_labels.jsonl.gz, compared as ``kudos annotate`` would
compare them. Offline Motif then fits its ranker to them (``--motif-steps``, kudos's default
2000) before the first step.

    .venv/bin/python bench/motif_startup.py [--pairs 20000] [--motif-steps 2000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kudos.feedback.labeler import resolve_spec
from kudos.feedback.embedded import EmbeddedLLM
from kudos.feedback.model_files import MODEL_ID
from kudos.feedback.parse import derive_preference
from kudos.feedback.prompts import PairwiseFromPointwise, PromptTemplate
from kudos.feedback.store import LabelRecord, open_store

DATA = Path(__file__).parent / "data" / "reward_caption_labels.jsonl.gz"


def prepare_store(path: Path, n_pairs: int, seed: int = 0) -> None:
    """Per-caption labels of the embedded model and ``n_pairs`` pairs derived from them."""
    spec = resolve_spec(PromptTemplate(kind="rank", goal="score"), EmbeddedLLM)
    assert isinstance(spec, PairwiseFromPointwise)
    rows = [json.loads(line) for line in gzip.open(DATA, "rt", encoding="utf-8")]
    now = time.time()
    pointwise = {
        r["caption"]: LabelRecord(spec.pointwise.version_hash, MODEL_ID, "classify", r["caption"], None,
                                  r["label"], r["soft_label"], "", 0.0, now)
        for r in rows
    }
    rng = random.Random(seed)
    captions = list(pointwise)
    pairs: dict[tuple[str, str], LabelRecord] = {}
    while len(pairs) < n_pairs:
        a, b = rng.sample(captions, 2)
        first, second = pointwise[a], pointwise[b]
        label, soft = derive_preference((first.label, first.soft_label), (second.label, second.soft_label),
                                        spec.tie_margin)
        pairs[(a, b)] = LabelRecord(spec.version_hash, MODEL_ID, "rank", a, b, label, soft, "", 0.0, now)
    with open_store(path) as store:
        store.put_many(list(pointwise.values()))
        store.put_many(list(pairs.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20_000, help="pair labels in the store")
    parser.add_argument("--motif-steps", type=int, default=2000, help="reward.motif_steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "labels.sqlite"
        prepare_store(store, args.pairs)
        print(f"store: {args.pairs:,} pair labels for {MODEL_ID}", flush=True)
        cmd = [sys.executable, "-m", "kudos", "train", "--reward", "motif", "--store", str(store),
               "--steps", "256", "--output", str(Path(tmp) / "run"), "--set", "run.log_every_s=0",
               "--set", f"reward.motif_steps={args.motif_steps}"]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def show_phases() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if line.strip():
                    print(f"  {time.monotonic() - start:6.1f} s  stderr: {line.strip()}", flush=True)

        reader = threading.Thread(target=show_phases, daemon=True)
        reader.start()
        first_step = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if first_step is None and line.startswith("steps "):
                first_step = time.monotonic() - start
                print(f"  {first_step:6.1f} s  first progress line: {line.strip()}", flush=True)
        proc.wait()
        reader.join(timeout=5)
        if proc.returncode != 0 or first_step is None:
            raise SystemExit(f"kudos train --reward motif failed (exit {proc.returncode})")
        print(f"motif start-up: {first_step:.1f} s from launch to the first training step "
              f"({args.pairs:,} pairs, {args.motif_steps} ranker steps)")


if __name__ == "__main__":
    main()
