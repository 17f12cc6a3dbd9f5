"""Shaping math: count exponent, running normalisation, thresholds, clip, episode cap, state."""

from __future__ import annotations

import numpy as np
import pytest

from kudos.errors import ConfigError
from kudos.rewards.shaping import (
    Normalizer,
    NormalizerConfig,
    RecentWindow,
    RewardShaper,
    RunningMeanStd,
    ShapingConfig,
)


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (1, 7, 100, 33)]
    stats = RunningMeanStd(epsilon=1e-12)
    for batch in batches:
        stats.update(batch)
    everything = np.concatenate(batches)
    assert stats.mean == pytest.approx(everything.mean(), rel=1e-9)
    assert stats.var == pytest.approx(everything.var(), rel=1e-9)
    stats.update(np.zeros(0))
    assert stats.count == pytest.approx(everything.size)


def test_zscore_normalisation_and_threshold():
    normalizer = Normalizer(NormalizerConfig(normalize=True, threshold="zscore", threshold_value=0.5))
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    out = normalizer(x)
    mean, std = normalizer.stats.mean, normalizer.stats.std
    assert mean == pytest.approx(2.0, rel=1e-4) and std == pytest.approx(np.sqrt(2.0), rel=1e-4)
    z = (x - mean) / std
    np.testing.assert_allclose(out, np.where(z >= 0.5, z, 0.0), rtol=1e-6)
    assert np.count_nonzero(out) == 2  # z = 0.71, 1.41
    # Threshold without normalisation keeps the raw values above it.
    raw = Normalizer(NormalizerConfig(normalize=False, threshold="zscore", threshold_value=0.5))(x)
    np.testing.assert_array_equal(raw, [0.0, 0.0, 0.0, 3.0, 4.0])


def test_quantile_threshold_uses_the_recent_window_only():
    normalizer = Normalizer(NormalizerConfig(threshold="quantile", threshold_value=0.5, window=4))
    normalizer(np.array([100.0, 100.0, 100.0, 100.0], dtype=np.float32))
    out = normalizer(np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32))  # the 100s left the window
    np.testing.assert_array_equal(out, [0.0, 0.0, 3.0, 4.0])  # median of [1, 2, 3, 4] is 2.5


def test_thresholds_are_strict_unless_keep_equal():
    # ONI and Motif keep r̂ > threshold; keep_equal (kudos's earlier ">=") also keeps r̂ == threshold.
    # Raw values (normalize=False), so a value kept at the threshold shows; z = -1, 0, 1.
    x = np.array([2.0, 3.0, 4.0], dtype=np.float32)
    for keep_equal, expected in ((False, [0.0, 0.0, 4.0]), (True, [0.0, 3.0, 4.0])):
        normalizer = Normalizer(NormalizerConfig(threshold="zscore", keep_equal=keep_equal))
        normalizer.stats.mean, normalizer.stats.var, normalizer.updating = 3.0, 1.0, False
        np.testing.assert_array_equal(normalizer(x), expected)
        median = Normalizer(NormalizerConfig(threshold="quantile", threshold_value=0.5, window=3, keep_equal=keep_equal))
        np.testing.assert_array_equal(median(x), expected)  # the median is 3


def test_recent_window_wraps_around():
    window = RecentWindow(5)
    window.update(np.arange(3, dtype=np.float32))
    window.update(np.arange(3, 7, dtype=np.float32))
    assert sorted(window.values.tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0] and window.filled == 5
    window.update(np.arange(100, 112, dtype=np.float32))  # more than the window: keep the last 5
    assert sorted(window.values.tolist()) == [107.0, 108.0, 109.0, 110.0, 111.0]
    assert RecentWindow(3).quantile(0.5) == float("-inf")


def test_count_exponent_divides_the_intrinsic_reward():
    shaper = RewardShaper(ShapingConfig(c_ext=0.0, c_int=0.5, beta=3.0), num_envs=4)
    r_int = np.array([1.0, 1.0, 1.0, -2.0], dtype=np.float32)
    counts = np.array([1, 2, 3, 2])
    out = shaper(np.zeros(4), r_int, counts, np.zeros(4, dtype=bool))
    np.testing.assert_allclose(out, 0.5 * r_int / counts.astype(np.float64) ** 3, rtol=1e-6)
    flat = RewardShaper(ShapingConfig(c_ext=0.0, c_int=1.0, beta=0.0), num_envs=4)
    np.testing.assert_allclose(flat(np.zeros(4), r_int, counts, np.zeros(4, dtype=bool)), r_int)


def test_extrinsic_reward_is_scaled_then_clipped():
    shaper = RewardShaper(ShapingConfig(c_ext=2.0, ext_scale=0.1, ext_clip=1.0, c_int=0.0), num_envs=3)
    out = shaper(np.array([5.0, 50.0, -50.0]), np.zeros(3), np.ones(3, dtype=int), np.zeros(3, dtype=bool))
    np.testing.assert_allclose(out, [1.0, 2.0, -2.0])


def test_library_wrapper_and_train_shaping_defaults_are_onis():
    """ONI (scripts/main.py, README runs): reward_scale 1, reward_clip 10, c_llm 0.4, beta 3. The
    library, the Gymnasium wrapper and `kudos train` must agree, so a +50 goal counts 10 before
    c_ext in all three."""
    from kudos.envs import get_task
    from kudos.rewards.intrinsic import RewardConfig
    from kudos.rewards.wrapper import IntrinsicRewardWrapper

    import gymnasium as gym

    from kudos.rewards import RetrievalReward

    library = ShapingConfig()
    wrapper = IntrinsicRewardWrapper(gym.make("CartPole-v1"), RetrievalReward(), caption_fn=lambda o, i: "").shaper.config
    train = RewardConfig().shaping_for(get_task("StaircaseLvl3").extrinsic_coef)
    for config in (library, wrapper, train):
        assert (config.ext_scale, config.ext_clip, config.c_int, config.beta) == (1.0, 10.0, 0.4, 3.0)
    assert train.c_ext == 10.0
    goal = RewardShaper(train, num_envs=1)(np.array([50.0]), np.zeros(1), np.ones(1, dtype=int), np.zeros(1, dtype=bool))
    np.testing.assert_allclose(goal, [100.0])  # clip(50, 10) * 10, as in ONI (kudos once paid 500)


def test_episode_cap_limits_intrinsic_return_and_resets_at_episode_end():
    shaper = RewardShaper(ShapingConfig(c_ext=0.0, c_int=1.0, beta=0.0, episode_cap=2.5), num_envs=2)
    ones = np.ones((6, 2), dtype=np.float32)
    dones = np.zeros((6, 2), dtype=bool)
    dones[3, 1] = True  # env 1's episode ends after step 3
    out = shaper(np.zeros((6, 2)), ones, np.ones((6, 2), dtype=int), dones)
    np.testing.assert_allclose(out[:, 0], [1.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(out[:, 1], [1.0, 1.0, 0.5, 0.0, 1.0, 1.0])
    # Penalties are never capped.
    penalty = shaper(np.zeros(2), -np.ones(2, dtype=np.float32), np.ones(2, dtype=int), np.zeros(2, dtype=bool))
    np.testing.assert_allclose(penalty, [-1.0, -1.0])


def test_rollout_call_equals_step_by_step_calls():
    rng = np.random.default_rng(1)
    # Normalisation off: per-step calls normalise with the statistics of the steps so far, a
    # rollout call with all of them.
    config = ShapingConfig(c_int=0.3, episode_cap=1.0)
    r_env, r_int = rng.normal(size=(8, 3)), rng.random((8, 3)).astype(np.float32)
    counts, dones = rng.integers(1, 4, size=(8, 3)), rng.random((8, 3)) < 0.2
    whole = RewardShaper(config, num_envs=3)(r_env, r_int, counts, dones)
    stepper = RewardShaper(config, num_envs=3)
    stepped = np.stack([stepper(r_env[t], r_int[t], counts[t], dones[t]) for t in range(8)])
    np.testing.assert_allclose(whole, stepped, rtol=1e-6)


def test_shaper_state_round_trip_is_exact():
    intrinsic = NormalizerConfig(normalize=True, threshold="quantile", threshold_value=0.5, window=16)
    config = ShapingConfig(episode_cap=3.0, intrinsic=intrinsic)
    rng = np.random.default_rng(2)

    def args() -> tuple[np.ndarray, ...]:
        return rng.normal(size=2), rng.random(2).astype(np.float32), rng.integers(1, 3, size=2), rng.random(2) < 0.3

    shaper = RewardShaper(config, num_envs=2)
    for _ in range(10):
        shaper(*args())
    copy = RewardShaper(config, num_envs=2)
    copy.load_state_dict(shaper.state_dict())
    for _ in range(5):
        step = args()
        np.testing.assert_array_equal(shaper(*step), copy(*step))
    with pytest.raises(ConfigError):
        RewardShaper(config, num_envs=3).load_state_dict(shaper.state_dict())


def test_bad_shaping_inputs_raise():
    shaper = RewardShaper(num_envs=2)
    with pytest.raises(ValueError, match="start at 1"):
        shaper(np.zeros(2), np.zeros(2), np.array([0, 1]), np.zeros(2, dtype=bool))
    with pytest.raises(ValueError, match="B=2"):
        shaper(np.zeros(3), np.zeros(3), np.ones(3), np.zeros(3, dtype=bool))
    with pytest.raises(ConfigError):
        NormalizerConfig(threshold="median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        NormalizerConfig(threshold="quantile", threshold_value=1.5)
    with pytest.raises(ConfigError):
        ShapingConfig(episode_cap=-1.0)
