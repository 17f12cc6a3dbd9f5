"""bench/learning.py --smoke: a tiny grid runs end to end, ends with `kudos compare`, and a second
invocation skips every finished run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kudos.rl.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _bench(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "learning.py"), "--smoke", "--root", str(root)],
        capture_output=True, text=True, timeout=600, env=env,
    )


@pytest.mark.slow
def test_smoke_grid_runs_compares_and_resumes(tmp_path):
    # An interrupted run: checkpointed at 1,024 of its 2,048 steps, no `done` marker.
    interrupted = tmp_path / "MiniHack-KeyRoom-S5" / "none-s101"
    subprocess.run(
        [sys.executable, "-m", "kudos", "train", "--task", "MiniHack-KeyRoom-S5", "--reward", "none",
         "--seed", "101", "--steps", "1024", "--output", str(interrupted), "--set", "env.num_envs=8",
         "--set", "appo.rollout=16", "--set", "env.max_episode_steps=64"],
        check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO / "src")), timeout=300,
    )
    first = _bench(tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    runs = sorted((tmp_path / "MiniHack-KeyRoom-S5").iterdir())
    assert [r.name for r in runs] == ["none-s100", "none-s101", "retrieval-s100", "retrieval-s101"]
    for run in runs:
        assert (run / "done").is_file() and (run / "labels.sqlite").exists() == run.name.startswith("retrieval")
    assert f"{interrupted}: resumed, exit 0" in first.stdout and first.stdout.count("started, exit 0") == 3
    assert load_checkpoint(interrupted)["progress"]["env_steps"] == 2048
    assert "| MiniHack-KeyRoom-S5 | reward.type=none | 2 |" in first.stdout
    assert "| MiniHack-KeyRoom-S5 | reward.type=retrieval | 2 |" in first.stdout
    assert (tmp_path / "plots" / "MiniHack-KeyRoom-S5.png").is_file()
    second = _bench(tmp_path)
    assert second.returncode == 0 and second.stdout.count("done, skipped") == 4
