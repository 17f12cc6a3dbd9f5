"""Trainer-agnostic API: the shaped intrinsic reward for any RL trainer.

- :class:`IntrinsicRewardWrapper` is a Gymnasium wrapper that replaces the env's reward by the
  shaped reward of :mod:`kudos.rewards.shaping`. With kudos's NetHack envs it reads the caption
  and its episode count from ``info``; any other env works with a ``caption_fn`` that returns
  the step's text. Any trainer that takes a Gymnasium env (Stable-Baselines3, CleanRL, RLlib,
  TorchRL) can use it.
- :func:`shaped_rewards` does the same for a whole rollout at once, for learners that compute
  rewards at training time with the latest reward model (as kudos's learner does).

Empty captions (``""``, a step without a message) are scored like any other caption, as in ONI;
``skip_empty_caption=True`` pays them 0 and does not hand them to ``on_caption``
(:func:`intrinsic_rewards` is that one rule, shared with :class:`~kudos.rewards.intrinsic.IntrinsicReward`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from kudos.envs.captions import CaptionCounter
from kudos.errors import KudosError
from kudos.rewards.base import RewardModel, check_captions
from kudos.rewards.shaping import RewardShaper, ShapingConfig

#: ``caption_fn(observation, info) -> caption`` for envs that are not kudos's NetHack envs.
CaptionFn = Callable[[Any, dict[str, Any]], str]


def intrinsic_rewards(
    model: Callable[[Sequence[str]], np.ndarray], captions: Sequence[str], skip_empty_caption: bool = False
) -> np.ndarray:
    """``model(captions)`` as float32 ``(N,)``; with ``skip_empty_caption``, ``""`` earns 0
    whatever the model says of it (ONI scores ``""`` like any other caption)."""
    rewards = np.asarray(model(captions), dtype=np.float32)
    if not skip_empty_caption:
        return rewards
    empty = np.fromiter((c == "" for c in captions), dtype=bool, count=len(captions))
    return np.where(empty, np.float32(0.0), rewards).astype(np.float32, copy=False)


class IntrinsicRewardWrapper(gym.Wrapper):
    """Adds ``c_int * shape(model(caption)) / N_episode(caption) ** beta`` to the env's scaled reward.

    Args:
        env: any Gymnasium env.
        model: the reward model (shared with an online trainer, if any).
        shaping: a :class:`ShapingConfig`, or a :class:`RewardShaper` for one env to share.
        caption_fn: returns the step's caption from ``(observation, info)``; by default
            ``info["caption"]``, as kudos's NetHack envs provide.
        on_caption: called with ``[caption]`` every step, e.g. an annotator's ``submit`` so that
            new captions get labelled (it must not block).
        skip_empty_caption: pay ``""`` nothing and do not pass it to ``on_caption`` (default:
            ONI's rule, ``""`` is a caption like any other).

    ``info`` gains ``r_ext`` (the env's reward), ``r_int`` (the model's reward) and
    ``caption_count``. Episode counts come from ``info["caption_count"]`` when the env gives
    them and no ``caption_fn`` is set; otherwise the wrapper counts.
    """

    def __init__(
        self,
        env: gym.Env,
        model: RewardModel,
        shaping: ShapingConfig | RewardShaper | None = None,
        caption_fn: CaptionFn | None = None,
        on_caption: Callable[[list[str]], None] | None = None,
        skip_empty_caption: bool = False,
    ) -> None:
        super().__init__(env)
        self.skip_empty_caption = skip_empty_caption
        self.model = model
        self.shaper = shaping if isinstance(shaping, RewardShaper) else RewardShaper(shaping, num_envs=1)
        if self.shaper.num_envs != 1:
            raise KudosError(f"a wrapper shapes one env; got a RewardShaper for {self.shaper.num_envs} envs")
        self.caption_fn = caption_fn
        self.on_caption = on_caption
        self.counter = CaptionCounter()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self.counter.reset()
        self.shaper.reset_env(0)
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.caption_fn is not None:
            caption = self.caption_fn(obs, info)
        elif "caption" in info:
            caption = info["caption"]
        else:
            raise KudosError(
                "the env gives no info['caption']; pass caption_fn=lambda obs, info: <the step's text>"
            )
        check_captions([caption])
        if self.caption_fn is None and "caption_count" in info:
            count = int(info["caption_count"])
        else:
            count = self.counter.observe(caption)
        r_int = intrinsic_rewards(self.model, [caption], self.skip_empty_caption)
        shaped = self.shaper(
            np.array([float(reward)]), r_int, np.array([count]), np.array([terminated or truncated])
        )
        if self.on_caption is not None and (caption or not self.skip_empty_caption):
            self.on_caption([caption])
        info = {**info, "r_ext": float(reward), "r_int": float(r_int[0]), "caption_count": count}
        return obs, float(shaped[0]), terminated, truncated, info


def shaped_rewards(
    model: RewardModel,
    shaper: RewardShaper,
    r_env: np.ndarray,
    captions: Sequence[str] | Sequence[Sequence[str]],
    counts: np.ndarray,
    dones: np.ndarray,
    skip_empty_caption: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Shaped rewards of a rollout, scored by ``model`` now.

    ``r_env``, ``counts``, ``dones``: ``(T, B)`` (or ``(B,)``) extrinsic rewards, caption
    counts (>= 1) and episode ends; ``captions``: the matching captions, T lists of B (or B).
    Call it once per rollout, in time order (the shaper's episode cap carries over).
    ``skip_empty_caption``: ``""`` earns 0 (see :func:`intrinsic_rewards`).

    Returns ``(total, r_int)``, both float32 of ``r_env``'s shape: the shaped reward and the
    model's raw reward.
    """
    r_env = np.asarray(r_env)
    if r_env.ndim == 2:
        if len(captions) != r_env.shape[0] or any(len(row) != r_env.shape[1] for row in captions):
            raise KudosError(f"captions must be {r_env.shape[0]} lists of {r_env.shape[1]}, like the rewards")
        flat = [c for row in captions for c in row]
    else:
        flat = list(captions)
        if len(flat) != r_env.size:
            raise KudosError(f"got {len(flat)} captions for {r_env.size} rewards")
    r_int = intrinsic_rewards(model, flat, skip_empty_caption).reshape(r_env.shape)
    return shaper(r_env, r_int, counts, dones), r_int
