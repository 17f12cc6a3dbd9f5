"""Trainer-agnostic API: the Gymnasium wrapper (kudos NetHack env and a caption_fn env, checked by
gymnasium's env checker) and the batch function."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from kudos.envs import make_env
from kudos.errors import KudosError
from kudos.rewards import (
    CaptionError,
    CaptionLabel,
    IntrinsicRewardWrapper,
    RetrievalReward,
    RewardShaper,
    ShapingConfig,
    shaped_rewards,
)

# check_env warns that it is given a wrapper: testing the wrapped env is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")

SHAPING = ShapingConfig(c_ext=1.0, ext_scale=1.0, ext_clip=100.0, c_int=2.0, beta=3.0)


class WordEnv(gym.Env):
    """A tiny non-NetHack env whose observation is the index of a word; no caption in ``info``."""

    WORDS = ("nothing", "a gem", "nothing", "a gem", "a wall")
    observation_space = gym.spaces.Discrete(len(WORDS))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.t = 0
        return 0, {}

    def step(self, action):
        self.t += 1
        return self.t % len(self.WORDS), 0.5, False, self.t >= 8, {}


def _model() -> RetrievalReward:
    model = RetrievalReward()
    model.fit([CaptionLabel("a gem", 1.0), CaptionLabel("a wall", 0.25)])
    return model


def test_wrapped_nethack_env_passes_the_env_checker():
    env = IntrinsicRewardWrapper(make_env("Score", observation_keys=("glyphs", "blstats", "message")), _model())
    check_env(env, skip_render_check=True)
    env.close()


def test_wrapped_caption_fn_env_passes_the_env_checker_and_shapes_rewards():
    env = IntrinsicRewardWrapper(WordEnv(), _model(), SHAPING, caption_fn=lambda obs, info: WordEnv.WORDS[obs])
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    seen = []
    for _ in range(4):
        _, reward, _, _, info = env.step(0)
        seen.append((reward, info["r_int"], info["caption_count"]))
    # Steps show "a gem" (1st sighting), "nothing" (1st), "a gem" (2nd), "a wall" (1st).
    assert seen[0] == pytest.approx((0.5 + 2.0 * 1.0, 1.0, 1))
    assert seen[1] == pytest.approx((0.5, 0.0, 1))
    assert seen[2] == pytest.approx((0.5 + 2.0 * 1.0 / 2**3, 1.0, 2))
    assert seen[3] == pytest.approx((0.5 + 2.0 * 0.25, 0.25, 1))
    env.reset()
    assert env.step(0)[1] == pytest.approx(2.5)  # counts restart with the episode


def _play(env: gym.Env, actions: list[int]) -> list[tuple[float, dict[str, Any]]]:
    env.reset(seed=1)
    steps = []
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        steps.append((reward, info))
        if terminated or truncated:
            env.reset()
    return steps


@pytest.mark.parametrize("skip_empty_caption", [False, True])
def test_wrapper_pays_the_models_reward_for_nethack_captions(skip_empty_caption: bool):
    """The model knows the captions of a first play; replaying it, the wrapper pays their rewards
    (with NetHack's episode counts), "" included unless skipped (ONI scores it like any caption)."""
    actions = [int(a) for a in np.random.default_rng(0).integers(0, 28, size=30)]
    first = _play(make_env("Score", observation_keys=("blstats", "message")), actions)
    captions = {info["caption"] for _, info in first}
    model = RetrievalReward()
    model.fit([CaptionLabel(c, 0.5 if c == "" else 1.0) for c in captions])
    submitted: list[str] = []
    env = IntrinsicRewardWrapper(
        make_env("Score", observation_keys=("blstats", "message")), model, SHAPING, on_caption=submitted.extend,
        skip_empty_caption=skip_empty_caption,
    )
    replay = _play(env, actions)
    env.close()
    assert [info["caption"] for _, info in replay] == [info["caption"] for _, info in first]
    for reward, info in replay:
        expected = 0.0 if skip_empty_caption and info["caption"] == "" else (0.5 if info["caption"] == "" else 1.0)
        assert info["r_int"] == expected and info["caption_count"] >= 1
        assert reward == pytest.approx(info["r_ext"] + 2.0 * info["r_int"] / info["caption_count"] ** 3)
    assert sum(info["r_int"] > 0 for _, info in replay) > 0
    assert submitted == [info["caption"] for _, info in replay if info["caption"] or not skip_empty_caption]


def test_wrapper_reports_missing_or_malformed_captions():
    env = IntrinsicRewardWrapper(WordEnv(), _model())
    env.reset()
    with pytest.raises(KudosError, match="caption_fn"):
        env.step(0)
    env = IntrinsicRewardWrapper(WordEnv(), _model(), caption_fn=lambda obs, info: None)
    env.reset()
    with pytest.raises(CaptionError, match="None"):
        env.step(0)
    with pytest.raises(KudosError, match="one env"):
        IntrinsicRewardWrapper(WordEnv(), _model(), RewardShaper(num_envs=2))


def test_batch_function_equals_the_wrapper_step_by_step():
    model = _model()
    captions = [["a gem", "a wall"], ["a gem", "nothing"], ["a gem", "a gem"]]
    counts = np.array([[1, 1], [2, 1], [1, 1]])
    dones = np.array([[False, False], [True, False], [False, False]])
    r_env = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    total, r_int = shaped_rewards(model, RewardShaper(SHAPING, num_envs=2), r_env, captions, counts, dones)
    assert total.shape == r_int.shape == (3, 2) and total.dtype == np.float32
    np.testing.assert_allclose(r_int, [[1.0, 0.25], [1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(total, r_env + 2.0 * r_int / counts**3, rtol=1e-6)
    step, _ = shaped_rewards(model, RewardShaper(SHAPING, num_envs=2), r_env[0], captions[0], counts[0], dones[0])
    np.testing.assert_allclose(step, total[0])
    with pytest.raises(KudosError, match="3 lists of 2"):
        shaped_rewards(model, RewardShaper(SHAPING, num_envs=2), r_env, captions[:2], counts, dones)
    with pytest.raises(CaptionError):
        shaped_rewards(model, RewardShaper(SHAPING, num_envs=2), r_env[0], ["a gem", None], counts[0], dones[0])
