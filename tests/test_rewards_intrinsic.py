"""The intrinsic-reward service of a run: real embedded LLM, real SQLite store, real trainer."""

import dataclasses
import time

import numpy as np
import pytest

from kudos.errors import ConfigError, KudosError
from kudos.rl.experiment import load_config
from kudos.feedback.config import LLMConfig
from kudos.rewards.intrinsic import IntrinsicReward, RewardConfig
from kudos.rewards.shaping import ShapingConfig
from kudos.rewards.trainer import RewardModelTrainerConfig


def test_reward_config_validation():
    with pytest.raises(ConfigError, match="unknown reward type 'magic'"):
        RewardConfig(type="magic")
    with pytest.raises(ConfigError, match="unknown goal preset 'glory'"):
        RewardConfig(goal="glory")
    with pytest.raises(ConfigError, match="reward.members must list two or more"):
        RewardConfig(type="ensemble", members="classification")
    with pytest.raises(ConfigError, match="reward.members must list two or more"):
        RewardConfig(type="ensemble", members="classification,motif")
    with pytest.raises(ConfigError, match="has no intrinsic reward"):
        IntrinsicReward(RewardConfig(type="none"), LLMConfig(), goal="score")


def test_task_presets_and_reward_free_setting():
    assert RewardConfig().shaping_for(task_extrinsic_coef=10.0).c_ext == 10.0
    assert RewardConfig(shaping=ShapingConfig(c_ext=0.0)).shaping_for(task_extrinsic_coef=10.0).c_ext == 0.0
    assert RewardConfig(type="none").shaping_for(0.1).c_int == 0.0


@pytest.mark.usefixtures("embedded_model")
def test_labels_flow_from_the_llm_to_the_reward_model(tmp_path):
    captions = ["You kill the newt!", "It's a wall.", "You find a hidden passage.", ""]
    config = RewardConfig(type="retrieval")
    llm = LLMConfig(store=str(tmp_path / "labels.sqlite"))
    reward = IntrinsicReward(config, llm, goal="score", trainer=RewardModelTrainerConfig(min_labels=1, poll_interval_s=0.1))
    try:
        reward.start()
        assert (reward(captions) == 0).all()  # nothing labelled yet
        reward.submit(captions + ["", ""])
        assert reward.annotators["classify"].wait_idle(timeout=120)
        deadline = time.time() + 30
        while reward.metrics()["reward_model/0/labels"] < len(captions) and time.time() < deadline:
            time.sleep(0.1)
        metrics = reward.metrics()
        assert metrics["llm/classify/labels"] == len(captions)  # "" is asked too, as in ONI (once)
        scores = reward(captions)
        assert scores[0] == 1.0 and scores[1] == 0.0  # the embedded model's verdicts, looked up
        stored = reward.store.get_many(reward.annotators["classify"].prompt_hash, reward.backend.model_id, [""])
        assert scores[-1] == stored[""].label  # "" earns what the LLM said of it
        state = reward.state_dict()
    finally:
        reward.close()
    # close() is idempotent and leaves the counters, the model and its state readable: a run's
    # last report and checkpoint come after it.
    reward.close()
    assert reward.metrics()["llm/classify/labels"] == len(captions)
    np.testing.assert_array_equal(reward(captions), scores)
    assert reward.state_dict()["trainers"][0]["cursor"] == state["trainers"][0]["cursor"]

    # A second service on the same store asks the LLM nothing and restores the model exactly.
    again = IntrinsicReward(config, llm, goal="score", trainer=RewardModelTrainerConfig(min_labels=1, poll_interval_s=0.1))
    try:
        again.load_state_dict(state)
        again.start()
        again.submit(captions)
        assert again.annotators["classify"].wait_idle(timeout=60)
        assert again.annotators["classify"].metrics().llm_requests == 0
        np.testing.assert_array_equal(again(captions), scores)
    finally:
        again.close()

    # The skip option: "" earns nothing, whatever its stored label.
    skip_llm = dataclasses.replace(llm, annotator=dataclasses.replace(llm.annotator, skip_empty=True))
    skipping = IntrinsicReward(RewardConfig(type="retrieval"), skip_llm, goal="score")
    try:
        skipping.load_state_dict(state)
        np.testing.assert_array_equal(skipping(captions), [*scores[:3], 0.0])
    finally:
        skipping.close()


def test_offline_motif_without_pairs_says_what_to_do(tmp_path):
    with pytest.raises(KudosError, match="offline Motif found no pair labels.*kudos annotate"):
        IntrinsicReward(RewardConfig(type="motif"), LLMConfig(store=str(tmp_path / "s.sqlite")), goal="score")


@pytest.mark.usefixtures("embedded_model")
def test_learned_models_take_their_settings_from_the_reward_config(tmp_path):
    config = load_config(overrides=["reward.type=ensemble", "reward.members=classification,ranking",
                                    "reward.classifier.channels=16", "reward.ranker.hidden=8"]).reward
    reward = IntrinsicReward(config, LLMConfig(store=str(tmp_path / "labels.sqlite")), goal="score")
    try:
        classifier, ranker = reward.model.members
        assert classifier.network.encoder.dim == 16 and ranker.network.head[0].out_features == 8
    finally:
        reward.close()
