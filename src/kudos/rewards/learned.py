"""Reward models with trained weights: shared network, training step, snapshot and cache.

A :class:`LearnedRewardModel` keeps two copies of its network. The *training* copy is updated by
:meth:`~LearnedRewardModel.train_step` (one thread: the caller of :meth:`fit`, or the online
trainer); :meth:`~LearnedRewardModel.publish` copies it into a frozen *snapshot* that scoring
uses, together with a fresh per-caption cache. Scoring therefore never waits for training and
never sees half-updated weights, and a batch of 4,096 captions costs one network pass per caption
not yet scored by the current snapshot (NetHack repeats a small set of messages). With
``average`` > 0 the snapshot is an exponential moving average of the training weights rather than
their latest value: it generalises a little better and moves less from one publish to the next.
"""

from __future__ import annotations

import copy
import logging
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from kudos.errors import ConfigError, KudosError
from kudos.rewards.base import Label, LabelKind, RewardModel, caption_error, check_captions
from kudos.rewards.dataset import LabelDataset
from kudos.rewards.encoders import MAX_CAPTION_BYTES, EncoderName, Pooling, make_encoder

log = logging.getLogger(__name__)

# Captions scored per network pass (bounds activation memory), and the caption-length bands
# (in characters) that are scored together.
_SCORE_CHUNK = 512
_LENGTH_GROUP = 32


class FrozenModelError(KudosError, RuntimeError):
    """Training was asked of a frozen model (offline Motif)."""


@dataclass
class LearnedConfig:
    """Network and optimisation settings shared by the classifier and the ranker.

    ``encoder``: ``"bytes"`` (character CNN over the caption's bytes, trained) or ``"minilm"``
    (frozen all-MiniLM-L6-v2 sentence embeddings). ``embed_dim``, ``channels``,
    ``kernel_size``, ``conv_layers``: CNN sizes. ``pooling``: how the CNN reduces positions
    (``"max"``, or ``"meanmax"``: mean and max side by side). ``dropout``: share of encoder
    features zeroed in training (a regulariser; scoring uses every feature). ``hidden``: MLP
    width. ``fit_steps``: gradient steps of one :meth:`LearnedRewardModel.fit` call.
    ``average``: decay per step of the moving average of the training weights that
    :meth:`LearnedRewardModel.publish` hands to scoring, in [0, 1) (0: the training weights
    themselves); over the first steps the decay is lowered to ``(1 + t) / (10 + t)`` at step
    ``t``, so the average does not dwell on the initial weights.
    ``validation_fraction``: labels held out (by caption) for validation accuracy.
    ``cache_limit``: captions cached per snapshot before the cache is emptied.
    """

    encoder: EncoderName = "bytes"
    embed_dim: int = 32
    channels: int = 64
    kernel_size: int = 3
    conv_layers: int = 2
    pooling: Pooling = "max"
    dropout: float = 0.0
    hidden: int = 64
    lr: float = 1e-3
    average: float = 0.0
    weight_decay: float = 1e-5
    batch_size: int = 128
    fit_steps: int = 500
    validation_fraction: float = 0.1
    seed: int = 0
    cache_limit: int = 500_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.average < 1.0:
            raise ConfigError(f"average must be in [0, 1), got {self.average}")


class CaptionScorer(nn.Module):
    """Text encoder -> MLP -> one scalar per caption (a logit or a preference score)."""

    def __init__(self, config: LearnedConfig) -> None:
        super().__init__()
        self.encoder = make_encoder(
            config.encoder,
            embed_dim=config.embed_dim,
            channels=config.channels,
            kernel_size=config.kernel_size,
            layers=config.conv_layers,
            pooling=config.pooling,
        )
        self.head = nn.Sequential(
            nn.Linear(self.encoder.dim, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 1)
        )
        self.dropout = config.dropout
        # Dropout masks come from the network's own generator: a checkpoint resumes them exactly,
        # and a training thread never draws from (or disturbs) torch's global generator.
        self.generator = torch.Generator().manual_seed(config.seed)

    def prepare(self, captions: Sequence[str]) -> tuple[torch.Tensor, ...]:
        return self.encoder.prepare(captions)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Prepared inputs of N captions -> float32 ``(N,)``."""
        features = self.encoder(*inputs)
        if self.training and self.dropout > 0.0:
            keep = torch.empty_like(features).bernoulli_(1.0 - self.dropout, generator=self.generator)
            features = features * keep / (1.0 - self.dropout)
        return self.head(features).squeeze(-1)

    def score(self, captions: Sequence[str]) -> torch.Tensor:
        """float32 ``(N,)`` scores of ``captions``; gradients flow if enabled.

        Captions are scored in groups of similar length (and at most 512 at a time), so a few
        long messages do not make every short one pay for 256 bytes of padding.
        """
        groups: dict[int, list[int]] = {}
        for i, caption in enumerate(captions):
            groups.setdefault(min(len(caption), MAX_CAPTION_BYTES) // _LENGTH_GROUP, []).append(i)
        order: list[int] = []
        parts: list[torch.Tensor] = []
        for members in groups.values():
            for start in range(0, len(members), _SCORE_CHUNK):
                chunk = members[start : start + _SCORE_CHUNK]
                parts.append(self(*self.prepare([captions[i] for i in chunk])))
                order.extend(chunk)
        if not parts:
            return torch.zeros(0)
        inverse = torch.empty(len(order), dtype=torch.int64)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(parts)[inverse]


@dataclass
class _Snapshot:
    """Published weights and the values they gave each caption scored so far."""

    version: int
    network: CaptionScorer
    cache: dict[str, float] = field(default_factory=dict)


class LearnedRewardModel(RewardModel):
    """Base of :class:`~kudos.rewards.classifier.ClassifierReward` and
    :class:`~kudos.rewards.ranker.RankerReward`: see the module docstring for the threading.

    Subclasses define the loss (:meth:`loss`), how network outputs become cached values
    (:meth:`to_value`), how cached values become rewards (:meth:`to_reward`) and accuracy.
    """

    learns_from: ClassVar[LabelKind]

    def __init__(self, config: LearnedConfig) -> None:
        self.config = config
        # Seeded initialisation that leaves torch's global generator as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.network = CaptionScorer(config)
        # The weights publish() hands to scoring when averaging, else None (the training weights).
        self.averaged = self._frozen_copy(self.network) if config.average > 0.0 else None
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.dataset = LabelDataset(self.learns_from, config.validation_fraction)
        self.rng = np.random.default_rng(config.seed)
        self.steps = 0
        self.frozen = False
        self._snapshot = _Snapshot(0, self._frozen_copy(self.network))

    # --- scoring (any thread) ---------------------------------------------------------------

    @property
    def version(self) -> int:
        """How many times weights were published (0: the initial weights)."""
        return self._snapshot.version

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        if isinstance(captions, (str, bytes)):
            check_captions(captions)
        snapshot = self._snapshot  # one read: a concurrent publish() does not mix two snapshots
        cache = snapshot.cache
        try:
            values = list(map(cache.get, captions))
        except TypeError:  # an unhashable element
            check_captions(captions)
            raise
        if None in values:
            missing: dict[str, None] = {}
            for i, value in enumerate(values):
                if value is None:
                    caption = captions[i]
                    if not isinstance(caption, str):
                        raise caption_error(i, caption)
                    missing[caption] = None
            with torch.inference_mode():
                scored = self.to_value(snapshot.network.score(list(missing))).tolist()
            if len(cache) + len(missing) > self.config.cache_limit:
                cache.clear()
            cache.update(zip(missing, scored))
            fresh = dict(zip(missing, scored))
            values = [fresh[c] if v is None else v for c, v in zip(captions, values)]
        return self.to_reward(np.array(values, dtype=np.float32))

    def raw_scores(self, captions: Sequence[str]) -> np.ndarray:
        """Cached values (probabilities or scores) of the published snapshot, float32 ``(N,)``."""
        check_captions(captions)
        with torch.inference_mode():
            return self.to_value(self._snapshot.network.score(list(captions))).numpy().astype(np.float32)

    # --- training (one thread) ----------------------------------------------------------------

    def add_labels(self, labels: Iterable[Label]) -> int:
        """Add labels to the training/validation data; returns how many are new."""
        self._check_not_frozen()
        return self.dataset.add(labels)

    def labels_held(self, split: Literal["all", "train"] = "all") -> int:
        """Labels kept: all of them, or those in the training split."""
        return len(self.dataset) if split == "all" else len(self.dataset.split()[0])

    def train_step(self) -> float:
        """One gradient step on a batch of training labels; returns the loss."""
        self._check_not_frozen()
        index = self.dataset.sample(self.rng, self.config.batch_size, self.balanced_batches)
        texts, targets = self.dataset.rows(index)
        self.network.train()
        loss = self.loss(texts, torch.from_numpy(targets))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        if self.averaged is not None:
            decay = min(self.config.average, self.steps / (9.0 + self.steps))
            with torch.no_grad():
                for average, weight in zip(self.averaged.parameters(), self.network.parameters()):
                    average.lerp_(weight, 1.0 - decay)
        return float(loss.detach())

    @property
    def published_weights(self) -> CaptionScorer:
        """The network :meth:`publish` copies: the moving average when averaging, else the
        training network itself."""
        return self.network if self.averaged is None else self.averaged

    def publish(self) -> None:
        """Make the current training weights (or their moving average) the ones scoring uses."""
        self._snapshot = _Snapshot(self._snapshot.version + 1, self._frozen_copy(self.published_weights))

    def fit(self, labels: Iterable[Label], steps: int | None = None) -> None:
        """Add ``labels``, take ``steps`` gradient steps (default ``config.fit_steps``), publish."""
        self.add_labels(labels)
        if not self.labels_held("train"):
            raise KudosError("no training labels: every label fell in the validation split; pass more labels")
        for _ in range(self.config.fit_steps if steps is None else steps):
            self.train_step()
        self.publish()

    def accuracy(self, split: Literal["train", "validation"], limit: int = 4096) -> float | None:
        """Accuracy of the weights the next :meth:`publish` would hand to scoring, on the newest
        ``limit`` labels of ``split``; None if there are none to judge."""
        train, validation, _ = self.dataset.split()
        index = (train if split == "train" else validation)[-limit:]
        if len(index) == 0:
            return None
        texts, targets = self.dataset.rows(index)
        network = self.published_weights
        network.eval()
        with torch.inference_mode():
            return self.label_accuracy(network, texts, targets)

    def freeze(self) -> None:
        """Publish the current weights and refuse any further training."""
        self.publish()
        self.frozen = True

    def _check_not_frozen(self) -> None:
        if self.frozen:
            raise FrozenModelError(f"this {type(self).__name__} is frozen (offline Motif); it cannot learn more labels")

    @staticmethod
    def _frozen_copy(network: CaptionScorer) -> CaptionScorer:
        frozen = copy.deepcopy(network).eval()
        frozen.requires_grad_(False)
        return frozen

    # --- subclass hooks -----------------------------------------------------------------------

    #: Draw training batches half positive, half negative (classification with balance="sample").
    balanced_batches: bool = False

    @abstractmethod
    def loss(self, texts: list[tuple[str, ...]], targets: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of the training network on a batch of label rows."""

    @abstractmethod
    def label_accuracy(self, network: CaptionScorer, texts: list[tuple[str, ...]], targets: np.ndarray) -> float | None:
        """Share of rows ``network`` gets right; None if no row can be judged."""

    def to_value(self, outputs: torch.Tensor) -> torch.Tensor:
        """Network outputs -> the per-caption values that are cached (default: unchanged)."""
        return outputs

    @abstractmethod
    def to_reward(self, values: np.ndarray) -> np.ndarray:
        """Cached values of a batch, float32 ``(N,)`` -> rewards float32 ``(N,)``."""

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {
            "network": {k: v.clone() for k, v in self.network.state_dict().items()},
            "published": {k: v.clone() for k, v in self._snapshot.network.state_dict().items()},
            "version": self._snapshot.version,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "dataset": self.dataset.state_dict(),
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "dropout_rng": self.network.generator.get_state(),
            "steps": self.steps,
            "frozen": self.frozen,
        }
        if self.averaged is not None:
            state["averaged"] = {k: v.clone() for k, v in self.averaged.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.dataset.load_state_dict(state["dataset"])
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        if "dropout_rng" in state:  # checkpoints from before feature dropout have none
            self.network.generator.set_state(state["dropout_rng"])
        self.steps = int(state["steps"])
        self.frozen = bool(state["frozen"])
        if self.averaged is not None:
            # A checkpoint written without averaging starts the average at its training weights.
            self.averaged.load_state_dict(state.get("averaged", state["network"]))
        published = self._frozen_copy(self.network)
        published.load_state_dict(state["published"])
        self._snapshot = _Snapshot(int(state["version"]), published)
