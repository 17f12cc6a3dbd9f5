"""`kudos train` end to end: learning on a small real task, checkpoints, resume after SIGKILL,
one-line errors for bad options."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from nle import nethack

from kudos.envs import TASKS, TaskRules, TaskSpec, Transition, register_task
from kudos.rl.experiment import load_config, resume_config
from kudos.rl.checkpoint import load_checkpoint
from kudos.rl.runner import TrainingRun


class TimeAdvancesRules(TaskRules):
    """+1 for every step that moves game time on (walking into walls, menus and unknown
    commands do not): a random agent earns about 0.4 per step, a trained one close to 1."""

    def reward(self, t: Transition) -> float:
        return float(t.blstats[nethack.NLE_BL_TIME] != t.prev_blstats[nethack.NLE_BL_TIME])


TIME_TASK = TaskSpec("TimeAdvances", "+1 per step that advances game time", TimeAdvancesRules, max_episode_steps=200)


@pytest.fixture(autouse=True)
def time_task():
    register_task(TIME_TASK, replace=True)
    yield
    TASKS.pop(TIME_TASK.name, None)


def small_config(tmp_path: Path, *overrides: str):
    return load_config(
        None,
        [
            "env.num_envs=8",
            "cpu.env_workers=2",
            "appo.rollout=16",
            f"run.output_dir={tmp_path / 'run'}",
            "run.log_every_s=0.5",
            *overrides,
        ],
    )


def test_the_agent_learns_a_small_real_task(tmp_path):
    """The reward per step must rise well above a random agent's (fails if it does not)."""
    config = small_config(
        tmp_path, "env.task=TimeAdvances", "reward.type=none", "reward.shaping.c_ext=1.0", "run.steps=24576",
        "appo.learning_rate=0.001", "appo.entropy_coef=0.0", "appo.gamma=0.9",
    )
    seen: list[float] = []
    trainer = TrainingRun(config, on_progress=lambda p, f: seen.append(f["reward/extrinsic_per_step"]))
    progress = trainer.train()
    assert progress.env_steps == 24576
    # An untrained (near-uniform) policy advances time on about 40% of its steps; each figure is
    # one rollout of 128 steps (standard error ~0.04).
    assert np.mean(seen[:3]) < 0.5, seen
    assert np.mean(seen[-3:]) > 0.65, seen


def test_checkpoint_and_outputs(tmp_path):
    config = small_config(tmp_path, "reward.type=none", "run.steps=256")
    progress = TrainingRun(config).train()
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and any((run / "tensorboard").iterdir())
    state = load_checkpoint(run)
    assert state["progress"]["env_steps"] == progress.env_steps == 256
    assert state["progress"]["updates"] == 2


def _kudos(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kudos", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def _same(a, b, where: str = "state") -> None:
    """Assert two nested states (dicts, lists, tensors, arrays, plain values) are equal."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
@pytest.mark.usefixtures("embedded_model")
def test_resume_after_sigkill_restores_the_checkpoint_exactly(tmp_path):
    """Killed while the reward model trains: the checkpoint is one consistent snapshot (its model
    equals the trainer's copy of it), a resumed run starts from exactly it (reward-model weights,
    label dataset, shaper statistics, annotator backlog), and no step is counted twice."""
    run = tmp_path / "run"
    store = tmp_path / "labels.sqlite"
    common = ["--set", "cpu.env_workers=1", "--set", "appo.rollout=16", "--store", str(store),
              "--set", "llm.annotator.batch_size=4"]
    proc = _kudos(
        "train", "--task", "Score", "--reward", "classification", "--num-envs", "4", "--steps", "1000000",
        "--output", str(run), "--set", "run.checkpoint_every_s=1", *common, start_new_session=True,
    )
    try:
        deadline = time.time() + 400
        while time.time() < deadline:  # a checkpoint taken while the reward model trains
            if (run / "checkpoint.pt").is_file():
                saved = load_checkpoint(run)
                if saved["progress"]["updates"] >= 3 and saved["reward"]["model"]["steps"] >= 2:
                    break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint with reward-model steps within 400 s")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    state = load_checkpoint(run)
    before = state["progress"]
    _same(state["reward"]["model"], state["reward"]["trainers"][0]["model"], "checkpoint model vs trainer copy")
    assert len(state["reward"]["model"]["dataset"]["texts"]) > 0

    config = resume_config(run, ["cpu.env_workers=1", "appo.rollout=16", f"llm.store={store}"])
    resumed_trainer = TrainingRun(config, resume=True)
    try:
        restored = resumed_trainer.reward.state_dict()
        _same(restored["model"], state["reward"]["model"], "reward model")
        _same(restored["annotators"], state["reward"]["annotators"], "annotator backlog")
        _same(resumed_trainer.shaper.state_dict(), state["shaper"], "shaper")
    finally:
        resumed_trainer.close()

    target = before["env_steps"] + 2 * 64  # two more updates of 16 steps x 4 envs
    resumed = _kudos("train", "--resume", str(run), "--steps", str(target), *common)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    after = load_checkpoint(run)
    assert after["progress"]["env_steps"] == target
    assert after["progress"]["updates"] == before["updates"] + 2
    assert after["reward"]["trainers"][0]["metrics"]["errors"] == 0  # the restored model trains


@pytest.mark.parametrize(
    "args,message",
    [
        (["--reward", "magic"], "reward.type: must be one of none, retrieval, classification"),
        (["--task", "Scroe"], "unknown task 'Scroe': did you mean Score"),
        (["--steps", "0"], "run.steps must be >= 1"),
        (["--set", "appo.gamma=2"], "appo: gamma must be in [0, 1]"),
        (["--set", "run.nonsense=1"], "unknown option run.nonsense"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, args, message):
    proc = _kudos("train", "--output", str(tmp_path / "run"), "--reward", "none", *args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_resume_errors(tmp_path):
    proc = _kudos("train", "--resume", str(tmp_path / "nowhere"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "cannot resume" in err and "Traceback" not in err
    config = small_config(tmp_path, "reward.type=none", "run.steps=128")
    TrainingRun(config).train()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"garbage")
    proc = _kudos("train", "--resume", str(tmp_path / "run"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "corrupt or unreadable" in err and "Traceback" not in err
