"""Offline Motif: a ranker trained once on a fixed set of annotated caption pairs, then frozen.

Motif (arXiv 2310.00166) annotates a dataset of caption pairs collected beforehand, fits a
Bradley-Terry reward model to it, and trains the agent with that fixed reward. Its rewards are
normalised with statistics of the annotated dataset, which are frozen with the weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from kudos import STARTUP_LOG
from kudos.errors import KudosError
from kudos.rewards.base import PairLabel, check_labels
from kudos.rewards.ranker import RankerConfig, RankerReward

startup = logging.getLogger(STARTUP_LOG)
_PROGRESS_EVERY_S = 2.0


def train_offline_motif(
    pairs: Iterable[PairLabel], config: RankerConfig | None = None, steps: int = 2000
) -> RankerReward:
    """Fit a :class:`RankerReward` to ``pairs`` with ``steps`` gradient steps and freeze it.

    The pairs typically come from ``kudos annotate`` on a dataset of pairs (read them back from
    the label store). The returned model refuses further training (:class:`FrozenModelError`).
    Progress goes to the ``kudos.startup`` logger every 2 s.
    """
    pairs = check_labels(pairs, "pair")
    if not pairs:
        raise KudosError("offline Motif needs annotated caption pairs; run `kudos annotate` on a pair dataset first")
    ranker = RankerReward(config)
    ranker.fit(pairs, steps=0)
    startup.info("offline Motif: fitting a ranker to %d pairs (%d steps)", len(pairs), steps)
    next_report = time.monotonic() + _PROGRESS_EVERY_S
    for step in range(1, steps + 1):
        loss = ranker.train_step()
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + _PROGRESS_EVERY_S
            startup.info("offline Motif: step %d / %d, loss %.4f", step, steps, loss)
    ranker.publish()
    captions = list(dict.fromkeys(text for pair in ranker.dataset.texts for text in pair))
    startup.info("offline Motif: scoring %d captions for the reward normalisation", len(captions))
    ranker.normalizer(ranker.raw_scores(captions))
    ranker.normalizer.updating = False
    ranker.freeze()
    return ranker
