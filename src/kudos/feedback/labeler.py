"""The synchronous labeller: a batch of items in, label records (and the items a server fault
left unanswered) out. ``kudos annotate`` uses it directly; the asynchronous
:class:`~kudos.feedback.annotator.Annotator` runs it on its worker thread.

Unreadable replies get one short re-ask, then the item is recorded as unknown. For ranking with a
small model (``pointwise_only`` backends) pair preferences are derived from per-caption scores
(:class:`~kudos.feedback.prompts.PairwiseFromPointwise`), stored ones reused.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kudos.feedback.backend import LLMBackend, LLMCancelled, LLMError, LLMReply, LLMRequest
from kudos.feedback.parse import derive_preference, parse_label
from kudos.feedback.prompts import LabelSpec, PairwiseFromPointwise, PromptTemplate
from kudos.feedback.store import Item, LabelRecord, LabelStore

# Joins a first reply and its re-ask reply in the stored raw reply.
REASK_SEPARATOR = "\n--- re-ask ---\n"


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
class LabelCounts:
    """Counts of labelling work since start, one struct for a :class:`Labeler` and the
    :class:`~kudos.feedback.annotator.Annotator` that shares it: the labeller counts what it asks
    and reads, the annotator what it takes in and stores. The names are the reported metrics'."""

    labels: int = 0  # records stored under the annotator's prompt hash
    unknown_labels: int = 0  # items recorded as unknown (after the re-ask; derived pairs: a tie of unknowns)
    cache_hits: int = 0  # new items found in the store (asked before, maybe by another process)
    cache_misses: int = 0  # new items that had to be asked
    duplicates: int = 0  # submitted captions skipped as already known, waiting or in flight
    dropped: int = 0  # submitted captions dropped because the backlog was full
    llm_requests: int = 0  # requests sent, re-asks included
    parse_failures: int = 0  # replies with no readable label (first answers and re-asks)
    server_errors: int = 0  # generate() calls that raised LLMError (a cancelled one is no fault)
    llm_seconds: float = 0.0  # wall time spent waiting on the backend (generate() calls), the current one included
    # perf_counter() when the generate() call in progress began (None: none is): not a metric, it
    # lets llm_seconds count a call of many seconds as it goes rather than all at once at its end.
    calling_since: float | None = None
    store_errors: int = 0
    subscriber_errors: int = 0


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
        self, backend: LLMBackend, spec: LabelSpec, store: LabelStore, stats: LabelCounts | None = None
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.store = store
        self.stats = stats or LabelCounts()
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
        start = self.stats.calling_since = time.perf_counter()
        try:
            replies: list[LLMReply | None] = list(self.backend.generate(requests, cancel))
            if len(replies) != len(requests):
                raise LLMError(f"backend returned {len(replies)} replies for {len(requests)} requests")
            return replies, None
        except LLMError as exc:
            self.stats.server_errors += not isinstance(exc, LLMCancelled)
            partial = list(exc.replies) if len(exc.replies) == len(requests) else [None] * len(requests)
            return partial, exc
        finally:
            self.stats.llm_seconds += time.perf_counter() - start
            self.stats.calling_since = None

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
