"""The whole intrinsic-reward side of a run, behind one object: label store, LLM backend,
annotator, reward model and its online trainer, chosen by one option (:attr:`RewardConfig.type`).

A learner (kudos's or any other) calls :meth:`IntrinsicReward.submit` with the captions it saw and
:meth:`IntrinsicReward.__call__` to score captions with the latest model; neither waits for the
LLM.

Reward types:

- ``none``: no intrinsic reward (extrinsic only);
- ``retrieval`` / ``classification``: ONI-Retrieval / ONI-Classification, from classification
  labels; ``ranking``: ONI-Ranking, from pairwise preferences;
- ``motif``: offline Motif, a ranker fitted once to the pairs already in the store (label a
  pair dataset with ``kudos annotate`` first) and frozen; the LLM is not asked during training;
- ``cosine``: the ELLM-style embedding baseline (no LLM);
- ``ensemble``: the members listed in :attr:`RewardConfig.members`, combined as mean - k * std.
"""

from __future__ import annotations

import logging
import typing
from contextlib import ExitStack
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from kudos import STARTUP_LOG
from kudos.cpu import CPUBudget
from kudos.errors import ConfigError, KudosError
from kudos.feedback.annotator import Annotator
from kudos.feedback.backend import LLMBackend
from kudos.feedback.config import LLMConfig
from kudos.feedback.embedded import EmbeddedLLM
from kudos.feedback.factory import make_backend
from kudos.feedback.labeler import resolve_spec
from kudos.feedback.model_files import MODEL_ID as EMBEDDED_MODEL_ID
from kudos.feedback.prompts import GOALS, PromptTemplate
from kudos.feedback.store import LabelStore, default_store_path, open_store
from kudos.rewards.base import RewardModel
from kudos.rewards.classifier import ClassifierConfig, ClassifierReward
from kudos.rewards.embedding import EmbeddingCosineReward
from kudos.rewards.ensemble import EnsembleReward
from kudos.rewards.motif import train_offline_motif
from kudos.rewards.ranker import RankerConfig, RankerReward
from kudos.rewards.retrieval import RetrievalReward
from kudos.rewards.shaping import ShapingConfig
from kudos.rewards.sources import StoreLabelSource
from kudos.rewards.trainer import RewardModelTrainer, RewardModelTrainerConfig, follow_annotator
from kudos.rewards.wrapper import intrinsic_rewards

log = logging.getLogger(__name__)
startup = logging.getLogger(STARTUP_LOG)

RewardType = Literal["none", "retrieval", "classification", "ranking", "motif", "cosine", "ensemble"]
REWARD_TYPES: tuple[str, ...] = typing.get_args(RewardType)
_MEMBER_TYPES = ("retrieval", "classification", "ranking", "cosine")


@dataclass
class RewardConfig:
    """The intrinsic reward and how it is mixed with the extrinsic one.

    ``shaping``: ``r = c_ext * clip(ext_scale * r_env, +-ext_clip) + c_int * shape(r_int) /
    N_episode^beta`` (:class:`~kudos.rewards.shaping.ShapingConfig`, ONI's defaults);
    ``shaping.c_ext`` None takes the task's ONI preset (0.1 Score, 10 staircase and oracle tasks);
    0 is the reward-free setting. ``goal``: the LLM prompt's goal preset (None: the task's).
    ``members``/``ensemble_k``: for ``type="ensemble"``. ``motif_steps``: gradient steps of the
    offline Motif fit. ``classifier``/``ranker``: network and optimisation settings of the learned
    models (e.g. ``reward.classifier.channels=64 reward.classifier.average=0``: a narrower
    classifier scored with its latest weights, faster on captions not yet cached and a little
    less accurate on unseen ones; see docs/rewards.md). ``trainer``: pace of their online
    trainers. Which captions and pairs the LLM is asked about is ``llm.annotator``'s.
    """

    type: RewardType = "classification"
    goal: str | None = None
    shaping: ShapingConfig = field(default_factory=lambda: ShapingConfig(c_ext=None))
    members: str = "classification,cosine"
    ensemble_k: float = 1.0
    motif_steps: int = 2000
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    trainer: RewardModelTrainerConfig = field(default_factory=RewardModelTrainerConfig)

    def __post_init__(self) -> None:
        if self.type not in REWARD_TYPES:
            raise ConfigError(f"unknown reward type {self.type!r}; use one of {', '.join(REWARD_TYPES)}")
        if self.goal is not None and self.goal not in GOALS:
            raise ConfigError(f"unknown goal preset {self.goal!r}; use one of {', '.join(GOALS)}")
        if self.type == "ensemble":
            bad = [m for m in self.member_types if m not in _MEMBER_TYPES]
            if bad or len(self.member_types) < 2:
                raise ConfigError(
                    f"reward.members must list two or more of {', '.join(_MEMBER_TYPES)}, got {self.members!r}"
                )

    @property
    def member_types(self) -> list[str]:
        return [m.strip() for m in self.members.split(",") if m.strip()]

    @property
    def kinds(self) -> list[str]:
        """The reward models this config builds: the ensemble's members, or its one type."""
        return self.member_types if self.type == "ensemble" else [self.type]

    def shaping_for(self, task_extrinsic_coef: float) -> ShapingConfig:
        """:attr:`shaping` for a task whose ONI preset is ``task_extrinsic_coef`` (taken when
        ``shaping.c_ext`` is None); ``type="none"`` pays no intrinsic reward."""
        return dataclasses.replace(
            self.shaping,
            c_ext=task_extrinsic_coef if self.shaping.c_ext is None else self.shaping.c_ext,
            c_int=0.0 if self.type == "none" else self.shaping.c_int,
        )


def _new_model(kind: str, config: RewardConfig, goal: str) -> RewardModel:
    """An untrained reward model of one member ``kind`` (offline Motif's is a ranker)."""
    if kind == "cosine":
        return EmbeddingCosineReward(GOALS[goal])
    if kind == "retrieval":
        return RetrievalReward()
    if kind == "classification":
        return ClassifierReward(config.classifier)
    return RankerReward(config.ranker)


def scoring_model(config: RewardConfig, goal: str) -> RewardModel:
    """The reward model ``config`` describes, with no LLM, label store or trainer behind it: load
    a run's checkpointed ``reward["model"]`` state into it to score captions offline (``kudos
    report``). ``goal``: the task's goal preset, used when ``config.goal`` is None."""
    if config.type == "none":
        raise ConfigError("reward type 'none' has no reward model")
    goal = config.goal or goal
    return _combine(config, [_new_model(t, config, goal) for t in config.kinds])


def _combine(config: RewardConfig, members: list[RewardModel]) -> RewardModel:
    """The run's reward model from its members: their ensemble, or the one member."""
    return EnsembleReward(members, k=config.ensemble_k) if config.type == "ensemble" else members[0]


class IntrinsicReward:
    """The intrinsic-reward service of one run (see the module docstring). Built stopped: call
    :meth:`start` (after :meth:`load_state_dict` when resuming), and :meth:`close` at the end.

    Args:
        config: the reward choice; ``type`` must not be ``"none"``.
        llm: LLM and label-store settings.
        goal: the goal preset to use when ``config.goal`` is None (the task's).
        trainer: pace of the online reward-model trainers (default: ``config.trainer``).
        cpu: threads and priority of the embedded LLM and the trainers (the run's resolved
            ``cpu`` section; default: one thread each, the LLM at nice +5).
    """

    def __init__(
        self, config: RewardConfig, llm: LLMConfig, goal: str, trainer: RewardModelTrainerConfig | None = None,
        cpu: CPUBudget | None = None,
    ) -> None:
        if config.type == "none":
            raise ConfigError("reward type 'none' has no intrinsic reward")
        self.config = config
        self.goal = config.goal or goal
        self.llm = llm
        self._trainer_config = trainer or config.trainer
        self.cpu = cpu or CPUBudget()
        self.store: LabelStore | None = None
        self.backend: LLMBackend | None = None
        self.annotators: dict[str, Annotator] = {}
        self.trainers: list[RewardModelTrainer] = []
        self._closed = False
        try:
            members = [self._build(t) for t in config.kinds]
        except BaseException:
            self.close()
            raise
        self.model: RewardModel = _combine(config, members)

    # --- construction ----------------------------------------------------------------------------

    def _template(self, kind: str) -> PromptTemplate:
        return PromptTemplate(kind=kind, goal=self.goal, format=self.llm.format)  # type: ignore[arg-type]

    def _open_store(self) -> LabelStore:
        if self.store is None:
            self.store = open_store(self.llm.store or default_store_path())
        return self.store

    def _open_llm(self) -> None:
        self._open_store()
        if self.backend is None:
            startup.info("connecting to the LLM (%s)", self.llm.backend)
            self.backend = make_backend(
                self.llm.backend, threads=self.cpu.llm_threads, model=self.llm.model, config=self.llm.http
            )

    def _annotator(self, kind: str) -> Annotator:
        if kind not in self.annotators:
            self._open_llm()
            assert self.store is not None and self.backend is not None
            annotator = Annotator(self.backend, self.store, self._template(kind), self.llm.annotator, self.cpu.llm_nice)
            self.annotators[kind] = annotator
        return self.annotators[kind]

    def _build(self, kind: str) -> RewardModel:
        if kind == "motif":
            return self._offline_motif()
        model = _new_model(kind, self.config, self.goal)
        if kind == "cosine":
            return model
        question = "rank" if kind == "ranking" else "classify"
        # The classifier learns from the LLM's answer probabilities (soft labels, where stored);
        # retrieval and ranking keep its answers.
        soft = kind == "classification"
        self.trainers.append(follow_annotator(model, self._annotator(question), self._trainer_config, soft=soft,
                                              torch_threads=self.cpu.reward_trainer_threads))
        return model

    def _offline_motif(self) -> RewardModel:
        store = self._open_store()
        # The LLM is not asked during training: only its id and question are needed, and loading
        # the embedded model to read them would cost tens of seconds.
        backend: Any
        if self.llm.backend == "embedded":
            backend, model_id = EmbeddedLLM, EMBEDDED_MODEL_ID
        else:
            self._open_llm()
            backend = self.backend
            model_id = backend.model_id
        # The same question an annotator asks (for small models: pairs derived from scores).
        spec = resolve_spec(self._template("rank"), backend)
        startup.info("offline Motif: reading the stored pair labels")
        pairs, _ = StoreLabelSource(store, spec.version_hash, model_id).read(0, 10_000_000)
        if not pairs:
            raise KudosError(
                f"offline Motif found no pair labels for goal {self.goal!r} and model "
                f"{model_id!r} in {self.llm.store or default_store_path()}: label a pair "
                "dataset (JSONL lines with \"first\" and \"second\") with `kudos annotate` first"
            )
        return train_offline_motif(pairs, config=self.config.ranker, steps=self.config.motif_steps)

    def start(self) -> IntrinsicReward:
        """Start the annotators and trainers (after :meth:`load_state_dict` when resuming)."""
        for annotator in self.annotators.values():
            annotator.start()
        for trainer in self.trainers:
            trainer.start()
        return self

    # --- use ---------------------------------------------------------------------------------

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        """Intrinsic rewards of ``captions`` (N strings) under the latest model: float32 ``(N,)``.
        ``""`` is scored like any caption unless ``llm.annotator.skip_empty``."""
        return intrinsic_rewards(self.model, captions, self.llm.annotator.skip_empty)

    def submit(self, captions: Sequence[str]) -> None:
        """Hand the captions a learner saw (all of them, repeats included: ranking samples pairs
        by frequency) to the annotators; returns at once. Raises the one-line
        :class:`~kudos.feedback.backend.LLMConfigError` that stopped an annotator, if one did."""
        distinct = list(dict.fromkeys(captions))
        for annotator in self.annotators.values():
            annotator.submit(captions if annotator.spec.kind == "rank" else distinct)

    def label_feed(self) -> Annotator | None:
        """What to subscribe to for new classification labels (:class:`~kudos.rl.runstats.RunStats`
        follows it): the classification annotator, None without one."""
        return self.annotators.get("classify")

    def metrics(self) -> dict[str, float]:
        """Annotator and reward-model-trainer counters, flattened for logging."""
        out: dict[str, float] = {}
        for kind, annotator in self.annotators.items():
            m = annotator.metrics()
            out.update({
                f"llm/{kind}/labels": m.labels,
                f"llm/{kind}/labels_per_s": m.labels_per_s,
                f"llm/{kind}/queue_depth": m.queue_depth,
                f"llm/{kind}/cache_hit_rate": m.cache_hit_rate,
                f"llm/{kind}/parse_failures": m.parse_failures,
                f"llm/{kind}/server_errors": m.server_errors,
                f"llm/{kind}/dropped": m.dropped,
                f"llm/{kind}/llm_seconds": m.llm_seconds,
            })
        for key, value in getattr(self.backend, "stats", {}).items():
            if key in ("failed_requests", "http_errors", "bad_replies", "timeouts", "connection_errors"):
                out[f"llm/endpoints/{key}"] = value
        for i, trainer in enumerate(self.trainers):
            m = trainer.metrics
            out[f"reward_model/{i}/labels"] = m.labels
            out[f"reward_model/{i}/steps"] = m.steps
            out[f"reward_model/{i}/errors"] = m.errors
            if m.validation_accuracy is not None:
                out[f"reward_model/{i}/validation_accuracy"] = m.validation_accuracy
            if m.train_accuracy is not None:
                out[f"reward_model/{i}/train_accuracy"] = m.train_accuracy
        return out

    def state_dict(self) -> dict[str, Any]:
        """One consistent snapshot: every trainer is held between its steps while the model,
        its label dataset and the trainers' cursors are copied."""
        with ExitStack() as stack:
            for trainer in self.trainers:
                stack.enter_context(trainer.lock)
            return {
                "model": self.model.state_dict(),
                "trainers": [t.state_dict() for t in self.trainers],
                "annotators": {kind: a.state_dict() for kind, a in self.annotators.items()},
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if len(state["trainers"]) != len(self.trainers) or set(state["annotators"]) != set(self.annotators):
            raise ConfigError("the checkpoint was made with another reward type; resume with the same options")
        for trainer, saved in zip(self.trainers, state["trainers"]):
            trainer.load_state_dict(saved)
        for kind, saved in state["annotators"].items():
            self.annotators[kind].load_state_dict(saved)

    def close(self) -> None:
        """Stop the annotators (each stores the batch it has in flight), then the trainers (each
        publishes and checkpoints), then release the LLM and the store. :meth:`metrics` and
        :meth:`state_dict` stay readable, so a run's last report and checkpoint come after it.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        for annotator in self.annotators.values():
            annotator.close()
        for trainer in self.trainers:
            trainer.close()
        if self.backend is not None:
            self.backend.close()
        if self.store is not None:
            self.store.close()
