"""The endpoint pool spreads requests by measured speed and keeps answering when an endpoint
dies: two local stand-in servers (bench/stand_in_llm.py, not models) of different speed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kudos.feedback.backend import LLMRequest
from kudos.feedback.endpoints import EndpointPool, HTTPConfig, OpenAIBackend
from kudos.feedback.factory import make_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from stand_in_llm import StandInLLM  # noqa: E402  (the stand-in server, shared with the benches)

MODEL = "stand-in"
CONFIG = HTTPConfig(concurrency=4, backoff_s=0.01, max_backoff_s=0.05, max_attempts=4)


@pytest.fixture
def servers() -> Iterator[tuple[StandInLLM, StandInLLM]]:
    fast, slow = StandInLLM(MODEL), StandInLLM(MODEL, delay_s=0.3)
    yield fast, slow
    fast.close()
    slow.close()


def _batches(pool: EndpointPool, n_batches: int, size: int, tag: str) -> int:
    answered = 0
    for b in range(n_batches):
        replies = pool.generate([LLMRequest(f"{tag} {b}.{i}") for i in range(size)])
        answered += sum(r.text in ("0", "1") for r in replies)
    return answered


def test_the_faster_endpoint_gets_more_of_the_requests(servers: tuple[StandInLLM, StandInLLM]) -> None:
    fast, slow = servers
    pool = EndpointPool([OpenAIBackend(s.url, MODEL, CONFIG) for s in servers], CONFIG)
    try:
        # a batch fills every slot at once: least-loaded alone would split each one evenly
        assert _batches(pool, n_batches=10, size=8, tag="caption") == 80
    finally:
        pool.close()
    n_fast, n_slow = sum(fast.asked.values()), sum(slow.asked.values())
    assert n_fast + n_slow == 80
    assert n_fast > 3 * n_slow, (n_fast, n_slow)
    assert n_slow >= 1  # measured before it was judged


def test_one_killed_endpoint_does_not_stop_the_pool() -> None:
    first, second = StandInLLM(MODEL), StandInLLM(MODEL)
    pool = EndpointPool([OpenAIBackend(s.url, MODEL, CONFIG) for s in (first, second)], CONFIG)
    try:
        assert _batches(pool, n_batches=2, size=8, tag="before") == 16
        assert sum(first.asked.values()) > 0 and sum(second.asked.values()) > 0
        first.close()  # connections refused from now on
        asked_before = sum(first.asked.values())
        assert _batches(pool, n_batches=5, size=8, tag="after") == 40
        assert sum(first.asked.values()) == asked_before
        stats = pool.stats
        assert stats["endpoint_down"] >= 1 and stats["connection_errors"] >= 1
        assert stats.get("failed_requests", 0) == 0
    finally:
        pool.close()
        second.close()


def test_a_vllm_endpoint_gets_more_requests_in_flight() -> None:
    """make_backend reads who serves each endpoint from GET /models (vLLM says owned_by "vllm")."""
    vllm, other = StandInLLM(MODEL, owned_by="vllm"), StandInLLM(MODEL)
    config = HTTPConfig(concurrency=2, vllm_concurrency=24)
    pool = make_backend(f"{vllm.url},{other.url}", config=config)
    try:
        assert isinstance(pool, EndpointPool)
        assert [e.backend.concurrency for e in pool._endpoints] == [24, 2]
        assert len(pool.generate([LLMRequest(f"caption {i}") for i in range(30)])) == 30
    finally:
        pool.close()
        vllm.close()
        other.close()
