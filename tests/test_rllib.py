"""The RLlib integration without a cluster: the connector's rewards equal kudos's own shaping on a
recorded rollout of the real NetHack env (snapshots: tests/test_rewards_snapshot.py), and the module runs
kudos's policy. Skipped when Ray is not installed (``pip install 'kudos[ray]'``)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ray.rllib", reason="Ray RLlib is not installed: pip install 'kudos[ray]'")

from ray.rllib.core.columns import Columns  # noqa: E402
from ray.rllib.env.single_agent_episode import SingleAgentEpisode  # noqa: E402

from kudos.envs import NUM_ACTIONS  # noqa: E402
from kudos.feedback.config import LLMConfig  # noqa: E402
from kudos.feedback.embedded import MODEL_ID  # noqa: E402
from kudos.integrations.rllib import (  # noqa: E402
    IntrinsicRewardConnector,
    NetHackRLModule,
    RewardService,
    RLlibNetHackEnv,
)
from kudos.rewards import CaptionLabel, ClassifierConfig, ClassifierReward, RewardShaper, shaped_rewards  # noqa: E402
from kudos.rewards.shaping import NormalizerConfig, ShapingConfig  # noqa: E402
from kudos.rewards.intrinsic import RewardConfig  # noqa: E402
from kudos.rewards.service import scoring_statistics  # noqa: E402
from kudos.rewards.snapshot import scoring_snapshot  # noqa: E402
from kudos.rewards.trainer import RewardModelTrainerConfig  # noqa: E402
from kudos.rl.policy import PolicyConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from stand_in_llm import StandInLLM  # noqa: E402  (the stand-in server, shared with the benches)

T, B = 40, 3


def _fitted_classifier() -> ClassifierReward:
    model = ClassifierReward(ClassifierConfig(fit_steps=30, validation_fraction=0.0))
    model.fit([CaptionLabel("You kill the newt!", 1.0), CaptionLabel("It's solid stone.", 0.0),
               CaptionLabel("You find a hidden passage.", 1.0), CaptionLabel("You can't go down here.", 0.0)])
    return model


def _record_rollout(seed: int = 3) -> tuple[np.ndarray, list[list[str]], np.ndarray, np.ndarray, list[list[dict]]]:
    """T steps of B real envs under random actions, kudos-style (T, B) arrays, and the step infos."""
    envs = [RLlibNetHackEnv({"task": "Score", "max_episode_steps": 15}) for _ in range(B)]
    rng = np.random.default_rng(seed)
    for b, env in enumerate(envs):
        env.reset(seed=seed + b)
    rewards, dones = np.zeros((T, B), np.float32), np.zeros((T, B), bool)
    counts = np.zeros((T, B), np.int64)
    captions: list[list[str]] = []
    infos: list[list[dict]] = []
    for t in range(T):
        row, info_row = [], []
        for b, env in enumerate(envs):
            _, reward, terminated, truncated, info = env.step(int(rng.integers(NUM_ACTIONS)))
            rewards[t, b], dones[t, b], counts[t, b] = reward, terminated or truncated, info["caption_count"]
            row.append(info["caption"])
            info_row.append(info)
            if terminated or truncated:
                env.reset()
        captions.append(row)
        infos.append(info_row)
    for env in envs:
        env.close()
    # Scores of a few steps, so the extrinsic part is not all zeros.
    rewards[::7] += 2.5
    return rewards, captions, counts, dones, infos


def _episodes(rewards: np.ndarray, dones: np.ndarray, infos: list[list[dict]],
              halves: bool = False) -> list[tuple[int, int, SingleAgentEpisode]]:
    """The rollout as RLlib hands it to a learner: (env, first step, chunk), one chunk per env and
    episode; with ``halves``, each episode in two fragments (same episode id), every env's first
    halves before any second half, as fragments of many episodes interleave in RLlib's batches."""
    first, second = [], []
    for b in range(B):
        start = 0
        for t in range(T):
            if dones[t, b] or t == T - 1:
                cut = (start + t + 1) // 2 if halves and t > start else t + 1
                episode_id = f"env{b}-step{start}"
                for lo, hi, out in ((start, cut, first), (cut, t + 1, second)):
                    if hi > lo:
                        out.append((b, lo, SingleAgentEpisode(
                            id_=episode_id, observations=[0] * (hi - lo + 1), actions=[0] * (hi - lo),
                            rewards=[float(rewards[s, b]) for s in range(lo, hi)],
                            infos=[{}] + [infos[s][b] for s in range(lo, hi)],
                            terminated=bool(dones[t, b]) and hi == t + 1, len_lookback_buffer=0,
                        )))
                start = t + 1
    return first + second


def _rewards_by_step(chunks: list[tuple[int, int, SingleAgentEpisode]]) -> np.ndarray:
    got = np.full((T, B), np.nan)
    for b, start, chunk in chunks:
        values = np.asarray(chunk.get_rewards())
        got[start:start + len(values), b] = values
    return got


@pytest.mark.parametrize("skip_empty", [False, True])
def test_connector_rewards_equal_kudos_shaping_on_a_recorded_rollout(skip_empty: bool) -> None:
    rewards, captions, counts, dones, infos = _record_rollout()
    flat = [c for row in captions for c in row]
    assert len(set(flat)) > 3 and "" in flat and dones.any()  # a rollout worth checking
    model = _fitted_classifier()
    shaping = ShapingConfig(c_ext=0.5, c_int=0.4, beta=3.0, intrinsic=NormalizerConfig(normalize=True))
    expected, _ = shaped_rewards(model, RewardShaper(shaping, B), rewards, captions, counts, dones, skip_empty)

    connector = IntrinsicRewardConnector(shaping=shaping, skip_empty_caption=skip_empty, scorer=scoring_snapshot(model))
    chunks = _episodes(rewards, dones, infos)
    connector(rl_module=None, batch={}, episodes=[c for _, _, c in chunks])
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(_rewards_by_step(chunks), expected, atol=1e-6)
    # The statistics moved as kudos's do: one update with every step of the batch.
    reference = RewardShaper(shaping, B)
    shaped_rewards(model, reference, rewards, captions, counts, dones, skip_empty)
    assert connector.shaper.normalizer.stats.count == pytest.approx(reference.normalizer.stats.count)
    assert connector.shaper.normalizer.stats.mean == pytest.approx(reference.normalizer.stats.mean, abs=1e-9)


def test_episode_cap_holds_per_episode_across_interleaved_fragments() -> None:
    rewards, captions, counts, dones, infos = _record_rollout()
    model = _fitted_classifier()
    shaping = ShapingConfig(c_ext=0.5, c_int=0.4, beta=0.0, episode_cap=0.3)
    reference = RewardShaper(shaping, B)
    expected, r_int = shaped_rewards(model, reference, rewards, captions, counts, dones)
    uncapped, _ = shaped_rewards(model, RewardShaper(dataclasses.replace(shaping, episode_cap=None), B),
                                 rewards, captions, counts, dones)
    assert not np.allclose(expected, uncapped)  # the cap bites on this rollout

    connector = IntrinsicRewardConnector(shaping=shaping, scorer=scoring_snapshot(model))
    chunks = _episodes(rewards, dones, infos, halves=True)
    connector(rl_module=None, batch={}, episodes=[c for _, _, c in chunks])
    np.testing.assert_allclose(_rewards_by_step(chunks), expected, atol=1e-6)
    # Only the episodes still running are remembered, with what they have collected.
    running = {c.id_ for _, _, c in chunks} - {c.id_ for _, _, c in chunks if c.is_done}
    assert set(connector.episode_intrinsic) == running
    assert sorted(connector.episode_intrinsic.values()) == pytest.approx(sorted(reference.episode_intrinsic[
        [b for b in range(B) if not dones[:, b][-1]]]))


def test_module_runs_kudos_policy_with_state_and_target() -> None:
    env = RLlibNetHackEnv({"task": "Score"})
    module = NetHackRLModule(observation_space=env.observation_space, action_space=env.action_space,
                             model_config={"policy": PolicyConfig(), "max_seq_len": 4})
    module.make_target_networks()
    obs, _ = env.reset(seed=0)
    steps = [obs] + [env.step(a)[0] for a in (1, 2, 3)]
    env.close()
    batch = {
        Columns.OBS: {k: torch.from_numpy(np.stack([s[k] for s in steps]))[None].repeat(2, *[1] * (steps[0][k].ndim + 1))
                      for k in steps[0]},
        Columns.STATE_IN: {"h": torch.from_numpy(np.stack([module.get_initial_state()["h"]] * 2))},
    }
    out = module.forward_train(batch)
    assert out[Columns.ACTION_DIST_INPUTS].shape == (2, 4, env.action_space.n)
    assert out[Columns.STATE_OUT]["h"].shape == (2, module.policy.hidden_size)
    values = module.compute_values(batch)
    assert values.shape == (2, 4) and torch.allclose(values, out[Columns.EMBEDDINGS])
    # The target network starts as a copy: same logits.
    target = module.forward_target(batch)
    from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS

    assert torch.allclose(target[TARGET_NETWORK_ACTION_DIST_INPUTS], out[Columns.ACTION_DIST_INPUTS])
    # Step by step with the carried state gives the same logits as the sequence (one GRU, no resets).
    state = batch[Columns.STATE_IN]
    for t in range(4):
        step = module.forward_inference({Columns.OBS: {k: v[:, t : t + 1] for k, v in batch[Columns.OBS].items()},
                                         Columns.STATE_IN: state})
        assert torch.allclose(step[Columns.ACTION_DIST_INPUTS][:, 0], out[Columns.ACTION_DIST_INPUTS][:, t], atol=1e-5)
        state = step[Columns.STATE_OUT]


@pytest.mark.slow
def test_ranking_statistics_carry_over_to_every_new_snapshot(tmp_path: Path) -> None:
    """Online ranking on Ray: the normalisation statistics that the connector's scoring moves
    stay the learner's when a newer snapshot arrives from the service (whose own are untouched),
    and they go with the connector's state into a checkpoint."""
    import ray

    llm = StandInLLM(MODEL_ID)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        service = RewardService.start({
            "reward": RewardConfig(type="ranking", trainer=RewardModelTrainerConfig(poll_interval_s=0.1, min_labels=8)),
            "llm": LLMConfig(backend=llm.url, store=str(tmp_path / "labels.sqlite")), "goal": "score"})
        connector = IntrinsicRewardConnector(shaping=ShapingConfig())
        connector.attach(service, ray.get(service.snapshot_since.remote(None, 0)))
        captions = [f"You kill the newt number {i}!" for i in range(12)] + ["It's solid stone."]
        counts = [0.0]
        deadline = time.monotonic() + 120
        while connector.version < 3:  # two new snapshots taken in a row
            assert time.monotonic() < deadline, ray.get(service.metrics.remote())
            episode = SingleAgentEpisode(observations=[0] * (len(captions) + 1), actions=[0] * len(captions),
                                         rewards=[0.0] * len(captions), len_lookback_buffer=0,
                                         infos=[{}] + [{"caption": c, "caption_count": 1} for c in captions])
            connector(rl_module=None, batch={}, episodes=[episode])
            counts.append(scoring_statistics(connector.scorer)[0]["stats"]["count"])
            time.sleep(0.1)
        assert counts == sorted(counts) and counts[-1] == pytest.approx(len(captions) * (len(counts) - 1), abs=1e-3)
        state = connector.get_state()
        resumed = IntrinsicRewardConnector(shaping=ShapingConfig())
        resumed.attach(service, ray.get(service.snapshot_since.remote(None, 0)))
        resumed.set_state(state)
        assert scoring_statistics(resumed.scorer) == scoring_statistics(connector.scorer)
        ray.get(service.close.remote())
    finally:
        ray.shutdown()
        llm.close()
