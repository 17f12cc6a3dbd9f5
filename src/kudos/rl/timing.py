"""Where a training run's time goes: per component, the fraction of wall time spent in each part
of its loop since the previous reading (the live display's and TensorBoard's ``time/*``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


class TimeShares:
    """Fractions of wall time per part, from cumulative seconds that ``read()`` returns.

    ``read()`` gives an array of cumulative seconds, one per name in ``parts`` (summed over
    ``processes`` processes doing the same loop, e.g. every rollout worker). Each call returns,
    per part, the seconds added since the previous call divided by ``processes`` x the wall time
    between the calls: 0.25 means a quarter of each process's time.
    """

    def __init__(self, parts: Sequence[str], read: Callable[[], np.ndarray], processes: int = 1) -> None:
        self.parts, self.read, self.processes = tuple(parts), read, processes
        self._last = (time.monotonic(), np.array(read(), dtype=np.float64))

    def __call__(self) -> dict[str, float]:
        now, seconds = time.monotonic(), np.array(self.read(), dtype=np.float64)
        (then, before), self._last = self._last, (now, seconds)
        wall = (now - then) * self.processes
        if wall <= 0:
            return {}
        return {part: float(spent / wall) for part, spent in zip(self.parts, seconds - before)}


class Stopwatch:
    """Cumulative seconds per part of a loop run by one thread: ``lap(part)`` charges the time
    since the previous lap (or the start) to ``part``; :class:`TimeShares` reads :meth:`read`."""

    def __init__(self, parts: Sequence[str]) -> None:
        self.parts = tuple(parts)
        self.seconds = np.zeros(len(self.parts))
        self._index = {part: i for i, part in enumerate(self.parts)}
        self._mark = time.perf_counter()

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.seconds[self._index[part]] += now - self._mark
        self._mark = now

    def read(self, current: str) -> np.ndarray:
        """``seconds`` with the lap in progress charged to ``current`` so far: read from inside
        that part, the parts add up to the wall time exactly."""
        seconds = self.seconds.copy()
        seconds[self._index[current]] += time.perf_counter() - self._mark
        return seconds
