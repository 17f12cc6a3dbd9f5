"""Offline Motif: a ranker trained once on a fixed set of annotated caption pairs, then frozen.

Motif (arXiv 2310.00166) annotates a dataset of caption pairs collected beforehand, fits a
Bradley-Terry reward model to it, and trains the agent with that fixed reward. Its rewards are
normalised with statistics of the annotated dataset, which are frozen with the weights.
"""

from __future__ import annotations

from collections.abc import Iterable

from kudos.errors import KudosError
from kudos.rewards.base import PairLabel, check_labels
from kudos.rewards.ranker import RankerConfig, RankerReward


def train_offline_motif(
    pairs: Iterable[PairLabel], config: RankerConfig | None = None, steps: int = 2000
) -> RankerReward:
    """Fit a :class:`RankerReward` to ``pairs`` with ``steps`` gradient steps and freeze it.

    The pairs typically come from ``kudos annotate`` on a dataset of pairs (read them back from
    the label store). The returned model refuses further training (:class:`FrozenModelError`).
    """
    pairs = check_labels(pairs, "pair")
    if not pairs:
        raise KudosError("offline Motif needs annotated caption pairs; run `kudos annotate` on a pair dataset first")
    ranker = RankerReward(config)
    ranker.fit(pairs, steps=steps)
    captions = list(dict.fromkeys(text for pair in ranker.dataset.texts for text in pair))
    ranker.normalizer(ranker.raw_scores(captions))
    ranker.normalizer.updating = False
    ranker.freeze()
    return ranker
