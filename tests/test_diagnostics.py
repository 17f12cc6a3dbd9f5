"""Reward-hacking diagnostics (kudos.rl.runstats) on synthetic runs: a farming run is flagged, a
clean one is not; run statistics survive a checkpoint round trip."""

import numpy as np

from kudos.rl.experiment import load_config
from kudos.rl.runstats import DiagnosticsConfig, RunStats, warning_lines

B, T = 4, 50


def _episode_rollouts(stats: RunStats, episodes: int, step) -> None:
    """Feed ``episodes`` rounds of one T-step episode per env; ``step(e, t, b)`` -> (caption,
    extrinsic reward, intrinsic reward)."""
    rng_counts: dict[tuple[int, str], int] = {}
    for e in range(episodes):
        captions, counts = [], np.zeros((T, B), dtype=np.int32)
        ext, r_int = np.zeros((T, B), np.float32), np.zeros((T, B), np.float32)
        dones = np.zeros((T + 1, B), dtype=bool)
        dones[T] = True  # every env ends its episode with the rollout
        for t in range(T):
            row = []
            for b in range(B):
                caption, ext[t, b], r_int[t, b] = step(e, t, b)
                key = (b, caption)
                rng_counts[key] = rng_counts.get(key, 0) + 1
                counts[t, b] = rng_counts[key]
                row.append(caption)
            captions.append(row)
        rng_counts.clear()
        stats.record(captions, counts, dones, ext, r_int)


def farming_step(e, t, b):
    """One caption, repeated every step and rewarded every time; the task's reward falls as the
    agent farms harder (later episodes), so intrinsic and extrinsic returns are anti-correlated."""
    farm = t < 10 + (e % 10) * 4
    if farm:
        return "You hear the footsteps of a guard on patrol.", 0.0, 1.0
    return f"You see here item {t}.", 1.0, 0.0


def clean_step(e, t, b):
    """Varied captions, each met once or twice an episode; the reward of a caption comes with task
    progress, so both returns rise together."""
    rng = np.random.default_rng(e * 1000 + t * 10 + b)
    good = rng.random() < 0.2 + 0.03 * (e % 10)
    caption = f"You find passage {e}-{t}-{b}." if good else ("" if t % 2 else f"You see a wall {t // 2}.")
    return caption, 1.0 if good else 0.0, 1.0 if good else 0.0


def test_a_farming_run_is_flagged():
    stats = RunStats(DiagnosticsConfig(), B)
    _episode_rollouts(stats, 30, farming_step)
    d = stats.diagnose(None)
    assert [c for c, _, _ in d.farmed] == ["You hear the footsteps of a guard on patrol."]
    assert d.farmed[0][1] >= 10
    assert d.top10_share > 0.99
    assert d.return_correlation < -0.9
    assert len(d.warnings) == 3, d.warnings
    assert d.figures()["diagnostics/farmed_captions"] == 1


def test_a_clean_run_is_not_flagged():
    stats = RunStats(DiagnosticsConfig(), B)
    _episode_rollouts(stats, 30, clean_step)
    d = stats.diagnose(None)
    assert d.farmed == []
    assert d.top10_share < 0.2
    assert d.return_correlation > 0.9
    assert d.warnings == []


def test_a_model_that_rewards_every_caption_alike_farms_nothing():
    """An untrained model scores every caption about 0.5: frequent captions are not 'farmed'."""
    stats = RunStats(DiagnosticsConfig(), B)
    _episode_rollouts(stats, 5, lambda e, t, b: ("It's a wall." if t % 2 else f"caption {t}", 0.0, 0.5))
    assert stats.diagnose(None).farmed == []


def test_disagreement_with_the_llm_is_measured_on_recent_labels():
    class Record:
        def __init__(self, caption, label):
            self.caption, self.label = caption, label

    stats = RunStats(DiagnosticsConfig(max_disagreement=0.3), B)
    stats.observe_labels([Record("good", 1), Record("bad", 0), Record("odd", 1), Record("pair", None)])
    agreeing = stats.diagnose(lambda captions: np.array([1.0 if c != "bad" else 0.0 for c in captions], np.float32))
    assert agreeing.disagreement == 0.0 and agreeing.warnings == []
    contrary = stats.diagnose(lambda captions: np.array([0.0 if c != "bad" else 1.0 for c in captions], np.float32))
    assert contrary.disagreement == 1.0
    assert any("contradicts 100%" in w for w in contrary.warnings)


def test_run_statistics_survive_a_checkpoint():
    stats = RunStats(DiagnosticsConfig(), B)
    _episode_rollouts(stats, 3, clean_step)
    state = stats.state_dict()
    assert state["last_reward"].shape == (len(stats),) and set(state["last_reward"].tolist()) <= {0.0, 1.0}
    restored = RunStats(DiagnosticsConfig(), B)
    restored.load_state_dict(state)
    assert restored.captions == stats.captions
    for a, b in zip(restored.arrays(), stats.arrays()):
        np.testing.assert_array_equal(a, b)
    assert list(restored.recent_episodes) == list(stats.recent_episodes)
    _episode_rollouts(restored, 1, clean_step)  # and keeps counting
    assert restored.arrays()[0].sum() > stats.arrays()[0].sum()


def test_diagnostics_thresholds_are_a_config_section():
    config = load_config(None, ["diagnostics.max_top10_share=0.5", "diagnostics.farm_min_count=3"])
    assert config.diagnostics.max_top10_share == 0.5 and config.diagnostics.farm_min_count == 3.0
    assert warning_lines({"diagnostics/top10_share": 0.6}, config.diagnostics) == [
        "the top 10 captions earn 60% of the intrinsic reward (> 50%)"
    ]


def test_training_records_run_statistics_in_the_checkpoint(tmp_path):
    from kudos.eval.scalars import read_scalars
    from kudos.rl.checkpoint import load_checkpoint
    from kudos.rl.runner import TrainingRun

    config = load_config(None, ["reward.type=none", "env.num_envs=4", "cpu.env_workers=2", "appo.rollout=16",
                                "run.steps=128", "env.max_episode_steps=20", f"run.output_dir={tmp_path}"])
    TrainingRun(config).train()
    stats = load_checkpoint(tmp_path)["run_stats"]
    assert stats["captions"] and len(stats["seen"]) == len(stats["captions"])
    seen, episodes = np.asarray(stats["seen"]), np.asarray(stats["episodes"])
    assert 0 < seen.sum() <= 128 and np.all(episodes <= seen)
    assert len(stats["recent_episodes"]) >= 4  # 20-step episodes in 32 steps per env
    assert "diagnostics/farmed_captions" in read_scalars(tmp_path)


def test_episode_fragments_in_any_order_count_as_whole_rollouts():
    """RLlib hands episodes over in fragments, interleaved: the statistics match record()'s."""
    rng = np.random.default_rng(0)
    captions = rng.choice(["a", "b", "", "c"], size=(T, B)).tolist()
    counts = rng.integers(1, 4, size=(T, B))
    ext, r_int = rng.normal(size=(T, B)), rng.normal(size=(T, B))
    dones = np.zeros((T + 1, B), dtype=bool)
    dones[T] = True
    whole, fragments = RunStats(DiagnosticsConfig(), B), RunStats(DiagnosticsConfig(), 0)
    whole.record(captions, counts, dones, ext, r_int)
    cut = T // 2
    for start, stop in ((0, cut), (cut, T)):  # every env's first half, then every second half
        for b in reversed(range(B)):
            fragments.record_fragment(f"episode-{b}", [row[b] for row in captions[start:stop]], counts[start:stop, b],
                                      stop == T, ext[start:stop, b], r_int[start:stop, b])
    order = [whole.index[c] for c in fragments.captions]
    for a, b in zip(whole.arrays(), fragments.arrays()):
        np.testing.assert_allclose(a[order], b)
    np.testing.assert_allclose(sorted(whole.recent_episodes), sorted(fragments.recent_episodes))
