"""Exponential backoff with jitter, for retrying after a fault.

Every retry loop in kudos (the LLM endpoint pool's requests and health checks, the annotator after
an LLM or store fault) waits through one :class:`Backoff`. Jitter spreads the retries of clients
that failed together (several pool threads, several runs sharing an endpoint), which would
otherwise hit the recovering server in step.
"""

from __future__ import annotations

import random
import threading
from typing import Literal

Jitter = Literal["equal", "full", "none"]


class Backoff:
    """Delays for consecutive faults: the n-th (from 1) is drawn from the nominal
    ``min(cap_s, base_s * 2 ** (n - 1))`` (seconds) by ``jitter``:

    - ``"equal"`` (default): uniform in [nominal / 2, nominal], so a retry still waits at least
      half the nominal delay;
    - ``"full"``: uniform in [0, nominal];
    - ``"none"``: the nominal delay.

    ``seed`` or ``rng`` makes the draws reproducible (tests); ``rng`` may be shared between
    instances. Not thread-safe: one instance per retry loop (a shared ``rng`` is fine).
    """

    def __init__(
        self,
        base_s: float,
        cap_s: float,
        jitter: Jitter = "equal",
        seed: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if base_s < 0 or cap_s < 0:
            raise ValueError(f"backoff delays must be >= 0, got base_s={base_s}, cap_s={cap_s}")
        if jitter not in ("equal", "full", "none"):
            raise ValueError(f"jitter must be equal, full or none, got {jitter!r}")
        self.base_s, self.cap_s, self.jitter = base_s, cap_s, jitter
        self.failures = 0  # consecutive faults so far
        self._rng = rng or random.Random(seed)

    def nominal(self, failures: int) -> float:
        """The delay before jitter after ``failures`` consecutive faults (0 for none)."""
        if failures <= 0:
            return 0.0
        return min(self.cap_s, self.base_s * 2.0 ** min(failures - 1, 64))

    def next(self) -> float:
        """Count one more fault and return the delay to wait before the next try (seconds)."""
        self.failures += 1
        delay = self.nominal(self.failures)
        if self.jitter == "full":
            return self._rng.uniform(0.0, delay)
        if self.jitter == "equal":
            return self._rng.uniform(delay / 2, delay)
        return delay

    def reset(self) -> None:
        """A success: the next fault starts again from ``base_s``."""
        self.failures = 0

    def wait(self, stop: threading.Event) -> bool:
        """Wait :meth:`next`'s delay, or less if ``stop`` is set meanwhile; True if it was."""
        return stop.wait(self.next())
