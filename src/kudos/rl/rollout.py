"""Rollout collection: the acting copy of the policy steps the env vector for T steps at a time.

A :class:`RolloutCollector` runs in its own thread during training. It acts with a copy of the
policy whose weights the learner publishes after each update, so the envs keep stepping while
the learner trains (the lag is corrected by V-trace). Each rollout keeps the captions and their
per-episode counts: intrinsic rewards are computed later, in the learner, with the latest reward
model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from kudos.envs.vector import EpisodeSummary, VectorNetHack
from kudos.rl.policy import POLICY_OBSERVATION_KEYS, NetHackPolicy, obs_to_tensors


@dataclass
class Rollout:
    """T steps of B envs, as collected.

    ``obs``: dict of ``(T+1, B, ...)`` arrays, the last row being the observation after step T-1
    (the bootstrap observation). ``dones``: bool ``(T+1, B)``, True where ``obs[t]`` starts a new
    episode. ``actions`` int64 ``(T, B)``; ``log_probs`` float32 ``(T, B)`` under the acting
    policy; ``env_rewards`` float32 ``(T, B)``; ``captions``: T lists of B strings (the caption of
    step t); ``caption_counts`` int32 ``(T, B)``; ``initial_core_state`` ``(B, H)``;
    ``policy_version``: the learner update whose weights acted. ``values`` float32 ``(T, B)``:
    the acting policy's state values.
    """

    obs: dict[str, np.ndarray]
    dones: np.ndarray
    actions: np.ndarray
    log_probs: np.ndarray
    values: np.ndarray
    env_rewards: np.ndarray
    captions: list[list[str]]
    caption_counts: np.ndarray
    initial_core_state: torch.Tensor
    policy_version: int
    episodes: list[EpisodeSummary] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        """Env steps in this rollout: T * B."""
        return int(self.actions.size)


class RolloutCollector:
    """Collects :class:`Rollout`s of ``steps`` steps from ``vec`` with an acting policy copy.

    The acting policy is updated with :meth:`publish` (thread-safe); :meth:`collect` picks up the
    newest weights at the start of each rollout.
    """

    def __init__(self, vec: VectorNetHack, policy: NetHackPolicy, steps: int, policy_version: int = 0) -> None:
        self.vec = vec
        self.steps = steps
        self.policy = policy
        self.policy.eval()
        self._lock = threading.Lock()
        self._pending: tuple[dict[str, torch.Tensor], int] | None = None
        self.policy_version = policy_version  # the learner update ``policy``'s weights come from
        self._obs = vec.reset()
        self._done = np.ones(vec.num_envs, dtype=np.bool_)  # every env starts an episode
        self._core_state = policy.initial_state(vec.num_envs)

    def publish(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Hand new weights to the acting policy (copied now; loaded at the next rollout)."""
        copied = {k: v.detach().clone() for k, v in state_dict.items()}
        with self._lock:
            self._pending = (copied, version)

    def _load_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self.policy.load_state_dict(pending[0])
            self.policy_version = pending[1]

    def collect(self) -> Rollout:
        """Step every env ``steps`` times and return what happened."""
        self._load_pending()
        T, B = self.steps, self.vec.num_envs
        obs_rows = [self._obs]
        dones = np.zeros((T + 1, B), dtype=np.bool_)
        dones[0] = self._done
        actions = np.zeros((T, B), dtype=np.int64)
        log_probs = np.zeros((T, B), dtype=np.float32)
        values = np.zeros((T, B), dtype=np.float32)
        env_rewards = np.zeros((T, B), dtype=np.float32)
        counts = np.zeros((T, B), dtype=np.int32)
        captions: list[list[str]] = []
        episodes: list[EpisodeSummary] = []
        initial_core_state = self._core_state
        state = self._core_state
        for t in range(T):
            obs_t = obs_to_tensors(obs_rows[-1])
            out = self.policy.act(obs_t, state, torch.from_numpy(dones[t]))
            state = out.core_state
            actions[t] = out.actions.numpy()
            log_probs[t] = out.log_probs.numpy()
            values[t] = out.values.numpy()
            step = self.vec.step(actions[t])
            env_rewards[t] = step.reward
            counts[t] = step.caption_counts
            captions.append(step.captions)
            episodes.extend(step.episodes)
            dones[t + 1] = step.terminated | step.truncated
            obs_rows.append(step.obs)
        self._obs, self._done, self._core_state = obs_rows[-1], dones[-1], state
        stacked = {k: np.stack([row[k] for row in obs_rows]) for k in POLICY_OBSERVATION_KEYS}
        return Rollout(
            stacked, dones, actions, log_probs, values, env_rewards, captions, counts,
            initial_core_state, self.policy_version, episodes,
        )
