"""The annotation service: captions in (never blocking the caller), labels out (store + subscribers).

:class:`Annotator` is the asynchronous service the learner talks to. ``submit(captions)`` only
touches the in-memory :class:`~kudos.feedback.backlog.Backlog` under a lock, so it never waits for
the LLM or the store. A worker thread deduplicates against the store, batches requests (freshest
first, with a fixed share of every batch for the oldest items so none waits forever), has the
synchronous :class:`~kudos.feedback.labeler.Labeler` label them, writes labels to the store and
notifies subscribers (the reward-model trainer). LLM faults are counted, logged and retried with
backoff; unanswered items go back to pending, so nothing is lost and nothing is invented.

For ranking, pairs are sampled as ONI does (``pair_sampling="oni"``): every ``obs_subsample``-th
submitted caption (duplicates included, so frequent captions weigh more) joins a uniform reservoir
of observations (:class:`~kudos.feedback.reservoir.PairReservoir`), and each :meth:`Annotator.submit` adds ``pairs_per_submit`` pairs drawn from it
while fewer than ``2 * batch_size`` items wait for the worker; ``"per_new_caption"`` pairs each
new distinct caption with earlier ones, once. A pair the store holds is never asked again. An
endpoint that rejects every request (:class:`~kudos.feedback.backend.LLMConfigError`) stops the
service: the next ``submit`` raises that one-line error. Small models answer
"A or B?" with a position bias, so for backends with ``pointwise_only`` (the embedded model) pair
preferences are derived from per-caption scores (:class:`~kudos.feedback.prompts.PairwiseFromPointwise`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from kudos.backoff import Backoff
from kudos.errors import ConfigError
from kudos.feedback.backend import LLMBackend, LLMCancelled, LLMConfigError
from kudos.feedback.backlog import Backlog, Taken
from kudos.feedback.labeler import LabelCounts, Labeler, LabelOutcome, resolve_spec
from kudos.feedback.prompts import PromptTemplate
from kudos.feedback.reservoir import PairReservoir
from kudos.feedback.store import ClaimHeartbeat, Item, LabelRecord, LabelStore, StoreError, new_claim_owner

log = logging.getLogger(__name__)

_RATE_WINDOW_S = 60.0


@dataclass
class AnnotatorConfig:
    """Options of the annotation service.

    max_backlog: items (captions, or pairs for ranking) waiting or in flight; a submission that
        finds it full is dropped and counted (it comes back when the caption is seen again).
    batch_size: requests per backend call. oldest_per_batch: slots of each batch that go to the
        oldest waiting items (the rest to the newest), so no item waits forever.
    pairwise: ranking only; "auto" derives pairs from pointwise scores for ``pointwise_only``
        backends, "prompt" always asks the pairwise prompt, "pointwise" always derives.
    pair_sampling: ranking only; "oni": ``pairs_per_submit`` pairs per submit() from every
        ``obs_subsample``-th submitted caption (frequency-weighted), while fewer than
        ``2 * batch_size`` submitted items wait for the worker (ONI's rule: 10 pairs per minibatch
        while the LLM queue is short); "per_new_caption": ``pairs_per_caption`` pairs for each new
        distinct caption with earlier ones, each caption once ever.
    reservoir_size: observations (oni) or distinct captions (per_new_caption) kept for pairing.
    skip_empty: "" is never asked about (ONI asks about it like any other caption).
    claim_lease_s: before asking, the worker claims its batch in the store for this long (renewed
        every third of it while it lives), so runs sharing a store ask about each item once; an
        item another run holds is checked against the store again ``claim_retry_s`` later.
    backoff_s / max_backoff_s: wait after a server fault, doubling per consecutive fault (seconds;
        equal jitter, 50-100 % of that, so runs that failed together do not retry in step).
    """

    max_backlog: int = 100_000
    batch_size: int = 8
    oldest_per_batch: int = 1
    pairwise: Literal["auto", "prompt", "pointwise"] = "auto"
    tie_margin: float = 0.1
    pair_sampling: Literal["oni", "per_new_caption"] = "oni"
    pairs_per_submit: int = 10
    obs_subsample: int = 10
    reservoir_size: int = 10_000
    pairs_per_caption: int = 1
    skip_empty: bool = False
    claim_lease_s: float = 60.0
    claim_retry_s: float = 1.0
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_backlog < 1 or self.batch_size < 1 or not 0 <= self.oldest_per_batch <= self.batch_size:
            raise ConfigError(
                "annotator: need max_backlog >= 1, batch_size >= 1 and 0 <= oldest_per_batch <= batch_size, got "
                f"{self.max_backlog}, {self.batch_size}, {self.oldest_per_batch}"
            )
        if self.pairwise not in ("auto", "prompt", "pointwise"):
            raise ConfigError(f"annotator: pairwise must be auto, prompt or pointwise, got {self.pairwise!r}")
        if self.pair_sampling not in ("oni", "per_new_caption"):
            raise ConfigError(f"annotator: pair_sampling must be oni or per_new_caption, got {self.pair_sampling!r}")
        if self.obs_subsample < 1 or self.reservoir_size < 1:
            raise ConfigError("annotator: obs_subsample and reservoir_size must be >= 1")


@dataclass
class AnnotatorMetrics(LabelCounts):
    """A snapshot of the service's counters (all counts since start) and its queue."""

    queue_depth: int = 0  # items waiting (submitted, not yet sent to the LLM)
    in_flight: int = 0  # items in the batch the LLM is answering
    labels_per_s: float = 0.0  # over the last minute
    cache_hit_rate: float = 0.0  # hits / (hits + misses), 0 before any lookup

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if k != "calling_since"}


class Annotator:
    """Asynchronous annotation service; see the module docstring.

    Use as ``with Annotator(backend, store, template) as annotator: annotator.submit(captions)``,
    or ``start()`` / ``close()``. Subscribers (``subscribe(callback)``) are called on the worker
    thread with each list of newly stored records of this annotator's prompt hash. ``nice``: added
    to the worker thread's scheduling niceness (Linux), so an in-process LLM yields the cores to
    training when both want them and takes what is left (``cpu.llm_nice`` in a run).
    """

    def __init__(
        self,
        backend: LLMBackend,
        store: LabelStore,
        template: PromptTemplate,
        config: AnnotatorConfig | None = None,
        nice: int = 0,
    ) -> None:
        self.config = config or AnnotatorConfig()
        self.nice = nice
        self.backend = backend
        self.store = store
        self.spec = resolve_spec(template, backend, self.config.pairwise, self.config.tie_margin)
        self.labeler = Labeler(backend, self.spec, store)
        self._counts: LabelCounts = self.labeler.stats  # one set of counters, the labeller's and ours
        self._rank = self.spec.kind == "rank"
        self._oni_pairs = self._rank and self.config.pair_sampling == "oni"
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when the backlog shrinks
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Guarded by _lock: the backlog, the reservoir, the counters, the rate window, the
        # records a store fault held back, the subscribers and the error that stopped the service.
        self._backlog = Backlog(self.config.max_backlog)
        self._reservoir = PairReservoir(self.config.reservoir_size, self.config.obs_subsample, self.config.seed)
        self._rate: deque[tuple[float, int]] = deque()  # (time, labels) per stored batch
        self._owner = new_claim_owner()
        self._heartbeat: ClaimHeartbeat | None = None
        self._fatal: LLMConfigError | None = None
        self._unwritten: list[LabelRecord] = []  # labelled but not yet stored (store fault)
        self._subscribers: list[Callable[[list[LabelRecord]], None]] = []
        self._backoff = Backoff(self.config.backoff_s, self.config.max_backoff_s, seed=self.config.seed)
        self._started = time.monotonic()

    # -- caller side ------------------------------------------------------------------------------
    @property
    def prompt_hash(self) -> str:
        """The prompt hash of this annotator's labels in the store (derived pairs included)."""
        return self.labeler.prompt_hash

    @property
    def model_id(self) -> str:
        return self.labeler.model_id

    def submit(self, captions: Iterable[str]) -> None:
        """Queue captions for labelling (for ranking: observe them and sample pairs); returns at
        once. Known, waiting and in-flight captions are skipped; when the backlog is full the rest
        of the call is dropped and counted. Raises the :class:`LLMConfigError` that stopped the
        service, if one did."""
        if isinstance(captions, str):
            raise TypeError("submit() takes an iterable of captions, not one string")
        if self.config.skip_empty:
            captions = [c for c in captions if c]
        with self._lock:
            if self._fatal is not None:
                raise self._fatal
            if self._oni_pairs:
                self._queue(self._observe_and_pair(list(captions)))
            else:
                self._queue(captions)
        self._wake.set()

    def _queue(self, items: Iterable[Item]) -> None:
        """Accept new items into the backlog, counting those skipped; caller holds the lock."""
        duplicates, dropped = self._backlog.accept(items)
        self._counts.duplicates += duplicates
        self._counts.dropped += dropped

    def _observe_and_pair(self, captions: list[str]) -> list[Item]:
        """ONI's pair sampling (see :class:`AnnotatorConfig`); caller holds the lock."""
        self._reservoir.observe(captions)
        if len(self._backlog.intake) >= 2 * self.config.batch_size:
            return []
        return list(self._reservoir.sample_pairs(self.config.pairs_per_submit))

    def subscribe(self, callback: Callable[[list[LabelRecord]], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[list[LabelRecord]], None]) -> None:
        with self._lock:
            self._subscribers.remove(callback)

    def metrics(self) -> AnnotatorMetrics:
        with self._lock:
            c = self._counts
            now = time.monotonic()
            self._prune_rate(now)
            looked_up = c.cache_hits + c.cache_misses
            counts = asdict(c)
            since = counts.pop("calling_since")  # read once: the worker thread resets it unlocked
            if since is not None:  # the LLM call in progress counts as it goes
                counts["llm_seconds"] += time.perf_counter() - since
            return AnnotatorMetrics(
                **counts,
                queue_depth=self._backlog.waiting,
                in_flight=len(self._backlog.in_flight),
                labels_per_s=sum(n for _, n in self._rate) / max(1e-9, min(_RATE_WINDOW_S, now - self._started)),
                cache_hit_rate=c.cache_hits / looked_up if looked_up else 0.0,
            )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every accepted item is labelled and stored; False on timeout. Raises the
        :class:`LLMConfigError` that stopped the service, if one did."""
        with self._changed:
            idle = self._changed.wait_for(
                lambda: (self._backlog.size == 0 and not self._unwritten) or self._fatal is not None, timeout
            )
            if self._fatal is not None:
                raise self._fatal
            return idle

    def state_dict(self) -> dict[str, Any]:
        """Items not yet labelled (oldest first) and the pair reservoir, JSON-serialisable."""
        with self._lock:
            waiting = self._backlog.items()
            return {
                "pending": [item if isinstance(item, str) else list(item) for item in waiting],
                **self._reservoir.state_dict(),
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Queue the items of a ``state_dict()`` again; those labelled meanwhile are skipped."""
        items: list[Item] = [raw if isinstance(raw, str) else (raw[0], raw[1]) for raw in state.get("pending", [])]
        with self._lock:
            self._reservoir.load_state_dict(state)
            self._backlog.restore(items)
        self._wake.set()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Annotator:
        if self._thread is None:
            self._stop.clear()
            self._started = time.monotonic()
            self._heartbeat = ClaimHeartbeat(self.store, self._owner, self.config.claim_lease_s)
            self._thread = threading.Thread(target=self._run, name="kudos-annotator", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after its current batch (waiting items stay in ``state_dict()``)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                # Its batch is still with the LLM (a slow or busy model): the backend and store
                # must outlive it, so wait rather than let the caller free them under it.
                log.warning("annotator: waiting for the LLM batch in flight (more than %.0f s)", timeout)
                self._thread.join()
            self._thread = None
        self._write([])  # a last try for records a store fault held back
        if self._heartbeat is not None:
            self._heartbeat.close()
            self._heartbeat = None
            try:  # free what this run claimed and will not ask now (expiry would free it too)
                self.store.release_claims(self._owner)
            except StoreError as exc:
                log.warning("annotator: cannot release label claims (%s); they expire on their own", exc)

    def __enter__(self) -> Annotator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker side ------------------------------------------------------------------------------
    def _run(self) -> None:
        if self.nice > 0 and hasattr(os, "setpriority"):
            tid = threading.get_native_id()  # on Linux a thread's niceness is its own
            os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + self.nice, 19))
        while not self._stop.is_set():
            self._wake.clear()
            if self._unwritten:
                self._write([])
            self._admit()
            batch = self._claim(self._take_batch())
            if not batch:
                self._wake.wait(0.5)
                continue
            try:
                # _stop cancels retries: close() must not wait out a failing endpoint's backoffs
                outcome = self.labeler.label([item for item, _ in batch], cancel=self._stop)
            except LLMConfigError as exc:  # a misconfiguration: retrying cannot help
                log.error("annotator stopped: %s", exc)
                with self._changed:
                    self._backlog.requeue(batch)
                    self._fatal = exc
                    self._changed.notify_all()
                return
            except StoreError as exc:  # derived pairs read member scores from the store
                self._fault(batch, "label store", exc, store=True)
                continue
            except Exception as exc:  # noqa: BLE001 - a backend bug must not stop training
                log.exception("annotation batch failed")
                with self._lock:
                    self._counts.server_errors += 1
                self._fault(batch, "backend", exc)
                continue
            self._finish(batch, outcome)

    def _claim(self, batch: list[Taken]) -> list[Taken]:
        """The part of ``batch`` this run may ask about: claimed in the store, so no other run
        sharing it asks too. Items another run holds wait ``claim_retry_s``, then are looked up
        in the store again (labelled by then, or free once its owner's lease ran out)."""
        if not batch:
            return batch
        try:
            mine = set(self.store.claim_many(self.prompt_hash, self.model_id, [item for item, _ in batch],
                                             self._owner, self.config.claim_lease_s))
        except StoreError as exc:
            self._fault(batch, "label store", exc, store=True)
            return []
        if len(mine) < len(batch):
            with self._lock:
                later = time.monotonic() + self.config.claim_retry_s
                self._backlog.defer([item for item, _ in batch if item not in mine], later)
        return [(item, old) for item, old in batch if item in mine]

    def _admit(self) -> None:
        """Move submitted captions (as pairs, for ranking) and restored items into pending,
        skipping items the store already has."""
        with self._lock:
            intake, restored, due = self._backlog.take_new(time.monotonic())
        if not intake and not restored:
            return
        fresh = self._pair_new(intake) if self._rank and not self._oni_pairs else list(intake)  # type: ignore[arg-type]
        items: list[Item] = restored + fresh
        taken = len(intake) + len(restored)
        try:
            stored = self.store.get_many(self.prompt_hash, self.model_id, items) if items else {}
        except StoreError as exc:
            with self._lock:  # pairs are already sampled: keep them as they are
                self._backlog.retake(items, taken)
                self._counts.store_errors += 1
            log.warning("annotator: cannot read the label store (%s); retrying", exc)
            self._sleep_backoff()
            return
        with self._changed:
            self._counts.cache_hits += len(stored)
            # items due again after a claim elsewhere were counted as a miss when first admitted
            self._counts.cache_misses += self._backlog.add_pending(items, taken, stored, counted=set(due))
            self._changed.notify_all()

    def _pair_new(self, captions: list[str]) -> list[Item]:
        """``per_new_caption`` pair sampling: each new caption with earlier ones (see
        :meth:`PairReservoir.pair_new`)."""
        with self._lock:
            n = self.config.pairs_per_caption
            return [pair for caption in captions for pair in self._reservoir.pair_new(caption, n)]

    def _take_batch(self) -> list[Taken]:
        with self._lock:
            return self._backlog.take_batch(self.config.batch_size, self.config.oldest_per_batch)

    def _fault(self, batch: Sequence[Taken], what: str, exc: Exception, store: bool = False) -> None:
        with self._lock:
            self._backlog.requeue(batch)
            if store:
                self._counts.store_errors += 1
        log.warning("annotator: %s fault (%s); %d items back to pending", what, exc, len(batch))
        self._sleep_backoff()

    def _finish(self, batch: Sequence[Taken], outcome: LabelOutcome) -> None:
        failed = set(outcome.failed)
        with self._lock:
            self._backlog.requeue([(item, old) for item, old in batch if item in failed])
            self._backlog.done(item for item, _ in batch if item not in failed)
        self._write(outcome.records)
        if isinstance(outcome.error, LLMCancelled):
            return  # closing: the unanswered items wait in state_dict()
        if outcome.error is not None:
            log.warning("annotator: LLM fault (%s); %d of %d items back to pending", outcome.error, len(failed), len(batch))
            self._sleep_backoff()
        else:
            self._backoff.reset()

    def _write(self, records: list[LabelRecord]) -> None:
        """Store records (with any held back by an earlier store fault), then notify subscribers."""
        with self._lock:
            todo, self._unwritten = self._unwritten + records, []
        if not todo:
            return
        try:
            self.store.put_many(todo)
        except StoreError as exc:
            with self._lock:
                self._unwritten = todo + self._unwritten
                self._counts.store_errors += 1
            log.warning("annotator: cannot write %d labels to the store (%s); will retry", len(todo), exc)
            self._sleep_backoff()
            return
        own = [r for r in todo if r.prompt_hash == self.prompt_hash]
        with self._changed:
            self._counts.labels += len(own)
            self._rate.append((time.monotonic(), len(own)))
            self._prune_rate(time.monotonic())
            self._backlog.stored(len(own))
            subscribers = list(self._subscribers)
            self._changed.notify_all()
        for callback in subscribers:
            try:
                callback(own)
            except Exception:  # noqa: BLE001 - a subscriber bug must not stop the service
                log.exception("annotator: label subscriber failed")
                with self._lock:
                    self._counts.subscriber_errors += 1

    def _prune_rate(self, now: float) -> None:
        """Drop label counts older than the rate window; caller holds the lock."""
        while self._rate and self._rate[0][0] < now - _RATE_WINDOW_S:
            self._rate.popleft()

    def _sleep_backoff(self) -> None:
        """Wait after a fault (a jittered backoff_s, doubling per consecutive fault up to
        max_backoff_s), or until close()."""
        self._backoff.wait(self._stop)
