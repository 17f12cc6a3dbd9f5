"""Where reward models get their labels from: a small cursor interface over label streams.

:class:`LabelSource` is what the online trainer reads: "the labels after cursor ``c``, and the
cursor after them". Two sources implement it:

- :class:`StoreLabelSource` reads a label store (``kudos.feedback.store``) for one prompt
  template and LLM, in commit order, so nothing is missed or read twice;
- :class:`LabelQueue` is an in-memory stream that anything can push labels into (a test, a
  script, an annotator subscriber).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Protocol

from kudos.rewards.base import CaptionLabel, Label, PairLabel


class LabelSource(Protocol):
    """A stream of labels with increasing integer cursors (0 = before the first label)."""

    def read(self, since: int, limit: int) -> tuple[list[Label], int]:
        """At most ``limit`` labels after cursor ``since``, and the cursor after the last one
        returned (``since`` itself when there are none)."""
        ...


class StoredLabel(Protocol):
    """The fields of a label-store record this module reads (``kudos.feedback.store.LabelRecord``)."""

    id: int | None
    caption: str
    caption2: str | None
    label: int | None
    soft_label: float | None


class LabelRecords(Protocol):
    """The part of ``kudos.feedback.store.LabelStore`` this module uses."""

    def labels(
        self, prompt_hash: str, model_id: str, since_id: int = 0, limit: int | None = None
    ) -> Sequence[StoredLabel]: ...


def record_to_label(record: StoredLabel, soft: bool) -> Label | None:
    """A store record as a reward-model label; None for an unreadable ("unknown") answer.

    Classification records hold 1 (helpful) or 0; pair records hold 1 (first better), 2 (second
    better) or 0 (tie). ``soft``: use the answer-token probability when the record has one.
    """
    probability = record.soft_label if soft else None
    if record.caption2 is None:
        if record.label is None and probability is None:
            return None
        return CaptionLabel(record.caption, float(probability if probability is not None else record.label))
    if probability is None:
        if record.label not in (0, 1, 2):
            return None
        probability = {1: 1.0, 2: 0.0, 0: 0.5}[record.label]
    return PairLabel(record.caption, record.caption2, float(probability))


class StoreLabelSource:
    """Labels of one (prompt template hash, LLM model id) in a label store, in commit order.

    Args:
        store: a ``kudos.feedback.store.LabelStore`` (or anything with its ``labels`` method).
        prompt_hash: ``template.version_hash`` of the prompt the labels answer.
        model_id: the LLM's model id.
        soft: train on the LLM's answer probabilities instead of its parsed answers, where stored.
    """

    def __init__(self, store: LabelRecords, prompt_hash: str, model_id: str, soft: bool = False) -> None:
        self.store = store
        self.prompt_hash = prompt_hash
        self.model_id = model_id
        self.soft = soft

    def read(self, since: int, limit: int) -> tuple[list[Label], int]:
        records = self.store.labels(self.prompt_hash, self.model_id, since_id=since, limit=limit)
        labels = [label for label in (record_to_label(r, self.soft) for r in records) if label is not None]
        last = records[-1].id if records else None
        return labels, since if last is None else int(last)


class LabelQueue:
    """An in-memory label stream (thread-safe): :meth:`put` appends, :meth:`read` follows.

    The cursor is the number of labels put before; ``put`` can be registered as an annotator
    subscriber so that new labels reach an online trainer without a store round trip.
    """

    def __init__(self, labels: Iterable[Label] = ()) -> None:
        self._labels: list[Label] = list(labels)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._labels)

    def put(self, labels: Iterable[Label]) -> None:
        batch = list(labels)
        with self._lock:
            self._labels.extend(batch)

    def read(self, since: int, limit: int) -> tuple[list[Label], int]:
        with self._lock:
            batch = self._labels[since : since + limit]
        return batch, since + len(batch)
