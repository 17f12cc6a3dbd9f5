"""Runs that share one PostgreSQL label store ask the LLM once per caption: two annotator processes
(as two training runs have) race on the same new captions against an instant local stand-in LLM
server that counts every ask; a run killed while holding claims does not keep the other from
labelling them once its lease runs out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_store import _fresh_postgres_db, postgres_url  # noqa: F401  (the throwaway PostgreSQL server)

from kudos.feedback.model_files import MODEL_ID
from kudos.feedback.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from stand_in_llm import StandInLLM  # noqa: E402  (the stand-in server, shared with the benches)

CAPTIONS = 60

_RUN = textwrap.dedent(
    """
    import sys, time
    from kudos.feedback.annotator import Annotator, AnnotatorConfig
    from kudos.feedback.factory import make_backend
    from kudos.feedback.prompts import PromptTemplate
    from kudos.feedback.store import open_store
    url, store_url, lease_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
    captions = [f"You see here {i} gold pieces." for i in range(%d)]
    with open_store(store_url) as store:
        annotator = Annotator(make_backend(url), store, PromptTemplate(),
                              AnnotatorConfig(batch_size=4, claim_lease_s=lease_s)).start()
        for start in range(0, len(captions), 10):  # captions arrive as a run sees them
            annotator.submit(captions[start:start + 10])
            time.sleep(0.05)
        print("submitted", flush=True)
        deadline = time.monotonic() + 120
        while len(store.get_many(annotator.prompt_hash, annotator.model_id, captions)) < len(captions):
            assert time.monotonic() < deadline, "captions left unlabelled"
            time.sleep(0.1)
        annotator.close()
    print("done", flush=True)
    """ % CAPTIONS
)


@pytest.fixture
def store_url(postgres_url: str) -> str:  # noqa: F811
    return _fresh_postgres_db(postgres_url)


@pytest.fixture
def stand_in() -> Iterator[StandInLLM]:
    # 50 ms per answer: long enough that both runs hold the same captions at once without claims.
    server = StandInLLM(MODEL_ID, delay_s=0.05)
    yield server
    server.close()


def _run(url: str, store: str, lease_s: float = 30.0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen([sys.executable, "-c", _RUN, url, store, str(lease_s)], stdout=subprocess.PIPE,
                            text=True, env=env)


def _finish(*runs: subprocess.Popen[str]) -> None:
    outputs = [run.communicate(timeout=180)[0] for run in runs]
    assert [run.returncode for run in runs] == [0] * len(runs), outputs


def test_two_runs_at_once_ask_each_caption_once(stand_in: StandInLLM, store_url: str) -> None:
    _finish(_run(stand_in.url, store_url), _run(stand_in.url, store_url))
    assert len(stand_in.asked) == CAPTIONS
    assert stand_in.duplicates() == 0  # concurrent duplicate asks
    # A later run on the same store asks nothing.
    stand_in.reset()
    _finish(_run(stand_in.url, store_url))
    assert not stand_in.asked


def test_a_run_killed_holding_claims_does_not_block_the_other(stand_in: StandInLLM, store_url: str) -> None:
    hanging = StandInLLM(MODEL_ID, delay_s=600.0)  # the first run's LLM never answers
    try:
        first = _run(hanging.url, store_url, lease_s=2.0)
        assert first.stdout is not None and first.stdout.readline().strip() == "submitted"
        with open_store(store_url) as store:
            deadline = time.monotonic() + 60
            while not _claims(store):
                assert time.monotonic() < deadline, "the first run claimed nothing"
                time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        _finish(_run(stand_in.url, store_url))  # labels everything, the dead run's claims included
        assert len(stand_in.asked) == CAPTIONS
    finally:
        hanging.close()


def _claims(store: Any) -> int:
    return store._conn().execute("SELECT count(*) FROM claims").fetchone()[0]
