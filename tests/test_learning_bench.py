"""bench/learning.py --smoke: a tiny grid runs end to end, ends with `kudos compare`, and a second
invocation skips every finished run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "learning.py"), "--smoke", "--root", str(root)],
        capture_output=True, text=True, timeout=600, env=env,
    )


@pytest.mark.slow
def test_smoke_grid_runs_compares_and_resumes(tmp_path):
    first = _bench(tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    runs = sorted((tmp_path / "MiniHack-KeyRoom-S5").iterdir())
    assert [r.name for r in runs] == ["none-s100", "none-s101", "retrieval-s100", "retrieval-s101"]
    for run in runs:
        assert (run / "done").is_file() and (run / "labels.sqlite").exists() == run.name.startswith("retrieval")
    assert "| MiniHack-KeyRoom-S5 | reward.type=none | 2 |" in first.stdout
    assert "| MiniHack-KeyRoom-S5 | reward.type=retrieval | 2 |" in first.stdout
    assert (tmp_path / "plots" / "MiniHack-KeyRoom-S5.png").is_file()
    second = _bench(tmp_path)
    assert second.returncode == 0 and second.stdout.count("done, skipped") == 4
