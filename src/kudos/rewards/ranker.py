"""ONI-Ranking / Motif: a caption scorer trained with the Bradley-Terry loss on LLM preferences.

For a pair (a, b) with ``preference`` p = P(a preferred), the model says
P(a preferred) = sigmoid(s(a) - s(b)), and the loss is the cross-entropy
``-(p log sigmoid(s(a) - s(b)) + (1 - p) log sigmoid(s(b) - s(a)))``; a tie (p = 0.5) pulls the
two scores together.

Scores have no fixed scale, so rewards are the scores normalised by their running mean and
standard deviation, kept where that z-score is above -0.5 and zeroed elsewhere: ONI's
``r̂ · 1[r̂ > eps_threshold_quantile]`` with its default -0.5 (a z-score despite the name), strict.
ONI's published code computes that value but, through a variable-name typo, hands the agent the
raw score; ``normalization="published"`` reproduces that (statistics are still updated),
``"intended"`` (default) applies them. ``normalizer=NormalizerConfig(normalize=True,
threshold="zscore", threshold_value=0.0, keep_equal=True)`` is kudos's earlier cut (z >= 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from kudos.errors import ConfigError
from kudos.rewards.base import LabelKind
from kudos.rewards.learned import CaptionScorer, LearnedConfig, LearnedRewardModel
from kudos.rewards.shaping import Normalizer, NormalizerConfig


def bradley_terry_loss(first: torch.Tensor, second: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
    """Mean Bradley-Terry cross-entropy of scores ``first``/``second`` (``(N,)``) given
    ``preference`` = P(first preferred) in [0, 1], ``(N,)``."""
    return F.binary_cross_entropy_with_logits(first - second, preference)


@dataclass
class RankerConfig(LearnedConfig):
    """``normalization``: ``"intended"`` rewards are the normalised, thresholded scores;
    ``"published"`` rewards are the raw scores (ONI's released behaviour). ``normalizer``: the
    running normalisation and threshold (default: ONI's intended one, z-score kept where z > -0.5).
    """

    normalization: Literal["intended", "published"] = "intended"
    normalizer: NormalizerConfig = field(
        default_factory=lambda: NormalizerConfig(normalize=True, threshold="zscore", threshold_value=-0.5)
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.normalization not in ("intended", "published"):
            raise ConfigError(f"normalization must be 'intended' or 'published', got {self.normalization!r}")
        if isinstance(self.normalizer, dict):  # from YAML
            self.normalizer = NormalizerConfig(**self.normalizer)


class RankerReward(LearnedRewardModel):
    """Scalar caption scorer learned from :class:`PairLabel`\\ s (ties as 0.5)."""

    learns_from: ClassVar[LabelKind] = "pair"

    def __init__(self, config: RankerConfig | None = None) -> None:
        self.config: RankerConfig = config or RankerConfig()
        super().__init__(self.config)
        self.normalizer = Normalizer(self.config.normalizer)

    @staticmethod
    def _pair_scores(network: CaptionScorer, texts: list[tuple[str, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = network.score([t[0] for t in texts] + [t[1] for t in texts])
        return scores[: len(texts)], scores[len(texts) :]

    def loss(self, texts: list[tuple[str, ...]], targets: torch.Tensor) -> torch.Tensor:
        return bradley_terry_loss(*self._pair_scores(self.network, texts), targets)

    def label_accuracy(self, network: CaptionScorer, texts: list[tuple[str, ...]], targets: np.ndarray) -> float | None:
        """Share of non-tied pairs ordered as the labels order them."""
        decided = targets != 0.5
        if not decided.any():
            return None
        first, second = self._pair_scores(network, [t for t, d in zip(texts, decided) if d])
        return float(np.mean((first > second).numpy() == (targets[decided] > 0.5)))

    def to_reward(self, values: np.ndarray) -> np.ndarray:
        shaped = self.normalizer(values)
        return values if self.config.normalization == "published" else shaped

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "normalizer": self.normalizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.normalizer.load_state_dict(state["normalizer"])
