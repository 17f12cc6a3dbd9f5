"""The labels a learned reward model trains on, split into training and validation by caption.

A label's split is a pure function of its text (a CRC32 hash), so a caption is in the same split
in every run and every process, and validation captions are never trained on. A caption (or
pair) labelled again keeps its row and takes the newest value.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from kudos.errors import ConfigError
from kudos.rewards.base import CaptionLabel, Label, LabelKind, check_labels

_SPLIT_BUCKETS = 10_000


def in_validation(texts: tuple[str, ...], fraction: float) -> bool:
    """Whether the label of ``texts`` (one caption or a pair) belongs to the validation split."""
    key = "\0".join(texts).encode("utf-8", errors="surrogatepass")
    return zlib.crc32(key) % _SPLIT_BUCKETS < fraction * _SPLIT_BUCKETS


class LabelDataset:
    """Labels of one kind, deduplicated by text.

    Args:
        kind: ``"caption"`` (rows are one caption) or ``"pair"`` (rows are two captions).
        validation_fraction: share of texts held out for validation, in [0, 1).
    """

    def __init__(self, kind: LabelKind, validation_fraction: float = 0.1) -> None:
        if not 0.0 <= validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
        self.kind = kind
        self.validation_fraction = validation_fraction
        self.texts: list[tuple[str, ...]] = []
        self.values: list[float] = []
        self.validation: list[bool] = []
        self._rows: dict[tuple[str, ...], int] = {}
        self._split: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, labels: Iterable[Label]) -> int:
        """Add (or relabel) rows; returns how many rows are new."""
        added = 0
        for label in check_labels(labels, self.kind):
            if isinstance(label, CaptionLabel):
                texts, value = (label.caption,), label.value
            else:
                texts, value = (label.first, label.second), label.preference
            row = self._rows.get(texts)
            if row is None:
                self._rows[texts] = len(self.texts)
                self.texts.append(texts)
                self.values.append(float(value))
                self.validation.append(in_validation(texts, self.validation_fraction))
                added += 1
            else:
                self.values[row] = float(value)
        self._split = None
        return added

    def split(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row indices ``(train, validation, train_positive)``; positives have value >= 0.5."""
        if self._split is None:
            is_val = np.asarray(self.validation, dtype=bool)
            positive = np.asarray(self.values, dtype=np.float32) >= 0.5
            rows = np.arange(len(self.texts))
            self._split = (rows[~is_val], rows[is_val], rows[~is_val & positive])
        return self._split

    def rows(self, index: np.ndarray) -> tuple[list[tuple[str, ...]], np.ndarray]:
        """Texts and float32 values of the rows in ``index``."""
        values = np.asarray(self.values, dtype=np.float32)[index]
        return [self.texts[i] for i in index], values

    def sample(self, rng: np.random.Generator, batch_size: int, balanced: bool) -> np.ndarray:
        """Indices of ``batch_size`` training rows drawn with replacement.

        ``balanced``: half the batch from positive rows and half from the others, when both
        exist (helpful captions are rare, so uniform batches would hold few of them).
        """
        train, _, positive = self.split()
        if len(train) == 0:
            raise ValueError("no training labels yet")
        if balanced and 0 < len(positive) < len(train):
            negative = np.setdiff1d(train, positive, assume_unique=True)
            half = batch_size // 2
            return np.concatenate(
                [rng.choice(positive, size=half), rng.choice(negative, size=batch_size - half)]
            )
        return rng.choice(train, size=batch_size)

    def positive_fraction(self) -> float:
        """Share of training rows that are positive (0.0 when there are none)."""
        train, _, positive = self.split()
        return len(positive) / len(train) if len(train) else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "validation_fraction": self.validation_fraction,
            "texts": [list(t) for t in self.texts],
            "values": list(self.values),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind:
            raise ConfigError(f"saved labels are {state['kind']} labels; this model learns from {self.kind} labels")
        self.validation_fraction = float(state["validation_fraction"])
        self.texts = [tuple(t) for t in state["texts"]]
        self.values = [float(v) for v in state["values"]]
        self._rows = {t: i for i, t in enumerate(self.texts)}
        self.validation = [in_validation(t, self.validation_fraction) for t in self.texts]
        self._split = None
