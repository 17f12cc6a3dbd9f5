"""Reward models, shaping and the trainer-agnostic API (see docs/rewards.md)."""

from kudos.rewards.base import CaptionError, CaptionLabel, Label, LabelError, PairLabel, RewardModel
from kudos.rewards.classifier import ClassifierConfig, ClassifierReward
from kudos.rewards.embedding import EmbeddingCosineReward
from kudos.rewards.ensemble import EnsembleReward
from kudos.rewards.learned import FrozenModelError, LearnedConfig, LearnedRewardModel
from kudos.rewards.motif import train_offline_motif
from kudos.rewards.ranker import RankerConfig, RankerReward, bradley_terry_loss
from kudos.rewards.retrieval import RetrievalReward
from kudos.rewards.shaping import NormalizerConfig, RewardShaper, ShapingConfig
from kudos.rewards.sources import LabelQueue, LabelSource, StoreLabelSource
from kudos.rewards.trainer import RewardModelTrainer, RewardModelTrainerConfig, RewardModelTrainerMetrics, follow_annotator
from kudos.rewards.wrapper import CaptionFn, IntrinsicRewardWrapper, shaped_rewards

__all__ = [
    "CaptionError",
    "CaptionFn",
    "CaptionLabel",
    "ClassifierConfig",
    "ClassifierReward",
    "EmbeddingCosineReward",
    "EnsembleReward",
    "FrozenModelError",
    "IntrinsicRewardWrapper",
    "Label",
    "LabelError",
    "LabelQueue",
    "LabelSource",
    "LearnedConfig",
    "LearnedRewardModel",
    "NormalizerConfig",
    "PairLabel",
    "RankerConfig",
    "RankerReward",
    "RetrievalReward",
    "RewardModel",
    "RewardShaper",
    "ShapingConfig",
    "RewardModelTrainer",
    "StoreLabelSource",
    "RewardModelTrainerConfig",
    "RewardModelTrainerMetrics",
    "bradley_terry_loss",
    "follow_annotator",
    "shaped_rewards",
    "train_offline_motif",
]
