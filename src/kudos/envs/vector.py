"""Vectorised rollout: B NetHack envs stepped by worker processes over shared memory.

Each worker process owns a contiguous slice of the envs and steps them in sequence. The games write
their observations straight into shared memory; rewards, flags and captions (short strings) come
back through the worker's pipe.
An env whose episode ends is reset in the same step (the returned observation is the first one
of its next episode; the finished episode is summarised in :attr:`VecStep.episodes`).

A worker that dies (segfault, OOM kill, ``kill -9``) is restarted and the event logged; the
steps of its envs in that batch come back truncated, with no reward. Workers ignore SIGINT so
that Ctrl-C reaches the parent, which closes them cleanly.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from kudos.envs.nethack import DEFAULT_OBSERVATION_KEYS, make_env
from kudos.envs.tasks import TaskSpec

log = logging.getLogger(__name__)

# Seed offset between generations of a restarted worker, so a restarted env does not replay
# the episodes it already played.
_RESTART_SEED_STRIDE = 1_000_003
# How long an idle worker polls for its next command before it blocks on the pipe. Waking a
# blocked process costs tens of microseconds on a VM, about one NetHack step; polling with
# sched_yield keeps the core available to the caller meanwhile.
_POLL_SECONDS = 0.0005


def _wait_for_command(conn: Connection) -> tuple[str, Any]:
    deadline = time.perf_counter() + _POLL_SECONDS
    while not conn.poll() and time.perf_counter() < deadline:
        os.sched_yield()
    return conn.recv()


@dataclass
class EpisodeSummary:
    """One finished episode: env index, undiscounted extrinsic return, length in agent steps, how
    it ended, and the in-game score and dungeon depth it ended at."""

    env: int
    ret: float
    length: int
    end_status: int
    success: bool
    score: int
    depth: int


@dataclass
class VecStep:
    """The result of stepping all B envs once.

    ``obs``: dict of ``(B, *shape)`` arrays (copies). ``reward``: float32 ``(B,)`` extrinsic
    reward. ``terminated``/``truncated``: bool ``(B,)``. ``captions``: B strings.
    ``caption_counts``: int32 ``(B,)``, sightings of each caption in its episode (this one
    included). ``episodes``: episodes that ended in this step.
    """

    obs: dict[str, np.ndarray]
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    captions: list[str]
    caption_counts: np.ndarray
    episodes: list[EpisodeSummary] = field(default_factory=list)


class _Buffers:
    """Shared-memory observation arrays for all envs; the games write their slots in place."""

    def __init__(self, ctx: Any, space: gym.spaces.Dict, num_envs: int) -> None:
        # dtypes travel as strings: NLE's C side rejects unpickled (non-canonical) dtype objects.
        self.specs = {k: (s.shape, s.dtype.str) for k, s in space.spaces.items()}
        self.raw = {
            k: ctx.RawArray("b", int(np.prod((num_envs, *shape))) * np.dtype(dtype).itemsize)
            for k, (shape, dtype) in self.specs.items()
        }
        self.num_envs = num_envs

    def views(self) -> dict[str, np.ndarray]:
        return {
            k: np.frombuffer(self.raw[k], dtype=np.dtype(dtype)).reshape(self.num_envs, *shape)
            for k, (shape, dtype) in self.specs.items()
        }


def _worker(
    conn: Connection,
    buffers: _Buffers,
    env_ids: Sequence[int],
    seeds: Sequence[int | None],
    env_kwargs: dict[str, Any],
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    views = buffers.views()
    envs = [make_env(**env_kwargs) for _ in env_ids]
    for slot, env in zip(env_ids, envs):
        env.bind_observation_buffers({key: view[slot] for key, view in views.items()})
    returns = [0.0] * len(envs)
    lengths = [0] * len(envs)
    try:
        while True:
            command, payload = _wait_for_command(conn)
            if command == "reset":
                for j, env in enumerate(envs):
                    env.reset(seed=seeds[j])
                    returns[j], lengths[j] = 0.0, 0
                conn.send(None)
            elif command == "step":
                rewards, terminals, truncations, captions, counts, episodes = [], [], [], [], [], []
                for j, (slot, env) in enumerate(zip(env_ids, envs)):
                    _, reward, terminated, truncated, info = env.step(payload[j])
                    returns[j] += reward
                    lengths[j] += 1
                    if terminated or truncated:
                        episodes.append(
                            EpisodeSummary(
                                slot, returns[j], lengths[j], info["end_status"], info["success"],
                                info["score"], info["depth"],
                            )
                        )
                        returns[j], lengths[j] = 0.0, 0
                        env.reset()  # writes the next episode's first observation into the slot
                    rewards.append(reward)
                    terminals.append(terminated)
                    truncations.append(truncated)
                    captions.append(info["caption"])
                    counts.append(info["caption_count"])
                conn.send((rewards, terminals, truncations, captions, counts, episodes))
            elif command == "close":
                break
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        for env in envs:
            env.close()


def stop_processes(conns: Sequence[Connection | None], procs: Sequence[BaseProcess | None], goodbye: Any) -> None:
    """Send ``goodbye`` down each pipe, give each process 5 s to exit, then terminate it (and kill
    it if SIGTERM did not end it within 1 s), and close the pipes. None entries (workers not
    started, e.g. after a failed constructor) are skipped; a pipe already broken is ignored."""
    for conn in conns:
        if conn is not None:
            try:
                conn.send(goodbye)
            except (BrokenPipeError, OSError):
                pass
    for proc in procs:
        if proc is None:
            continue
        proc.join(timeout=5.0)
        for end in (proc.terminate, proc.kill):
            if proc.is_alive():
                end()
                proc.join(timeout=1.0)
    for conn in conns:
        if conn is not None:
            conn.close()


class VectorNetHack:
    """B NetHack task envs stepped in parallel by ``num_workers`` processes.

    Args:
        task: task name or :class:`~kudos.envs.tasks.TaskSpec` (a spec is sent to the workers
            as it is, so tasks registered at run time work too).
        num_envs: B, the number of envs.
        num_workers: worker processes (default: ``min(num_envs, os.cpu_count())``).
        seed: env ``i`` is reset with seed ``seed + i`` first; None for unseeded games.
        env_kwargs: further keyword arguments for each env.
    """

    def __init__(
        self,
        task: str | TaskSpec = "Score",
        num_envs: int = 8,
        *,
        num_workers: int | None = None,
        seed: int | None = None,
        observation_keys: Sequence[str] = DEFAULT_OBSERVATION_KEYS,
        start_method: str = "spawn",
        **env_kwargs: Any,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        num_workers = min(num_envs, num_workers or mp.cpu_count())
        self.num_envs = num_envs
        self.env_kwargs = dict(env_kwargs, task=task, observation_keys=tuple(observation_keys))
        probe = make_env(**self.env_kwargs)  # validates the arguments before forking
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        probe.close()

        self._ctx = mp.get_context(start_method)
        self._buffers = _Buffers(self._ctx, self.single_observation_space, num_envs)
        self._views = self._buffers.views()
        self._slices = [s.tolist() for s in np.array_split(np.arange(num_envs), num_workers)]
        self._seed = seed
        self._generation = [0] * num_workers
        self._procs: list[Any] = [None] * num_workers
        self._conns: list[Connection | None] = [None] * num_workers
        self.restarts = 0
        self._awaiting_step = False
        self._closed = False
        for w in range(num_workers):
            self._start_worker(w)

    # --- workers ------------------------------------------------------------------------------

    def _seeds(self, w: int) -> list[int | None]:
        if self._seed is None:
            return [None] * len(self._slices[w])
        offset = self._generation[w] * _RESTART_SEED_STRIDE
        return [self._seed + i + offset for i in self._slices[w]]

    def _start_worker(self, w: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_worker,
            args=(child, self._buffers, self._slices[w], self._seeds(w), self.env_kwargs),
            daemon=True,
            name=f"kudos-env-worker-{w}",
        )
        proc.start()
        child.close()
        self._procs[w], self._conns[w] = proc, parent

    def _restart_worker(self, w: int) -> None:
        proc = self._procs[w]
        proc.join(timeout=1.0)
        log.warning(
            "env worker %d (envs %d-%d) died with exit code %s; restarting it",
            w, self._slices[w][0], self._slices[w][-1], proc.exitcode,
        )
        self.restarts += 1
        self._generation[w] += 1
        self._start_worker(w)
        self._conns[w].send(("reset", None))
        self._recv(w)

    def _recv(self, w: int) -> Any:
        """Wait for worker ``w``'s reply; raises EOFError if it died meanwhile."""
        conn, proc = self._conns[w], self._procs[w]
        while not conn.poll(0.5):
            if not proc.is_alive() and not conn.poll():
                raise EOFError
        return conn.recv()

    # --- gym-like API -------------------------------------------------------------------------

    @property
    def num_workers(self) -> int:
        return len(self._slices)

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every env (seeded as configured); returns ``(B, *shape)`` observations."""
        for w in range(self.num_workers):
            self._conns[w].send(("reset", None))
        for w in range(self.num_workers):
            try:
                self._recv(w)
            except (EOFError, OSError):
                self._restart_worker(w)
        return self._copy_obs()

    def step_async(self, actions: np.ndarray) -> None:
        """Send ``actions`` (int ``(B,)``) to the workers without waiting."""
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"expected actions of shape ({self.num_envs},), got {actions.shape}")
        for w, envs in enumerate(self._slices):
            try:
                self._conns[w].send(("step", actions[envs[0] : envs[-1] + 1].tolist()))
            except (BrokenPipeError, OSError):
                pass  # noticed and handled in step_wait
        self._awaiting_step = True

    def step_wait(self) -> VecStep:
        """Collect the results of :meth:`step_async`."""
        if not self._awaiting_step:
            raise RuntimeError("step_wait() called without step_async()")
        self._awaiting_step = False
        reward = np.zeros(self.num_envs, dtype=np.float32)
        terminated = np.zeros(self.num_envs, dtype=np.bool_)
        truncated = np.zeros(self.num_envs, dtype=np.bool_)
        counts = np.ones(self.num_envs, dtype=np.int32)
        captions: list[str] = [""] * self.num_envs
        episodes: list[EpisodeSummary] = []
        for w, envs in enumerate(self._slices):
            lo, hi = envs[0], envs[-1] + 1
            try:
                rewards_w, terminated_w, truncated_w, captions_w, counts_w, episodes_w = self._recv(w)
            except (EOFError, OSError):
                # The crashed worker's envs restart from fresh episodes: truncated, no reward.
                self._restart_worker(w)
                truncated[lo:hi] = True
                continue
            reward[lo:hi] = rewards_w
            terminated[lo:hi] = terminated_w
            truncated[lo:hi] = truncated_w
            counts[lo:hi] = counts_w
            captions[lo:hi] = captions_w
            episodes.extend(episodes_w)
        return VecStep(self._copy_obs(), reward, terminated, truncated, captions, counts, episodes)

    def step(self, actions: np.ndarray) -> VecStep:
        """Step every env once with ``actions`` (int ``(B,)``)."""
        self.step_async(actions)
        return self.step_wait()

    def _copy_obs(self) -> dict[str, np.ndarray]:
        return {k: view.copy() for k, view in self._views.items()}

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        # Workers not started (a failed constructor) are None.
        stop_processes(self._conns, self._procs, ("close", None))

    def __enter__(self) -> "VectorNetHack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()
