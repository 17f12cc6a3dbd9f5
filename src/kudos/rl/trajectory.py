"""Shared-memory trajectory buffers: fixed slots of T steps that rollout workers fill in place.

A *slot* holds one trajectory of ``T`` steps for the ``E`` envs of one worker half (see
:mod:`kudos.rl.workers`): the policy observations (``T+1`` rows, the last one the bootstrap
observation), the episode-start flags, the actions with their behaviour log-probabilities and
values, the env rewards, the captions (fixed-width Latin-1 bytes) and their per-episode counts,
the GRU state before row 0, the policy version that acted at each step and the global ids of the
slot's envs. Only slot indices travel between processes; the arrays stay where they are.

Who owns a slot is recorded by the learner-side :class:`SlotPool` (one process, one lock): a
slot is free, handed to a worker, or full (delivered, waiting for or being used by the learner).
When a worker dies, :meth:`SlotPool.reclaim` returns every slot it held to the free pool, so no
slot is lost and none is handed out twice.

Memory comes from ``multiprocessing`` ``RawArray`` s: Python maps them from a file in
``/dev/shm`` (or the temp dir when ``/dev/shm`` is too small) that it unlinks right after
creating it, and passes the descriptor to spawned children. The memory therefore has no name
anyone could leak: it is freed when the last process mapping it exits, after a clean close or a
``SIGKILL`` alike (the workers die with their parent, see :mod:`kudos.rl.workers`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Width of a stored caption in bytes. NLE's message line is 256 bytes, but a caption joins the
#: messages of a --More-- chain, so it can be longer; longer ones are cut (and counted).
CAPTION_BYTES = 512


@dataclass(frozen=True)
class TrajectoryLayout:
    """Shapes of the trajectory buffers.

    Args:
        num_slots: S, the number of slots.
        steps: T, steps per slot.
        envs: E, envs per slot (one worker half).
        hidden_size: H, the policy's core-state size.
        observations: ``(key, shape, dtype string)`` of each policy observation of one env.
        caption_bytes: bytes per stored caption.
    """

    num_slots: int
    steps: int
    envs: int
    hidden_size: int
    observations: tuple[tuple[str, tuple[int, ...], str], ...]
    caption_bytes: int = CAPTION_BYTES

    def fields(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every array's full shape (slot axis first) and dtype."""
        S, T, E = self.num_slots, self.steps, self.envs
        fields = {f"obs/{key}": ((S, T + 1, E, *shape), dtype) for key, shape, dtype in self.observations}
        fields.update(
            dones=((S, T + 1, E), "|b1"),  # dones[t]: obs[t] starts a new episode
            actions=((S, T, E), "<i8"),
            log_probs=((S, T, E), "<f4"),
            values=((S, T, E), "<f4"),
            env_rewards=((S, T, E), "<f4"),
            caption_counts=((S, T, E), "<i4"),
            captions=((S, T, E, self.caption_bytes), "|u1"),
            initial_core_state=((S, E, self.hidden_size), "<f4"),
            versions=((S, T), "<i8"),  # the policy version that chose the actions of step t
            env_ids=((S, E), "<i4"),
        )
        return fields

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in self.fields().values())


class TrajectoryBuffers:
    """The slot arrays in shared memory. Picklable to spawned children (the memory is shared,
    not copied); :attr:`arrays` are numpy views, in every process that holds the object."""

    def __init__(self, layout: TrajectoryLayout, ctx: Any) -> None:
        self.layout = layout
        self._raw = {
            name: ctx.RawArray("b", int(np.prod(shape)) * np.dtype(dtype).itemsize)
            for name, (shape, dtype) in layout.fields().items()
        }
        self.arrays = self._views()

    def _views(self) -> dict[str, np.ndarray]:
        return {
            name: np.frombuffer(self._raw[name], dtype=np.dtype(dtype)).reshape(shape)
            for name, (shape, dtype) in self.layout.fields().items()
        }

    def obs(self, key: str) -> np.ndarray:
        return self.arrays[f"obs/{key}"]

    def __getstate__(self) -> dict[str, Any]:
        return {"layout": self.layout, "_raw": self._raw}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.arrays = self._views()


def encode_caption(caption: str, width: int) -> tuple[bytes, bool]:
    """``caption`` as NUL-padded Latin-1 bytes of ``width``, and whether it was cut.

    Captions are decoded from game bytes as Latin-1 (:func:`kudos.envs.captions.decode_caption`),
    so encoding them back is lossless.
    """
    raw = caption.encode("latin-1", errors="replace")
    return raw[:width].ljust(width, b"\0"), len(raw) > width


class CaptionDecoder:
    """Stored caption bytes -> strings, memoised (a run sees a small vocabulary of captions)."""

    _LIMIT = 65_536

    def __init__(self) -> None:
        self._cache: dict[bytes, str] = {}

    def __call__(self, rows: np.ndarray) -> list[str]:
        """``rows`` ``(N, caption_bytes)`` uint8 -> N strings."""
        out = [""] * len(rows)
        for i in np.flatnonzero(rows[:, 0]):  # the empty caption (most steps) starts with NUL
            raw = rows[i].tobytes()
            text = self._cache.get(raw)
            if text is None:
                text = raw.rstrip(b"\0").decode("latin-1")
                if len(self._cache) >= self._LIMIT:
                    self._cache.clear()
                self._cache[raw] = text
            out[i] = text
        return out


class SlotError(RuntimeError):
    """The slot protocol was broken (a slot delivered by a worker that did not hold it)."""


FREE = -1
FULL = -2


class SlotPool:
    """Which slot is where: free (in the free queue), held by worker ``w``, or full.

    Thread-safe. Every slot is in exactly one of those states; :meth:`check` verifies it.
    """

    def __init__(self, num_slots: int) -> None:
        self.owner = np.full(num_slots, FREE, dtype=np.int64)
        self._free: deque[int] = deque(range(num_slots))
        self._lock = threading.Lock()

    def take(self, worker: int) -> int | None:
        """A free slot, now held by ``worker``; None if none is free."""
        with self._lock:
            if not self._free:
                return None
            slot = self._free.popleft()
            self.owner[slot] = worker
            return slot

    def deliver(self, worker: int, slot: int) -> None:
        """``worker`` handed ``slot`` back full."""
        with self._lock:
            if self.owner[slot] != worker:
                raise SlotError(f"worker {worker} delivered slot {slot}, held by {int(self.owner[slot])}")
            self.owner[slot] = FULL

    def release(self, slot: int) -> None:
        """The learner is done with full ``slot``: back to the free queue."""
        with self._lock:
            if self.owner[slot] != FULL:
                raise SlotError(f"slot {slot} released but not full (owner {int(self.owner[slot])})")
            self.owner[slot] = FREE
            self._free.append(slot)

    def reclaim(self, worker: int) -> list[int]:
        """Every slot ``worker`` held, back to the free queue (the worker died)."""
        with self._lock:
            slots = np.flatnonzero(self.owner == worker).tolist()
            self.owner[slots] = FREE
            self._free.extend(slots)
            return slots

    @property
    def num_free(self) -> int:
        return len(self._free)

    def check(self) -> None:
        """Raise SlotError unless the free queue holds exactly the free slots, each once."""
        with self._lock:
            free = list(self._free)
            if len(set(free)) != len(free) or sorted(free) != np.flatnonzero(self.owner == FREE).tolist():
                raise SlotError(f"free queue {sorted(free)} disagrees with the owners {self.owner.tolist()}")
