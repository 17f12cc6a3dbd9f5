"""The online reward-model trainer: a background thread that learns from labels as they arrive.

It reads new labels from a :class:`~kudos.rewards.sources.LabelSource` (when notified, and
every ``poll_interval_s`` anyway), trains a learned model at a bounded rate — fast while the
labels are few, then a steady rate — publishes the weights every ``publish_every`` steps,
measures train and validation accuracy on the held-out slice, and checkpoints atomically.
Scoring (in the RL loop) keeps using the last published weights and never waits for it.

Models that do not train by steps (retrieval) are fitted as soon as labels arrive.

:attr:`RewardModelTrainer.lock` is held for each round of work (read, step, checkpoint), so a
caller that holds it (a run's checkpoint) copies the model, its optimiser and its label dataset
between two steps, never in the middle of one. A model that fails to train (e.g. a checkpoint
whose optimiser does not match the network) is counted in ``metrics.errors`` and logged as an
error; the run goes on scoring with the last published weights.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from kudos.errors import ConfigError
from kudos.fsutil import atomic_write
from kudos.rewards.base import RewardModel, TrainsBySteps
from kudos.rewards.learned import FrozenModelError
from kudos.rewards.sources import LabelRecords, LabelSource, StoreLabelSource

log = logging.getLogger(__name__)


@dataclass
class RewardModelTrainerConfig:
    """Pace and bookkeeping of the online trainer.

    ``min_labels``: training labels needed before the first step. While fewer than
    ``warmup_labels`` labels are held, train at up to ``warmup_steps_per_s`` steps/s, then at
    ``steady_steps_per_s``. ``publish_every``/``eval_every``: steps between weight publications
    and accuracy reports. ``poll_interval_s``: seconds between reads of the source without a
    notification. ``read_limit``: labels per read. ``checkpoint_path``: where to checkpoint
    (None: never), every ``checkpoint_every_s`` seconds and when stopped. The trainer's threads
    are the run's CPU budget's (:class:`~kudos.cpu.CPUConfig`), not a pace: see
    :class:`RewardModelTrainer`.
    """

    min_labels: int = 32
    warmup_labels: int = 2_000
    # A step on a batch of real captions costs ~20-100 ms of one core: at 5 steps/s the trainer
    # leaves scoring ~85% of its throughput on a busy 2-core machine (bench/reward_inference.py).
    warmup_steps_per_s: float = 5.0
    steady_steps_per_s: float = 2.0
    publish_every: int = 10
    eval_every: int = 100
    poll_interval_s: float = 1.0
    read_limit: int = 10_000
    checkpoint_path: str | None = None
    checkpoint_every_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("warmup_steps_per_s", "steady_steps_per_s", "poll_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"trainer {name} must be > 0, got {getattr(self, name)}")
        if self.publish_every < 1 or self.eval_every < 1:
            raise ConfigError("trainer publish_every and eval_every must be >= 1")


@dataclass
class RewardModelTrainerMetrics:
    """What the trainer has done so far (a copy; see :attr:`RewardModelTrainer.metrics`)."""

    labels: int = 0
    steps: int = 0
    loss: float | None = None
    train_accuracy: float | None = None
    validation_accuracy: float | None = None
    published_version: int = 0
    checkpoints: int = 0
    errors: int = 0
    last_error: str | None = None


class RewardModelTrainer:
    """Trains ``model`` from ``source`` in a background thread (see the module docstring).

    Use as a context manager, or call :meth:`start` and :meth:`close`. :meth:`notify` (e.g. an
    annotator's new-label callback) makes the trainer read the source right away.
    """

    def __init__(self, model: RewardModel, source: LabelSource, config: RewardModelTrainerConfig | None = None,
                 torch_threads: int = 1) -> None:
        if model.learns_from is None:
            raise ConfigError(f"{type(model).__name__} does not learn from labels; there is nothing to train")
        #: The model's gradient-step side; None for a model fitted at once on each read (retrieval).
        self.stepped: TrainsBySteps | None = model if isinstance(model, TrainsBySteps) else None
        if self.stepped is not None and self.stepped.frozen:
            raise FrozenModelError(
                f"this {type(model).__name__} is frozen (offline Motif); it cannot be trained online"
            )
        self.model = model
        self.source = source
        self.config = config or RewardModelTrainerConfig()
        self.torch_threads = torch_threads
        self.cursor = 0
        self._metrics = RewardModelTrainerMetrics()
        self._metrics_lock = threading.Lock()
        #: Held while the trainer works on the model; hold it to read a consistent state.
        self.lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_step = 0.0
        self._next_read = 0.0
        self._next_checkpoint = 0.0

    # --- control ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the trainer is already running")
        self._stop.clear()
        self._next_checkpoint = time.monotonic() + self.config.checkpoint_every_s
        self._thread = threading.Thread(target=self._run, name="kudos-reward-trainer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread, publish the latest weights and write a last checkpoint; :attr:`metrics`
        stay readable and :meth:`start` may run it again. A no-op when not running."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("reward-model trainer did not stop within %.0f s", timeout)
            return
        self._thread = None
        if self.stepped is not None and self.stepped.steps:
            self.stepped.publish()
        if self.config.checkpoint_path:
            self.checkpoint(self.config.checkpoint_path)

    def notify(self, *_: object) -> None:
        """New labels may be available: read the source now (any arguments are ignored)."""
        self._next_read = 0.0
        self._wake.set()

    def __enter__(self) -> RewardModelTrainer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def metrics(self) -> RewardModelTrainerMetrics:
        with self._metrics_lock:
            return RewardModelTrainerMetrics(**asdict(self._metrics))

    # --- work -----------------------------------------------------------------------------------

    def ingest(self) -> int:
        """Read every label available now into the model; returns how many were read."""
        total = 0
        while True:
            labels, cursor = self.source.read(self.cursor, self.config.read_limit)
            if labels:
                if self.stepped is not None:
                    self.stepped.add_labels(labels)
                else:
                    self.model.fit(labels)
            total += len(labels)
            if cursor == self.cursor:
                break
            self.cursor = cursor
        if total:
            with self._metrics_lock:
                self._metrics.labels += total
        return total

    def step(self) -> bool:
        """One training step if the model has enough labels; publishes and evaluates on schedule.
        Returns whether a step was taken."""
        model = self.stepped
        if model is None or model.labels_held("train") < self.config.min_labels:
            return False
        loss = model.train_step()
        cfg = self.config
        if model.steps % cfg.publish_every == 0:
            model.publish()
        report = model.steps % cfg.eval_every == 0
        train_acc = model.accuracy("train") if report else None
        val_acc = model.accuracy("validation") if report else None
        with self._metrics_lock:
            m = self._metrics
            m.steps, m.loss, m.published_version = model.steps, loss, model.version
            if report:
                m.train_accuracy, m.validation_accuracy = train_acc, val_acc
        if report:
            log.info(
                "reward model step %d: loss %.4f, train accuracy %s, validation accuracy %s (%d labels)",
                model.steps, loss, _percent(train_acc), _percent(val_acc), model.labels_held(),
            )
        return True

    def _run(self) -> None:
        cfg = self.config
        torch.set_num_threads(self.torch_threads)
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                with self.lock:
                    if now >= self._next_read:
                        self._next_read = now + cfg.poll_interval_s
                        if self.ingest():
                            self._next_step = min(self._next_step, now)
                    if now >= self._next_step:
                        if self.step():
                            held = self.stepped.labels_held() if self.stepped is not None else 0
                            rate = cfg.warmup_steps_per_s if held < cfg.warmup_labels else cfg.steady_steps_per_s
                            self._next_step = now + 1.0 / rate
                        else:
                            # Nothing to train on until new labels are read: sleep until then
                            # instead of asking again in a loop that holds the GIL.
                            self._next_step = math.inf
                    if cfg.checkpoint_path and now >= self._next_checkpoint:
                        self._next_checkpoint = now + cfg.checkpoint_every_s
                        self.checkpoint(cfg.checkpoint_path)
            except Exception as err:  # training must never stop the RL run, but must not fail unseen
                with self._metrics_lock:
                    self._metrics.errors += 1
                    self._metrics.last_error = f"{type(err).__name__}: {err}"
                    errors = self._metrics.errors
                if errors == 1:
                    log.exception("the reward model cannot train (scoring keeps its last published weights)")
                else:
                    log.error("the reward model cannot train (%d errors so far): %s", errors, self._metrics.last_error)
                self._stop.wait(cfg.poll_interval_s)
                continue
            wait = min(self._next_read, max(self._next_step, now)) - time.monotonic()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()

    # --- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Cursor, model and counters, copied between two training steps (under :attr:`lock`)."""
        with self.lock:
            return {"cursor": self.cursor, "model": self.model.state_dict(), "metrics": asdict(self.metrics)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.cursor = int(state["cursor"])
        with self._metrics_lock:
            self._metrics = RewardModelTrainerMetrics(**state["metrics"])

    def checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (:func:`~kudos.fsutil.atomic_write`)."""
        state = self.state_dict()
        atomic_write(path, lambda f: torch.save(state, f))
        with self._metrics_lock:
            self._metrics.checkpoints += 1

    def resume(self, path: str | os.PathLike[str]) -> None:
        """Load a checkpoint written by :meth:`checkpoint`."""
        self.load_state_dict(torch.load(Path(path), weights_only=True))


class LabelFeed(Protocol):
    """The part of ``kudos.feedback.Annotator`` that :func:`follow_annotator` uses."""

    store: LabelRecords
    spec: Any  # has ``kind``: "classify" or "rank"

    @property
    def prompt_hash(self) -> str: ...

    @property
    def model_id(self) -> str: ...

    def subscribe(self, callback: Callable[[list[Any]], None]) -> None: ...


def follow_annotator(
    model: RewardModel, annotator: LabelFeed, config: RewardModelTrainerConfig | None = None, soft: bool = False,
    torch_threads: int = 1,
) -> RewardModelTrainer:
    """An (unstarted) trainer that learns ``model`` from ``annotator``'s labels.

    It reads the annotator's label store for the annotator's prompt and LLM (so labels stored by
    earlier runs count too) and is woken by the annotator whenever new labels are stored.
    ``soft``: train on answer-token probabilities where the store has them; ``torch_threads``: the
    trainer thread's (set in that thread: a new thread does not inherit the caller's
    ``torch.set_num_threads``).
    """
    wanted = {"classify": "caption", "rank": "pair"}.get(annotator.spec.kind)
    if model.learns_from is not None and wanted != model.learns_from:
        raise ConfigError(
            f"{type(model).__name__} learns from {model.learns_from} labels but the annotator asks "
            f"'{annotator.spec.kind}' questions; pair 'classify' annotators with retrieval or "
            "classification models and 'rank' annotators with ranking models"
        )
    source = StoreLabelSource(annotator.store, annotator.prompt_hash, annotator.model_id, soft=soft)
    trainer = RewardModelTrainer(model, source, config, torch_threads)
    annotator.subscribe(trainer.notify)
    return trainer


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
