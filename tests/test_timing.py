"""Where a run's time goes (kudos.rl.timing, the ``time/*`` figures of the display)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from kudos.rl.runner import LEARNER_TIME, TrainingRun
from kudos.rl.timing import Stopwatch, TimeShares
from kudos.rl.workers import WORKER_TIME
from test_train import small_config


def test_shares_are_seconds_added_per_wall_second_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 102.0, 106.0])
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    seconds = np.zeros(2)
    shares = TimeShares(("a", "b"), lambda: seconds, processes=2)
    seconds[:] = [1.0, 3.0]  # over 2 s of 2 processes: a 1/4, b 3/4
    assert shares() == {"a": 0.25, "b": 0.75}
    seconds[:] = [1.0, 7.0]  # then 4 s: a nothing, b 4 of 8 process-seconds
    assert shares() == {"a": 0.0, "b": 0.5}


def test_a_stopwatch_charges_each_lap_to_its_part(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 10.5, 12.0, 12.25, 13.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    watch = Stopwatch(("wait", "work"))
    watch.lap("wait")
    watch.lap("work")
    watch.lap("wait")
    assert watch.seconds.tolist() == [0.75, 1.5]
    assert watch.read("work").tolist() == [0.75, 2.25]  # the lap in progress, 0.75 s so far


def test_a_run_reports_where_its_time_goes(tmp_path: Path) -> None:
    """Every component's shares are fractions of its wall time: each part in [0, 1], their sum at
    most 1 (what is left is untimed bookkeeping), and the env and the learning loop take some."""
    seen: list[dict[str, float]] = []
    config = small_config(tmp_path, "reward.type=none", "run.steps=4096", "run.log_every_s=0")
    TrainingRun(config, on_progress=lambda p, f: seen.append(f)).train()
    figures = seen[-2]  # the last report during training (the final one also spans the shutdown)
    workers = [figures[f"time/workers/{part}"] for part in WORKER_TIME]
    learner = [figures[f"time/learner/{part}"] for part in LEARNER_TIME]
    for shares in (workers, learner):
        assert all(0.0 <= s <= 1.0 for s in shares) and 0.0 < sum(shares) <= 1.001, figures  # two clocks read a moment apart
    assert figures["time/workers/env"] > 0 and figures["time/learner/learning"] > 0
