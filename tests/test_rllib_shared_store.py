"""Two KudosAPPO runs on one PostgreSQL label store: two drivers (`kudos train --engine rllib`)
on a local Ray cluster started here. At the same time they ask the LLM once per caption (a
stand-in that counts every ask and answers after 50 ms, so both runs hold the same new captions
at once); a run killed while holding claims does not keep the other from labelling those
captions once the dead run's lease has run out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray.rllib", reason="Ray RLlib is not installed: pip install 'kudos[ray]'")

import ray  # noqa: E402
from test_store import _fresh_postgres_db, postgres_url  # noqa: E402,F401  (the throwaway PostgreSQL server)

from kudos.feedback.embedded import MODEL_ID  # noqa: E402
from kudos.feedback.store import open_store  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from stand_in_llm import StandInLLM  # noqa: E402  (the stand-in server, shared with the benches)

pytestmark = pytest.mark.slow
DEADLINE_S = 240.0  # the annotators' claim lease is 60 s


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A local Ray cluster (2 CPUs: one env runner per run) for the runs' drivers to join."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def store(postgres_url: str) -> str:  # noqa: F811
    return _fresh_postgres_db(postgres_url)


def _run(address: str, llm: StandInLLM, store: str, output: Path, steps: int) -> subprocess.Popen[str]:
    """One run in its own driver process, with the same seed as the others (the same games, so the
    same new captions at about the same moments)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "kudos", "train", "--engine", "rllib", "--ray-address", address, "--env-runners", "1",
         "--reward", "classification", "--llm", llm.url, "--llm-model", MODEL_ID, "--store", store,
         "--num-envs", "2", "--steps", str(steps), "--set", "env.max_episode_steps=40", "--output", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def _keys(store: str, table: str) -> set[bytes]:
    with open_store(store) as s:
        return {bytes(row[0]) for row in s._conn().execute(f"SELECT key FROM {table}").fetchall()}


def test_two_kudos_appo_runs_at_once_then_a_third_ask_each_caption_once(address: str, store: str, tmp_path: Path) -> None:
    llm = StandInLLM(MODEL_ID, delay_s=0.05)
    try:
        runs = [_run(address, llm, store, tmp_path / f"run{i}", 600) for i in range(2)]
        outputs = [run.communicate(timeout=DEADLINE_S)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        assert len(llm.asked) > 0
        assert llm.duplicates() == 0  # concurrent duplicate asks
        assert len(_keys(store, "labels")) == len(llm.asked)  # every ask stored once
        # One after the other: a later run asks nothing the first two labelled (new captions only).
        later = _run(address, llm, store, tmp_path / "later", 600)
        output = later.communicate(timeout=DEADLINE_S)[0]
        assert later.returncode == 0, output
        assert llm.duplicates() == 0
    finally:
        llm.close()


def test_a_kudos_appo_run_killed_holding_claims_does_not_block_the_other(address: str, store: str,
                                                                          tmp_path: Path) -> None:
    hanging, llm = StandInLLM(MODEL_ID, delay_s=600.0), StandInLLM(MODEL_ID)  # the first run's LLM never answers
    second = None
    try:
        first = _run(address, hanging, store, tmp_path / "first", 10**9)
        deadline = time.monotonic() + DEADLINE_S
        while not (claimed := _keys(store, "claims")):
            assert first.poll() is None and time.monotonic() < deadline, "the first run claimed nothing"
            time.sleep(0.5)
        first.send_signal(signal.SIGKILL)  # its reward service dies with its driver: no heartbeat
        first.wait(timeout=30)
        second = _run(address, llm, store, tmp_path / "second", 10**9)
        while not claimed <= _keys(store, "labels"):
            assert second.poll() is None, second.communicate()[0]
            assert time.monotonic() < deadline, "the dead run's claims were never labelled"
            time.sleep(1.0)
        assert not claimed & _keys(store, "claims")
        assert llm.duplicates() == 0
    finally:
        if second is not None and second.poll() is None:
            second.send_signal(signal.SIGKILL)
            second.wait(timeout=30)
        hanging.close()
        llm.close()
