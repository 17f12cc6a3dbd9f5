"""The reward side in its own process (kudos.rewards.service.RewardProcess), against a stand-in
LLM server (bench/stand_in_llm.py, not a model): labels arrive, the learner's snapshot version
advances and scores like the child's model, classification labels reach the learner's feed, the
checkpoint state round-trips (with ranking's normalisation statistics, which scoring moves in the
learner), a misconfigured endpoint is the same one-line error as in the
learner's process, and a dead child or a killed learner leaves no hang, no process and no shared
memory behind (a SIGKILLed `kudos train` resumes from its checkpoint)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from kudos.feedback.backend import LLMConfigError
from kudos.feedback.config import LLMConfig
from kudos.feedback.embedded import MODEL_ID
from kudos.rewards.intrinsic import RewardConfig, scoring_model
from kudos.rewards.service import RewardProcess, RewardProcessError, scoring_statistics
from kudos.rewards.trainer import RewardModelTrainerConfig

from test_llm_http import FaultyLLMServer  # the fault-injecting proxy
from test_workers import _wait_gone  # waits for pids to exit (a zombie has exited), describes what is left

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from stand_in_llm import StandInLLM  # noqa: E402  (the stand-in server, shared with the benches)

CAPTIONS = [f"You kill the newt number {i}!" for i in range(12)] + ["It's solid stone.", ""]
DEADLINE_S = 60.0


@pytest.fixture
def llm():
    server = StandInLLM(MODEL_ID)
    yield server
    server.close()


def _reward(kind: str) -> RewardConfig:
    return RewardConfig(type=kind, trainer=RewardModelTrainerConfig(poll_interval_s=0.1, min_labels=8))  # type: ignore[arg-type]


def _wait(process: RewardProcess, done) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, process.metrics()
        process.submit(CAPTIONS)
        time.sleep(0.05)


def test_labels_arrive_and_the_learner_scores_with_newer_snapshots(llm: StandInLLM, tmp_path: Path) -> None:
    config = LLMConfig(backend=llm.url, store=str(tmp_path / "labels.sqlite"))
    process = RewardProcess(_reward("retrieval"), config, "score")
    try:
        feed = process.label_feed()
        assert feed is not None and feed.model_id == MODEL_ID
        heard: list[tuple[str, int]] = []
        feed.subscribe(lambda records: heard.extend((r.caption, r.label) for r in records))
        process.start()
        first = process.snapshot.version
        assert not process(CAPTIONS).any()  # nothing labelled yet
        _wait(process, lambda: process.snapshot.version > first and len(heard) >= 10)
        metrics = process.metrics()
        assert metrics["llm/classify/labels"] >= 10 and metrics["reward_process/scoring_version"] > first
        # The learner's snapshot scores as the child's model does (its checkpointed state).
        _wait(process, lambda: process.metrics()["reward_process/snapshot_version"] == process.snapshot.version)
        child = scoring_model(_reward("retrieval"), "score")
        child.load_state_dict(process.state_dict()["model"])
        np.testing.assert_allclose(process(CAPTIONS), child(CAPTIONS))
        assert process(CAPTIONS).any()
        assert {c for c, _ in heard} <= set(CAPTIONS)
    finally:
        process.close()
    assert not process._process.is_alive()
    state = process.state_dict()  # the final state stays readable after close, as IntrinsicReward's
    resumed = RewardProcess(_reward("retrieval"), config, "score")
    try:
        resumed.load_state_dict(state)
        resumed.start()
        np.testing.assert_allclose(resumed(CAPTIONS), process(CAPTIONS))
        assert resumed.state_dict()["trainers"] == state["trainers"]
    finally:
        resumed.close()


def test_a_learned_model_trains_in_the_child_and_its_final_state_survives_close(llm: StandInLLM,
                                                                                tmp_path: Path) -> None:
    """Classification: the snapshots carry tensors, and the state the child sends as it exits
    (its last reply) arrives whole."""
    process = RewardProcess(_reward("classification"), LLMConfig(backend=llm.url, store=str(tmp_path / "l.sqlite")),
                            "score").start()
    try:
        _wait(process, lambda: process.metrics()["reward_model/0/steps"] > 0 and process.snapshot.version > 1)
    finally:
        process.close()
    state = process.state_dict()
    assert state["model"]["steps"] > 0 and len(state["model"]["dataset"]["texts"]) > 0
    child = scoring_model(_reward("classification"), "score")
    child.load_state_dict(state["model"])
    assert child.version >= process.snapshot.version


def test_ranking_scores_in_the_learner_and_its_statistics_reach_the_checkpoint(llm: StandInLLM,
                                                                               tmp_path: Path) -> None:
    """Online ranking: pairs are labelled and the ranker trains in the child; scoring in the learner
    moves the normalisation statistics, and those (not the child's untouched ones) go into the
    checkpoint, so the first snapshot a resumed learner takes scores as the old one would have."""
    config = LLMConfig(backend=llm.url, store=str(tmp_path / "labels.sqlite"))
    process = RewardProcess(_reward("ranking"), config, "score").start()
    try:
        _wait(process, lambda: process.metrics()["reward_model/0/steps"] > 0 and process.snapshot.version > 1)
        for _ in range(20):
            process(CAPTIONS)
        learner = scoring_statistics(process.snapshot.model)[0]["stats"]
        assert learner["count"] >= 20 * (len(CAPTIONS) - 1)
        version = process.snapshot.version  # a newer snapshot keeps the learner's statistics
        _wait(process, lambda: process.snapshot.version > version)
        assert scoring_statistics(process.snapshot.model)[0]["stats"] == learner
        saved = process.state_dict()["model"]["normalizer"]["stats"]
        assert (saved["count"], saved["mean"]) == (learner["count"], learner["mean"])
        for _ in range(5):
            process(CAPTIONS)
    finally:
        process.close()
    state = process.state_dict()
    final = scoring_statistics(process.snapshot.model)[0]["stats"]
    assert state["model"]["normalizer"]["stats"] == final and final["count"] > learner["count"]
    expected = scoring_model(_reward("ranking"), "score")  # the checkpoint's weights and statistics
    expected.load_state_dict(state["model"])
    resumed = RewardProcess(_reward("ranking"), config, "score")
    try:
        resumed.load_state_dict(state)
        resumed.start()
        assert scoring_statistics(resumed.snapshot.model)[0]["stats"] == final
        for _ in range(3):  # and it moves them as the old learner would have
            np.testing.assert_array_equal(resumed(CAPTIONS), expected(CAPTIONS))
    finally:
        resumed.close()


def test_a_misconfigured_endpoint_is_the_learners_one_line_error(llm: StandInLLM, tmp_path: Path) -> None:
    config = LLMConfig(backend=llm.url, model="llama-70b", store=str(tmp_path / "labels.sqlite"))
    with pytest.raises(LLMConfigError, match="does not serve model 'llama-70b'"):
        RewardProcess(_reward("classification"), config, "score")


def test_an_endpoint_rejecting_every_request_stops_kudos_train_with_one_line(llm: StandInLLM,
                                                                             tmp_path: Path) -> None:
    """An annotator stopped in the child (every request rejected for client_error_limit_s) stops
    the run with the learner's one-line error, as with the reward side in the learner's process."""
    proxy = FaultyLLMServer(llm.url)
    try:
        proxy.inject("http404")
        done = subprocess.run(
            [sys.executable, "-m", "kudos", "train", "--reward", "retrieval", "--llm", proxy.url,
             "--store", str(tmp_path / "labels.sqlite"), "--steps", "1000000", "--num-envs", "4",
             "--output", str(tmp_path / "run"), "--set", "cpu.env_workers=1", "--set", "llm.http.client_error_limit_s=1",
             "--set", "run.reward_placement=process"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
        )
    finally:
        proxy.close()
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and last.startswith("kudos: error:") and "rejected every request" in last, done.stderr


def test_a_dead_child_is_a_one_line_error_not_a_hang(llm: StandInLLM, tmp_path: Path) -> None:
    process = RewardProcess(_reward("retrieval"), LLMConfig(backend=llm.url, store=str(tmp_path / "l.sqlite")), "score")
    try:
        process.start()
        os.kill(process._process.pid, signal.SIGKILL)
        process._process.join(10)
        with pytest.raises(RewardProcessError, match="the reward process died .*--resume"):
            for _ in range(3):  # the snapshot request in flight, then the next
                process.submit(CAPTIONS)
                time.sleep(0.2)
    finally:
        process.close()


_LEARNER = textwrap.dedent("""
    import sys
    from kudos.feedback.config import LLMConfig
    from kudos.rewards.intrinsic import RewardConfig
    from kudos.rewards.service import RewardProcess
    process = RewardProcess(RewardConfig(type="retrieval"), LLMConfig(backend=sys.argv[1], store=sys.argv[2]), "score")
    process.start()
    print(process._process.pid, flush=True)
    sys.stdin.read()
""")


def test_a_killed_learner_leaves_no_reward_process(llm: StandInLLM, tmp_path: Path) -> None:
    learner = subprocess.Popen([sys.executable, "-c", _LEARNER, llm.url, str(tmp_path / "labels.sqlite")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    child = int(learner.stdout.readline())
    learner.kill()
    learner.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/status").read_text().find("zombie") < 0:
        assert time.monotonic() < deadline, "the reward process outlived its learner"
        time.sleep(0.1)


def test_a_training_run_with_the_reward_process_checkpoints_and_resumes(llm: StandInLLM, tmp_path: Path) -> None:
    """`run.reward_placement=process` through TrainingRun: labels reach the run (its intrinsic
    reward and its checkpoint), and a resumed run's child starts from exactly the checkpoint."""
    from kudos.rl.checkpoint import load_checkpoint
    from kudos.rl.experiment import load_config
    from kudos.rl.runner import TrainingRun

    overrides = ["reward.type=retrieval", f"llm.backend={llm.url}", f"llm.store={tmp_path / 'labels.sqlite'}",
                 "run.reward_placement=process", "reward.trainer.poll_interval_s=0.1", "env.num_envs=4",
                 "cpu.env_workers=1", "appo.rollout=16", "run.log_every_s=60", f"run.output_dir={tmp_path / 'run'}"]
    figures: dict[str, float] = {}
    first = TrainingRun(load_config(overrides=[*overrides, "run.steps=1280"]),
                        on_progress=lambda _, f: figures.update(f))
    first.train()
    assert not first.reward._process.is_alive()
    saved = load_checkpoint(tmp_path / "run")
    assert saved["reward"]["model"]["table"]  # labels reached the child's model and the checkpoint
    assert figures["llm/classify/labels"] > 0 and figures["reward_process/scoring_version"] > 1

    resumed = TrainingRun(load_config(overrides=[*overrides, "run.steps=1408"]), resume=True)
    try:
        restored = resumed.reward.state_dict()
        assert restored["model"] == saved["reward"]["model"]
        assert restored["annotators"] == saved["reward"]["annotators"]
    finally:
        resumed.close()
    assert not resumed.reward._process.is_alive()


def _group(pgid: int) -> list[int]:
    """The processes of process group ``pgid``, its leader left out."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:  # exited meanwhile
            continue
        if stat and int(stat[stat.rindex(")") + 2:].split()[2]) == pgid and int(entry) != pgid:
            pids.append(int(entry))
    return pids


def _shared_memory(pids: list[int]) -> set[str]:
    """The /dev/shm files ``pids`` map (named semaphores, multiprocessing's arenas), by name."""
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        names |= {line.split("/dev/shm/")[1].removesuffix(" (deleted)") for line in maps.splitlines()
                  if "/dev/shm/" in line}
    return names


@pytest.mark.slow
@pytest.mark.parametrize("whole_group", [False, True])
def test_a_sigkilled_learner_leaves_nothing_behind_and_the_run_resumes(llm: StandInLLM, tmp_path: Path,
                                                                       whole_group: bool) -> None:
    """`run.reward_placement=process`: SIGKILL the learner alone after a checkpoint with labels: its
    rollout workers, its reward process and its resource tracker exit with it; or SIGKILL its whole
    process group. Either way no shared memory of the run is left in /dev/shm (named semaphores
    included, which the resource tracker would remove), and `--resume` continues from the
    checkpoint's step count to the end with the labels still in the store."""
    from kudos.rl.checkpoint import load_checkpoint

    run, store = tmp_path / "run", tmp_path / "labels.sqlite"
    common = ["--llm", llm.url, "--store", str(store), "--set", "cpu.env_workers=1", "--set", "appo.rollout=16",
              "--set", "run.reward_placement=process", "--set", "reward.trainer.poll_interval_s=0.1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    learner = subprocess.Popen([sys.executable, "-m", "kudos", "train", "--reward", "retrieval", "--num-envs", "4",
                                "--steps", "1000000", "--output", str(run), "--set", "run.checkpoint_every_s=1",
                                *common], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "checkpoint.pt").is_file() and load_checkpoint(run)["reward"]["model"]["table"]):
            assert learner.poll() is None, learner.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint with labels within 240 s"
            time.sleep(0.5)
        children = _group(learner.pid)
        assert len(children) >= 2, children  # a rollout worker and the reward process, at least
        shared = _shared_memory([learner.pid, *children])
        if whole_group:
            os.killpg(learner.pid, signal.SIGKILL)
        else:
            learner.send_signal(signal.SIGKILL)  # the leader only: the rest must follow on their own
        learner.wait(timeout=30)
        left = _wait_gone(children)
        assert not left, "processes outlived the learner:\n" + "\n".join(left)
    finally:
        for pid in [learner.pid, *_group(learner.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not [name for name in shared if (Path("/dev/shm") / name).exists()]
    before = load_checkpoint(run)["progress"]
    with sqlite3.connect(store) as db:
        labels = db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    assert labels > 0

    target = before["env_steps"] + 2 * 64  # two more updates of 16 steps x 4 envs
    resumed = subprocess.run([sys.executable, "-m", "kudos", "train", "--resume", str(run), "--steps", str(target),
                              *common], capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr
    after = load_checkpoint(run)
    assert after["progress"]["env_steps"] == target and after["progress"]["updates"] == before["updates"] + 2
    assert after["reward"]["model"]["table"]
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] >= labels
