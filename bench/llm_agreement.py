"""Agreement of the embedded LLM with our hand labels (tests/data/hand_labels.jsonl).

Scores every hand-labelled caption with the short classification prompt (one forward pass,
P("1") against P("0")), thresholds P(helpful) at 0.5 and prints the agreement, the confusion
counts and every disagreement with its probability and our reason for the label.

    python bench/llm_agreement.py [--goal score] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HAND_LABELS = Path(__file__).resolve().parent.parent / "tests" / "data" / "hand_labels.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--goal", default="score", help="goal preset of the prompt (the labels assume 'score')")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    args = parser.parse_args()

    from kudos.feedback.embedded import EmbeddedLLM
    from kudos.feedback.prompts import PromptTemplate

    rows = [json.loads(line) for line in HAND_LABELS.read_text().splitlines()]
    template = PromptTemplate(goal=args.goal)
    llm = EmbeddedLLM(threads=args.threads)
    start = time.perf_counter()
    replies = llm.generate([template.request(r["caption"]) for r in rows])
    elapsed = time.perf_counter() - start

    confusion = {(truth, pred): 0 for truth in (0, 1) for pred in (0, 1)}
    misses = []
    for row, reply in zip(rows, replies):
        assert reply.p_positive is not None
        predicted = int(reply.p_positive > 0.5)
        confusion[(row["label"], predicted)] += 1
        if predicted != row["label"]:
            misses.append((reply.p_positive, row))
    agree = confusion[(0, 0)] + confusion[(1, 1)]
    print(f"model {llm.model_id}, prompt {template.kind}/{template.goal}/{template.format} {template.version_hash[:12]}")
    print(f"agreement with hand labels: {agree}/{len(rows)} = {agree / len(rows):.1%}")
    print(
        f"hand 1 -> model 1: {confusion[(1, 1)]}, hand 1 -> model 0: {confusion[(1, 0)]}, "
        f"hand 0 -> model 0: {confusion[(0, 0)]}, hand 0 -> model 1: {confusion[(0, 1)]}"
    )
    print(f"{len(rows) / elapsed:.2f} labels/s with {args.threads} thread(s) (first label evaluates the whole prompt)")
    for p, row in misses:
        print(f"  P(helpful)={p:.2f} hand={row['label']} {row['caption']!r} ({row['reason']})")


if __name__ == "__main__":
    main()
