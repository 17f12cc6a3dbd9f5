"""ONI-Retrieval: the LLM's label of the exact caption; 0 for captions not labelled yet.

It is exact and instant but cannot generalise: a caption the LLM has not labelled earns nothing
until its label arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from kudos.rewards.base import CaptionLabel, Label, LabelKind, RewardModel, caption_error, check_captions, check_labels


class RetrievalReward(RewardModel):
    """Caption -> label value lookup table.

    Args:
        binary: reward 1.0 for labels >= 0.5 and 0.0 otherwise, instead of the label's value.
        seen_limit: unlabelled captions remembered as valid (so they are type-checked once)
            before that memory is emptied.

    :meth:`fit` may run in one thread while another scores: the table only gains or changes
    entries, one dictionary assignment at a time.
    """

    learns_from: ClassVar[LabelKind] = "caption"

    def __init__(self, binary: bool = False, seen_limit: int = 1_000_000) -> None:
        self.binary = binary
        self.seen_limit = seen_limit
        self.table: dict[str, float] = {}
        self._seen_unlabelled: set[str] = set()

    def __len__(self) -> int:
        return len(self.table)

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        if isinstance(captions, (str, bytes)):
            check_captions(captions)
        try:
            values = list(map(self.table.get, captions))
        except TypeError:  # an unhashable element
            check_captions(captions)
            raise
        if None in values:
            seen = self._seen_unlabelled
            if len(seen) > self.seen_limit:
                seen.clear()
            for i, value in enumerate(values):
                if value is None:
                    caption = captions[i]
                    if caption not in seen:
                        if not isinstance(caption, str):
                            raise caption_error(i, caption)
                        seen.add(caption)
                    values[i] = 0.0
        return np.array(values, dtype=np.float32)

    def fit(self, labels: Iterable[Label]) -> None:
        for label in check_labels(labels, "caption"):
            if isinstance(label, CaptionLabel):  # always, after check_labels
                self.table[label.caption] = float(label.value >= 0.5) if self.binary else float(label.value)

    def state_dict(self) -> dict[str, Any]:
        return {"table": dict(self.table), "binary": self.binary}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.binary = bool(state["binary"])
        self.table = dict(state["table"])
