"""`kudos eval RUN_DIR`: a checkpoint's policy plays real NetHack; figures, recordings, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kudos.commands.main import main
from kudos.rl.experiment import load_config
from kudos.eval.episodes import evaluate_run
from kudos.rl.experiment import load_config, save_config
from kudos.rl.checkpoint import CheckpointError
from kudos.rl.runner import TrainingRun


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    config = load_config(None, ["reward.type=none", "env.num_envs=4", "cpu.env_workers=2", "appo.rollout=16",
                                "run.steps=64", f"run.output_dir={root / 'run'}"])
    TrainingRun(config).train()
    return root / "run"


@pytest.mark.slow
def test_checkpoint_episodes_have_sane_figures_and_recordings(run: Path, tmp_path: Path) -> None:
    task, reports = evaluate_run(run, 2, greedy=False, seed=3, max_steps=120, record_dir=tmp_path / "rec")
    assert task == "Score" and len(reports) == 2
    for i, r in enumerate(reports):
        assert 1 <= r.length <= 120
        assert r.score >= 0 and r.gold >= 0
        assert r.max_depth >= 1 and r.level >= 1 and r.turns >= 1
        assert r.death, r  # "truncated", or how the game ended
        lines = [json.loads(line) for line in (tmp_path / "rec" / f"episode_{i}.jsonl").read_text().splitlines()]
        assert lines[0]["type"] == "episode" and lines[-1]["type"] == "end"
        assert len(lines) == r.length + 3  # header, the reset frame, one per step, end
        assert len(lines[1]["rows"]) == 24
        assert sum(step["reward"] for step in lines[2:-1]) == pytest.approx(r.ret)
        assert lines[-1]["score"] == r.score
    # Greedy play with the same seed repeats itself.
    _, a = evaluate_run(run, 1, greedy=True, seed=1, max_steps=60)
    _, b = evaluate_run(run, 1, greedy=True, seed=1, max_steps=60)
    assert (a[0].length, a[0].ret, a[0].turns) == (b[0].length, b[0].ret, b[0].turns)


@pytest.mark.slow
def test_kudos_eval_prints_the_figures_of_a_checkpoint(run: Path, capsys) -> None:
    assert main(["eval", str(run), "--episodes", "2", "--max-steps", "50", "--greedy"]) == 0
    out = capsys.readouterr().out
    for column in ("return", "score", "depth", "gold", "level", "turns", "over 2 episodes", "mean", "sd", "greedy"):
        assert column in out


def test_a_missing_checkpoint_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["eval", str(tmp_path), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kudos: error: no checkpoint at") and "\n" not in err


def test_a_corrupt_checkpoint_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    save_config(load_config(None, [f"run.output_dir={tmp_path}"]), tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x02not a checkpoint at all")
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is corrupt or unreadable" in err and "\n" not in err
    with pytest.raises(CheckpointError):
        evaluate_run(tmp_path)


def test_report_of_a_missing_run_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kudos: error:") and "\n" not in err


def test_random_eval_still_works_and_records(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--task", "Score", "--max-steps", "30", "--record", str(tmp_path)]) == 0
    assert "random policy" in capsys.readouterr().out
    assert (tmp_path / "episode_0.jsonl").is_file()
