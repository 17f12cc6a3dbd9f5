"""Evaluation episodes: play a policy on a task and summarise what happened."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Protocol

import gymnasium as gym
import numpy as np

from kudos.envs import EndStatus, make_env


class Policy(Protocol):
    """Maps one observation to an action index in the task's action set."""

    def __call__(self, obs: dict[str, np.ndarray]) -> int: ...


class RandomPolicy:
    """Uniformly random actions, seeded."""

    def __init__(self, action_space: gym.spaces.Discrete, seed: int | None = None) -> None:
        self.n = int(action_space.n)
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: dict[str, np.ndarray]) -> int:
        return int(self.rng.integers(self.n))


@dataclass
class EpisodeReport:
    """One evaluation episode: extrinsic return, length in agent steps, how it ended, captions."""

    ret: float
    length: int
    end_status: EndStatus
    captions: Counter[str] = field(default_factory=Counter)


#: Called after every step with (episode index, step index, caption, caption count, reward).
StepCallback = Callable[[int, int, str, int, float], None]


def run_episodes(
    task: str,
    policy_factory: Callable[[gym.Env], Policy],
    episodes: int = 1,
    *,
    seed: int | None = None,
    max_steps: int | None = None,
    on_step: StepCallback | None = None,
) -> list[EpisodeReport]:
    """Play ``episodes`` episodes of ``task`` with the policy built by ``policy_factory(env)``.

    The first episode is reset with ``seed``; later ones continue the seeded sequence.
    """
    env = make_env(task, max_episode_steps=max_steps)
    policy = policy_factory(env)
    reports = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed if episode == 0 else None)
            report = EpisodeReport(0.0, 0, EndStatus.RUNNING)
            while True:
                obs, reward, terminated, truncated, info = env.step(policy(obs))
                report.ret += reward
                report.length += 1
                report.captions[info["caption"]] += 1
                if on_step is not None:
                    on_step(episode, report.length, info["caption"], info["caption_count"], reward)
                if terminated or truncated:
                    report.end_status = EndStatus(info["end_status"])
                    break
            reports.append(report)
    finally:
        env.close()
    return reports
