"""KudosAPPO on a local Ray cluster started here (``ray.init(num_cpus=2)``, 2 env runners), a real
``llama_cpp.server`` on the embedded model (behind a proxy that counts every prompt) labelling into
a PostgreSQL store started here: labels land, no caption is asked twice, the learner's snapshot
version advances, save/restore brings the service and the shaper back, and training goes on when
an env runner or the service actor is killed. Then `kudos train --engine rllib`'s run directory,
and every reward type for a few hundred steps (an instant stand-in LLM)."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytest.importorskip("ray.rllib", reason="Ray RLlib is not installed: pip install 'kudos[ray]'")

import ray  # noqa: E402
from test_llm_http import FaultyLLMServer  # noqa: E402  (its proxy counts every prompt)
from test_store import _fresh_postgres_db, postgres_url  # noqa: E402,F401  (the throwaway PostgreSQL server)

from kudos.feedback.model_files import MODEL_ID  # noqa: E402
from kudos.feedback.store import open_store  # noqa: E402
from kudos.integrations.rllib import KudosAPPO, appo_config, env_steps_trained, on_connector  # noqa: E402
from kudos.rewards.trainer import RewardModelTrainerConfig  # noqa: E402
from kudos.rl.experiment import load_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from stand_in_llm import StandInLLM  # noqa: E402  (the stand-in server, shared with the benches)

pytestmark = pytest.mark.slow
DEADLINE_S = 240.0  # per phase; the embedded model labels a caption every few seconds on 2 busy cores


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _service(algo: Any, fn: Any) -> Any:
    return ray.get(algo.reward_service.__ray_call__.remote(fn), timeout=60)


def _train_until(algo: Any, done: Any) -> list[dict[str, Any]]:
    results, start = [], time.monotonic()
    while time.monotonic() - start < DEADLINE_S:
        results.append(algo.train())
        if done(results[-1]):
            return results
    raise AssertionError(f"condition not reached in {DEADLINE_S:.0f} s; last result keys {list(results[-1])}")


@pytest.fixture(scope="module")
def counting_llm(llama_server: str) -> Iterator[FaultyLLMServer]:
    """A real ``llama_cpp.server`` on the embedded model behind a proxy that counts every prompt."""
    proxy = FaultyLLMServer(llama_server)
    yield proxy
    proxy.close()


def test_kudos_appo_labels_snapshots_checkpoints_and_survives_kills(cluster: None, postgres_url: str,  # noqa: F811
                                                                     counting_llm: FaultyLLMServer,
                                                                     tmp_path: Path) -> None:
    store = _fresh_postgres_db(postgres_url)
    config = load_config(None, [
        "reward.type=classification", f"llm.backend={counting_llm.url}", f"llm.store={store}", "env.num_envs=2",
        "env.max_episode_steps=40", "appo.rollout=16", "appo.recurrence=16", "reward.shaping.intrinsic.normalize=true",
    ])
    trainer = RewardModelTrainerConfig(min_labels=4, warmup_steps_per_s=20.0, publish_every=2, poll_interval_s=0.5)
    rllib_config = appo_config(config, num_env_runners=2, envs_per_runner=1, trainer=trainer).reporting(
        min_time_s_per_iteration=2)
    algo = rllib_config.build_algo()
    assert isinstance(algo, KudosAPPO)
    try:
        first_version = on_connector(algo, lambda c: c.version)
        # Labels land and the learner takes newer snapshots as the reward model learns them.
        _train_until(algo, lambda r: on_connector(algo, lambda c: c.version) >= first_version + 2)
        with open_store(store) as s:
            assert len(list(s.iter_all())) >= 4
        shaper_count = on_connector(algo, lambda c: c.shaper.normalizer.stats.count)
        assert shaper_count > 1  # the connector shaped real batches

        # save/restore: the service's reward model and the connector's statistics come back.
        # (The service trains on while saving: read its counters first, they only grow.)
        steps_before_save = _service(algo, lambda s: s.reward.model.steps)
        assert steps_before_save > 0
        path = algo.save_to_path(str(tmp_path / "checkpoint"))
        saved_stats = on_connector(algo, lambda c: c.shaper.state_dict())
    finally:
        algo.stop()

    restored = KudosAPPO.from_checkpoint(path)
    try:
        assert on_connector(restored, lambda c: c.shaper.state_dict()) == saved_stats
        # A fresh service would start at step 0; the restored one goes on from the checkpoint's.
        assert _service(restored, lambda s: s.reward.model.steps) >= steps_before_save

        # Kill (SIGKILL) one env runner, then the service actor: training goes on.
        steps = env_steps_trained(restored.train())
        assert counting_llm.asked and max(counting_llm.asked.values()) == 1  # no caption asked twice
        runner_pids = restored.env_runner_group.foreach_env_runner(lambda r: os.getpid(), local_env_runner=False)
        os.kill(runner_pids[0], signal.SIGKILL)
        epoch = on_connector(restored, lambda c: c.epoch)
        with open_store(store) as s:
            labelled_before_kill = {r.caption for r in s.iter_all()}
        os.kill(_service(restored, lambda s: os.getpid()), signal.SIGKILL)
        killed_at = time.time()
        results = _train_until(restored, lambda r: env_steps_trained(r) > steps + 200
                               and on_connector(restored, lambda c: c.epoch) != epoch)
        assert env_steps_trained(results[-1]) > steps + 200
        assert restored.env_runner_group.num_healthy_remote_workers() == 2  # the killed runner was replaced
        _service(restored, lambda s: s.reward.close())  # the restarted service's annotator stores and stops
        with open_store(store) as s:
            stored = list(s.iter_all())
        assert sum(r.timestamp > killed_at for r in stored) > 0  # the restarted service labels
        # Across the kill, only what was in flight when the service died may have been asked again.
        assert sum(n - 1 for n in counting_llm.asked.values()) <= config.llm.annotator.batch_size
        assert len({r.caption for r in stored}) == len(stored)
        assert labelled_before_kill <= {r.caption for r in stored}  # nothing labelled was lost
    finally:
        restored.stop()


def test_kudos_train_engine_rllib_run_directory_reports_and_resumes(cluster: None, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`kudos train --engine rllib` lays its output out as the native trainer does: `kudos report`
    and `kudos compare` read it, and `--resume` continues it (an instant stand-in LLM labels)."""
    from kudos.commands.main import main
    from kudos.eval.compare import load_run
    from kudos.eval.report import build_report
    from kudos.eval.scalars import read_scalars
    from kudos.rl.checkpoint import load_checkpoint

    output = tmp_path / "run"
    llm = StandInLLM(MODEL_ID)
    common = ["--engine", "rllib", "--reward", "classification", "--llm", llm.url, "--llm-model", MODEL_ID,
              "--store", str(tmp_path / "labels.sqlite"), "--num-envs", "2",
              "--set", "env.max_episode_steps=40", "--set", "run.log_every_s=0"]
    try:
        assert main(["train", *common, "--steps", "300", "--output", str(output)]) == 0
        first = capsys.readouterr().out
        (trained,) = _steps(first, "done:")
        assert trained >= 300
        assert (output / "config.yaml").is_file() and (output / "rllib_checkpoint").is_dir()
        scalars = read_scalars(output)
        for key in ("episode/return", "episode/length", "intrinsic/mean", "intrinsic/nonzero_fraction",
                    "reward/extrinsic_per_step", "throughput/env_steps_per_s", "learner/policy_loss",
                    "reward_service/snapshot_version"):
            assert len(scalars[key]), key
        assert any(k.startswith("llm/") for k in scalars) and any(k.startswith("reward_model/") for k in scalars)
        events = EventAccumulator(str(output / "tensorboard"), size_guidance={"tensors": 0})
        events.Reload()  # the resolved config in TensorBoard's text tab, as the native trainer writes it
        (text,) = events.Tensors("config/text_summary")
        saved = yaml.safe_load((output / "config.yaml").read_text())
        assert yaml.safe_load(text.tensor_proto.string_val[0].decode().strip("`").removeprefix("yaml\n")) == saved
        state = load_checkpoint(output)
        assert state["progress"]["env_steps"] == trained and state["reward"]["model"]
        stats = state["run_stats"]
        assert stats["captions"] and int(stats["seen"].sum()) > 0 and stats["label_key"] is not None
        page = build_report(output).path.read_text()
        for title in ("Extrinsic episode return", "Intrinsic reward sparsity", "Reward-model validation accuracy"):
            assert title in page
        # The label browser finds the run's labels in the store (the service's label key).
        labelled = re.search(r"of them labelled in the store</th><td>([\d,]+)<", page)
        assert labelled is not None and int(labelled.group(1).replace(",", "")) > 0
        assert load_run(output).curves  # `kudos compare` reads it
        # The native trainer refuses to resume it, in one line.
        assert main(["train", "--resume", str(output), "--steps", str(trained + 300)]) == 2
        assert "--engine rllib" in capsys.readouterr().err

        assert main(["train", "--engine", "rllib", "--resume", str(output), "--steps", str(trained + 300)]) == 0
        second = capsys.readouterr().out
    finally:
        llm.close()
    # The resumed run counts on from the checkpoint's steps, to the new total, and keeps its statistics.
    assert _steps(second, "steps ")[0] > trained and _steps(second, "done:")[0] >= trained + 300
    resumed = load_checkpoint(output)["run_stats"]
    assert int(resumed["seen"].sum()) > int(stats["seen"].sum())


def _steps(out: str, prefix: str) -> list[int]:
    return [int(line.split()[1].split("/")[0].replace(",", "")) for line in out.splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("reward", ["retrieval", "classification", "ranking", "motif", "cosine", "ensemble",
                                    "classification+episode_cap"])
def test_every_reward_type_trains_on_rllib(cluster: None, tmp_path: Path, reward: str) -> None:
    """Each reward type of the native trainer, for a few hundred steps on RLlib (an instant stand-in
    LLM labels): the learner shapes with it and the service labels what it needs."""
    from kudos.commands.main import main

    kind, _, option = reward.partition("+")
    store = tmp_path / "labels.sqlite"
    llm = StandInLLM(MODEL_ID)
    try:
        if kind == "motif":  # offline Motif fits pair labels already in the store
            pairs = tmp_path / "pairs.jsonl"
            captions = ["You kill the newt!", "It's a wall.", "You find a hidden passage.", "The door is locked."]
            pairs.write_text("".join(f'{{"first": "{a}", "second": "{b}"}}\n' for a in captions for b in captions if a < b))
            assert main(["annotate", str(pairs), "--llm", llm.url, "--llm-model", MODEL_ID, "--store", str(store)]) == 0
        overrides = [f"reward.type={kind}", f"llm.backend={llm.url}", f"llm.model={MODEL_ID}", f"llm.store={store}",
                     "env.num_envs=2", "env.max_episode_steps=40", "reward.motif_steps=50"]
        if option == "episode_cap":
            overrides.append("reward.shaping.episode_cap=0.05")
        config = load_config(None, overrides)
        algo = appo_config(config, num_env_runners=2, envs_per_runner=1).build_algo()
        try:
            online = kind not in ("cosine", "motif")
            _train_until(algo, lambda r: env_steps_trained(r) >= 300 and (
                not online or sum(v for k, v in r.get("kudos", {}).items() if k.endswith("/labels")) > 0))
            stats = on_connector(algo, lambda c: c.run_stats)
            # The connector shaped every step trained on (the run statistics count only the steps
            # with a message: no caption, nothing to count).
            assert on_connector(algo, lambda c: c.steps_shaped) >= 300 and sum(stats.arrays()[0]) > 0
            if not online or kind == "ensemble":  # scores from the first batch on
                assert np.abs(stats.arrays()[2]).sum() > 0
        finally:
            algo.stop()
    finally:
        llm.close()
