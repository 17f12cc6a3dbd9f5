"""Rollout workers that own their envs and act themselves (the sample-factory design).

Each of W worker processes steps its own ``E`` envs, split into two halves of ``E/2``. Each half
fills one trajectory slot (:mod:`kudos.rl.trajectory`) at a time; when its T steps are written
the worker sends the slot index to the learner side and continues in the next slot it was handed.

Where the actions come from (``inference``):

- ``"worker"``: each worker runs its own CPU copy of the policy (1 torch thread), reloaded from
  :class:`~kudos.rl.weights.SharedWeights` at the start of a slot when a newer version exists.
  There is nothing to overlap with inside one process, so the two halves' actions are computed
  in one call (halving the policy's per-call cost) and the halves are stepped one after the
  other.
- ``"policy-worker"``: one process batches the pending requests of all workers and runs them on
  the learner's device. A worker posts a request for one half (slot, row) and steps the other
  half meanwhile, so env stepping and inference overlap (double buffering).

Requests and replies are counters in shared memory (:class:`Control`), not pipes: a worker killed
at any instant cannot leave a lock held or half a message in a channel others use. The GRU state
of every half lives there too, so whoever computes a half's next action finds it.

Workers get SIGTERM when the thread that started them dies (``PR_SET_PDEATHSIG``), a thread in
each also watches that the parent still exists, and they exit cleanly on it within a deadline,
so a ``SIGKILL`` of the learner leaves no worker behind; they ignore SIGINT so Ctrl-C reaches the
learner, which stops them. :class:`WorkerSet` starts, restarts and stops the processes; the slot
bookkeeping is the learner side's (:class:`~kudos.rl.sampler.Sampler`).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

from kudos.envs import make_env
from kudos.envs.tasks import TaskSpec, get_task
from kudos.envs.vector import EpisodeSummary, stop_processes
from kudos.rl.policy import POLICY_OBSERVATION_KEYS, NetHackPolicy, PolicyConfig
from kudos.rl.trajectory import TrajectoryBuffers, encode_caption
from kudos.rl.weights import SharedWeights

log = logging.getLogger(__name__)

INFERENCE_MODES = ("worker", "policy-worker")
# Seed offset between generations of a restarted worker, so its envs do not replay old episodes.
_RESTART_SEED_STRIDE = 1_000_003
_PR_SET_PDEATHSIG = 1
# Seconds a worker leaving on its own (parent gone, SIGTERM) may take before SIGALRM ends it,
# and how often it checks that its parent is still there.
_EXIT_DEADLINE_S = 10
_WATCH_SECONDS = 0.25
# Waiting on a shared counter: yield the core for this long, then sleep in short naps. Waking a
# sleeping process costs about one NetHack step on a VM; spinning forever would steal the core.
_SPIN_SECONDS = 0.0005
_NAP_SECONDS = 0.0001
# Where a rollout worker's time goes (columns of Control.seconds): stepping and resetting its envs
# (and handing a full slot over);
# choosing actions (its own inference, or waiting for the policy worker's); waiting for a free
# slot, i.e. for the learner to take what it wrote.
WORKER_TIME = ("env", "inference", "waiting_for_learner")
_ENV, _ACT, _WAIT = range(len(WORKER_TIME))


@dataclass(frozen=True)
class WorkerSpec:
    """What every rollout worker is built from (picklable).

    ``task``: name or spec; ``envs_per_worker``: E (even: two halves); ``steps``: T per slot;
    ``seed``: env ``i`` of the run is first reset with ``seed + i`` (None: unseeded);
    ``max_episode_steps``: None for the task's default; ``policy``: the network sizes;
    ``env_options``: further keyword arguments of every env (e.g. ``macros``).
    """

    task: str | TaskSpec
    envs_per_worker: int
    steps: int
    policy: PolicyConfig
    seed: int | None = 0
    max_episode_steps: int | None = None
    env_options: dict[str, Any] = field(default_factory=dict)

    @property
    def half(self) -> int:
        return self.envs_per_worker // 2

    def make_policy(self) -> NetHackPolicy:
        """An acting copy of the policy (weights come from :class:`SharedWeights`)."""
        task = self.task if isinstance(self.task, TaskSpec) else get_task(self.task)
        policy = NetHackPolicy(self.policy, task.num_actions)
        policy.eval()
        return policy


class Control:
    """Shared counters between rollout workers and the policy worker (see the module docstring).

    Per half ``q = 2 * worker + half``: ``req_seq[q]`` is bumped when a request for row
    ``req_t[q]`` of slot ``req_slot[q]`` is posted, ``done_seq[q]`` set to it when the actions
    are written. ``core_state[q]`` ``(E/2, H)`` is the half's GRU state before its next row.
    ``stop[0]`` non-zero tells every process to exit. ``seconds[w]`` counts worker ``w``'s time
    (s, cumulative, by :data:`WORKER_TIME`) and ``policy_busy[0]`` the policy worker's time in
    inference, for the display's where-time-goes figures.
    """

    def __init__(self, ctx: Any, num_workers: int, half: int, hidden_size: int) -> None:
        self._shapes = {
            "req_seq": ((2 * num_workers,), "<i8"),
            "done_seq": ((2 * num_workers,), "<i8"),
            "req_slot": ((2 * num_workers,), "<i8"),
            "req_t": ((2 * num_workers,), "<i8"),
            "core_state": ((2 * num_workers, half, hidden_size), "<f4"),
            "stop": ((1,), "<i8"),
            "seconds": ((num_workers, len(WORKER_TIME)), "<f8"),
            "lap_start": ((num_workers,), "<f8"),  # perf_counter() when the worker entered lap_part
            "lap_part": ((num_workers,), "<i8"),
            "policy_busy": ((1,), "<f8"),
        }
        self._raw = {
            k: ctx.RawArray("b", int(np.prod(shape)) * np.dtype(dtype).itemsize) for k, (shape, dtype) in self._shapes.items()
        }
        self._attach()

    def _attach(self) -> None:
        for key, (shape, dtype) in self._shapes.items():
            setattr(self, key, np.frombuffer(self._raw[key], dtype=np.dtype(dtype)).reshape(shape))

    def __getstate__(self) -> dict[str, Any]:
        return {"_shapes": self._shapes, "_raw": self._raw}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attach()

    def reset_worker(self, worker: int) -> None:
        """Forget a dead worker's requests: a reply still being computed for it matches no new
        request (both counters jump to the highest value either had)."""
        q = slice(2 * worker, 2 * worker + 2)
        top = np.maximum(self.req_seq[q], self.done_seq[q])
        self.req_seq[q] = top
        self.done_seq[q] = top
        self.core_state[q] = 0.0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """Leave once, cleanly: ``SystemExit`` unwinds through ``finally`` (the games close and delete
    their files). Later SIGTERMs are ignored, so none interrupts the clean-up or the interpreter's
    shutdown (CI saw the parent-death signal land in a worker's shutdown)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _arm_exit_deadline()
    raise SystemExit(0)


_deadline_armed = False


def _arm_exit_deadline() -> None:
    """Bound the exit: SIGALRM's default action ends the process without running any Python.
    Armed once; arming again would postpone it."""
    global _deadline_armed
    if not _deadline_armed:
        _deadline_armed = True
        signal.alarm(_EXIT_DEADLINE_S)


def _watch_parent(parent: int) -> None:
    """Thread body: once the parent is gone, start the clean exit as the parent-death signal
    would, and its deadline. The signal alone was seen to miss a worker now and then on a loaded
    VM; this thread notices whatever the main thread is busy with."""
    while os.getppid() == parent:
        time.sleep(_WATCH_SECONDS)
    _arm_exit_deadline()
    os.kill(os.getpid(), signal.SIGTERM)


def _die_with_parent() -> None:
    """Exit cleanly, within :data:`_EXIT_DEADLINE_S`, on SIGTERM or when the parent dies (the
    parent-death signal on Linux, and a watching thread); ignore Ctrl-C (the learner stops the
    workers)."""
    # The pid the learner had when it started this process, not the parent now: a learner that
    # died while this one was starting would otherwise leave it watching its new parent.
    creator = multiprocessing.parent_process()
    parent = creator.pid if creator is not None else os.getppid()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the watching thread notices instead
        log.debug("PR_SET_PDEATHSIG unavailable")
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="kudos-parent-watch").start()


class _Backoff:
    """Spin (yielding the core), then nap: for waits that are usually short."""

    def __init__(self) -> None:
        self.since: float | None = None

    def wait(self) -> None:
        now = time.perf_counter()
        if self.since is None:
            self.since = now
        if now - self.since < _SPIN_SECONDS:
            os.sched_yield()
        else:
            time.sleep(_NAP_SECONDS)

    def reset(self) -> None:
        self.since = None


@torch.no_grad()
def act_on_rows(
    policy: NetHackPolicy,
    buffers: TrajectoryBuffers,
    core_state: np.ndarray,
    halves: np.ndarray,
    slots: np.ndarray,
    rows: np.ndarray,
    version: int,
    device: torch.device,
) -> None:
    """Choose the actions of row ``rows[i]`` of slot ``slots[i]`` for each half ``halves[i]``
    (n requests, one batch on ``device``) and write them, their log-probs, values and the policy
    version into the slots and the halves' next core states into ``core_state``."""
    arrays = buffers.arrays
    n, envs = len(slots), buffers.layout.envs
    obs = {k: torch.from_numpy(buffers.obs(k)[slots, rows]).flatten(0, 1).to(device) for k in POLICY_OBSERVATION_KEYS}
    state = torch.from_numpy(core_state[halves]).flatten(0, 1).to(device)
    done = torch.from_numpy(arrays["dones"][slots, rows]).flatten().to(device)
    out = policy.act(obs, state, done)
    arrays["actions"][slots, rows] = out.actions.view(n, envs).cpu().numpy()
    arrays["log_probs"][slots, rows] = out.log_probs.view(n, envs).cpu().numpy()
    arrays["values"][slots, rows] = out.values.view(n, envs).cpu().numpy()
    arrays["versions"][slots, rows] = version
    core_state[halves] = out.core_state.view(n, envs, -1).cpu().numpy()


class _LocalActor:
    """Inference in the worker itself, with its own CPU copy of the weights.

    Requests are computed when first waited for, together with every other pending one: the two
    halves then share one policy call, which costs about the same as a call for one half (on a
    CPU thread a call's fixed cost dominates at these batch sizes).
    """

    def __init__(self, spec: WorkerSpec, weights: SharedWeights, buffers: TrajectoryBuffers, control: Control) -> None:
        self.policy = spec.make_policy()
        self.weights, self.buffers, self.control = weights, buffers, control
        self.version = -1
        self.cpu = torch.device("cpu")
        self.pending: dict[int, tuple[int, int]] = {}  # half -> (slot, row)

    def request(self, half: int, slot: int, row: int) -> None:
        self.pending[half] = (slot, row)

    def wait(self, half: int) -> bool:
        if half in self.pending:
            halves = np.array(list(self.pending))
            slots, rows = (np.array(column) for column in zip(*self.pending.values()))
            if (rows == 0).any():  # reload only when a slot starts: one version per slot
                self.version = self.weights.load_into(self.policy, self.version)
            act_on_rows(self.policy, self.buffers, self.control.core_state, halves, slots, rows, self.version, self.cpu)
            self.pending.clear()
        return True


class _RemoteActor:
    """Requests to the policy worker through :class:`Control`."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self.backoff = _Backoff()

    def request(self, half: int, slot: int, row: int) -> None:
        c = self.control
        c.req_slot[half] = slot
        c.req_t[half] = row
        c.req_seq[half] += 1  # last: the policy worker reads slot and row once this changed

    def wait(self, half: int) -> bool:
        """Until the actions of ``half``'s request are written; False if told to stop."""
        c = self.control
        self.backoff.reset()
        while c.done_seq[half] != c.req_seq[half]:
            if c.stop[0]:
                return False
            self.backoff.wait()
        return True


class _Half:
    """Half of a worker's envs and the slot they are filling."""

    def __init__(self, index: int, envs: list[Any], env_ids: np.ndarray) -> None:
        self.index = index  # q = 2 * worker + half, the row in Control
        self.envs = envs
        self.env_ids = env_ids
        self.returns = np.zeros(len(envs))
        self.lengths = np.zeros(len(envs), dtype=np.int64)
        self.episodes: list[EpisodeSummary] = []
        self.slot = -1
        self.t = 0


def _next_slot(conn: Connection, control: Control) -> int | None:
    """The next free slot the learner side hands this worker; None when told to stop."""
    while not conn.poll(0.1):
        if control.stop[0]:
            return None
    slot = conn.recv()
    return None if slot < 0 else int(slot)


def _start_slot(buffers: TrajectoryBuffers, control: Control, half: _Half, slot: int) -> None:
    arrays = buffers.arrays
    arrays["initial_core_state"][slot] = control.core_state[half.index]
    arrays["env_ids"][slot] = half.env_ids
    half.slot, half.t = slot, 0


def _step_half(buffers: TrajectoryBuffers, half: _Half, truncated_captions: list[int]) -> None:
    """Step every env of ``half`` with the actions of row t; write row t+1 and step t's results."""
    arrays = buffers.arrays
    slot, t = half.slot, half.t
    width = buffers.layout.caption_bytes
    actions = arrays["actions"][slot, t]
    for j, env in enumerate(half.envs):
        obs, reward, terminated, truncated, info = env.step(int(actions[j]))
        half.returns[j] += reward
        half.lengths[j] += 1
        done = terminated or truncated
        if done:
            half.episodes.append(
                EpisodeSummary(
                    int(half.env_ids[j]), float(half.returns[j]), int(half.lengths[j]), info["end_status"],
                    info["success"], info["score"], info["depth"],
                )
            )
            half.returns[j], half.lengths[j] = 0.0, 0
            obs, _ = env.reset()
        for key in POLICY_OBSERVATION_KEYS:
            buffers.obs(key)[slot, t + 1, j] = obs[key]
        arrays["dones"][slot, t + 1, j] = done
        arrays["env_rewards"][slot, t, j] = reward
        arrays["caption_counts"][slot, t, j] = info["caption_count"]
        caption = info["caption"]
        if caption:
            encoded, cut = encode_caption(caption, width)
            arrays["captions"][slot, t, j] = np.frombuffer(encoded, dtype=np.uint8)
            truncated_captions[0] += cut
        else:
            arrays["captions"][slot, t, j, 0] = 0  # readers stop at the first NUL
    half.t += 1


def rollout_worker(
    worker: int,
    generation: int,
    conn: Connection,
    buffers: TrajectoryBuffers,
    control: Control,
    weights: SharedWeights,
    spec: WorkerSpec,
    inference: str,
) -> None:
    """Process body of rollout worker ``worker`` (see the module docstring).

    Receives free slot indices on ``conn`` (a negative one means stop) and sends back
    ``(slot, episodes, captions cut)`` for every slot it filled.
    """
    _die_with_parent()
    torch.set_num_threads(1)
    arrays = buffers.arrays
    T, E, h = spec.steps, spec.envs_per_worker, spec.half
    envs = [
        make_env(spec.task, observation_keys=POLICY_OBSERVATION_KEYS, max_episode_steps=spec.max_episode_steps, **spec.env_options)
        for _ in range(E)
    ]
    first_id = worker * E
    halves = [_Half(2 * worker + i, envs[i * h : (i + 1) * h], np.arange(first_id + i * h, first_id + (i + 1) * h)) for i in range(2)]
    actor = _LocalActor(spec, weights, buffers, control) if inference == "worker" else _RemoteActor(control)
    truncated_captions = [0]
    clock = control.seconds[worker]
    control.lap_start[worker], control.lap_part[worker] = time.perf_counter(), _ENV

    def enter(part: int) -> None:
        """Charge the lap so far to the part it was in, then start ``part``. lap_start goes
        first: a reader in between misses a moment rather than counting one twice."""
        now = time.perf_counter()
        began, control.lap_start[worker] = control.lap_start[worker], now
        clock[control.lap_part[worker]] += now - began
        control.lap_part[worker] = part

    try:
        for half in halves:
            slot = _next_slot(conn, control)
            if slot is None:
                return
            for j, env in enumerate(half.envs):
                seed = None if spec.seed is None else spec.seed + int(half.env_ids[j]) + generation * _RESTART_SEED_STRIDE
                obs, _ = env.reset(seed=seed)
                for key in POLICY_OBSERVATION_KEYS:
                    buffers.obs(key)[slot, 0, j] = obs[key]
            arrays["dones"][slot, 0] = True
            control.core_state[half.index] = 0.0
            _start_slot(buffers, control, half, slot)
            actor.request(half.index, slot, 0)
        while not control.stop[0]:
            for half in halves:
                enter(_ACT)
                if not actor.wait(half.index):
                    return
                enter(_ENV)
                _step_half(buffers, half, truncated_captions)
                if half.t == T:
                    # The bootstrap row starts the next slot: keep it, then hand the slot over
                    # before waiting for the next one (a worker needs no slot beyond its credit).
                    last = {key: buffers.obs(key)[half.slot, T].copy() for key in POLICY_OBSERVATION_KEYS}
                    last_dones = arrays["dones"][half.slot, T].copy()
                    conn.send((half.slot, half.episodes, truncated_captions[0]))
                    half.episodes, truncated_captions[0] = [], 0
                    enter(_WAIT)
                    slot = _next_slot(conn, control)
                    enter(_ENV)
                    if slot is None:
                        return
                    for key in POLICY_OBSERVATION_KEYS:
                        buffers.obs(key)[slot, 0] = last[key]
                    arrays["dones"][slot, 0] = last_dones
                    _start_slot(buffers, control, half, slot)
                actor.request(half.index, half.slot, half.t)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the learner side is gone or stopping
    finally:
        for env in envs:
            env.close()


def policy_worker(
    buffers: TrajectoryBuffers, control: Control, weights: SharedWeights, spec: WorkerSpec, device: str, threads: int
) -> None:
    """Process body of the policy worker: batched inference for every posted request."""
    _die_with_parent()
    torch.set_num_threads(threads)
    dev = torch.device(device)
    policy = spec.make_policy().to(dev)
    version = -1
    backoff = _Backoff()
    while not control.stop[0]:
        pending = np.flatnonzero(control.req_seq != control.done_seq)
        if not len(pending):
            backoff.wait()
            continue
        backoff.reset()
        start = time.perf_counter()
        seq = control.req_seq[pending]  # read before slot and row (the workers write them first)
        version = weights.load_into(policy, version)
        act_on_rows(policy, buffers, control.core_state, pending, control.req_slot[pending], control.req_t[pending], version, dev)
        control.done_seq[pending] = seq
        control.policy_busy[0] += time.perf_counter() - start


class WorkerSet:
    """Starts, restarts and stops the rollout workers (and the policy worker).

    Args:
        spec: what each worker builds.
        num_workers: W.
        buffers, weights: the shared trajectory slots and policy weights.
        inference: one of :data:`INFERENCE_MODES`.
        device: the policy worker's device (``"policy-worker"`` mode).
        ctx: a ``spawn`` multiprocessing context.

    ``conns[w]`` is the learner side's end of worker ``w``'s pipe; it changes on a restart.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        num_workers: int,
        buffers: TrajectoryBuffers,
        weights: SharedWeights,
        inference: str,
        device: torch.device,
        ctx: Any,
    ) -> None:
        if inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, got {inference!r}")
        self.spec, self.buffers, self.weights, self.inference, self.ctx = spec, buffers, weights, inference, ctx
        self.device = device
        self.control = Control(ctx, num_workers, spec.half, spec.policy.hidden_size)
        self.generation = [0] * num_workers
        self.procs: list[Any] = [None] * num_workers
        self.conns: list[Connection] = [None] * num_workers  # type: ignore[list-item]
        self.restarts = 0
        self.policy_worker_restarts = 0
        self.policy_proc: Any = None
        self._closed = False
        if inference == "policy-worker":
            self._start_policy_worker()
        for w in range(num_workers):
            self._start(w)

    @property
    def num_workers(self) -> int:
        return len(self.procs)

    def _start(self, w: int) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=rollout_worker,
            args=(w, self.generation[w], child, self.buffers, self.control, self.weights, self.spec, self.inference),
            daemon=True,
            name=f"kudos-rollout-worker-{w}",
        )
        proc.start()
        child.close()
        self.procs[w], self.conns[w] = proc, parent

    def _start_policy_worker(self) -> None:
        # On a CPU it shares the cores with the rollout workers: one thread.
        threads = 1 if self.device.type == "cpu" else torch.get_num_threads()
        self.policy_proc = self.ctx.Process(
            target=policy_worker,
            args=(self.buffers, self.control, self.weights, self.spec, str(self.device), threads),
            daemon=True,
            name="kudos-policy-worker",
        )
        self.policy_proc.start()

    def restart(self, w: int) -> None:
        """Replace dead (or stuck) worker ``w``: its envs start new, differently seeded games."""
        proc = self.procs[w]
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5.0)
        log.warning("rollout worker %d died (exit code %s); restarting it", w, proc.exitcode)
        self.conns[w].close()
        self.control.reset_worker(w)
        self.restarts += 1
        self.generation[w] += 1
        self._start(w)

    def check_policy_worker(self) -> None:
        """Restart the policy worker if it died (posted requests survive in :class:`Control`)."""
        if self.policy_proc is not None and not self.policy_proc.is_alive() and not self._closed:
            log.warning("policy worker died (exit code %s); restarting it", self.policy_proc.exitcode)
            self.policy_worker_restarts += 1
            self._start_policy_worker()

    def pids(self) -> list[int]:
        """Process ids of every live worker (the policy worker last)."""
        procs = [*self.procs, self.policy_proc]
        return [p.pid for p in procs if p is not None and p.is_alive()]

    def close(self) -> None:
        """Stop every process (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.control.stop[0] = 1
        stop_processes(self.conns, [*self.procs, self.policy_proc], -1)

