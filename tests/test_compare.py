"""`kudos compare` on synthetic runs: known curves give known groups, tables and intervals."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from kudos.commands.main import main
from kudos.eval.compare import bootstrap, compare, find_runs, load_run

STEPS = np.arange(0, 1001, 100)


def _run(
    root: Path, name: str, *, reward: str, seed: int, success, c_ext=None, first_step: int = 0, last_step: int = 1000
) -> Path:
    """A run dir whose scalars are logged every 100 steps, 2 s of wall time apart."""
    from torch.utils.tensorboard import SummaryWriter

    path = root / name
    config = {
        "env": {"task": "MiniHack-River", "seed": seed, "num_envs": 16},
        "reward": {"type": reward, "c_ext": c_ext},
        "llm": {"store": str(path / "labels.sqlite")},
        "run": {"steps": 1000, "output_dir": str(path), "commit": f"c{seed}", "dirty": False},
    }
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    writer = SummaryWriter(str(path / "tensorboard"))
    for step in STEPS[(STEPS >= first_step) & (STEPS <= last_step)]:
        wall = 1e9 + step / 50 + (1000 if step > 500 else 0)  # 2 s per log; a 1,000 s interruption
        writer.add_scalar("episode/success_rate", success(step), int(step), walltime=wall)
        writer.add_scalar("episode/return", 10 * success(step), int(step), walltime=wall)
        if reward != "none":  # the annotator's counters grow; 30 captions still queued at the end
            writer.add_scalar("llm/classify/labels", step / 10, int(step), walltime=wall)
            writer.add_scalar("llm/classify/queue_depth", 30, int(step), walltime=wall)
    writer.close()
    return path


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed, level in enumerate((0.0, 0.2, 0.4)):  # none: flat, 0.2 on average
        _run(root, f"none-s{seed}", reward="none", seed=seed, success=lambda s, v=level: v)
    for seed in (0, 1):  # classification: both seeds rise linearly from 0 to 1
        _run(root, f"cls-s{seed}", reward="classification", seed=seed, success=lambda s: s / 1000)
        _run(root, f"cls0-s{seed}", reward="classification", seed=seed, c_ext=0.0, success=lambda s: 0.5)
    return root


def test_groups_by_every_differing_value_but_the_seed(runs):
    result = compare([load_run(p) for p in find_runs([runs])], resamples=2000)
    labels = sorted(g.label for g in result.groups)
    assert labels == [
        "reward.shaping.c_ext=0.0, reward.type=classification",
        "reward.shaping.c_ext=None, reward.type=classification",
        "reward.shaping.c_ext=None, reward.type=none",
    ]
    assert sorted(len(g.runs) for g in result.groups) == [2, 2, 3]


def test_known_curves_give_known_finals_and_intervals(runs):
    result = compare([load_run(p) for p in find_runs([runs])], resamples=10_000, seed=0)
    none = result.finals[("MiniHack-River", "reward.shaping.c_ext=None, reward.type=none", "episode/success_rate")]
    # Seeds at 0, 0.2, 0.4: a resample of three all-0 (or all-0.4) runs has probability 1/27 > 2.5%,
    # so the 95% percentile interval is exactly [0, 0.4].
    assert (none.mean, none.low, none.high, none.seeds) == (pytest.approx(0.2), 0.0, pytest.approx(0.4), 3)
    rising = result.finals[("MiniHack-River", "reward.shaping.c_ext=None, reward.type=classification", "episode/success_rate")]
    # Mean of s/1000 over the last 10% of a 0..1000 grid; identical seeds: a zero-width interval.
    assert rising.mean == pytest.approx(0.95, abs=0.003) and rising.low == rising.high == pytest.approx(rising.mean)
    ret = result.finals[("MiniHack-River", "reward.shaping.c_ext=0.0, reward.type=classification", "episode/return")]
    assert (ret.mean, ret.low, ret.high, ret.seeds) == (pytest.approx(5.0), pytest.approx(5.0), pytest.approx(5.0), 2)
    # Metrics a run did not log are left out, not invented.
    assert ("MiniHack-River", "reward.shaping.c_ext=None, reward.type=none", "episode/score") not in result.finals
    table = result.table()
    assert "| MiniHack-River | reward.shaping.c_ext=None, reward.type=none | 3 | 2 [0, 4] | 0.2 [0, 0.4] | - | - |" in table
    # The band of the mean curve contains it; the bootstrap is reproducible.
    line = result.curves[("MiniHack-River", "reward.shaping.c_ext=None, reward.type=none", "episode/success_rate")]
    assert (line.low <= line.y + 1e-12).all() and (line.y <= line.high + 1e-12).all()
    again = compare([load_run(p) for p in find_runs([runs])], resamples=10_000, seed=0)
    assert again.table() == table


def test_labels_table_reports_each_llm_run(runs):
    table = compare([load_run(p) for p in find_runs([runs])], resamples=100).labels_table()
    lines = table.splitlines()
    assert len(lines) == 2 + 4  # header, rule, 4 LLM runs; the `none` runs have no labels
    # 100 labels in 18 s of logged time (the interruption is not run time), 30 queued:
    # 100 / 130 of the distinct captions submitted were labelled.
    assert "| MiniHack-River | reward.shaping.c_ext=0.0, reward.type=classification | 0 | 100 | 5.56 | 30 | 0 | 76.9% |" in lines


def test_runs_are_aligned_on_their_common_steps(tmp_path):
    a = _run(tmp_path, "a", reward="none", seed=0, success=lambda s: s / 1000)
    b = _run(tmp_path, "b", reward="none", seed=1, success=lambda s: s / 1000, last_step=500)
    result = compare([load_run(a), load_run(b)], points=11, resamples=100)
    line = next(iter(result.curves.values()))
    assert line.x[0] == 0 and line.x[-1] == 500


def test_curves_without_common_steps_are_left_out_with_a_warning(tmp_path, caplog):
    a = _run(tmp_path, "a", reward="none", seed=0, success=lambda s: 0.1, last_step=300)
    b = _run(tmp_path, "b", reward="none", seed=1, success=lambda s: 0.1, first_step=500)
    result = compare([load_run(a), load_run(b)], resamples=100)
    assert not result.finals and "share no env steps" in caplog.text


def test_runs_that_meet_in_one_step_are_compared_there(tmp_path):
    """A short run logs its episodes only in its final report: its one point must still count
    (the smoke grid lost its `none` row on a quiet box when it did not)."""
    a = _run(tmp_path, "a", reward="none", seed=0, success=lambda s: 0.2, first_step=1000)
    b = _run(tmp_path, "b", reward="none", seed=1, success=lambda s: 0.4)
    result = compare([load_run(a), load_run(b)], resamples=100)
    final = next(iter(e for (_, _, tag), e in result.finals.items() if tag == "episode/success_rate"))
    assert final.seeds == 2 and final.mean == pytest.approx(0.3)


def test_bootstrap_of_identical_seeds_is_a_point():
    mean, low, high = bootstrap(np.full((4, 3), 2.5), resamples=50)
    assert (mean == 2.5).all() and (low == 2.5).all() and (high == 2.5).all()


def test_cli_prints_the_table_and_writes_one_png_per_task(runs, tmp_path, capsys):
    assert main(["compare", str(runs), "--plots", str(tmp_path / "plots"), "--resamples", "500"]) == 0
    out = capsys.readouterr().out
    assert "| task | group | seeds |" in out and "reward.type=none" in out
    png = tmp_path / "plots" / "MiniHack-River.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_a_folder_without_runs(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a `kudos train` output directory" in capsys.readouterr().err
