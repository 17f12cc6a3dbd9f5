"""Ensembles of reward models with a disagreement penalty, against reward hacking.

The reward is ``mean - k * std`` over the members' rewards for each caption: a caption that only
some members like (an artefact of one model rather than a shared judgement) is paid less.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kudos.errors import ConfigError
from kudos.rewards.base import CaptionLabel, Label, RewardModel, check_captions


class EnsembleReward(RewardModel):
    """Combines ``members`` (any reward models, at least two) as ``mean - k * std``.

    :meth:`fit` gives each learning member the labels of its kind; members that do not learn
    (the embedding baseline) are left as they are.
    """

    learns_from = None

    def __init__(self, members: Sequence[RewardModel], k: float = 1.0) -> None:
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        if k < 0:
            raise ConfigError(f"the disagreement penalty k must be >= 0, got {k}")
        self.members = list(members)
        self.k = k

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        check_captions(captions)
        rewards = np.stack([member(captions) for member in self.members])  # (M, N)
        return (rewards.mean(axis=0) - self.k * rewards.std(axis=0)).astype(np.float32)

    def fit(self, labels: Iterable[Label]) -> None:
        labels = list(labels)
        for member in self.members:
            if member.learns_from is None:
                continue
            wants_captions = member.learns_from == "caption"
            own = [label for label in labels if isinstance(label, CaptionLabel) == wants_captions]
            if own:
                member.fit(own)

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k, "members": [member.state_dict() for member in self.members]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["members"]) != len(self.members):
            raise ConfigError(f"saved ensemble has {len(state['members'])} members, this one {len(self.members)}")
        self.k = float(state["k"])
        for member, member_state in zip(self.members, state["members"]):
            member.load_state_dict(member_state)
