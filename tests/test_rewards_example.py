"""The runnable example of docs/rewards.md: CleanRL-style PPO with the intrinsic-reward wrapper."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "cleanrl_ppo_intrinsic.py"


def test_cleanrl_example_trains_with_the_shaped_reward():
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--total-steps", "256", "--num-envs", "2", "--num-steps", "64",
         "--fit-steps", "30"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "update 1: mean shaped reward" in result.stderr
