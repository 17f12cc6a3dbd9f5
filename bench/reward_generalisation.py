"""Does the classifier generalise? Accuracy on captions never seen in training, with labels from
the embedded LLM on captions from real NetHack play.

Stages (each reused when its output exists, so a rerun asks the LLM nothing twice):

1. collect: random agents (uniform, and one biased towards moving, which explores further) play
   several kudos tasks with real NLE; every caption and how often it was seen is kept.
2. label: the distinct non-empty captions, in a seeded random order and at most
   ``--max-captions`` of them (a larger value extends the same list), are labelled by the embedded
   LLM (``kudos.feedback``: short classification prompt, "score" goal) through a SQLite label
   store, and written to ``bench/data/reward_caption_labels.jsonl.gz`` (LLM labels, not hand
   labels; gzipped JSON lines).
   When kudos's prompt or embedded model has changed since the file was written, its labels are
   stale and this stage runs again.
3. evaluate: captions are split (by caption) into training and held-out; the classifier is trained
   on the training captions only and scored on the held-out ones against the LLM's 1/0 answers,
   next to retrieval (which can only score 0 on captions it has not seen) and the majority-class
   baseline. Variants: char-CNN or MiniLM features, class balancing, and training on the LLM's
   answers (1/0) or on its answer probabilities ("soft"; their 0.5 threshold is the answer).
   Variants also show what the wider network and the weight averaging add to the previous default.
   Then a learning curve, and the default and the previous default cross-validated over all
   captions (``--folds``), which measures the same accuracy on every caption instead of a quarter
   of them.

``--select`` chooses the classifier's settings without reading the held-out captions: the training
captions are split again by caption hash into three folds, each candidate in ``CANDIDATES`` is
trained (soft labels) on two folds and scored on the third, for every seed, and the mean of those
inner accuracies is printed. Only a candidate chosen this way is then scored on the held-out
captions (see docs/rewards.md for the last selection).

Run: ``.venv/bin/python bench/reward_generalisation.py`` (collecting takes about ten seconds;
labelling the ~5,200 distinct captions takes ~20 minutes at ~4-5 labels/s on 2 cores, once;
evaluation alone takes about an hour with ``--seeds 3``).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kudos.envs import make_env
from kudos.feedback.model_files import MODEL_ID
from kudos.feedback.prompts import PromptTemplate
from kudos.rewards import CaptionLabel, ClassifierConfig, ClassifierReward, RetrievalReward
from kudos.rewards.dataset import in_validation

DATA = Path(__file__).parent / "data" / "reward_caption_labels.jsonl.gz"
TASKS = ("Score", "Gold", "Eat", "Scout", "Staircase", "Oracle", "Challenge")
_MOVES = 16  # the first 16 actions of the extended set are the 8 compass moves and 8 long moves

log = logging.getLogger("reward_generalisation")


def collect_captions(steps_per_task: int, seed: int) -> collections.Counter[str]:
    """Play ``steps_per_task`` steps of each task with random agents; count every caption."""
    counts: collections.Counter[str] = collections.Counter()
    rng = np.random.default_rng(seed)
    for t, task in enumerate(TASKS):
        env = make_env(task, observation_keys=("blstats", "message"))
        env.reset(seed=seed + t)
        n = env.action_space.n
        for step in range(steps_per_task):
            explorer = step % 2 == 0  # alternate agents per step: uniform, and move-biased
            if explorer and rng.random() < 0.75:
                action = int(rng.integers(_MOVES))
            else:
                action = int(rng.integers(n))
            _, _, terminated, truncated, info = env.step(action)
            counts[info["caption"]] += 1
            if terminated or truncated:
                env.reset()
        env.close()
        log.info("%s: %d distinct captions so far", task, len(counts))
    return counts


#: The question the captions are labelled with: kudos's short classification prompt, "score" goal.
TEMPLATE = PromptTemplate(kind="classify", goal="score", format="short")


def read_data() -> list[dict[str, Any]]:
    """The rows of ``DATA``: caption, label (1/0), soft_label (P(helpful)), seen, prompt_hash, model_id."""
    return [json.loads(line) for line in gzip.decompress(DATA.read_bytes()).decode("utf-8").splitlines() if line.strip()]


def stale_labels() -> str | None:
    """Why the labels in ``DATA`` are not what kudos's current prompt and embedded model would
    give (None when they are)."""
    first = read_data()[0]
    if first["prompt_hash"] != TEMPLATE.version_hash:
        return f"labelled with prompt {first['prompt_hash'][:12]}, kudos now asks {TEMPLATE.version_hash[:12]}"
    if first["model_id"] != MODEL_ID:
        return f"labelled by {first['model_id']}, kudos's embedded model is now {MODEL_ID}"
    return None


def label_captions(
    captions: list[str], store_path: Path, threads: int
) -> tuple[dict[str, tuple[int, float | None]], dict[str, str]]:
    """LLM labels (1/0, P(helpful)) of ``captions``, asked through a label store at ``store_path``,
    and the prompt hash and model id they were asked with. "Unknown" answers are left out."""
    from kudos.commands.annotate import annotate_items
    from kudos.feedback.labeler import Labeler
    from kudos.feedback.embedded import EmbeddedLLM
    from kudos.feedback.store import open_store

    llm = EmbeddedLLM(threads=threads)
    try:
        with open_store(store_path) as store:
            labeler = Labeler(llm, TEMPLATE, store)
            summary = annotate_items(captions, store, labeler)
            log.info("labelled %d (already stored %d) in %.0f s",
                     summary.labelled, summary.already_stored, summary.seconds)
            records = store.get_many(labeler.prompt_hash, labeler.model_id, captions)
            meta = {"prompt_hash": labeler.prompt_hash, "model_id": labeler.model_id}
    finally:
        llm.close()
    return {c: (r.label, r.soft_label) for c, r in records.items() if r.label is not None}, meta


def build_dataset(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    counts = collect_captions(args.steps_per_task, args.seed)
    distinct = sorted(c for c in counts if c)
    log.info("collected %d steps, %d distinct non-empty captions in %.0f s",
             sum(counts.values()), len(distinct), time.perf_counter() - start)
    random.Random(args.seed).shuffle(distinct)
    sample = distinct[: args.max_captions]
    labels, meta = label_captions(sample, args.store, args.threads)
    DATA.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for caption in sample:
        if caption in labels:
            label, soft = labels[caption]
            row = {"caption": caption, "label": label, "soft_label": soft, "seen": counts[caption], **meta}
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    tmp = DATA.with_name(DATA.name + ".tmp")
    tmp.write_bytes(gzip.compress("".join(lines).encode("utf-8"), mtime=0))  # mtime 0: same labels, same bytes
    tmp.replace(DATA)
    log.info("wrote %d labelled captions to %s", len(labels), DATA)


#: The default classifier before the wider network and weight averaging (for comparison).
PREVIOUS_DEFAULT: dict[str, Any] = {"channels": 64, "hidden": 64, "average": 0.0}

#: Variants of the classifier that are evaluated: (overrides of ``ClassifierConfig()``, train on
#: the LLM's answer probabilities rather than its 1/0 answers). The first is the default.
VARIANTS: tuple[tuple[dict[str, Any], bool], ...] = (
    ({}, True),
    ({"average": 0.0}, True),
    (PREVIOUS_DEFAULT, True),
    ({"balance": "sample"}, False),
    ({"balance": "sample"}, True),
    ({"balance": "none"}, True),
    ({"encoder": "minilm", "balance": "sample"}, True),
)


#: Classifier settings (overrides of ``ClassifierConfig()``) compared by ``--select``.
CANDIDATES: tuple[dict[str, Any], ...] = (
    {},
    {"average": 0.0},
    PREVIOUS_DEFAULT,
    {"channels": 128, "hidden": 128},
)

#: Classifiers cross-validated over all captions (``--folds``): the default and the previous one.
CROSS_VALIDATED: tuple[dict[str, Any], ...] = ({}, PREVIOUS_DEFAULT)


#: Shares of the training captions the default classifier is also trained on (learning curve).
CURVE_SHARES = (0.25, 0.5)


def read_rows(held_out: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Labelled captions split by caption hash: (training rows, held-out rows)."""
    rows = read_data()
    held = [in_validation((r["caption"],), held_out) for r in rows]
    return [r for r, h in zip(rows, held) if not h], [r for r, h in zip(rows, held) if h]


#: The LLM is undecided about a caption when its own P(helpful) lies in this range.
UNDECIDED = (0.35, 0.65)


def undecided(row: dict[str, Any]) -> bool:
    return UNDECIDED[0] <= row["soft_label"] <= UNDECIDED[1]


def message_order_agreement(rows: list[dict[str, Any]]) -> tuple[int, float, float]:
    """On the captions of several sentences whose every sentence is also a labelled caption: their
    number, and how often the LLM's 1/0 answer for the caption is its answer for the last
    sentence, and for the first (sentences end at ".", "!" or "?" and a space: kudos joins the
    messages of one step with a space)."""
    label = {r["caption"]: r["label"] for r in rows}
    split = {c: re.split(r"(?<=[.!?]) ", c) for c in label}
    covered = [c for c, parts in split.items() if len(parts) > 1 and all(p in label for p in parts)]
    last = np.mean([label[c] == label[split[c][-1]] for c in covered])
    first = np.mean([label[c] == label[split[c][0]] for c in covered])
    return len(covered), float(last), float(first)


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` captions."""
    return float(np.sqrt(accuracy * (1 - accuracy) / n))


def held_out_accuracy(config: ClassifierConfig, train_rows: list[dict[str, Any]], test_rows: list[dict[str, Any]],
                      soft: bool, steps: int) -> tuple[float, float, float]:
    """Train on ``train_rows``, score ``test_rows`` against the LLM's answers: (accuracy, balanced
    accuracy, accuracy on the captions the LLM was decided about, see ``UNDECIDED``)."""
    model = ClassifierReward(config)
    model.fit([CaptionLabel(r["caption"], float(r["soft_label"] if soft else r["label"])) for r in train_rows],
              steps=steps)
    y = np.array([r["label"] == 1 for r in test_rows])
    decided = ~np.array([undecided(r) for r in test_rows])
    correct = (model([r["caption"] for r in test_rows]) >= 0.5) == y
    return float(np.mean(correct)), 0.5 * float(np.mean(correct[y]) + np.mean(correct[~y])), float(np.mean(correct[decided]))


def caption_folds(rows: list[dict[str, Any]], start: float, k: int) -> list[list[dict[str, Any]]]:
    """``rows`` split by caption into ``k`` fixed, disjoint folds: fold i holds the captions whose
    hash bucket lies in the i-th k-th of the buckets from ``start`` up (``in_validation(c, f)`` is
    "bucket < f"; the buckets below ``start`` are the held-out captions)."""
    edges = [start + (1 - start) * i / k for i in range(k + 1)]
    return [[r for r in rows if in_validation((r["caption"],), edges[i + 1])
             and not in_validation((r["caption"],), edges[i])] for i in range(k)]


def cross_validated_accuracy(rows: list[dict[str, Any]], k: int, seed: int, steps: int,
                             overrides: dict[str, Any] | None = None) -> float:
    """Accuracy of the classifier (``ClassifierConfig(**overrides)``, default settings if None) over
    all ``rows``, each scored by the model trained on the other ``k - 1`` folds (so it never saw
    that caption): ``k`` times the held-out captions of one split, hence a smaller sampling error."""
    folds = caption_folds(rows, 0.0, k)
    config = ClassifierConfig(seed=seed, **(overrides or {}))
    correct = sum(held_out_accuracy(config, [r for j, f in enumerate(folds) if j != i for r in f],
                                    fold, soft=True, steps=steps)[0] * len(fold) for i, fold in enumerate(folds))
    return correct / sum(len(f) for f in folds)


def select(args: argparse.Namespace) -> None:
    train_rows, _ = read_rows(args.held_out)  # the held-out rows are not looked at
    folds = caption_folds(train_rows, args.held_out, 3)
    print(f"selection: {len(train_rows)} training captions in folds of {[len(f) for f in folds]}; "
          f"held-out captions not read; {args.steps} steps, soft labels, seeds 0-{args.seeds - 1}")
    for overrides in CANDIDATES:
        accs = []
        for k, fold in enumerate(folds):
            inner_train = [r for j, f in enumerate(folds) if j != k for r in f]
            for seed in range(args.seeds):
                accs.append(held_out_accuracy(ClassifierConfig(seed=seed, **overrides), inner_train, fold,
                                              soft=True, steps=args.steps)[0])
        print(f"candidate {overrides}: inner accuracy {100 * np.mean(accs):.1f}% (min {100 * np.min(accs):.1f}%)")


def evaluate(args: argparse.Namespace) -> None:
    train_rows, held_rows = read_rows(args.held_out)
    rows = train_rows + held_rows
    held_out = [r["caption"] for r in held_rows]
    assert not set(held_out) & {r["caption"] for r in train_rows}
    y = np.array([r["label"] == 1 for r in held_rows])
    print(f"data: {len(rows)} captions from real NLE play labelled by the embedded LLM ({rows[0]['model_id']}), "
          f"{100 * np.mean([r['label'] == 1 for r in rows]):.1f}% helpful; "
          f"{len(train_rows)} training captions, {len(held_rows)} held-out captions never seen in training")
    print(f"majority-class baseline on held-out: {100 * max(np.mean(y), 1 - np.mean(y)):.1f}%; an accuracy near 90% "
          f"on {len(held_rows)} captions has a sampling error of +-{100 * standard_error(0.9, len(held_rows)):.1f} points")
    undecided_share = np.mean([undecided(r) for r in held_rows])
    print(f"the LLM was undecided (P(helpful) in {UNDECIDED}) about {100 * undecided_share:.0f}% of held-out captions; "
          "their 1/0 answers are close to coin flips")
    covered, last, first = message_order_agreement(rows)
    print(f"on {covered} captions of several messages, each also labelled alone, the LLM's answer is its answer "
          f"for the last message in {100 * last:.0f}% of cases, for the first in {100 * first:.0f}%")
    retrieval = RetrievalReward()
    retrieval.fit([CaptionLabel(r["caption"], float(r["label"])) for r in train_rows])
    scored = retrieval(held_out)
    print(f"retrieval: scores {100 * np.mean(scored != 0):.1f}% of held-out captions (0 by design); "
          f"accuracy if 0 is read as 'not helpful': {100 * np.mean((scored >= 0.5) == y):.1f}%")
    for overrides, soft in VARIANTS:
        accs, balanced, decided = [], [], []
        for seed in range(args.seeds):
            start = time.perf_counter()
            accuracy, balanced_accuracy, decided_accuracy = held_out_accuracy(
                ClassifierConfig(seed=seed, **overrides), train_rows, held_rows, soft, args.steps)
            accs.append(accuracy)
            balanced.append(balanced_accuracy)
            decided.append(decided_accuracy)
            log.info("%s %s seed %d: %.1f%% in %.0f s", overrides or "default", "soft" if soft else "hard", seed,
                     100 * accs[-1], time.perf_counter() - start)
        print(f"classifier {overrides or 'default'}, {'soft' if soft else 'hard'} labels "
              f"({args.steps} steps, {args.seeds} seeds): held-out accuracy {100 * np.mean(accs):.1f}% "
              f"(min {100 * np.min(accs):.1f}%), balanced accuracy {100 * np.mean(balanced):.1f}%, "
              f"{100 * np.mean(decided):.1f}% where the LLM was decided")
    # Learning curve of the default classifier: the same held-out captions, fewer training ones.
    for share in CURVE_SHARES:
        subset = random.Random(args.seed).sample(train_rows, int(share * len(train_rows)))
        accs = [held_out_accuracy(ClassifierConfig(seed=seed), subset, held_rows, True, args.steps)[0]
                for seed in range(args.seeds)]
        print(f"default classifier trained on {len(subset)} of the {len(train_rows)} training captions: "
              f"held-out accuracy {100 * np.mean(accs):.1f}% (min {100 * np.min(accs):.1f}%)")
    for overrides in CROSS_VALIDATED if args.folds else ():
        accs = [cross_validated_accuracy(rows, args.folds, seed, args.steps, overrides) for seed in range(args.seeds)]
        print(f"classifier {overrides or 'default'}, {args.folds}-fold cross-validation by caption over all "
              f"{len(rows)} captions (each scored by a model that never saw it): accuracy {100 * np.mean(accs):.2f}% "
              f"(seeds: {', '.join(f'{100 * a:.2f}%' for a in accs)}; sampling error of one seed "
              f"+-{100 * standard_error(float(np.mean(accs)), len(rows)):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true", help="collect and label again even if the data file exists")
    parser.add_argument("--steps-per-task", type=int, default=30_000)
    parser.add_argument("--max-captions", type=int, default=6_000,
                        help="label at most this many distinct captions (the default covers all of them)")
    parser.add_argument("--store", type=Path, default=Path.home() / ".cache" / "kudos" / "bench_reward_labels.sqlite")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads for labelling")
    parser.add_argument("--held-out", type=float, default=0.25, help="share of captions held out")
    parser.add_argument("--steps", type=int, default=2_000, help="classifier training steps")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=4,
                        help="folds of the cross-validation over all captions (CROSS_VALIDATED; 0: skip)")
    parser.add_argument("--select", action="store_true",
                        help="compare CANDIDATES on folds of the training captions only (no held-out scoring)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    args.store.parent.mkdir(parents=True, exist_ok=True)
    stale = DATA.exists() and stale_labels()
    if stale:
        log.info("%s is stale (%s): collecting and labelling again", DATA, stale)
    if args.rebuild or stale or not DATA.exists():
        build_dataset(args)
    if args.select:
        select(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
