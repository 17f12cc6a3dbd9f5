"""Label types, caption validation and the interface every reward model implements.

A reward model maps captions (the game message of a step, see :mod:`kudos.envs.captions`) to one
float32 intrinsic reward each. Models that learn do so from LLM labels of two kinds:

- :class:`CaptionLabel` — one caption and the probability that it is helpful (hard labels are
  0.0 or 1.0; the embedded LLM also gives soft ones), for retrieval and classification;
- :class:`PairLabel` — two captions and the probability that the first is preferred (1.0 first,
  0.0 second, 0.5 a tie), for ranking (Bradley-Terry).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from kudos.errors import KudosError

LabelKind = Literal["caption", "pair"]


class CaptionError(KudosError, TypeError):
    """A caption that is not a string (None, bytes, a number, ...)."""


class LabelError(KudosError, ValueError):
    """A label of the wrong kind or with a value outside [0, 1]."""


@dataclass(frozen=True)
class CaptionLabel:
    """``value``: P(caption is helpful) in [0, 1]."""

    caption: str
    value: float


@dataclass(frozen=True)
class PairLabel:
    """``preference``: P(``first`` is preferred over ``second``) in [0, 1]; 0.5 is a tie."""

    first: str
    second: str
    preference: float


Label = CaptionLabel | PairLabel


def caption_error(position: int, value: object) -> CaptionError:
    """The one-line error for a malformed caption at ``position`` of a batch."""
    if value is None:
        return CaptionError(f"caption {position} is None: pass str captions ('' for a step without a message)")
    return CaptionError(
        f"caption {position} is a {type(value).__name__}, not a str: decode game messages with "
        "kudos.envs.decode_caption before scoring them"
    )


def check_captions(captions: Iterable[object]) -> None:
    """Raise :class:`CaptionError` unless every element of ``captions`` is a ``str``."""
    if isinstance(captions, (str, bytes)):
        raise CaptionError("captions must be a sequence of str, not a single str or bytes: wrap it in a list")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise caption_error(i, caption)


def check_labels(labels: Iterable[Label], kind: LabelKind) -> list[Label]:
    """Validate labels for a model that learns from ``kind``; returns them as a list."""
    expected = CaptionLabel if kind == "caption" else PairLabel
    out = list(labels)
    for i, label in enumerate(out):
        if not isinstance(label, expected):
            raise LabelError(
                f"label {i} is a {type(label).__name__}; this model learns from {expected.__name__}s"
            )
        value = label.value if isinstance(label, CaptionLabel) else label.preference
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise LabelError(f"label {i} has value {value}; labels are probabilities in [0, 1]")
        texts = (label.caption,) if isinstance(label, CaptionLabel) else (label.first, label.second)
        for text in texts:
            if not isinstance(text, str):
                raise CaptionError(f"label {i} has a {type(text).__name__} caption, not a str")
    return out


class RewardModel(ABC):
    """Maps captions to intrinsic rewards; learns from labels of kind :attr:`learns_from`.

    ``__call__`` is safe to call from one thread while another thread trains the model (learned
    models score with a published snapshot of their weights, see
    :class:`kudos.rewards.learned.LearnedRewardModel`).
    """

    #: The label kind :meth:`fit` accepts; None for models that do not learn.
    learns_from: ClassVar[LabelKind | None] = None

    @abstractmethod
    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        """Rewards for ``captions`` (N strings): float32 ``(N,)``, one per caption."""

    @abstractmethod
    def fit(self, labels: Iterable[Label]) -> None:
        """Learn from ``labels`` (incrementally: earlier labels are kept)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the model exactly (tensors, arrays, plain values)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


@runtime_checkable
class TrainsBySteps(Protocol):
    """What the online reward-model trainer (:mod:`kudos.rewards.trainer`) needs from a model that
    learns by gradient steps (:class:`~kudos.rewards.learned.LearnedRewardModel`: classifier and
    ranker). A model without it (retrieval) is simply :meth:`RewardModel.fit` on each read."""

    frozen: bool  # offline Motif: scores, never trains
    steps: int  # gradient steps taken so far
    version: int  # weight publications so far (what scoring uses)

    def add_labels(self, labels: Iterable[Label]) -> int:
        """Keep ``labels`` for training (and validation); returns how many are new."""
        ...

    def labels_held(self, split: Literal["all", "train"] = "all") -> int:
        """Labels kept: all of them, or those in the training split."""
        ...

    def train_step(self) -> float:
        """One gradient step; returns the loss."""
        ...

    def publish(self) -> None:
        """Hand the current weights to scoring."""
        ...

    def accuracy(self, split: Literal["train", "validation"], limit: int = 4096) -> float | None:
        """Accuracy on the newest ``limit`` labels of ``split``; None without any."""
        ...
