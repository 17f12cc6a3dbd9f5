"""The intrinsic-reward side of a run in its own process, so the LLM, the annotators and the
reward-model trainers never hold the learner's GIL (``run.reward_placement = "process"``).

:class:`RewardProcess` has :class:`~kudos.rewards.intrinsic.IntrinsicReward`'s surface (build,
``load_state_dict``, ``start``, ``submit``, ``__call__``, ``metrics``, ``state_dict``, ``close``);
behind it a spawned child owns the ``IntrinsicReward``. The learner scores with the newest
:mod:`versioned snapshot <kudos.rewards.snapshot>` it holds, and asks for a newer one without
waiting; captions go over a bounded queue and are dropped (and counted) when it is full.

The queue is a thread of the learner writing to a pipe of its own, not a ``multiprocessing``
queue: a spawned child's queue has named semaphores in ``/dev/shm`` that only the learner's
resource tracker removes, so a run killed with its whole process group (the tracker with it)
would leave them behind. Pipes have no name; the kernel frees them with the last process.

One pipe carries requests and replies in order; at most one snapshot request is in flight, and
a blocking request (``metrics``, ``state_dict``) first takes its reply. An error in the child
(the one-line :class:`~kudos.feedback.backend.LLMConfigError` of a misconfigured endpoint)
comes back as the reply to the next request and is raised in the learner; a dead child is a
one-line :class:`RewardProcessError`, never a hang. The child exits when the learner's end of
the pipe closes (the learner exited or was killed).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import pickle
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, Sequence

import numpy as np

from kudos.cpu import CPUBudget
from kudos.errors import KudosError
from kudos.feedback.config import LLMConfig
from kudos.rewards.base import RewardModel
from kudos.rewards.ensemble import EnsembleReward
from kudos.rewards.intrinsic import IntrinsicReward, RewardConfig
from kudos.rewards.ranker import RankerReward
from kudos.rewards.snapshot import Snapshot, SnapshotPublisher
from kudos.rewards.trainer import RewardModelTrainerConfig
from kudos.rewards.wrapper import intrinsic_rewards

log = logging.getLogger(__name__)

#: Caption batches the queue to the child holds before :meth:`RewardProcess.submit` drops one.
QUEUE_BATCHES = 64
#: Seconds between the learner's checks that a child it waits for is alive.
_ALIVE_CHECK_S = 0.5
#: Seconds the child waits for a request before it takes queued captions again.
_CHILD_POLL_S = 0.02


class RewardProcessError(KudosError):
    """The reward process died or could not be started."""


# --- the normalisation statistics that scoring moves ---------------------------------------------


def _scoring_normalizers(model: RewardModel) -> list[Any]:
    """The normalisers that scoring ``model`` updates (a ranker's), in member order."""
    members = model.members if isinstance(model, EnsembleReward) else [model]
    return [m.normalizer for m in members if isinstance(m, RankerReward)]


def scoring_statistics(model: RewardModel) -> list[dict[str, Any]]:
    """The state of the statistics that scoring moves: they live where scoring happens (the
    learner), not where the model trains, so they travel back with checkpoints."""
    return [n.state_dict() for n in _scoring_normalizers(model)]


def load_scoring_statistics(model: RewardModel, states: list[dict[str, Any]]) -> None:
    for normalizer, state in zip(_scoring_normalizers(model), states):
        normalizer.load_state_dict(state)


def carry_scoring_statistics(previous: RewardModel | None, snapshot: RewardModel) -> RewardModel:
    """``snapshot`` (a newer one, arriving with the trainer's untouched statistics) scoring on
    with the statistics that scoring ``previous`` moved; ``previous`` None: its own, loaded
    afresh all the same (a snapshot Ray unpickled holds read-only arrays that scoring updates)."""
    load_scoring_statistics(snapshot, scoring_statistics(snapshot if previous is None else previous))
    return snapshot


# --- the child -------------------------------------------------------------------------------


def _serve(conn: Connection, captions: Connection, args: tuple[Any, ...], log_level: int) -> None:
    """The child's main loop: build the IntrinsicReward, then answer requests and feed queued
    captions to it until ``close`` or until the learner's end of the pipe closes."""
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    # Ctrl-C reaches the whole process group: the learner stops this process (close), so the
    # batch in flight is stored and the last state reaches the checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        reward = IntrinsicReward(*args)
    except BaseException as exc:  # noqa: BLE001 - every start failure goes to the learner
        _send(conn, ("error", _portable(exc)))
        return
    new_labels: collections.deque[tuple[str, int]] = collections.deque()  # appended by the annotator's thread
    feed = reward.label_feed()
    if feed is not None:
        feed.subscribe(lambda records: new_labels.extend((r.caption, int(r.label)) for r in records
                                                          if r.label is not None))
    _send(conn, ("ok", (feed.prompt_hash, feed.model_id) if feed is not None else None))
    publisher = SnapshotPublisher(reward.model)
    fatal: BaseException | None = None

    def metrics() -> dict[str, float]:
        return {**reward.metrics(), "reward_process/snapshot_version": float(publisher.version)}

    try:
        while True:
            try:
                while fatal is None and captions.poll():
                    reward.submit(_recv(captions))
            except (EOFError, OSError):  # the learner is gone
                return
            except KudosError as exc:  # an annotator stopped: the learner learns at its next request
                fatal = exc
            try:
                if not conn.poll(_CHILD_POLL_S):
                    continue
                command, arg = _recv(conn)
            except (EOFError, OSError):  # the learner is gone
                return
            if fatal is not None and command != "close":
                _send(conn, ("error", _portable(fatal)))
                continue
            try:
                if command == "since":
                    labels = [new_labels.popleft() for _ in range(len(new_labels))]
                    reply: Any = (publisher.since(*arg), labels)
                elif command == "metrics":
                    reply = metrics()
                elif command == "state_dict":
                    load_scoring_statistics(reward.model, arg)
                    reply = reward.state_dict()
                elif command == "load_state_dict":
                    reward.load_state_dict(arg)
                    reply = None
                elif command == "start":
                    reward.start()
                    reply = None
                elif command == "close":  # the last metrics and checkpoint state, then exit
                    reward.close()
                    load_scoring_statistics(reward.model, arg)
                    _send(conn, ("ok", (metrics(), reward.state_dict())))
                    return
                else:
                    raise ValueError(f"unknown request {command!r}")
            except BaseException as exc:  # noqa: BLE001 - the learner raises it
                _send(conn, ("error", _portable(exc)))
            else:
                _send(conn, ("ok", reply))
    finally:
        reward.close()


def _write(batches: queue.Queue[list[str] | None], conn: Connection) -> None:
    """The learner's caption writer: sends ``batches`` to the child until None or a closed pipe."""
    with conn:
        while (batch := batches.get()) is not None:
            try:
                _send(conn, batch)
            except OSError:  # the child is gone (its error reaches the learner through the other pipe)
                return


def _send(conn: Connection, message: Any) -> None:
    """Send ``message`` as plain pickle bytes: multiprocessing's own pickler would share tensors
    through file descriptors that vanish with a sender that exits right after (``close``)."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it crosses the pipe intact, else a RewardProcessError with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any unpicklable exception
        return RewardProcessError(f"{type(exc).__name__} in the reward process: {exc}")


# --- the learner's side ------------------------------------------------------------------------


class LabelFeed:
    """New classification labels as the learner hears of them (:meth:`RewardProcess.label_feed`),
    under an annotator's ``prompt_hash`` and ``model_id``; subscribers get records with
    ``caption`` and ``label``, as an annotator's subscribers do."""

    def __init__(self, prompt_hash: str, model_id: str) -> None:
        self.prompt_hash, self.model_id = prompt_hash, model_id
        self._subscribers: list[Any] = []

    def subscribe(self, callback: Any) -> None:
        self._subscribers.append(callback)

    def publish(self, labels: list[tuple[str, int]]) -> None:
        if labels:
            records = [_Label(caption, label) for caption, label in labels]
            for callback in self._subscribers:
                callback(records)


class _Label(NamedTuple):
    caption: str
    label: int


class RewardProcess:
    """:class:`IntrinsicReward` in a spawned child process (see the module docstring). Built
    stopped, like ``IntrinsicReward``: :meth:`load_state_dict` when resuming, :meth:`start`,
    and :meth:`close` at the end. Blocks until the child has built its reward side (loading the
    embedded LLM takes as long as in the learner's process).

    Args: as for :class:`IntrinsicReward`; ``queue_batches``: caption batches queued for the child
    before :meth:`submit` drops one (counted in ``reward_process/dropped``).
    """

    def __init__(self, config: RewardConfig, llm: LLMConfig, goal: str,
                 trainer: RewardModelTrainerConfig | None = None, cpu: CPUBudget | None = None,
                 queue_batches: int = QUEUE_BATCHES) -> None:
        self.skip_empty = llm.annotator.skip_empty
        # spawn: the child must not inherit the learner's threads, torch state or env workers.
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        child_captions, captions = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve, name="kudos-reward",
            args=(child_conn, child_captions, (config, llm, goal, trainer, cpu), logging.getLogger().getEffectiveLevel()),
            daemon=True,
        )
        self._process.start()
        # The child's ends live in the child only: its exit closes the pipes.
        child_conn.close()
        child_captions.close()
        self._closed = False
        self._pending = False  # a snapshot request is in flight
        self.snapshot: Snapshot | None = None
        self.dropped = 0
        key = self._reply()
        self._feed = LabelFeed(*key) if key is not None else None
        self._captions: queue.Queue[list[str] | None] = queue.Queue(queue_batches)
        self._writer = threading.Thread(target=_write, args=(self._captions, captions), name="kudos-reward-captions",
                                        daemon=True)
        self._writer.start()
        self._final: tuple[dict[str, float], dict[str, Any]] | None = None  # metrics, state at close

    # --- the pipe --------------------------------------------------------------------------

    def _reply(self) -> Any:
        """The next reply; raises the child's error, or RewardProcessError if it died."""
        while not self._conn.poll(_ALIVE_CHECK_S):
            if not self._process.is_alive():
                raise self._died()
        try:
            status, value = _recv(self._conn)
        except (EOFError, OSError):
            raise self._died() from None
        if status == "error":
            raise value
        return value

    def _died(self) -> RewardProcessError:
        self._process.join(timeout=_ALIVE_CHECK_S)
        return RewardProcessError(f"the reward process died (exit code {self._process.exitcode}); "
                                  "see the log above, then resume the run with --resume")

    def _request(self, command: str, arg: Any) -> None:
        try:
            _send(self._conn, (command, arg))
        except OSError:
            raise self._died() from None

    def _call(self, command: str, arg: Any = None) -> Any:
        if self._pending:
            self._pending = False
            self._take(self._reply())
        self._request(command, arg)
        return self._reply()

    def _take(self, reply: tuple[Snapshot | None, list[tuple[str, int]]]) -> None:
        snapshot, labels = reply
        if snapshot is not None:  # scoring's statistics stay the learner's
            carry_scoring_statistics(self.snapshot.model if self.snapshot else None, snapshot.model)
            self.snapshot = snapshot
        if self._feed is not None:
            self._feed.publish(labels)

    def refresh(self) -> None:
        """Take a snapshot that arrived since the last call and ask for the next one; never waits
        (except for a dead child's one-line error)."""
        if self._pending:
            if not self._conn.poll(0):
                if not self._process.is_alive():
                    self._pending = False
                    self._reply()  # raises
                return
            self._pending = False
            self._take(self._reply())
        epoch, version = (self.snapshot.epoch, self.snapshot.version) if self.snapshot else (None, 0)
        self._request("since", (epoch, version))
        self._pending = True

    # --- IntrinsicReward's surface -------------------------------------------------------------

    def start(self) -> RewardProcess:
        self._call("start")
        self._take(self._call("since", (None, 0)))  # score with the (resumed) model from the first batch
        return self

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        """Intrinsic rewards of ``captions`` under the newest snapshot held: float32 ``(N,)``."""
        if self.snapshot is None:
            raise RewardProcessError("the reward process was not started")
        return intrinsic_rewards(self.snapshot.model, captions, self.skip_empty)

    def submit(self, captions: Sequence[str]) -> None:
        """Queue the captions for the annotators (dropped and counted when the queue is full) and
        :meth:`refresh`; raises the child's error (e.g. the one-line LLMConfigError)."""
        try:
            self._captions.put_nowait(list(captions))
        except queue.Full:
            self.dropped += 1
        self.refresh()

    def label_feed(self) -> LabelFeed | None:
        """The classification labels' feed (None without a classification annotator)."""
        return self._feed

    @property
    def model(self) -> RewardModel:
        """The snapshot scoring uses now (``kudos report`` diagnostics judge labels with it)."""
        if self.snapshot is None:
            raise RewardProcessError("the reward process was not started")
        return self.snapshot.model

    def metrics(self) -> dict[str, float]:
        out = dict(self._final[0]) if self._final else self._call("metrics")
        out["reward_process/dropped"] = float(self.dropped)
        out["reward_process/scoring_version"] = float(self.snapshot.version if self.snapshot else 0)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The child's consistent :meth:`IntrinsicReward.state_dict`, with scoring's statistics."""
        return self._final[1] if self._final else self._call("state_dict", self._statistics())

    def _statistics(self) -> list[dict[str, Any]]:
        return scoring_statistics(self.snapshot.model) if self.snapshot else []

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._call("load_state_dict", state)

    def close(self) -> None:
        """Stop the child as :meth:`IntrinsicReward.close` stops the threads (idempotent); a
        child that does not exit in time is terminated. :meth:`__call__`, :meth:`metrics` and
        :meth:`state_dict` stay usable (the last two give the child's final figures and state)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._process.is_alive():
                self._final = self._call("close", self._statistics())
        except (KudosError, OSError) as exc:
            log.warning("reward process: %s", exc)
        finally:
            self._process.join(timeout=30)
            if self._process.is_alive():
                log.warning("the reward process did not stop in 30 s; terminating it")
                self._process.terminate()
                self._process.join()
            # The child is gone: the writer stops at this, or at its next write (a broken pipe).
            with contextlib.suppress(queue.Full):
                self._captions.put_nowait(None)
            self._writer.join()
            self._conn.close()
