
import numpy as np
import pytest
import torch

from kudos.rl.checkpoint import CHECKPOINT_NAME, FORMAT_VERSION, CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_round_trip_and_overwrite(tmp_path):
    save_checkpoint(tmp_path, {"step": 1, "weights": torch.arange(4.0)})
    save_checkpoint(tmp_path, {"step": 2, "weights": torch.arange(5.0)})
    state = load_checkpoint(tmp_path)
    assert state["step"] == 2 and torch.equal(state["weights"], torch.arange(5.0))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # no temp files left


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(tmp_path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


def test_missing_and_corrupt_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {"step": 1})
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(tmp_path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(tmp_path)
    torch.save({"format_version": 99}, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path)


def test_rng_state_round_trip():
    state = rng_state()
    first = (np.random.random(), torch.rand(1).item())
    set_rng_state(state)
    assert (np.random.random(), torch.rand(1).item()) == first


class _RunsCode:
    """What a malicious checkpoint would carry: unpickling it calls a function of its choosing."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"format_version": FORMAT_VERSION, "payload": _RunsCode(marker)}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="holds pickled Python objects") as caught:
        load_checkpoint(tmp_path)
    assert "\n" not in str(caught.value)
    assert not marker.exists()
    # A NumPy array is a pickled object too (checkpoints before format 2 held the NumPy RNG state).
    torch.save({"format_version": FORMAT_VERSION, "numpy": np.zeros(3)}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="holds pickled Python objects"):
        load_checkpoint(tmp_path)


def test_every_component_state_survives_weights_only_loading(tmp_path):
    """The parts of a `kudos train` checkpoint (learner, shaper, reward models with their label
    datasets, reward trainer, annotator backlog, RNG states, counters) go through save_checkpoint
    and load_checkpoint (weights_only=True) and restore equal components."""
    from kudos.envs import NUM_ACTIONS
    from kudos.rewards import CaptionLabel, ClassifierReward, LabelQueue, RewardModelTrainer, PairLabel, RankerReward, RetrievalReward
    from kudos.rewards.shaping import NormalizerConfig, RewardShaper, ShapingConfig
    from kudos.rl.appo import APPOConfig
    from kudos.rl.learner import Learner
    from kudos.rl.policy import NetHackPolicy, get_policy_config

    learner = Learner(NetHackPolicy(get_policy_config("small"), NUM_ACTIONS), APPOConfig())
    shaping = ShapingConfig(intrinsic=NormalizerConfig(normalize=True, threshold="quantile", threshold_value=0.5, window=8))
    shaper = RewardShaper(shaping, num_envs=4)
    shaper(np.arange(4.0), np.arange(4.0), np.ones(4, dtype=int), np.zeros(4, dtype=bool))
    classifier = ClassifierReward()
    classifier.fit([CaptionLabel(f"You see {i} walls.", float(i % 2)) for i in range(40)], steps=3)
    ranker = RankerReward()
    ranker.fit([PairLabel(f"You kill {i} newts!", f"It's {i} walls.", 1.0) for i in range(40)], steps=3)
    ranker(["a", "b", "c"])  # moves its running statistics
    retrieval = RetrievalReward()
    retrieval.fit([CaptionLabel("You find a gem.", 1.0)])
    trainer = RewardModelTrainer(ClassifierReward(), LabelQueue())
    annotator_backlog = {"pending": ["You kill the newt!", ["a", "b"]], "reservoir": ["c"], "reservoir_seen": 3}
    state = {
        "progress": {"env_steps": 512, "updates": 1, "episodes": 0},
        "learner": learner.state_dict(),
        "shaper": shaper.state_dict(),
        "reward": {"classifier": classifier.state_dict(), "ranker": ranker.state_dict(),
                   "retrieval": retrieval.state_dict(), "trainer": trainer.state_dict(), "annotator": annotator_backlog},
        "rng": rng_state(),
        "task": "Score",
    }
    save_checkpoint(tmp_path, state)
    loaded = load_checkpoint(tmp_path)

    Learner(NetHackPolicy(get_policy_config("small"), NUM_ACTIONS), APPOConfig()).load_state_dict(loaded["learner"])
    RewardShaper(shaping, num_envs=4).load_state_dict(loaded["shaper"])
    captions = ["You see 3 walls.", "You kill 5 newts!", ""]
    for name, model in (("classifier", ClassifierReward()), ("ranker", RankerReward()), ("retrieval", RetrievalReward())):
        model.load_state_dict(loaded["reward"][name])
        original = {"classifier": classifier, "ranker": ranker, "retrieval": retrieval}[name]
        np.testing.assert_array_equal(model(captions), original(captions))
    assert loaded["reward"]["classifier"]["dataset"]["texts"] == state["reward"]["classifier"]["dataset"]["texts"]
    assert loaded["reward"]["annotator"] == annotator_backlog
    RewardModelTrainer(ClassifierReward(), LabelQueue()).load_state_dict(loaded["reward"]["trainer"])
    set_rng_state(loaded["rng"])


def test_a_train_run_resumes_from_its_checkpoint(tmp_path):
    """The runner's own state (counters, learner, shaper, RNG states) goes through weights_only
    loading, and the resumed run carries on from the checkpointed counters."""
    from kudos.rl.experiment import load_config
    from kudos.rl.runner import TrainingRun

    overrides = ["reward.type=none", "env.num_envs=4", "cpu.env_workers=1", "appo.rollout=16", "run.log_every_s=60",
                 f"run.output_dir={tmp_path / 'run'}"]
    first = TrainingRun(load_config(overrides=[*overrides, "run.steps=128"]))
    first.train()
    saved = load_checkpoint(tmp_path / "run")
    resumed = TrainingRun(load_config(overrides=[*overrides, "run.steps=256"]), resume=True)
    assert resumed.progress.updates == saved["progress"]["updates"] == 2
    for name, weights in resumed.learner.policy.state_dict().items():
        assert torch.equal(weights, saved["learner"]["policy"][name]), name
    assert resumed.train().env_steps == 256
