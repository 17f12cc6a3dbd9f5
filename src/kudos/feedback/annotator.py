"""The annotation service: captions in (never blocking the caller), labels out (store + subscribers).

Two layers:

- :class:`Labeler`: synchronous. Asks the backend about a batch of items, parses replies (one
  short re-ask for unreadable ones, then "unknown"), and returns label records plus the items a
  server fault left unanswered. Used by the service and by ``kudos annotate``.
- :class:`Annotator`: the asynchronous service the learner talks to. ``submit(captions)`` only
  touches an in-memory set and list under a lock, so it never waits for the LLM or the store. A
  worker thread deduplicates against the store, batches requests (freshest first, with a fixed
  share of every batch for the oldest items so none waits forever), writes labels to the store and
  notifies subscribers (the reward-model trainer). LLM faults are counted, logged and retried with
  backoff; unanswered items go back to pending, so nothing is lost and nothing is invented.

For ranking, pairs are sampled as ONI does (``pair_sampling="oni"``): every ``obs_subsample``-th
submitted caption (duplicates included, so frequent captions weigh more) joins a uniform reservoir
of observations, and each :meth:`Annotator.submit` adds ``pairs_per_submit`` pairs drawn from it
while fewer than ``2 * batch_size`` items wait for the worker; ``"per_new_caption"`` pairs each
new distinct caption with earlier ones, once. A pair the store holds is never asked again. An
endpoint that rejects every request (:class:`~kudos.feedback.backend.LLMConfigError`) stops the
service: the next ``submit`` raises that one-line error. Small models answer
"A or B?" with a position bias, so for backends with ``pointwise_only`` (the embedded model) pair
preferences are derived from per-caption scores (:class:`~kudos.feedback.prompts.PairwiseFromPointwise`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from kudos.backoff import Backoff
from kudos.errors import ConfigError
from kudos.feedback.backend import LLMBackend, LLMCancelled, LLMConfigError, LLMError, LLMReply, LLMRequest
from kudos.feedback.parse import derive_preference, parse_label
from kudos.feedback.prompts import LabelSpec, PairwiseFromPointwise, PromptTemplate
from kudos.feedback.store import ClaimHeartbeat, Item, LabelRecord, LabelStore, StoreError, new_claim_owner

log = logging.getLogger(__name__)

# Joins a first reply and its re-ask reply in the stored raw reply.
REASK_SEPARATOR = "\n--- re-ask ---\n"
_RATE_WINDOW_S = 60.0


def resolve_spec(
    template: PromptTemplate,
    backend: LLMBackend,
    pairwise: Literal["auto", "prompt", "pointwise"] = "auto",
    tie_margin: float = 0.1,
) -> LabelSpec:
    """What to ask: the template itself, or for ranking with a small model (``pointwise_only``
    backend, or ``pairwise="pointwise"``) pair preferences derived from per-caption scores."""
    if template.kind == "classify" or pairwise == "prompt":
        return template
    if pairwise == "pointwise" or getattr(backend, "pointwise_only", False):
        return PairwiseFromPointwise(template.pointwise(), tie_margin)
    return template


@dataclass
class LabelerStats:
    """Counters of one Labeler (and the pointwise Labeler it may use for derived pairs)."""

    llm_requests: int = 0  # requests sent, re-asks included
    parse_failures: int = 0  # replies with no readable label (first answers and re-asks)
    unknown_labels: int = 0  # items recorded as unknown after the re-ask
    server_errors: int = 0  # generate() calls that raised LLMError


@dataclass
class LabelOutcome:
    """records: to store (for derived pairs, also the per-caption records they came from).
    failed: items of the batch left unanswered by a server fault; ask again later.
    error: that fault, if any."""

    records: list[LabelRecord]
    failed: list[Item]
    error: LLMError | None = None


class Labeler:
    """Asks ``backend`` the question ``spec`` about batches of items; see :meth:`label`."""

    def __init__(
        self, backend: LLMBackend, spec: LabelSpec, store: LabelStore, stats: LabelerStats | None = None
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.store = store
        self.stats = stats or LabelerStats()
        self._pointwise = (
            Labeler(backend, spec.pointwise, store, self.stats) if isinstance(spec, PairwiseFromPointwise) else None
        )

    @property
    def prompt_hash(self) -> str:
        return self.spec.version_hash

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def label(self, items: Sequence[Item], cancel: threading.Event | None = None) -> LabelOutcome:
        """Label ``items`` (captions for classification, ordered pairs for ranking). Once
        ``cancel`` is set the backend stops asking and retrying; unanswered items come back as
        ``failed``."""
        if isinstance(self.spec, PairwiseFromPointwise):
            return self._label_derived(items, cancel)
        return self._label_asked(self.spec, items, cancel)

    def _ask(
        self, requests: Sequence[LLMRequest], cancel: threading.Event | None
    ) -> tuple[list[LLMReply | None], LLMError | None]:
        """One batched backend call; on a fault, the replies that did arrive (None for the rest)."""
        if not requests:
            return [], None
        self.stats.llm_requests += len(requests)
        try:
            replies: list[LLMReply | None] = list(self.backend.generate(requests, cancel))
            if len(replies) != len(requests):
                raise LLMError(f"backend returned {len(replies)} replies for {len(requests)} requests")
            return replies, None
        except LLMError as exc:
            self.stats.server_errors += not isinstance(exc, LLMCancelled)
            partial = list(exc.replies) if len(exc.replies) == len(requests) else [None] * len(requests)
            return partial, exc

    def _label_asked(
        self, template: PromptTemplate, items: Sequence[Item], cancel: threading.Event | None
    ) -> LabelOutcome:
        first, error = self._ask([template.request(item) for item in items], cancel)
        labels = [None if r is None else parse_label(template, r.text) for r in first]
        unreadable = [(i, r) for i, r in enumerate(first) if r is not None and labels[i] is None]
        self.stats.parse_failures += len(unreadable)
        second, reask_error = self._ask([template.reask(items[i], r.text) for i, r in unreadable], cancel)
        reask = {i: again for (i, _), again in zip(unreadable, second)}
        records: list[LabelRecord] = []
        failed: list[Item] = []
        now = time.time()
        for i, item in enumerate(items):
            reply = first[i]
            if reply is None or (i in reask and reask[i] is None):
                failed.append(item)  # a server fault: nothing to record, ask again later
                continue
            label, soft, text, latency = labels[i], reply.p_positive, reply.text, reply.latency_s
            again = reask.get(i)
            if again is not None:
                label = parse_label(template, again.text)
                text, latency = reply.text + REASK_SEPARATOR + again.text, latency + again.latency_s
                if label is None:
                    self.stats.parse_failures += 1
                    self.stats.unknown_labels += 1
                elif again.p_positive is not None:
                    soft = again.p_positive
            records.append(self._record(template, item, label, soft, text, latency, now))
        return LabelOutcome(records, failed, error or reask_error)

    def _label_derived(self, pairs: Sequence[Item], cancel: threading.Event | None) -> LabelOutcome:
        """Pairs from per-caption scores: stored ones are reused, missing ones asked now."""
        assert self._pointwise is not None and isinstance(self.spec, PairwiseFromPointwise)
        members = list(dict.fromkeys(c for pair in pairs for c in pair))
        stored = self.store.get_many(self.spec.pointwise.version_hash, self.model_id, members)
        scores = {r.caption: r for r in stored.values()}
        asked = self._pointwise.label([c for c in members if c not in scores], cancel)
        fresh = {r.caption: r for r in asked.records}
        scores.update(fresh)
        records: list[LabelRecord] = []
        failed: list[Item] = []
        now = time.time()
        for pair in pairs:
            first, second = pair
            if first not in scores or second not in scores:
                failed.append(pair)
                continue
            a, b = scores[first], scores[second]
            label, soft = derive_preference((a.label, a.soft_label), (b.label, b.soft_label), self.spec.tie_margin)
            if label is None:
                self.stats.unknown_labels += 1
            reply = json.dumps({"pointwise": [[a.label, a.soft_label], [b.label, b.soft_label]]})
            latency = sum(fresh[c].latency_s for c in (first, second) if c in fresh)
            records.append(self._record(self.spec, pair, label, soft, reply, latency, now))
        return LabelOutcome(asked.records + records, failed, asked.error)

    def _record(
        self, spec: LabelSpec, item: Item, label: int | None, soft: float | None, reply: str, latency_s: float,
        timestamp: float,
    ) -> LabelRecord:
        first, second = (item, None) if isinstance(item, str) else item
        return LabelRecord(
            spec.version_hash, self.model_id, spec.kind, first, second, label, soft, reply, latency_s, timestamp
        )


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
    nice: added to the worker thread's scheduling niceness (Linux): an in-process LLM then
        yields the cores to training when both want them, and takes what is left.
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
    nice: int = 0

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


@dataclass(frozen=True)
class AnnotatorMetrics:
    """A snapshot of the service's counters (all counts since start)."""

    queue_depth: int  # items waiting (submitted, not yet sent to the LLM)
    in_flight: int  # items in the batch the LLM is answering
    labels: int  # records stored under this annotator's prompt hash
    labels_per_s: float  # over the last minute
    unknown_labels: int
    cache_hits: int  # new items found in the store (asked before, maybe by another process)
    cache_misses: int  # new items that had to be asked
    cache_hit_rate: float  # hits / (hits + misses), 0 before any lookup
    duplicates: int  # submitted captions skipped as already known, waiting or in flight
    dropped: int  # submitted captions dropped because the backlog was full
    llm_requests: int
    parse_failures: int
    server_errors: int
    store_errors: int
    subscriber_errors: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass
class _Counters:
    labels: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    duplicates: int = 0
    dropped: int = 0
    store_errors: int = 0
    subscriber_errors: int = 0
    rate: deque[tuple[float, int]] = field(default_factory=deque)  # (time, labels) per stored batch


class Annotator:
    """Asynchronous annotation service; see the module docstring.

    Use as ``with Annotator(backend, store, template) as annotator: annotator.submit(captions)``,
    or ``start()`` / ``close()``. Subscribers (``subscribe(callback)``) are called on the worker
    thread with each list of newly stored records of this annotator's prompt hash.
    """

    def __init__(
        self,
        backend: LLMBackend,
        store: LabelStore,
        template: PromptTemplate,
        config: AnnotatorConfig | None = None,
    ) -> None:
        self.config = config or AnnotatorConfig()
        self.backend = backend
        self.store = store
        self.spec = resolve_spec(template, backend, self.config.pairwise, self.config.tie_margin)
        self.labeler = Labeler(backend, self.spec, store)
        self._rank = self.spec.kind == "rank"
        self._oni_pairs = self._rank and self.config.pair_sampling == "oni"
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when the backlog shrinks
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Guarded by _lock: captions ever accepted (dedup), new captions for the worker, items
        # waiting (oldest first) and in flight, and the backlog size bounded by max_backlog.
        self._seen: set[str] = set()
        self._intake: list[Item] = []  # captions, or pairs already sampled (oni pair sampling)
        self._restored: list[Item] = []  # items from load_state_dict, checked against the store too
        self._elsewhere: list[tuple[float, Item]] = []  # (when to look again, item) claimed by another run
        self._owner = new_claim_owner()
        self._heartbeat: ClaimHeartbeat | None = None
        self._pending: OrderedDict[Item, None] = OrderedDict()
        self._inflight: set[Item] = set()
        self._backlog = 0
        self._reservoir: list[str] = []
        self._reservoir_seen = 0
        self._observed = 0  # captions submitted (oni pair sampling keeps every obs_subsample-th)
        self._fatal: LLMConfigError | None = None
        self._unwritten: list[LabelRecord] = []  # labelled but not yet stored (store fault)
        self._subscribers: list[Callable[[list[LabelRecord]], None]] = []
        self._counts = _Counters()
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
        """Accept new items into the intake, deduplicated, up to the backlog; caller holds the lock."""
        for caption in items:
            if caption in self._seen:
                self._counts.duplicates += 1
            elif self._backlog >= self.config.max_backlog:
                self._counts.dropped += 1
            else:
                if isinstance(caption, str):  # pairs are deduplicated against pending and the store
                    self._seen.add(caption)
                self._intake.append(caption)
                self._backlog += 1

    def _observe_and_pair(self, captions: list[str]) -> list[Item]:
        """ONI's pair sampling (see :class:`AnnotatorConfig`); caller holds the lock."""
        cfg = self.config
        for caption in captions:
            if self._observed % cfg.obs_subsample == 0:
                self._keep_in_reservoir(caption)
            self._observed += 1
        if not self._reservoir or len(self._intake) >= 2 * cfg.batch_size:
            return []
        pairs = [(self._rng.choice(self._reservoir), self._rng.choice(self._reservoir)) for _ in range(cfg.pairs_per_submit)]
        # An identical pair teaches a Bradley-Terry model nothing (ONI asks it anyway).
        return [pair for pair in pairs if pair[0] != pair[1]]

    def subscribe(self, callback: Callable[[list[LabelRecord]], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[list[LabelRecord]], None]) -> None:
        with self._lock:
            self._subscribers.remove(callback)

    def metrics(self) -> AnnotatorMetrics:
        stats = self.labeler.stats
        with self._lock:
            c = self._counts
            now = time.monotonic()
            self._prune_rate(now)
            looked_up = c.cache_hits + c.cache_misses
            return AnnotatorMetrics(
                queue_depth=len(self._intake) + len(self._restored) + len(self._elsewhere) + len(self._pending),
                in_flight=len(self._inflight),
                labels=c.labels,
                labels_per_s=sum(n for _, n in c.rate) / max(1e-9, min(_RATE_WINDOW_S, now - self._started)),
                unknown_labels=stats.unknown_labels,
                cache_hits=c.cache_hits,
                cache_misses=c.cache_misses,
                cache_hit_rate=c.cache_hits / looked_up if looked_up else 0.0,
                duplicates=c.duplicates,
                dropped=c.dropped,
                llm_requests=stats.llm_requests,
                parse_failures=stats.parse_failures,
                server_errors=stats.server_errors,
                store_errors=c.store_errors,
                subscriber_errors=c.subscriber_errors,
            )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every accepted item is labelled and stored; False on timeout. Raises the
        :class:`LLMConfigError` that stopped the service, if one did."""
        with self._changed:
            idle = self._changed.wait_for(
                lambda: (self._backlog == 0 and not self._unwritten) or self._fatal is not None, timeout
            )
            if self._fatal is not None:
                raise self._fatal
            return idle

    def state_dict(self) -> dict[str, Any]:
        """Items not yet labelled (oldest first) and the pair reservoir, JSON-serialisable."""
        with self._lock:
            elsewhere = [item for _, item in self._elsewhere]
            waiting: list[Item] = [*self._restored, *elsewhere, *self._pending, *self._inflight, *self._intake]
            return {
                "pending": [item if isinstance(item, str) else list(item) for item in waiting],
                "reservoir": list(self._reservoir),
                "reservoir_seen": self._reservoir_seen,
                "observed": self._observed,
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Queue the items of a ``state_dict()`` again; those labelled meanwhile are skipped."""
        items: list[Item] = [raw if isinstance(raw, str) else (raw[0], raw[1]) for raw in state.get("pending", [])]
        with self._lock:
            self._reservoir = list(state.get("reservoir", []))[: self.config.reservoir_size]
            self._reservoir_seen = max(int(state.get("reservoir_seen", 0)), len(self._reservoir))
            self._observed = int(state.get("observed", 0))
            self._seen.update(item for item in items if isinstance(item, str))
            self._restored.extend(items)
            self._backlog += len(items)
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
            self._heartbeat.stop()
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
        if self.config.nice > 0 and hasattr(os, "setpriority"):
            tid = threading.get_native_id()  # on Linux a thread's niceness is its own
            os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + self.config.nice, 19))
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
                    self._requeue(batch)
                    self._fatal = exc
                    self._changed.notify_all()
                return
            except StoreError as exc:  # derived pairs read member scores from the store
                self._fault(batch, "label store", exc, store=True)
                continue
            except Exception as exc:  # noqa: BLE001 - a backend bug must not stop training
                log.exception("annotation batch failed")
                self.labeler.stats.server_errors += 1
                self._fault(batch, "backend", exc)
                continue
            self._finish(batch, outcome)

    def _claim(self, batch: list[tuple[Item, bool]]) -> list[tuple[Item, bool]]:
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
            later = time.monotonic() + self.config.claim_retry_s
            with self._lock:
                for item, _ in batch:
                    if item not in mine:
                        self._inflight.discard(item)
                        self._elsewhere.append((later, item))
        return [(item, old) for item, old in batch if item in mine]

    def _admit(self) -> None:
        """Move submitted captions (as pairs, for ranking) and restored items into pending,
        skipping items the store already has."""
        now = time.monotonic()
        with self._lock:
            intake, self._intake = self._intake, []
            due = [item for when, item in self._elsewhere if when <= now]
            self._elsewhere = [(when, item) for when, item in self._elsewhere if when > now]
            restored, self._restored = self._restored + due, []
        if not intake and not restored:
            return
        fresh = self._sample_pairs(intake) if self._rank and not self._oni_pairs else list(intake)  # type: ignore[arg-type]
        items: list[Item] = restored + fresh
        try:
            stored = self.store.get_many(self.prompt_hash, self.model_id, items) if items else {}
        except StoreError as exc:
            with self._lock:  # pairs are already sampled: keep them as they are
                self._restored[:0] = items
                self._backlog += len(items) - len(intake) - len(restored)
                self._counts.store_errors += 1
            log.warning("annotator: cannot read the label store (%s); retrying", exc)
            self._sleep_backoff()
            return
        looked_up_before = set(due)  # counted as a miss when first admitted
        with self._changed:
            self._counts.cache_hits += len(stored)
            added = 0
            for item in items:
                if item in stored or item in self._pending or item in self._inflight:
                    continue
                self._pending[item] = None
                added += 1
                self._counts.cache_misses += item not in looked_up_before
            self._backlog += added - len(intake) - len(restored)
            self._changed.notify_all()

    def _sample_pairs(self, captions: list[str]) -> list[Item]:
        """Pairs of each new caption with random earlier ones from the reservoir, in random order
        (so neither position is favoured); the reservoir keeps a uniform sample of all captions."""
        pairs: list[Item] = []
        with self._lock:
            for caption in captions:
                for _ in range(self.config.pairs_per_caption if self._reservoir else 0):
                    partner = self._rng.choice(self._reservoir)
                    if partner != caption:  # an identical pair says nothing
                        pairs.append((caption, partner) if self._rng.random() < 0.5 else (partner, caption))
                self._keep_in_reservoir(caption)
        return pairs

    def _keep_in_reservoir(self, caption: str) -> None:
        """Reservoir sampling: the reservoir stays a uniform sample of every caption offered to
        it; caller holds the lock."""
        self._reservoir_seen += 1
        if len(self._reservoir) < self.config.reservoir_size:
            self._reservoir.append(caption)
        else:
            slot = self._rng.randrange(self._reservoir_seen)
            if slot < self.config.reservoir_size:
                self._reservoir[slot] = caption

    def _take_batch(self) -> list[tuple[Item, bool]]:
        """Up to batch_size items: ``oldest_per_batch`` from the old end, the rest from the new end.
        Each comes with whether it was taken from the old end (a fault puts it back there)."""
        with self._lock:
            size = min(self.config.batch_size, len(self._pending))
            n_old = min(self.config.oldest_per_batch, size)
            batch = [(self._pending.popitem(last=False)[0], True) for _ in range(n_old)]
            batch += [(self._pending.popitem(last=True)[0], False) for _ in range(size - n_old)]
            self._inflight.update(item for item, _ in batch)
            return batch

    def _requeue(self, batch: Sequence[tuple[Item, bool]]) -> None:
        """Put unanswered items back where they were taken from; caller holds the lock."""
        for item, from_old_end in batch:
            self._inflight.discard(item)
            self._pending[item] = None
            if from_old_end:
                self._pending.move_to_end(item, last=False)

    def _fault(self, batch: Sequence[tuple[Item, bool]], what: str, exc: Exception, store: bool = False) -> None:
        with self._lock:
            self._requeue(batch)
            if store:
                self._counts.store_errors += 1
        log.warning("annotator: %s fault (%s); %d items back to pending", what, exc, len(batch))
        self._sleep_backoff()

    def _finish(self, batch: Sequence[tuple[Item, bool]], outcome: LabelOutcome) -> None:
        failed = set(outcome.failed)
        with self._lock:
            self._requeue([(item, old) for item, old in batch if item in failed])
            for item, _ in batch:
                self._inflight.discard(item)
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
            self._counts.rate.append((time.monotonic(), len(own)))
            self._prune_rate(time.monotonic())
            self._backlog -= len(own)
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
        while self._counts.rate and self._counts.rate[0][0] < now - _RATE_WINDOW_S:
            self._counts.rate.popleft()

    def _sleep_backoff(self) -> None:
        """Wait after a fault (a jittered backoff_s, doubling per consecutive fault up to
        max_backoff_s), or until close()."""
        self._backoff.wait(self._stop)
