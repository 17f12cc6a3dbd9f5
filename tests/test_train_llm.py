"""`kudos train` end to end with every learned reward on a real LLM server: the embedded model
behind `python -m llama_cpp.server` (found by GET /v1/models, no model named), labels arriving
while the agent trains, a non-zero intrinsic reward, and the display's figures in TensorBoard.
Slow: a few thousand env steps per reward type, on two shared cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kudos.eval.scalars import read_scalars
from kudos.rl.experiment import load_config
from kudos.feedback.store import open_store
from kudos.rl.runner import TrainingRun

pytestmark = pytest.mark.slow


def _train(tmp_path: Path, server: str, reward: str, steps: int = 3072, *overrides: str) -> list[dict[str, float]]:
    """Train in-process; returns every figure dict the live display was given."""
    config = load_config(None, [
        "env.num_envs=8", "cpu.env_workers=2", "appo.rollout=16", f"run.steps={steps}", "run.log_every_s=0.5",
        f"run.output_dir={tmp_path / 'run'}", f"reward.type={reward}", f"llm.backend={server}",
        f"llm.store={tmp_path / 'labels.sqlite'}", "llm.annotator.batch_size=4", *overrides,
    ])
    shown: list[dict[str, float]] = []
    TrainingRun(config, on_progress=lambda progress, figures: shown.append(dict(figures))).train()
    return shown


def _labels(figures: dict[str, float]) -> float:
    return sum(v for k, v in figures.items() if k.startswith("llm/") and k.endswith("/labels"))


@pytest.mark.parametrize("reward", ["ranking", "cosine", "ensemble"])
def test_training_with_a_real_llm_server(tmp_path: Path, llama_server: str, reward: str) -> None:
    shown = _train(tmp_path, llama_server, reward)
    last = shown[-1]
    assert max(f["intrinsic/nonzero_fraction"] for f in shown) > 0
    if reward != "cosine":
        assert _labels(last) > 0, last  # counted on screen ...
        with open_store(tmp_path / "labels.sqlite") as store:  # ... and stored
            assert sum(1 for _ in store.iter_all()) >= _labels(last) > 0
    # TensorBoard holds every figure the display showed, at the run's last step.
    scalars = read_scalars(tmp_path / "run")
    for key, value in last.items():
        assert key in scalars, key
        assert scalars[key].values[-1] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_offline_motif_from_pairs_in_the_store(tmp_path: Path, llama_server: str) -> None:
    """Pairs labelled by `kudos annotate` on the same server (its model found the same way) are what
    offline Motif fits; the LLM is not asked during training."""
    captions = ["You kill the newt!", "It's a wall.", "You find a hidden passage.", "You see here 4 gold pieces.",
                "Welcome to experience level 2.", "The door is locked.", "You hear some noises.", ""]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"first": a, "second": b}) + "\n"
                             for i, a in enumerate(captions) for b in captions[i + 1:]))
    done = subprocess.run(
        [sys.executable, "-m", "kudos", "annotate", str(pairs), "--llm", llama_server,
         "--store", str(tmp_path / "labels.sqlite")], capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    shown = _train(tmp_path, llama_server, "motif", 2048, "reward.motif_steps=200")
    assert max(f["intrinsic/nonzero_fraction"] for f in shown) > 0
    assert _labels(shown[-1]) == 0  # offline: nothing asked while training
