"""Reward models: each learns a separable toy labelling, BT loss, ties, normalisation, state
round trips and malformed inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from kudos.errors import KudosError
from kudos.rewards import (
    CaptionError,
    CaptionLabel,
    ClassifierConfig,
    ClassifierReward,
    EnsembleReward,
    FrozenModelError,
    LabelError,
    LabelQueue,
    RewardModelTrainer,
    PairLabel,
    RankerConfig,
    RankerReward,
    RetrievalReward,
    RewardModel,
    bradley_terry_loss,
    train_offline_motif,
)
from kudos.rewards.encoders import CharCNN, caption_bytes
from kudos.rewards.shaping import NormalizerConfig

ITEMS = ["gold pieces", "a dagger", "an apple", "a scroll", "gems", "a wand", "a ring", "armor"]
PLACES = ["here", "there", "on the altar", "in the corner", "below", "nearby"]


def _good(i: int) -> str:
    return f"You pick up {ITEMS[i % len(ITEMS)]} {PLACES[i // len(ITEMS) % len(PLACES)]} ({i})."


def _bad(i: int) -> str:
    return f"The {ITEMS[i % len(ITEMS)]} crumbles {PLACES[i // len(ITEMS) % len(PLACES)]} ({i})."


def _caption_labels(indices: range, positive_every: int = 2) -> list[CaptionLabel]:
    """Helpful iff the caption is a pick-up; every ``positive_every``-th label is helpful."""
    return [
        CaptionLabel(_good(i), 1.0) if i % positive_every == 0 else CaptionLabel(_bad(i), 0.0) for i in indices
    ]


def _held_out_accuracy(model: RewardModel, indices: range) -> tuple[float, float]:
    good = model([_good(i) for i in indices])
    bad = model([_bad(i) for i in indices])
    return float(np.mean(good >= 0.5)), float(np.mean(bad < 0.5))


def _round_trip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint file goes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --- retrieval ---------------------------------------------------------------------------------


def test_retrieval_returns_labels_of_exact_captions_and_zero_otherwise():
    model = RetrievalReward()
    model.fit([CaptionLabel("You find a gem.", 1.0), CaptionLabel("It's a wall.", 0.0), CaptionLabel("x", 0.7)])
    rewards = model(["You find a gem.", "It's a wall.", "You find a gem!", "", "x"])
    assert rewards.dtype == np.float32
    np.testing.assert_array_equal(rewards, np.array([1.0, 0.0, 0.0, 0.0, 0.7], dtype=np.float32))
    binary = RetrievalReward(binary=True)
    binary.fit([CaptionLabel("x", 0.7), CaptionLabel("y", 0.2)])
    np.testing.assert_array_equal(binary(["x", "y"]), [1.0, 0.0])


def test_retrieval_learns_the_toy_labelling_but_not_unseen_captions():
    model = RetrievalReward()
    model.fit(_caption_labels(range(200)))
    seen_good, seen_bad = _held_out_accuracy(model, range(0, 200, 2))
    assert seen_good == 1.0 and seen_bad == 1.0
    assert np.all(model([_good(i) for i in range(1000, 1100)]) == 0.0)  # never seen: no reward


# --- classification ----------------------------------------------------------------------------


@pytest.mark.parametrize("balance", ["sample", "weight"])
def test_classifier_generalises_to_captions_never_seen(balance):
    model = ClassifierReward(ClassifierConfig(balance=balance, seed=1))
    # Rare positives (1 in 8), as helpful captions are in NetHack.
    model.fit(_caption_labels(range(400), positive_every=8), steps=250)
    good, bad = _held_out_accuracy(model, range(5000, 5200))
    assert good >= 0.95, f"recall on unseen helpful captions {good:.2f}"
    assert bad >= 0.95, f"specificity on unseen unhelpful captions {bad:.2f}"
    assert model.accuracy("validation") >= 0.95


def test_class_weights_scale_whole_rows_of_the_rare_class():
    model = ClassifierReward(ClassifierConfig(balance="weight", dropout=0.0))  # deterministic logits
    model.add_labels(_caption_labels(range(40), positive_every=4))  # 1 in 4 helpful
    texts = [(_bad(1),), (_good(0),), (_bad(2),)]
    targets = torch.tensor([0.1, 0.9, 0.0])  # soft labels: negatives keep a little positive mass
    logits = model.network.score([t[0] for t in texts])
    share = model.dataset.positive_fraction()
    weights = torch.tensor([1.0, (1 - share) / share, 1.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, weight=weights)
    torch.testing.assert_close(model.loss(texts, targets), expected)


def test_classifier_pays_onis_binary_reward_by_default_strictly_above_the_threshold():
    # ONI: (softmax[:, 1] > classification_threshold=0.5).float(); P = 0.5 exactly earns nothing.
    model = ClassifierReward()
    assert (model.config.output, model.config.threshold) == ("binary", 0.5)
    values = np.array([0.5, np.nextafter(np.float32(0.5), np.float32(1.0)), 0.4999, 0.98], dtype=np.float32)
    np.testing.assert_array_equal(model.to_reward(values), [0.0, 1.0, 0.0, 1.0])
    probability = ClassifierReward(ClassifierConfig(output="probability"))
    np.testing.assert_array_equal(probability.to_reward(values), values)


def test_classifier_binary_output_thresholds_the_probability():
    model = ClassifierReward(ClassifierConfig(output="binary", threshold=0.5))
    model.fit(_caption_labels(range(200)), steps=150)
    rewards = model([_good(7001), _bad(7002), _good(7003)])
    assert set(np.unique(rewards).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(rewards, [1.0, 0.0, 1.0])


def test_feature_dropout_acts_in_training_only():
    model = ClassifierReward(ClassifierConfig(dropout=0.5))
    captions = [_good(i) for i in range(32)]
    model.network.train()
    assert not torch.equal(model.network.score(captions), model.network.score(captions))
    model.network.eval()
    torch.testing.assert_close(model.network.score(captions), model.network.score(captions), rtol=0, atol=0)
    model.publish()  # scoring uses the published (evaluation-mode) copy: deterministic
    np.testing.assert_array_equal(model.raw_scores(captions), model.raw_scores(captions))


def test_published_weights_are_the_moving_average_of_the_training_weights():
    model = ClassifierReward(ClassifierConfig(seed=3, average=0.9, output="probability"))
    model.add_labels(_caption_labels(range(40)))
    expected = [p.detach().clone() for p in model.network.parameters()]
    for step in range(1, 31):
        model.train_step()
        decay = min(0.9, step / (9 + step))  # (1 + t) / (10 + t) for the t-th step, from 0
        expected = [e + (1 - decay) * (p.detach() - e) for e, p in zip(expected, model.network.parameters())]
    model.publish()
    for average, e in zip(model.published_weights.parameters(), expected):
        torch.testing.assert_close(average, e)
    captions = [_good(i) for i in range(8)] + [_bad(i) for i in range(8)]
    with torch.inference_mode():
        averaged = torch.sigmoid(model.published_weights.score(captions)).numpy()
        latest = torch.sigmoid(model.network.eval().score(captions)).numpy()
    np.testing.assert_allclose(model(captions), averaged, rtol=1e-6)
    assert not np.allclose(averaged, latest, rtol=1e-3)
    assert model.accuracy("train") is not None

    plain = ClassifierReward(ClassifierConfig(seed=3, average=0.0))
    plain.fit(_caption_labels(range(40)), steps=5)
    assert plain.published_weights is plain.network
    for published, trained in zip(plain._snapshot.network.parameters(), plain.network.parameters()):
        assert torch.equal(published, trained)
    # A checkpoint written without averaging starts the average at its training weights.
    resumed = ClassifierReward(ClassifierConfig(seed=3, average=0.9))
    resumed.load_state_dict(_round_trip(plain.state_dict()))
    for average, trained in zip(resumed.published_weights.parameters(), plain.network.parameters()):
        assert torch.equal(average, trained)
    with pytest.raises(KudosError, match=r"average must be in \[0, 1\)"):
        ClassifierConfig(average=1.0)


def test_classifier_scores_are_cached_per_snapshot():
    model = ClassifierReward()
    model.fit(_caption_labels(range(64)), steps=5)
    first = model(["a", "b", "a"])
    assert first[0] == first[2]
    assert set(model._snapshot.cache) == {"a", "b"}
    version = model.version
    model.train_step()
    np.testing.assert_array_equal(model(["a", "b"]), first[:2])  # not published yet: same weights
    model.publish()
    assert model.version == version + 1 and model._snapshot.cache == {}


@pytest.mark.parametrize("pooling", ["max", "meanmax"])
def test_char_cnn_features_do_not_depend_on_batch_padding(pooling):
    torch.manual_seed(0)
    net = CharCNN(channels=8, pooling=pooling)
    short = "You see a newt."
    alone = net(*caption_bytes([short]))
    padded = net(*caption_bytes([short, "x" * 250]))
    assert alone.shape == (1, 16 if pooling == "meanmax" else 8)
    torch.testing.assert_close(alone[0], padded[0], rtol=1e-5, atol=1e-6)
    codes, lengths = caption_bytes(["", "é" * 300])
    assert codes.shape == (2, 256) and lengths.tolist() == [0, 256]


# --- ranking -----------------------------------------------------------------------------------


def _pairs(indices: range) -> list[PairLabel]:
    """The pick-up caption is preferred; the order within the pair alternates."""
    return [
        PairLabel(_good(i), _bad(i + 1), 1.0) if i % 2 else PairLabel(_bad(i + 1), _good(i), 0.0) for i in indices
    ]


def test_ranker_learns_the_toy_preferences_on_unseen_captions():
    model = RankerReward(RankerConfig(seed=2, normalization="published"))
    model.fit(_pairs(range(300)), steps=250)
    good = model([_good(i) for i in range(6000, 6100)])
    bad = model([_bad(i) for i in range(6000, 6100)])
    assert np.mean(good[:, None] > bad[None, :]) >= 0.95
    assert model.accuracy("validation") >= 0.95


def test_bradley_terry_gradient_pushes_the_preferred_score_up():
    first = torch.tensor([0.3, 0.3, 0.3], requires_grad=True)
    second = torch.tensor([-0.2, -0.2, -0.2], requires_grad=True)
    loss = bradley_terry_loss(first, second, torch.tensor([1.0, 0.0, 0.5]))
    loss.backward()
    assert first.grad[0] < 0 and second.grad[0] > 0  # first preferred: descent raises it
    assert first.grad[1] > 0 and second.grad[1] < 0  # second preferred
    # A tie pulls the scores together: the higher one goes down.
    assert first.grad[2] > 0 and second.grad[2] < 0
    assert torch.allclose(first.grad, -second.grad)


def test_bradley_terry_tie_is_minimised_at_equal_scores():
    s = torch.tensor([0.7], requires_grad=True)
    bradley_terry_loss(s, s.detach().clone(), torch.tensor([0.5])).backward()
    assert s.grad.abs().item() < 1e-7
    values = [
        bradley_terry_loss(torch.tensor([d]), torch.tensor([0.0]), torch.tensor([0.5])).item() for d in (-1.0, 0.0, 1.0)
    ]
    assert values[1] < values[0] and values[1] < values[2]
    assert values[1] == pytest.approx(np.log(2.0))


def test_ties_pull_a_ranked_pair_together():
    model = RankerReward(RankerConfig(seed=3, normalization="published"))
    model.fit([PairLabel("You kill the newt!", "It's a wall.", 1.0)], steps=60)
    gap = float(np.diff(model(["It's a wall.", "You kill the newt!"]))[0])
    assert gap > 0.5
    model.fit([PairLabel("You kill the newt!", "It's a wall.", 0.5)], steps=200)  # relabelled as a tie
    tied = float(np.diff(model(["It's a wall.", "You kill the newt!"]))[0])
    assert abs(tied) < 0.25 * gap


def test_ranker_intended_normalisation_is_applied_and_published_is_raw():
    captions = [_good(i) for i in range(50)] + [_bad(i) for i in range(50)]
    labels = _pairs(range(200))
    intended = RankerReward(RankerConfig(seed=4))
    published = RankerReward(RankerConfig(seed=4, normalization="published"))
    intended.fit(labels, steps=100)
    published.fit(labels, steps=100)
    raw = published.raw_scores(captions)
    np.testing.assert_array_equal(published(captions), raw)  # the published bug: raw scores
    rewards = intended(captions)
    stats = intended.normalizer.stats
    z = (raw.astype(np.float64) - stats.mean) / stats.std
    np.testing.assert_allclose(stats.mean, raw.astype(np.float64).mean(), rtol=1e-3)
    # ONI's intended cut (learner.py: r̂ * (r̂ > eps_threshold_quantile), default -0.5).
    assert intended.config.normalizer.threshold_value == -0.5 and not intended.config.normalizer.keep_equal
    np.testing.assert_allclose(rewards, np.where(z > -0.5, z, 0.0), rtol=1e-5, atol=1e-6)
    assert (rewards == 0).sum() > 0 and (rewards > 0).sum() > 0
    # Between -0.5 and 0 (not reached by these two well-separated classes): kept, negative.
    fixed = RankerReward()
    fixed.normalizer.stats.mean, fixed.normalizer.stats.var, fixed.normalizer.updating = 0.0, 1.0, False
    np.testing.assert_allclose(fixed.to_reward(np.array([-0.6, -0.4, 0.0, 0.3])), [0.0, -0.4, 0.0, 0.3], atol=1e-6)
    # Published mode still keeps the statistics (the values it computes and drops).
    assert published.normalizer.stats.count > 1


def test_ranker_quantile_threshold_keeps_the_top_share():
    top_quarter = NormalizerConfig(normalize=False, threshold="quantile", threshold_value=0.75)
    config = RankerConfig(seed=5, normalizer=top_quarter)
    model = RankerReward(config)
    model.fit(_pairs(range(100)), steps=30)
    captions = [_good(i) for i in range(40)] + [_bad(i) for i in range(40)]
    rewards = model(captions)
    assert np.count_nonzero(rewards) == pytest.approx(20, abs=1)


# --- offline Motif, ensemble -------------------------------------------------------------------


def test_offline_motif_is_trained_once_and_frozen():
    model = train_offline_motif(_pairs(range(200)), RankerConfig(seed=6), steps=150)
    assert model.frozen
    good = model([_good(i) for i in range(8000, 8050)])
    bad = model([_bad(i) for i in range(8000, 8050)])
    assert good.mean() > bad.mean()
    before = model.normalizer.state_dict()
    model([_good(1)] * 100)
    assert model.normalizer.state_dict() == before  # dataset statistics, frozen
    with pytest.raises(FrozenModelError):
        model.fit(_pairs(range(10)))
    with pytest.raises(FrozenModelError):
        RewardModelTrainer(model, LabelQueue())
    with pytest.raises(KudosError, match="annotate"):
        train_offline_motif([])


def test_ensemble_is_mean_minus_k_std_and_fits_members_by_label_kind():
    a, b = RetrievalReward(), RetrievalReward()
    a.fit([CaptionLabel("x", 1.0), CaptionLabel("y", 0.2)])
    b.fit([CaptionLabel("x", 0.6), CaptionLabel("y", 0.2)])
    ensemble = EnsembleReward([a, b], k=2.0)
    np.testing.assert_allclose(ensemble(["x", "y", "z"]), [0.8 - 2 * 0.2, 0.2, 0.0], atol=1e-6)
    ranker = RankerReward(RankerConfig(seed=7, fit_steps=5))
    mixed = EnsembleReward([a, ranker], k=0.5)
    mixed.fit([CaptionLabel("w", 1.0), PairLabel("w", "x", 1.0), PairLabel("w", "y", 1.0)])
    assert a(["w"])[0] == 1.0 and len(ranker.dataset) == 2 and ranker.steps == 5
    with pytest.raises(KudosError):
        EnsembleReward([a])


# --- state round trips -------------------------------------------------------------------------


def _continue(model):
    for _ in range(3):
        model.train_step()
    model.publish()


@pytest.mark.parametrize(
    "make, labels",
    [
        (lambda: ClassifierReward(ClassifierConfig(seed=8)), _caption_labels(range(100))),
        (lambda: RankerReward(RankerConfig(seed=9)), _pairs(range(100))),
    ],
)
def test_learned_state_round_trip_is_bit_exact(make, labels):
    captions = [_good(i) for i in range(30)] + [_bad(i) for i in range(30)] + [""]
    model = make()
    model.fit(labels, steps=20)
    model(captions)  # moves the ranker's running statistics
    model.train_step()  # training weights now differ from the published ones
    state = _round_trip(model.state_dict())
    copy = make()
    copy.load_state_dict(state)
    np.testing.assert_array_equal(copy(captions), model(captions))
    _continue(model)
    _continue(copy)
    for (name, a), (_, b) in zip(model.network.state_dict().items(), copy.network.state_dict().items()):
        assert torch.equal(a, b), name
    np.testing.assert_array_equal(copy(captions), model(captions))


def test_retrieval_and_ensemble_state_round_trip():
    a, b = RetrievalReward(), RetrievalReward(binary=True)
    a.fit(_caption_labels(range(20)))
    b.fit([CaptionLabel(_good(0), 0.9)])
    ensemble = EnsembleReward([a, b], k=0.3)
    copy = EnsembleReward([RetrievalReward(), RetrievalReward()], k=1.0)
    copy.load_state_dict(_round_trip(ensemble.state_dict()))
    captions = [_good(i) for i in range(20)] + [_bad(i) for i in range(20)]
    np.testing.assert_array_equal(copy(captions), ensemble(captions))


# --- malformed inputs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [RetrievalReward, ClassifierReward, RankerReward, lambda: EnsembleReward([RetrievalReward(), ClassifierReward()])],
)
def test_malformed_captions_raise_one_line_errors(make):
    model = make()
    model(["fine"])  # a cached caption must not hide a bad one next to it
    with pytest.raises(CaptionError, match=r"caption 1 is None"):
        model(["fine", None])
    with pytest.raises(CaptionError, match=r"caption 0 is a int"):
        model([3])
    with pytest.raises(CaptionError, match=r"caption 0 is a bytes"):
        model([b"You see a newt."])
    with pytest.raises(CaptionError, match="single str"):
        model("You see a newt.")
    with pytest.raises(CaptionError, match=r"caption 1 is a list"):
        model(["fine", ["nested"]])
    assert isinstance(CaptionError("x"), KudosError)


def test_malformed_labels_are_rejected():
    with pytest.raises(LabelError, match="PairLabel"):
        RankerReward().fit([CaptionLabel("x", 1.0)])
    with pytest.raises(LabelError, match="CaptionLabel"):
        RetrievalReward().fit([PairLabel("x", "y", 1.0)])
    with pytest.raises(LabelError, match=r"\[0, 1\]"):
        ClassifierReward().fit([CaptionLabel("x", 2.0)])
    with pytest.raises(LabelError, match=r"\[0, 1\]"):
        RetrievalReward().fit([CaptionLabel("x", float("nan"))])
    with pytest.raises(CaptionError):
        ClassifierReward().fit([CaptionLabel(None, 1.0)])  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["classification", "ranking", "retrieval"])
def test_a_checkpointed_model_scores_the_same_offline(kind):
    """`scoring_model` (what `kudos report` loads a checkpoint into) rebuilds the trained model
    from its state alone: same rewards, with no LLM, store or trainer."""
    from kudos.rewards.intrinsic import RewardConfig, scoring_model

    config = RewardConfig(type=kind)
    trained = scoring_model(config, "score")
    if kind == "ranking":
        trained.fit(_pairs(range(40)), steps=5)
    elif kind == "classification":
        trained.fit(_caption_labels(range(40)), steps=5)
    else:
        trained.fit(_caption_labels(range(48)))
    offline = scoring_model(config, "score")
    offline.load_state_dict(_round_trip(trained.state_dict()))
    captions = [_good(i) for i in range(40, 48)] + [_bad(i) for i in range(40, 48)]
    np.testing.assert_allclose(offline(captions), trained(captions), atol=1e-6)
