"""Versioned, scoring-only snapshots of a reward model: what a learner scores with when the model
trains somewhere else (a reward process, a Ray actor).

A snapshot is a copy of the model that scores exactly as its published weights do and holds no
training state (no optimiser moments, no label dataset), so it pickles small and crosses a
process boundary cheaply. The ``cosine`` reward pickles as its goal and threshold only: the
receiver builds its own sentence encoder. :class:`SnapshotPublisher` numbers snapshots so that a
learner asks "anything newer than what I have?" and gets a copy only when the scores changed.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import uuid
from typing import Any, NamedTuple

from kudos.rewards.base import RewardModel
from kudos.rewards.ensemble import EnsembleReward
from kudos.rewards.learned import LearnedRewardModel
from kudos.rewards.ranker import RankerReward
from kudos.rewards.retrieval import RetrievalReward


def scoring_snapshot(model: RewardModel) -> RewardModel:
    """A copy of ``model`` that scores as its published weights do and holds no training state
    (no optimiser moments, no dataset), frozen, small enough to ship to every learner."""
    if isinstance(model, LearnedRewardModel):
        scorer = type(model)(dataclasses.replace(model.config, average=0.0))  # type: ignore[call-arg]
        # The published weights (what scoring uses now), read once: a concurrent publish()
        # replaces the snapshot object, it never changes one.
        scorer.network.load_state_dict(model._snapshot.network.state_dict())
        scorer.publish()
        scorer.frozen = True
        if isinstance(model, RankerReward):
            # Its rewards are normalised scores: the statistics so far go with it (offline Motif's
            # are fitted and fixed).
            scorer.normalizer.load_state_dict(copy.deepcopy(model.normalizer.state_dict()))
        return scorer
    if isinstance(model, EnsembleReward):
        return EnsembleReward([scoring_snapshot(m) for m in model.members], k=model.k)
    # Retrieval: its state is what it scores with; cosine: its goal.
    return copy.deepcopy(model)


def model_version(model: RewardModel) -> Any:
    """A value that changes whenever ``model``'s scores may have changed (publications, new labels)."""
    if isinstance(model, LearnedRewardModel):
        return model.version
    if isinstance(model, EnsembleReward):
        return tuple(model_version(m) for m in model.members)
    if isinstance(model, RetrievalReward):
        return len(model)
    return 0


class Snapshot(NamedTuple):
    """One published snapshot: the publisher's ``epoch`` (one id per publisher, so a reader
    notices a restarted one), its ``version`` (from 1 within an epoch) and the scoring ``model``."""

    epoch: str
    version: int
    model: RewardModel


class SnapshotPublisher:
    """Hands out snapshots of a training ``model``, a new one only when its scores changed.

    Thread-safe: the model may train in other threads while :meth:`since` copies it.
    """

    def __init__(self, model: RewardModel) -> None:
        self.model = model
        self.epoch = uuid.uuid4().hex
        self.version = 0
        self._key: Any = object()
        self._snapshot: RewardModel | None = None
        self._lock = threading.Lock()

    def since(self, epoch: str | None, version: int) -> Snapshot | None:
        """The newest snapshot if it is newer than (``epoch``, ``version``), else None."""
        with self._lock:
            key = model_version(self.model)
            if key != self._key:
                self._snapshot = scoring_snapshot(self.model)
                self._key = key
                self.version += 1
            if epoch == self.epoch and version >= self.version:
                return None
            assert self._snapshot is not None
            return Snapshot(self.epoch, self.version, self._snapshot)
