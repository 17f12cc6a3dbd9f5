"""The learner side of the rollout workers: hands out free slots, collects full ones, and turns
them into :class:`~kudos.rl.learner.RolloutBatch` es on the learner's device.

A dispatcher thread in the learner process waits on every worker's pipe. A worker's message says
"slot s is full"; the dispatcher records it (:class:`~kudos.rl.trajectory.SlotPool`), queues it
for the learner and hands that worker another free slot. Each worker holds a few slots ahead, so
it never waits for the learner unless every slot is full. A dead worker's pipe reports EOF: its
slots are reclaimed and it is restarted with fresh games.

:meth:`Sampler.next_batch` takes ``batch_slots`` full slots, drops those whose oldest step was
acted by a policy more than ``max_policy_lag`` versions behind the newest published one
(counted), copies the rest into one batch and frees the slots; with ``whole_rounds`` it takes
the oldest full slot of every half instead, in env order. :meth:`Sampler.publish` puts new
weights in shared memory for the actors.

Rollouts are asynchronous: which policy version acted on which step depends on timing, so runs
are not bit-reproducible from a seed.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Mapping

import numpy as np
import torch

from kudos.envs import make_env
from kudos.envs.tasks import TaskSpec
from kudos.envs.vector import EpisodeSummary
from kudos.errors import ConfigError
from kudos.rl.learner import RolloutBatch
from kudos.rl.policy import POLICY_OBSERVATION_KEYS, PolicyConfig
from kudos.rl.timing import TimeShares
from kudos.rl.trajectory import CaptionDecoder, SlotPool, TrajectoryBuffers, TrajectoryLayout
from kudos.rl.weights import SharedWeights
from kudos.rl.workers import INFERENCE_MODES, WORKER_TIME, Control, WorkerSet, WorkerSpec

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
# A worker that dies this many times in a row before delivering a slot is not restarted again:
# something (a broken custom task, a missing library) kills every new one.
_MAX_FAILED_STARTS = 3


def resolve_device(name: str) -> torch.device:
    """``"auto"``: cuda when a GPU is visible, else cpu; ``"cuda"`` without one is a ConfigError."""
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r} (use one of {', '.join(DEVICES)})")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda: torch sees no CUDA GPU here; use --device cpu (or auto)")
    return torch.device(name)


def worker_seconds(control: Control) -> np.ndarray:
    """Seconds all rollout workers spent per part of :data:`WORKER_TIME`, each one's lap in
    progress included (a wait for a slot can outlast a report). ``seconds`` is read before the
    laps: a worker charges a lap after moving its start, so this order never counts one twice."""
    seconds = control.seconds.sum(axis=0)
    now, start, part = time.perf_counter(), control.lap_start.copy(), control.lap_part.copy()
    running = start > 0  # a worker still starting up has no lap yet
    np.add.at(seconds, part[running], now - start[running])
    return seconds


@dataclass(frozen=True)
class SamplerConfig:
    """How rollouts are collected.

    ``num_workers``: W rollout worker processes; ``envs_per_worker``: E (even, two halves);
    ``rollout``: T steps per slot; ``batch_slots``: slots per learner batch, so a batch has
    ``batch_slots * E / 2`` envs; ``inference``: ``"worker"`` or ``"policy-worker"``
    (:mod:`kudos.rl.workers`); ``max_policy_lag``: slots acted by an older policy are dropped;
    ``slots_ahead``: free slots each half holds beyond the one it fills; ``seed``: env ``i`` is
    first reset with ``seed + i``; ``max_episode_steps``: None for the task's.

    ``whole_rounds``: every batch holds the oldest full slot of every half, in env order, so
    column ``i`` is env ``i`` (per-env state such as reward shaping's lines up across batches as
    with a lockstep vector); ``batch_slots`` must then be ``2 * num_workers`` and no slot is
    dropped as stale (the lag is still recorded).
    """

    num_workers: int = 2
    envs_per_worker: int = 16
    rollout: int = 32
    batch_slots: int = 4
    inference: str = "worker"
    max_policy_lag: int = 20
    slots_ahead: int = 1
    seed: int | None = 0
    max_episode_steps: int | None = None
    whole_rounds: bool = False

    def __post_init__(self) -> None:
        checks = {
            "num_workers must be >= 1": self.num_workers >= 1,
            "envs_per_worker must be even and >= 2 (two halves)": self.envs_per_worker >= 2 and self.envs_per_worker % 2 == 0,
            "rollout must be >= 1": self.rollout >= 1,
            "batch_slots must be >= 1": self.batch_slots >= 1,
            f"inference must be one of {INFERENCE_MODES}": self.inference in INFERENCE_MODES,
            "max_policy_lag must be >= 0": self.max_policy_lag >= 0,
            "slots_ahead must be >= 0": self.slots_ahead >= 0,
            "whole_rounds needs batch_slots == 2 * num_workers": not self.whole_rounds
            or self.batch_slots == 2 * self.num_workers,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ConfigError("sampler: " + "; ".join(failed))

    @property
    def num_slots(self) -> int:
        """Enough for every half to fill one and hold ``slots_ahead``, plus two learner batches."""
        return 2 * self.num_workers * (1 + self.slots_ahead) + 2 * self.batch_slots


@dataclass
class SampleBatch:
    """One learner batch of B = ``batch_slots * E/2`` env trajectories of T steps.

    ``batch``: the tensors on the learner's device; its ``rewards`` are the env rewards as they
    came (shape them and replace them before training on another reward). The numpy arrays are
    CPU copies: ``env_rewards`` ``(T, B)``, ``dones`` ``(T+1, B)``, ``caption_counts`` ``(T, B)``,
    ``env_ids`` ``(B,)`` (the run-wide env index of each column, so per-env state lines up across
    batches); ``versions`` ``(T, B)``: the policy version that chose each action. ``captions``: T
    lists of B strings. ``slots``: the slot indices the batch came from; ``policy_lag``: per slot,
    how many versions the oldest policy that acted in it was behind the newest published when the
    batch was made. ``episodes``: episodes that ended in these slots (and in dropped ones).
    """

    batch: RolloutBatch
    env_rewards: np.ndarray
    dones: np.ndarray
    caption_counts: np.ndarray
    captions: list[list[str]]
    env_ids: np.ndarray
    versions: np.ndarray
    slots: np.ndarray
    policy_lag: np.ndarray
    episodes: list[EpisodeSummary] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        """Env steps in the batch: T * B."""
        return int(self.env_rewards.size)


class Sampler:
    """Rollout workers plus the learner side of their slots (see the module docstring).

    Args:
        task: task name or spec.
        policy_config: the network the actors run (sizes of the learner's policy).
        initial_weights: the learner policy's ``state_dict``, published as ``version``.
        config: workers, envs, slots.
        device: where batches go and where the policy worker runs.
        version: the version of ``initial_weights`` (the learner's update count).
        env_options: further keyword arguments of every env (e.g. ``macros``).

    Create it in a thread that outlives it: workers die with the thread that started them.
    """

    def __init__(
        self,
        task: str | TaskSpec,
        policy_config: PolicyConfig,
        initial_weights: Mapping[str, torch.Tensor],
        config: SamplerConfig = SamplerConfig(),
        device: torch.device = torch.device("cpu"),
        version: int = 0,
        env_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.device = device
        env_options = dict(env_options or {})
        probe = make_env(task, observation_keys=POLICY_OBSERVATION_KEYS, max_episode_steps=config.max_episode_steps, **env_options)
        spaces = probe.observation_space
        probe.close()
        ctx = mp.get_context("spawn")
        half = config.envs_per_worker // 2
        self.layout = TrajectoryLayout(
            num_slots=config.num_slots,
            steps=config.rollout,
            envs=half,
            hidden_size=policy_config.hidden_size,
            observations=tuple((k, tuple(spaces[k].shape), spaces[k].dtype.str) for k in POLICY_OBSERVATION_KEYS),
        )
        self.buffers = TrajectoryBuffers(self.layout, ctx)
        self.weights = SharedWeights(initial_weights, ctx)
        self.weights.publish(initial_weights, version)
        self.pool = SlotPool(config.num_slots)
        self._decode = CaptionDecoder()
        # Full slots in arrival order, per half (2 * worker + half) in whole_rounds mode.
        self._full: list[deque[tuple[int, list[EpisodeSummary]]]] = [
            deque() for _ in range(2 * config.num_workers if config.whole_rounds else 1)
        ]
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._credit = 2 * (1 + config.slots_ahead)
        self._delivered = np.zeros(config.num_workers, dtype=np.int64)  # since the worker's last start
        self._failed_starts = np.zeros(config.num_workers, dtype=np.int64)
        self._error: BaseException | None = None
        self._closing = threading.Event()
        #: Counters: slots delivered, dropped as too stale, captions cut to the slot width.
        self.slots_delivered = 0
        self.slots_dropped = 0
        self.captions_truncated = 0
        spec = WorkerSpec(
            task, config.envs_per_worker, config.rollout, policy_config, config.seed, config.max_episode_steps, env_options
        )
        self.workers = WorkerSet(spec, config.num_workers, self.buffers, self.weights, config.inference, device, ctx)
        control = self.workers.control
        self._worker_time = TimeShares(WORKER_TIME, lambda: worker_seconds(control), config.num_workers)
        self._policy_time = TimeShares(("busy",), lambda: control.policy_busy)
        for w in range(config.num_workers):
            self._top_up(w)
        self._thread = threading.Thread(target=self._dispatch, name="kudos-sampler", daemon=True)
        self._thread.start()

    # --- dispatcher thread --------------------------------------------------------------------

    def _top_up(self, w: int) -> None:
        """Hand worker ``w`` free slots until it holds its credit (or none is free)."""
        with self._send_lock:
            held = int(np.count_nonzero(self.pool.owner == w))
            if self.config.whole_rounds:
                # A fast worker must not take every free slot while a batch waits for a slow one:
                # count its full slots too, allowing one per half beyond its credit.
                held += len(self._full[2 * w]) + len(self._full[2 * w + 1]) - 2
            for _ in range(self._credit - held):
                slot = self.pool.take(w)
                if slot is None:
                    return
                try:
                    self.workers.conns[w].send(slot)
                except (BrokenPipeError, OSError):
                    return  # dead: the dispatcher reclaims its slots

    def _dispatch(self) -> None:
        half = self.config.envs_per_worker // 2
        try:
            while not self._closing.is_set():
                conns = {conn: w for w, conn in enumerate(self.workers.conns)}
                for conn in wait(list(conns), timeout=0.1):
                    w = conns[conn]
                    try:
                        slot, episodes, truncated = conn.recv()
                    except (EOFError, OSError):
                        if not self._closing.is_set():
                            self._restart(w)
                        continue
                    self.pool.deliver(w, slot)
                    self._delivered[w] += 1
                    self.captions_truncated += truncated
                    queue = int(self.buffers.arrays["env_ids"][slot, 0]) // half if self.config.whole_rounds else 0
                    with self._cond:
                        self._full[queue].append((slot, episodes))
                        self.slots_delivered += 1
                        self._cond.notify()
                    self._top_up(w)
                self.workers.check_policy_worker()
                for w in range(self.workers.num_workers):  # slots freed by the learner
                    self._top_up(w)
        except BaseException as exc:  # re-raised in the learner thread by next_batch
            self._error = exc
            with self._cond:
                self._cond.notify_all()

    def _restart(self, w: int) -> None:
        self._failed_starts[w] = 0 if self._delivered[w] else self._failed_starts[w] + 1
        if self._failed_starts[w] >= _MAX_FAILED_STARTS:
            raise RuntimeError(f"rollout worker {w} died {_MAX_FAILED_STARTS} times before filling a slot; see its log above")
        with self._send_lock:
            reclaimed = self.pool.reclaim(w)
            self.workers.restart(w)
        log.info("reclaimed slots %s of rollout worker %d", reclaimed, w)
        self._delivered[w] = 0
        self._top_up(w)

    # --- learner side -------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The newest published policy version."""
        return self.weights.version

    @property
    def worker_restarts(self) -> int:
        return self.workers.restarts

    def publish(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Make ``state_dict`` (any device) the actors' weights, as ``version``."""
        self.weights.publish(state_dict, version)

    def _wait_full(self, ready: Any, timeout: float | None) -> None:
        """Wait (holding ``_cond``) until ``ready()``; raise the dispatcher's error if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            if self._error is not None:
                raise self._error
            if not self._thread.is_alive():
                raise RuntimeError("the sampler's dispatcher stopped")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("no full trajectory slot arrived in time")
            self._cond.wait(0.5)

    def next_batch(self, timeout: float | None = None) -> SampleBatch:
        """The next ``batch_slots`` fresh slots as one batch (blocks until they are full)."""
        slots: list[int] = []
        episodes: list[EpisodeSummary] = []
        lags: list[int] = []
        versions = self.buffers.arrays["versions"]
        while len(slots) < self.config.batch_slots:
            with self._cond:
                if self.config.whole_rounds:
                    self._wait_full(lambda: all(self._full), timeout)
                    taken = [q.popleft() for q in self._full]
                else:
                    self._wait_full(lambda: bool(self._full[0]), timeout)
                    taken = [self._full[0].popleft()]
            for slot, slot_episodes in taken:
                episodes.extend(slot_episodes)
                lag = self.version - int(versions[slot].min())
                if lag > self.config.max_policy_lag and not self.config.whole_rounds:
                    self.slots_dropped += 1
                    self.pool.release(slot)
                    continue
                slots.append(slot)
                lags.append(lag)
        batch = self._gather(np.array(slots), np.array(lags), episodes)
        for slot in slots:
            self.pool.release(slot)
        return batch

    def _gather(self, slots: np.ndarray, lags: np.ndarray, episodes: list[EpisodeSummary]) -> SampleBatch:
        arrays = self.buffers.arrays

        def columns(a: np.ndarray) -> np.ndarray:
            # (S, R, E, ...) -> (R, n * E, ...): the slots side by side along the env axis
            x = np.moveaxis(a[slots], 0, 1)
            return x.reshape(x.shape[0], -1, *x.shape[3:])

        obs = {k: torch.from_numpy(columns(self.buffers.obs(k))).to(self.device) for k in POLICY_OBSERVATION_KEYS}
        dones = columns(arrays["dones"])
        env_rewards = columns(arrays["env_rewards"])
        T, B = env_rewards.shape
        captions = self._decode(columns(arrays["captions"]).reshape(T * B, -1))
        to = self.device
        batch = RolloutBatch(
            obs=obs,
            actions=torch.from_numpy(columns(arrays["actions"])).to(to),
            behaviour_log_probs=torch.from_numpy(columns(arrays["log_probs"])).to(to),
            behaviour_values=torch.from_numpy(columns(arrays["values"])).to(to),
            rewards=torch.from_numpy(env_rewards).to(to),
            dones=torch.from_numpy(dones).to(to),
            initial_core_state=torch.from_numpy(arrays["initial_core_state"][slots].reshape(B, -1)).to(to),
        )
        return SampleBatch(
            batch=batch,
            env_rewards=env_rewards,
            dones=dones,
            caption_counts=columns(arrays["caption_counts"]),
            captions=[captions[t * B : (t + 1) * B] for t in range(T)],
            env_ids=arrays["env_ids"][slots].reshape(B),
            versions=np.repeat(arrays["versions"][slots].T, self.layout.envs, axis=1),
            slots=slots,
            policy_lag=lags,
            episodes=episodes,
        )

    def metrics(self) -> dict[str, float]:
        """Counters for the display and TensorBoard."""
        return {
            "sampler/slots_delivered": float(self.slots_delivered),
            "sampler/slots_dropped_stale": float(self.slots_dropped),
            "sampler/worker_restarts": float(self.workers.restarts),
            "sampler/policy_worker_restarts": float(self.workers.policy_worker_restarts),
            "sampler/captions_truncated": float(self.captions_truncated),
        }

    def time_shares(self) -> dict[str, float]:
        """Where the workers' time went since the previous call: ``time/workers/<part>``, the
        mean fraction of a rollout worker's wall time per part of :data:`WORKER_TIME` (they add
        up to 1: the slot hand-over counts as env), and ``time/policy_worker/busy`` in
        policy-worker mode."""
        shares = {f"time/workers/{part}": share for part, share in self._worker_time().items()}
        busy = self._policy_time()
        if self.config.inference == "policy-worker":
            shares["time/policy_worker/busy"] = busy.get("busy", 0.0)
        return shares

    def close(self) -> None:
        """Stop the dispatcher and every worker process (idempotent)."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._thread.join(timeout=5.0)
        self.workers.close()

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_thread"):
            self.close()
