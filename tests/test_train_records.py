"""What `kudos train` records for comparisons: per-episode score, depth and success in TensorBoard,
the source commit in config.yaml, and a policy sized to the task's own action set."""

import subprocess
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import numpy as np
import torch

from kudos.envs import EndStatus, make_env
from kudos.eval.scalars import read_scalars
from kudos.rl.experiment import load_config
from kudos.rl.runner import TrainingRun, record_revision


def test_minihack_run_records_episode_figures_and_commit(tmp_path):
    config = load_config(
        None,
        [
            "env.task=MiniHack-KeyRoom-S5", "reward.type=none", "env.num_envs=8", "cpu.env_workers=2", "cpu.learner_threads=2",
            "appo.rollout=16", "run.steps=2048", f"run.output_dir={tmp_path / 'run'}", "run.log_every_s=0.2",
        ],
    )
    threads = torch.get_num_threads()
    trainer = TrainingRun(config)
    try:
        assert trainer.policy.actor.out_features == 10  # 8 moves, pickup, apply
        # The CPU budget reaches the learner and the sampler.
        assert torch.get_num_threads() == 2 and trainer.sampler.workers.num_workers == 2
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    scalars = read_scalars(tmp_path / "run")
    for tag in ("episode/score", "episode/depth", "episode/success_rate", "episode/return"):
        assert tag in scalars, tag
    # Every KeyRoom episode is on dungeon level 1 (its only level).
    assert (scalars["episode/depth"].values == 1.0).all()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    assert saved["run"]["commit"] == head and isinstance(saved["run"]["dirty"], bool)
    # TensorBoard's Text tab holds the resolved config, as config.yaml does.
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    (text,) = events.Tensors("config/text_summary")
    markdown = text.tensor_proto.string_val[0].decode()
    assert markdown.startswith("```yaml\n") and yaml.safe_load(markdown.strip("`").removeprefix("yaml\n")) == saved
    assert saved["cpu"]["env_workers"] == 2 and saved["cpu"]["cores"] == "auto"  # resolved again on resume
    (budget,) = events.Tensors("cpu_budget/text_summary")
    assert "2 env workers, learner 2 thread(s)" in budget.tensor_proto.string_val[0].decode()


def test_a_run_resumed_on_another_commit_keeps_both(tmp_path):
    config = load_config(None, ["run.commit=0123abcd", "run.dirty=false"])
    record_revision(config)
    assert config.run.commit.startswith("0123abcd+") and config.run.commit != "0123abcd+"
    same = load_config(None, [f"run.commit={config.run.commit}"])
    record_revision(same)
    assert same.run.commit == config.run.commit


def test_a_death_reports_the_last_in_game_score_and_depth():
    rng = np.random.default_rng(0)
    with make_env("Score") as env:
        env.reset(seed=0)
        while True:
            obs, _, terminated, truncated, info = env.step(int(rng.integers(28)))
            if terminated or truncated:
                break
    assert info["end_status"] == EndStatus.DEATH
    assert obs["blstats"].sum() == 0  # the game zeroed its bottom line
    assert info["depth"] >= 1 and info["score"] >= 0
