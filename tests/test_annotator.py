"""The annotation service: dedup, back-pressure, freshest-first without starvation, subscribers,
ranking pairs, checkpoints, and faults (server down, killed mid-batch, garbage/empty/echo replies,
store write failures, backend bugs): callers keep going, every fault is counted, no label is lost
or invented, and the backlog drains once the fault is gone.

The LLM here is ``FaultyBackend``, a test double that injects faults; between faults it answers
"1" for captions containing "kill" and "0" otherwise, so every stored label can be checked against
what was asked. The real embedded model is exercised in test_annotator_embedded.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from kudos.errors import KudosError
from kudos.feedback.annotator import Annotator, AnnotatorConfig, AnnotatorMetrics
from kudos.feedback.backend import LLMError, LLMReply, LLMRequest
from kudos.feedback.labeler import Labeler
from kudos.feedback.prompts import PAIR_FIRST, PAIR_NONE, PAIR_SECOND, PairwiseFromPointwise, PromptTemplate
from kudos.feedback.store import Item, LabelRecord, LabelStore, SQLiteLabelStore, StoreError

FAST = AnnotatorConfig(batch_size=4, backoff_s=0.01, max_backoff_s=0.05)
WAIT_S = 60.0  # generous: the suite shares two cores with other jobs


def asked_item(prompt: str) -> Item:
    """The caption (or pair) a prompt asks about: the quoted message(s) at its end."""
    body = prompt.split("\n\nYour earlier reply was:")[0]
    if "\nMessage 2: " in body:
        first, second = body[body.rindex("Message 1: ") + 11 :].split("\nMessage 2: ")
        return json.loads(first), json.loads(second)
    return json.loads(body[body.rindex("Message: ") + 9 :])


def truth(item: Item) -> str:
    """What FaultyBackend answers when it is not injecting a fault."""
    if isinstance(item, str):
        return "1" if "kill" in item else "0"
    a, b = ("kill" in c for c in item)
    return "1" if a and not b else "2" if b and not a else "0"


class FaultyBackend:
    """LLM test double that injects faults on demand.

    down_calls: that many next generate() calls raise LLMError (server down).
    die_after: the next call answers that many requests, then raises LLMError carrying them
        (server killed mid-batch).
    bad_replies: caption -> list of reply texts served first (garbage, empty, echoes), one per ask.
    running: while cleared, generate() waits (a busy or hung server).
    bug_calls: that many next calls raise a plain RuntimeError (a backend bug).
    """

    model_id = "faulty-backend"

    def __init__(self, pointwise_only: bool = False) -> None:
        self.pointwise_only = pointwise_only
        self.down_calls = 0
        self.die_after: int | None = None
        self.bug_calls = 0
        self.bad_replies: dict[Item, list[str]] = {}
        self.running = threading.Event()
        self.running.set()
        self.calls: list[list[LLMRequest]] = []
        self.asked: Counter[Item] = Counter()  # first asks (not re-asks) per item
        self.in_generate = threading.Event()

    def reply_text(self, request: LLMRequest) -> str:
        """The next scripted bad reply for this item, else the true answer in the asked format."""
        item = asked_item(request.prompt)
        queue = self.bad_replies.get(item)
        if queue:
            return queue.pop(0)
        answer = truth(item)
        if "<label>[FOO/BAR]</label>" in request.prompt:
            return f"<analysis>...</analysis><label>{'FOO' if answer == '1' else 'BAR'}</label>"
        if "<best>[1/2/none]</best>" in request.prompt:
            return f"<analysis>...</analysis><best>{'none' if answer == '0' else answer}</best>"
        return answer

    def generate(self, requests: Sequence[LLMRequest], cancel: threading.Event | None = None) -> list[LLMReply]:
        self.in_generate.set()
        assert self.running.wait(WAIT_S), "test left the backend stalled"
        self.calls.append(list(requests))
        if self.bug_calls:
            self.bug_calls -= 1
            raise RuntimeError("injected backend bug")
        if self.down_calls:
            self.down_calls -= 1
            raise LLMError("injected: connection refused")
        replies: list[LLMReply] = []
        for request in requests:
            if self.die_after is not None and len(replies) == self.die_after:
                self.die_after = None
                raise LLMError("injected: server killed mid-batch", replies + [None] * (len(requests) - len(replies)))
            if "Your earlier reply was" not in request.prompt:
                self.asked[asked_item(request.prompt)] += 1
            text = self.reply_text(request)
            p = None
            if request.answer_tokens is not None and text in request.answer_tokens:
                p = 0.9 if text == request.answer_tokens[1] else 0.1
            replies.append(LLMReply(text=text, p_positive=p, latency_s=0.001, model_id=self.model_id))
        return replies

    def close(self) -> None:
        pass


class FaultyStore(SQLiteLabelStore):
    """A real SQLite store whose next ``failing_writes`` put_many calls fail (disk full, locked)."""

    failing_writes = 0

    def put_many(self, records: Sequence[LabelRecord]) -> int:
        if self.failing_writes:
            self.failing_writes -= 1
            raise StoreError("injected: label store is locked")
        return super().put_many(records)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FaultyStore]:
    with FaultyStore(tmp_path / "labels.sqlite") as s:
        yield s


@pytest.fixture
def backend() -> FaultyBackend:
    return FaultyBackend()


def run(backend: FaultyBackend, store: LabelStore, template: PromptTemplate | None = None,
        config: AnnotatorConfig = FAST) -> Annotator:
    return Annotator(backend, store, template or PromptTemplate(), config).start()


def annotate(
    backend: FaultyBackend, store: LabelStore, captions: Sequence[str], template: PromptTemplate | None = None,
    config: AnnotatorConfig = FAST, subscriber: Callable[[list[LabelRecord]], None] | None = None,
) -> tuple[Annotator, AnnotatorMetrics, list[LabelRecord]]:
    """Run an annotator over ``captions`` until idle: it, its metrics, what a subscriber received."""
    received: list[LabelRecord] = []
    with run(backend, store, template, config) as annotator:
        annotator.subscribe(subscriber or received.extend)
        annotator.submit(captions)
        assert annotator.wait_idle(WAIT_S)
        metrics = annotator.metrics()
    return annotator, metrics, received


def stored_labels(store: LabelStore, annotator: Annotator) -> dict[Item, int | None]:
    return {r.item: r.label for r in store.labels(annotator.prompt_hash, annotator.model_id)}


CAPTIONS = [f"You kill the jackal {i}!" if i % 3 == 0 else f"The door {i} is locked." for i in range(30)]


def test_labels_reach_store_and_subscribers(backend: FaultyBackend, store: FaultyStore) -> None:
    annotator, m, received = annotate(backend, store, CAPTIONS)
    expected = {c: int(truth(c)) for c in CAPTIONS}
    assert stored_labels(store, annotator) == expected
    assert {r.item: r.label for r in received} == expected and len(received) == len(CAPTIONS)
    assert all(r.soft_label == (0.9 if r.label else 0.1) for r in received)  # P("1") from log-probs
    assert (m.labels, m.cache_misses, m.queue_depth, m.in_flight, m.parse_failures) == (30, 30, 0, 0, 0)
    assert m.labels_per_s > 0


def test_nothing_is_asked_twice(backend: FaultyBackend, store: FaultyStore) -> None:
    store.put_many(Labeler(backend, PromptTemplate(), store).label(CAPTIONS[:10]).records)
    backend.asked.clear()
    backend.running.clear()  # the server is busy: submissions pile up as pending and in flight
    with run(backend, store) as annotator:
        for _ in range(5):
            annotator.submit(CAPTIONS)
            annotator.submit(reversed(CAPTIONS))
        backend.running.set()
        assert annotator.wait_idle(WAIT_S)
        m = annotator.metrics()
    assert set(backend.asked) == set(CAPTIONS[10:]) and max(backend.asked.values()) == 1
    assert (m.cache_hits, m.cache_misses, m.duplicates) == (10, 20, 9 * 30)
    # A second run (or another process) over the same store asks the LLM nothing.
    _, m2, _ = annotate(backend, store, CAPTIONS)
    assert (m2.llm_requests, m2.cache_hits, m2.cache_hit_rate) == (0, 30, 1.0)


def test_submit_never_blocks_and_drops_when_full(backend: FaultyBackend, store: FaultyStore) -> None:
    backend.running.clear()  # hung server
    config = AnnotatorConfig(max_backlog=8, batch_size=4, backoff_s=0.01)
    with run(backend, store, config=config) as annotator:
        annotator.submit(CAPTIONS[:4])
        assert backend.in_generate.wait(WAIT_S)  # the worker is stuck inside the LLM call
        for caption in CAPTIONS:  # one call per caption: each returns although the LLM is stuck
            annotator.submit([caption])
        m = annotator.metrics()
        assert (m.dropped, m.duplicates, m.queue_depth + m.in_flight) == (22, 4, 8)
        backend.running.set()
        # Dropped captions come back when seen again, as room frees up.
        for _ in range(10):
            assert annotator.wait_idle(WAIT_S)
            annotator.submit(CAPTIONS)
        assert annotator.wait_idle(WAIT_S)
    assert set(stored_labels(store, annotator)) == set(CAPTIONS)
    assert max(backend.asked.values()) == 1


def test_llm_seconds_count_the_call_in_progress(backend: FaultyBackend, store: FaultyStore) -> None:
    """The time waited on the LLM grows while a call is in flight (a batch can take many seconds:
    counted only at its end, the display's busy share would jump past 100%), and stops growing
    once the call has returned."""
    backend.running.clear()  # a call that does not return until the test says so
    with run(backend, store) as annotator:
        annotator.submit(CAPTIONS[:4])
        assert backend.in_generate.wait(WAIT_S)
        first = annotator.metrics().llm_seconds
        time.sleep(0.05)
        assert annotator.metrics().llm_seconds > first > 0.0
        backend.running.set()
        assert annotator.wait_idle(WAIT_S)
        done = annotator.metrics().llm_seconds
        time.sleep(0.05)
        assert annotator.metrics().llm_seconds == done


def test_freshest_first_but_no_starvation(backend: FaultyBackend, store: FaultyStore) -> None:
    """The learner produces captions faster than the LLM answers: each LLM call brings 6 new ones.
    Newest-first alone would starve the first 12 forever; the oldest slot of each batch drains them."""
    old = [f"old caption {i}" for i in range(12)]
    config = AnnotatorConfig(batch_size=4, oldest_per_batch=1, max_backlog=10_000)
    annotator = Annotator(backend, store, PromptTemplate(), config)
    annotator.submit(old)
    fresh = (f"new caption {i}" for i in range(10_000))
    generate = backend.generate

    def busy_learner(requests: Sequence[LLMRequest], cancel: threading.Event | None = None) -> list[LLMReply]:
        annotator.submit(next(fresh) for _ in range(6))
        return generate(requests, cancel)

    backend.generate = busy_learner  # type: ignore[method-assign]
    answered: set[Item] = set()
    done = threading.Event()

    def trainer(records: list[LabelRecord]) -> None:
        answered.update(r.item for r in records)
        if set(old) <= answered:
            done.set()

    annotator.subscribe(trainer)  # before the worker starts, or it may store labels unseen
    with annotator:
        assert done.wait(WAIT_S)
    batches = [[asked_item(r.prompt) for r in call] for call in backend.calls]
    # Batch 1 saw only old captions: the oldest, then the three newest of them. From then on each
    # batch holds the oldest waiting caption and the three freshest new ones.
    assert batches[0] == [old[0], old[11], old[10], old[9]]
    for k in range(1, 9):
        assert batches[k][0] == old[k] and all(str(item).startswith("new") for item in batches[k][1:])
    newest = [f"new caption {i}" for i in range(6 * 2)]
    assert batches[1][1:] == newest[5:2:-1] and batches[2][1:] == newest[11:8:-1]


def test_checkpoint_and_resume(backend: FaultyBackend, store: FaultyStore) -> None:
    backend.running.clear()
    annotator = run(backend, store)
    annotator.submit(CAPTIONS)
    assert backend.in_generate.wait(WAIT_S)
    state = json.loads(json.dumps(annotator.state_dict()))  # survives a JSON checkpoint
    assert sorted(state["pending"]) == sorted(CAPTIONS)
    backend.running.set()
    annotator.close()
    resumed = FaultyBackend()
    with Annotator(resumed, store, PromptTemplate(), FAST) as again:
        again.load_state_dict(state)
        assert again.wait_idle(WAIT_S)
    assert set(stored_labels(store, again)) == set(CAPTIONS)
    assert not set(resumed.asked) & set(backend.asked)  # what was answered before is not asked again


# -- faults ------------------------------------------------------------------------------------------------
def test_server_down_at_start_then_backlog_drains(backend: FaultyBackend, store: FaultyStore) -> None:
    backend.down_calls = 5
    with run(backend, store) as annotator:
        for caption in CAPTIONS:
            annotator.submit([caption])  # the caller keeps going while the server is down
        assert annotator.wait_idle(WAIT_S)
        m = annotator.metrics()
    assert m.server_errors == 5 and m.labels == 30
    assert stored_labels(store, annotator) == {c: int(truth(c)) for c in CAPTIONS}


def test_server_killed_mid_batch_keeps_answers(backend: FaultyBackend, store: FaultyStore) -> None:
    backend.die_after = 2
    annotator, m, _ = annotate(backend, store, CAPTIONS[:4], config=AnnotatorConfig(batch_size=4, backoff_s=0.01))
    assert stored_labels(store, annotator) == {c: int(truth(c)) for c in CAPTIONS[:4]}
    assert m.server_errors == 1 and m.labels == 4
    # The two answers that arrived before the crash were kept: nobody was asked twice.
    assert sorted(backend.asked.values()) == [1, 1, 1, 1]


@pytest.mark.parametrize("fmt", ["short", "long"])
def test_unreadable_replies_are_reasked_then_unknown(backend: FaultyBackend, store: FaultyStore, fmt: str) -> None:
    template = PromptTemplate(format=fmt)  # type: ignore[arg-type]
    ok = "1" if fmt == "short" else "<analysis>a kill</analysis><label>FOO</label>"
    echo = "<label>[FOO/BAR]</label>" if fmt == "long" else "[FOO/BAR]"
    both = "1 or 0" if fmt == "short" else "<label>FOO</label> or <label>BAR</label>?"
    backend.bad_replies = {
        "You kill A!": ["garbage \x00\xff", ok],  # recovered by the re-ask
        "You kill B!": ["", ""],  # empty twice: unknown
        "You kill C!": [echo, echo],  # echoes the instruction: unknown, not FOO
        "You kill D!": ["I cannot decide", both],
    }
    if fmt == "long":
        backend.bad_replies["You kill D!"][1] = "<label>FOO</label> or <label>BAR/FOO</label>"
    annotator, m, _ = annotate(backend, store, list(backend.bad_replies) + ["You kill E!"], template)
    labels = stored_labels(store, annotator)
    assert labels == {"You kill A!": 1, "You kill B!": None, "You kill C!": None, "You kill D!": None,
                      "You kill E!": 1}
    assert (m.parse_failures, m.unknown_labels, m.labels) == (1 + 2 * 3, 3, 5)
    record = store.get(annotator.prompt_hash, annotator.model_id, "You kill A!")
    assert record is not None and "--- re-ask ---" in record.reply  # both replies kept for debugging


def test_store_write_failures_hold_labels_until_written(backend: FaultyBackend, store: FaultyStore) -> None:
    store.failing_writes = 3
    annotator, m, received = annotate(backend, store, CAPTIONS)
    assert m.store_errors == 3 and len(received) == 30
    assert stored_labels(store, annotator) == {c: int(truth(c)) for c in CAPTIONS}
    assert max(backend.asked.values()) == 1  # held, not re-asked


def test_backend_bug_and_subscriber_bug_do_not_stop_the_service(backend: FaultyBackend, store: FaultyStore) -> None:
    backend.bug_calls = 2

    def broken_subscriber(records: list[LabelRecord]) -> None:
        raise ValueError("subscriber bug")

    _, m, _ = annotate(backend, store, CAPTIONS, subscriber=broken_subscriber)
    assert m.server_errors == 2 and m.subscriber_errors >= 1 and m.labels == 30


def test_close_while_server_down_loses_nothing(backend: FaultyBackend, store: FaultyStore) -> None:
    backend.down_calls = 10**6
    annotator = run(backend, store)
    annotator.submit(CAPTIONS)
    assert backend.in_generate.wait(WAIT_S)
    annotator.close()
    state = annotator.state_dict()
    assert sorted(state["pending"]) == sorted(CAPTIONS) and store.labels(annotator.prompt_hash, annotator.model_id) == []


# -- ranking ---------------------------------------------------------------------------------------------
RANK_CAPTIONS = [f"You kill the newt {i}!" for i in range(6)] + [f"It's a wall {i}." for i in range(6)]


def test_pairs_from_pointwise_scores_for_small_models(store: FaultyStore) -> None:
    backend = FaultyBackend(pointwise_only=True)
    config = AnnotatorConfig(batch_size=4, pair_sampling="per_new_caption", pairs_per_caption=2, backoff_s=0.01)
    annotator, _, received = annotate(backend, store, RANK_CAPTIONS, PromptTemplate(kind="rank"), config)
    assert isinstance(annotator.spec, PairwiseFromPointwise)
    # Only the pointwise question was asked, once per caption, never "A or B?".
    assert all(isinstance(item, str) for item in backend.asked) and max(backend.asked.values()) == 1
    pairs = store.labels(annotator.prompt_hash, annotator.model_id)
    assert pairs and {r.item for r in received} == {r.item for r in pairs}
    for r in pairs:
        a, b = r.item  # type: ignore[misc]
        assert a != b
        expected = {"1": PAIR_FIRST, "2": PAIR_SECOND, "0": PAIR_NONE}[truth((a, b))]
        assert r.label == expected and (r.soft_label > 0.5) == (expected == PAIR_FIRST)  # type: ignore[operator]
    pointwise = store.labels(annotator.spec.pointwise.version_hash, annotator.model_id)
    assert {r.caption for r in pointwise} <= set(RANK_CAPTIONS)


def test_pairwise_prompt_for_large_models(backend: FaultyBackend, store: FaultyStore) -> None:
    config = AnnotatorConfig(
        batch_size=4, pair_sampling="per_new_caption", pairs_per_caption=1, reservoir_size=4, backoff_s=0.01
    )
    with run(backend, store, PromptTemplate(kind="rank", format="long"), config) as annotator:
        backend.bad_replies = {}
        annotator.submit(RANK_CAPTIONS)
        assert annotator.wait_idle(WAIT_S)
        state = annotator.state_dict()
    pairs = store.labels(annotator.prompt_hash, annotator.model_id)
    # Each caption after the first is paired with one earlier caption from the reservoir.
    assert len(pairs) == len(RANK_CAPTIONS) - 1 and all(r.caption != r.caption2 for r in pairs)
    assert all(isinstance(item, tuple) for item in backend.asked)
    assert len(state["reservoir"]) == 4 and state["reservoir_seen"] == len(RANK_CAPTIONS)



def test_oni_pair_sampling_weighs_captions_by_frequency_while_the_queue_is_short(store: FaultyStore) -> None:
    """ONI's rule: each submit adds 10 pairs drawn from every obs_subsample-th caption seen
    (repeats included), only while few items wait; a pair in the store is never asked again."""
    frequent = [f"You kill the newt {i}!" for i in range(5)]
    rare = [f"You see here a scroll {i}." for i in range(50)]
    seen = frequent * 50 + rare  # frequent captions are 250 of 300 observations
    config = AnnotatorConfig(batch_size=4, backoff_s=0.01, obs_subsample=1, reservoir_size=1000)
    backend = FaultyBackend()
    with run(backend, store, PromptTemplate(kind="rank", format="long"), config) as annotator:
        backend.bad_replies = {}
        backend.running.clear()  # the LLM is busy: submitted pairs pile up in the intake
        annotator.submit(seen)
        assert backend.in_generate.wait(WAIT_S)
        for _ in range(20):
            annotator.submit(["nothing new"])
        waiting = annotator.metrics().queue_depth
        # Pairs stop once 2 * batch_size items wait (each submit adds at most 10).
        assert 2 * config.batch_size <= waiting < 2 * config.batch_size + config.pairs_per_submit
        backend.running.set()
        for _ in range(30):
            annotator.submit(["nothing new"])
            assert annotator.wait_idle(WAIT_S)
    pairs = [r.item for r in store.labels(annotator.prompt_hash, annotator.model_id)]
    members = [c for pair in pairs for c in pair]
    assert len(pairs) > 50 and all(a != b for a, b in pairs)  # type: ignore[misc]
    # Frequency-weighted: most pair members are frequent captions (5 of 56 distinct captions).
    assert sum(c in frequent for c in members) / len(members) > 0.4
    again = FaultyBackend()
    with run(again, store, PromptTemplate(kind="rank", format="long"), config) as annotator:
        again.bad_replies = {}
        for _ in range(30):
            annotator.submit(seen)
            assert annotator.wait_idle(WAIT_S)
    assert not set(again.asked) & set(backend.asked)


@pytest.mark.parametrize("skip_empty", [False, True])
def test_empty_caption_is_asked_as_in_oni_unless_skipped(
    backend: FaultyBackend, store: FaultyStore, skip_empty: bool
) -> None:
    config = AnnotatorConfig(batch_size=4, backoff_s=0.01, skip_empty=skip_empty)
    with run(backend, store, PromptTemplate(), config) as annotator:
        annotator.submit(["", "You kill the newt!"])
        assert annotator.wait_idle(WAIT_S)
    assert ("" in backend.asked) is not skip_empty and "You kill the newt!" in backend.asked


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"oldest_per_batch": 9}, {"max_backlog": 0},
                                     {"pairwise": "sometimes"}, {"pair_sampling": "sometimes"}])
def test_bad_config_is_a_user_error(options: dict[str, object]) -> None:
    with pytest.raises(KudosError, match="annotator"):
        AnnotatorConfig(**options)  # type: ignore[arg-type]


def test_submit_rejects_a_bare_string(backend: FaultyBackend, store: FaultyStore) -> None:
    with pytest.raises(TypeError):
        Annotator(backend, store, PromptTemplate()).submit("You kill the newt!")
