"""The online reward-model trainer: learns in the background while scoring goes on, reports
accuracy, checkpoints and resumes; label sources over a real SQLite label store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from kudos.errors import ConfigError
from kudos.feedback.annotator import Annotator, AnnotatorConfig
from kudos.feedback.backend import LLMError, LLMReply, LLMRequest
from kudos.feedback.prompts import PromptTemplate
from kudos.feedback.store import LabelRecord, open_store
from kudos.rewards import (
    CaptionLabel,
    ClassifierConfig,
    ClassifierReward,
    LabelQueue,
    RewardModelTrainer,
    PairLabel,
    RankerReward,
    RetrievalReward,
    StoreLabelSource,
    RewardModelTrainerConfig,
    follow_annotator,
)
from kudos.rewards.sources import record_to_label


def _labels(indices: range) -> list[CaptionLabel]:
    return [
        CaptionLabel(f"You kill the {i} newt!", 1.0) if i % 3 == 0 else CaptionLabel(f"You see {i} walls.", 0.0)
        for i in indices
    ]


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


FAST = dict(warmup_steps_per_s=1000.0, steady_steps_per_s=1000.0, publish_every=5, eval_every=20, min_labels=8)


def test_trainer_learns_in_background_while_scoring_continues(tmp_path):
    queue = LabelQueue()
    model = ClassifierReward(ClassifierConfig(seed=0))
    config = RewardModelTrainerConfig(**FAST, poll_interval_s=0.05, checkpoint_path=str(tmp_path / "rm.pt"))
    probe = ["You kill the 1000 newt!", "You see 1001 walls."]
    with RewardModelTrainer(model, queue, config) as trainer:
        assert model(probe).shape == (2,)  # scoring works before any label
        queue.put(_labels(range(300)))
        trainer.notify()
        versions = set()
        while trainer.metrics.steps < 200:
            versions.add(model.version)
            model(probe)  # scoring never waits for training
            time.sleep(0.005)
        metrics = trainer.metrics
    assert metrics.labels == 300 and metrics.errors == 0, metrics
    assert len(versions) > 2  # weights were published while scoring
    assert metrics.validation_accuracy is not None and metrics.validation_accuracy >= 0.9, metrics
    assert metrics.train_accuracy is not None and metrics.train_accuracy >= 0.9
    good, bad = model(probe)
    assert good > 0.5 > bad
    assert [p.name for p in tmp_path.glob("*rm.pt*")] == ["rm.pt"]  # no temp file left beside it

    resumed = RewardModelTrainer(ClassifierReward(ClassifierConfig(seed=99)), LabelQueue(), config)
    resumed.resume(tmp_path / "rm.pt")
    assert resumed.cursor == 300 and resumed.metrics.steps == model.steps
    np.testing.assert_array_equal(resumed.model(probe), model(probe))


def test_trainer_paces_steps_and_waits_for_enough_labels():
    queue = LabelQueue(_labels(range(4)))
    model = ClassifierReward()
    trainer = RewardModelTrainer(model, queue, RewardModelTrainerConfig(min_labels=8))
    trainer.ingest()
    assert not trainer.step() and model.steps == 0  # 4 labels (some held out) < min_labels
    queue.put(_labels(range(4, 40)))
    assert trainer.ingest() == 36 and trainer.cursor == 40
    assert trainer.step() and model.steps == 1
    paced = RewardModelTrainerConfig(warmup_steps_per_s=5.0, warmup_labels=10**6, poll_interval_s=0.05)
    slow = RewardModelTrainer(model, queue, paced)
    with slow:
        time.sleep(1.0)
    assert 1 <= model.steps - 1 <= 6  # at most 5 steps per second (one at the start)


class CountingTrainer(RewardModelTrainer):
    """Counts its reads and step attempts (to show what the thread does while it waits)."""

    reads = 0
    attempts = 0

    def ingest(self) -> int:
        self.reads += 1
        return super().ingest()

    def step(self) -> bool:
        self.attempts += 1
        return super().step()


@pytest.mark.parametrize("model", [ClassifierReward(), RetrievalReward()], ids=["too few labels", "retrieval"])
def test_a_trainer_with_nothing_to_train_sleeps_until_the_next_read(model):
    """With fewer labels than min_labels (a failing LLM, or early in a run) or a model that does
    not train by steps, the thread asks whether it can step once per read, not in a loop that
    holds the GIL and slows the whole run."""
    queue = LabelQueue(_labels(range(4)))
    trainer = CountingTrainer(model, queue, RewardModelTrainerConfig(min_labels=8, poll_interval_s=0.1))
    with trainer:
        time.sleep(1.0)
    assert trainer.reads >= 2 and trainer.attempts <= trainer.reads + 1


def test_state_dict_is_copied_between_training_steps():
    """A checkpoint taken while the trainer steps holds one state: the optimiser's step count, the
    model's and the network's weights all from the same step (a copy taken in the middle of a
    step would mix two)."""

    class SlowOptimizerStep(ClassifierReward):
        def train_step(self) -> float:
            real_step = self.optimizer.step

            def step_then_pause(*args, **kwargs):
                out = real_step(*args, **kwargs)
                time.sleep(0.01)  # the optimiser has stepped, the model's counter not yet
                return out

            self.optimizer.step = step_then_pause  # type: ignore[method-assign]
            try:
                return super().train_step()
            finally:
                del self.optimizer.step

    model = SlowOptimizerStep(ClassifierConfig(seed=0))
    queue = LabelQueue(_labels(range(200)))
    with RewardModelTrainer(model, queue, RewardModelTrainerConfig(**FAST, poll_interval_s=0.05)) as trainer:
        _wait_for(lambda: model.steps >= 3)
        states = [trainer.state_dict() for _ in range(30)]
    for state in states:
        adam = state["model"]["optimizer"]["state"]
        assert all(int(p["step"]) == state["model"]["steps"] for p in adam.values())


def test_notify_wakes_the_trainer_before_its_poll_interval():
    queue = LabelQueue()
    model = RetrievalReward()
    with RewardModelTrainer(model, queue, RewardModelTrainerConfig(poll_interval_s=3600.0)) as trainer:
        time.sleep(0.1)  # the first read happened; the next poll is an hour away
        queue.put([CaptionLabel("You find a gem.", 1.0)])
        trainer.notify()
        _wait_for(lambda: model(["You find a gem."])[0] == 1.0, timeout=5.0)


class FaultyLabelSource:
    """Test double: raises on the first reads, then serves labels (a store that was unreachable)."""

    def __init__(self, failures: int, labels: list[CaptionLabel]) -> None:
        self.failures = failures
        self.queue = LabelQueue(labels)

    def read(self, since: int, limit: int):
        if self.failures:
            self.failures -= 1
            raise OSError("label store unreachable")
        return self.queue.read(since, limit)


def test_source_faults_are_counted_and_training_goes_on():
    model = RetrievalReward()
    source = FaultyLabelSource(2, [CaptionLabel("You find a gem.", 1.0)])
    with RewardModelTrainer(model, source, RewardModelTrainerConfig(poll_interval_s=0.02)) as trainer:
        _wait_for(lambda: trainer.metrics.labels == 1, timeout=10.0)
    assert trainer.metrics.errors == 2 and "unreachable" in trainer.metrics.last_error
    assert model(["You find a gem."])[0] == 1.0


def test_trainer_refuses_models_that_do_not_learn():
    from kudos.rewards import EnsembleReward

    with pytest.raises(ConfigError):
        RewardModelTrainer(EnsembleReward([RetrievalReward(), RetrievalReward()]), LabelQueue())
    with pytest.raises(ConfigError):
        RewardModelTrainerConfig(steady_steps_per_s=0.0)


# --- label store ---------------------------------------------------------------------------------


def _record(
    caption: str, caption2: str | None, label: int | None, soft: float | None, prompt: str = "p"
) -> LabelRecord:
    kind = "classify" if caption2 is None else "rank"
    return LabelRecord(prompt, "m", kind, caption, caption2, label, soft, "", 0.1, 0.0)


def test_store_records_become_labels():
    assert record_to_label(_record("a", None, 1, 0.8), soft=False) == CaptionLabel("a", 1.0)
    assert record_to_label(_record("a", None, 1, 0.8), soft=True) == CaptionLabel("a", 0.8)
    assert record_to_label(_record("a", None, None, None), soft=False) is None  # "unknown" answer
    assert record_to_label(_record("a", "b", 1, None), soft=False) == PairLabel("a", "b", 1.0)
    assert record_to_label(_record("a", "b", 2, None), soft=False) == PairLabel("a", "b", 0.0)
    assert record_to_label(_record("a", "b", 0, None), soft=False) == PairLabel("a", "b", 0.5)
    assert record_to_label(_record("a", "b", 0, 0.3), soft=True) == PairLabel("a", "b", 0.3)


def test_store_source_follows_a_sqlite_store_in_commit_order(tmp_path):
    with open_store(tmp_path / "labels.sqlite") as store:
        store.put_many([_record(f"c{i}", None, i % 2, None) for i in range(5)])
        store.put_many([_record("other prompt", None, 1, None, prompt="q"), _record("c5", None, None, None)])
        source = StoreLabelSource(store, "p", "m")
        labels, cursor = source.read(0, 3)
        assert [label.caption for label in labels] == ["c0", "c1", "c2"]
        rest, end = source.read(cursor, 100)
        assert [label.caption for label in rest] == ["c3", "c4"]  # c5 is "unknown", q another prompt
        assert source.read(end, 100) == ([], end)
        store.put_many([_record("c6", None, 1, None)])
        assert source.read(end, 100)[0] == [CaptionLabel("c6", 1.0)]


class FaultyLLMBackend:
    """LLM test double that is down for its first ``down_calls`` calls (connection refused), then
    answers the short classification prompt: "1" for messages about a gem, "0" otherwise."""

    model_id = "faulty-llm"

    def __init__(self, down_calls: int) -> None:
        self.down_calls = down_calls

    def generate(self, requests: Sequence[LLMRequest], cancel: threading.Event | None = None) -> list[LLMReply]:
        if self.down_calls:
            self.down_calls -= 1
            raise LLMError("injected: connection refused")
        answers = ["1" if "gem" in r.prompt[r.prompt.rindex("Message: ") :] else "0" for r in requests]
        return [LLMReply(text=a, p_positive=None, latency_s=0.001, model_id=self.model_id) for a in answers]

    def close(self) -> None:
        pass


def test_follow_annotator_trains_from_a_real_annotator_after_llm_faults(tmp_path):
    template = PromptTemplate(kind="classify")
    with open_store(tmp_path / "labels.sqlite") as store:
        annotator = Annotator(FaultyLLMBackend(down_calls=2), store, template, AnnotatorConfig(backoff_s=0.01))
        model = RetrievalReward()
        trainer = follow_annotator(model, annotator, RewardModelTrainerConfig(poll_interval_s=3600.0))
        with annotator.start(), trainer:
            captions = ["You find a gem.", "It's a wall.", "You see a gem here."]
            assert model(captions).tolist() == [0.0, 0.0, 0.0]
            annotator.submit(captions)
            # Woken by the annotator (the trainer's own poll is an hour away).
            _wait_for(lambda: model(captions).tolist() == [1.0, 0.0, 1.0], timeout=20.0)
        assert annotator.metrics().server_errors == 2
        assert trainer.cursor > 0 and trainer.metrics.labels == 3
        with pytest.raises(ConfigError, match="'rank' annotators with ranking models"):
            follow_annotator(RankerReward(), annotator)
