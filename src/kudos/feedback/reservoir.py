"""The pair reservoir: a uniform sample of the captions seen, from which ranking pairs are drawn."""

from __future__ import annotations

import random
from typing import Any


class PairReservoir:
    """Reservoir sampling of captions (every caption offered so far is kept with equal
    probability) and the two ways the annotator draws ranking pairs from it. Not thread-safe:
    the annotator calls it under its lock.

    size: captions kept. subsample: :meth:`observe` offers every ``subsample``-th caption it sees
    (duplicates included, so frequent captions weigh more), as ONI does. seed: of the draws.
    """

    def __init__(self, size: int, subsample: int = 1, seed: int = 0) -> None:
        self.size, self.subsample = size, subsample
        self.captions: list[str] = []
        self.offered = 0  # captions offered to the reservoir, kept or not
        self.observed = 0  # captions seen by observe()
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.captions)

    def offer(self, caption: str) -> None:
        """Keep ``caption`` with probability size / offered, replacing a random kept one."""
        self.offered += 1
        if len(self.captions) < self.size:
            self.captions.append(caption)
        else:
            slot = self._rng.randrange(self.offered)
            if slot < self.size:
                self.captions[slot] = caption

    def observe(self, captions: list[str]) -> None:
        """ONI's intake: offer every ``subsample``-th caption seen."""
        for caption in captions:
            if self.observed % self.subsample == 0:
                self.offer(caption)
            self.observed += 1

    def sample_pairs(self, n: int) -> list[tuple[str, str]]:
        """ONI's pairs: ``n`` pairs of two uniform draws, less those of one caption twice (which
        teach a Bradley-Terry model nothing; ONI asks them anyway). None while empty."""
        if not self.captions:
            return []
        pairs = [(self._rng.choice(self.captions), self._rng.choice(self.captions)) for _ in range(n)]
        return [pair for pair in pairs if pair[0] != pair[1]]

    def pair_new(self, caption: str, n: int) -> list[tuple[str, str]]:
        """Up to ``n`` pairs of a new caption with kept ones, each in random order (so neither
        position is favoured); then offer the caption."""
        pairs = []
        for _ in range(n if self.captions else 0):
            partner = self._rng.choice(self.captions)
            if partner != caption:  # an identical pair says nothing
                pairs.append((caption, partner) if self._rng.random() < 0.5 else (partner, caption))
        self.offer(caption)
        return pairs

    def state_dict(self) -> dict[str, Any]:
        return {"reservoir": list(self.captions), "reservoir_seen": self.offered, "observed": self.observed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.captions = list(state.get("reservoir", []))[: self.size]
        self.offered = max(int(state.get("reservoir_seen", 0)), len(self.captions))
        self.observed = int(state.get("observed", 0))
