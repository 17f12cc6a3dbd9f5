"""The one retry backoff: delays double up to the cap, jitter stays within its bounds and
differs between clients, reset starts over, and the wait ends when its event is set."""

from __future__ import annotations

import random
import threading
import time

import pytest

from kudos.backoff import Backoff


def test_nominal_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(0.5, 4.0, jitter="none")
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5


@pytest.mark.parametrize(("jitter", "low"), [("equal", 0.5), ("full", 0.0)])
def test_jittered_delays_stay_within_their_bounds(jitter: str, low: float) -> None:
    backoff = Backoff(0.1, 1.0, jitter=jitter, seed=3)  # type: ignore[arg-type]
    for _ in range(200):
        backoff.reset()
        for n in range(1, 8):
            nominal = min(1.0, 0.1 * 2 ** (n - 1))
            assert low * nominal <= backoff.next() <= nominal


def test_clients_that_failed_together_do_not_retry_in_step() -> None:
    shared = random.Random(0)
    a, b = Backoff(1.0, 8.0, rng=shared), Backoff(1.0, 8.0, rng=shared)
    assert [a.next() for _ in range(4)] != [b.next() for _ in range(4)]


def test_a_seed_makes_the_delays_reproducible() -> None:
    assert [Backoff(1.0, 8.0, seed=7).next() for _ in range(3)] == [Backoff(1.0, 8.0, seed=7).next() for _ in range(3)]


def test_the_wait_ends_when_its_event_is_set() -> None:
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    start = time.monotonic()
    assert Backoff(60.0, 60.0).wait(stop) is True
    assert time.monotonic() - start < 30.0  # well before the 60 s delay
    assert Backoff(0.001, 0.001).wait(threading.Event()) is False


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(-1.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(1.0, 1.0, jitter="some")  # type: ignore[arg-type]
