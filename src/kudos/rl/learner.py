"""The APPO learner: recurrent training of :class:`~kudos.rl.policy.NetHackPolicy` on (T, B)
rollouts with V-trace, PPO clipping, gradient clipping and Adam.

Each :meth:`Learner.update` replays the rollout through the network from the core state the
actors had when it began, so the GRU sees the same history it acted on, and bootstraps from the
(T+1)-th observation in the same forward pass.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kudos.errors import ConfigError
from kudos.rl.appo import APPOConfig, appo_loss
from kudos.rl.policy import NetHackPolicy

@dataclass
class RolloutBatch:
    """T steps of B envs, as the actors recorded them.

    Attributes:
        obs: policy observations with leading ``(T+1, B)``; the last row is the observation
            after the last step, used to bootstrap.
        actions: ``(T, B)`` int64.
        behaviour_log_probs: ``(T, B)`` float32, log mu(a_t|x_t) of the acting policy.
        behaviour_values: ``(T, B)`` float32, V(x_t) of the acting policy (for value clipping).
        rewards: ``(T, B)`` float32, already shaped (extrinsic and intrinsic, scaled).
        dones: ``(T+1, B)`` bool; ``dones[t]`` means ``obs[t]`` starts a new episode.
        initial_core_state: ``(B, H)`` the core state before ``obs[0]`` was read.
    """

    obs: dict[str, Tensor]
    actions: Tensor
    behaviour_log_probs: Tensor
    behaviour_values: Tensor
    rewards: Tensor
    dones: Tensor
    initial_core_state: Tensor

    @property
    def num_steps(self) -> int:
        """T."""
        return self.actions.shape[0]

    @property
    def num_envs(self) -> int:
        """B."""
        return self.actions.shape[1]

    def select_envs(self, envs: Tensor) -> RolloutBatch:
        """The sub-batch of the envs at indices ``envs`` (int64 ``(B',)``)."""
        return RolloutBatch(
            obs={k: v[:, envs] for k, v in self.obs.items()},
            actions=self.actions[:, envs],
            behaviour_log_probs=self.behaviour_log_probs[:, envs],
            behaviour_values=self.behaviour_values[:, envs],
            rewards=self.rewards[:, envs],
            dones=self.dones[:, envs],
            initial_core_state=self.initial_core_state[envs],
        )


class Learner:
    """Trains ``policy`` in place with APPO.

    Args:
        policy: the network; the actors act with it (or a copy of its weights).
        config: loss coefficients, optimiser and batching options.

    Counters (checkpointed): ``updates`` (calls of :meth:`update`: the policy version),
    ``sgd_steps`` (optimiser steps) and ``samples`` (transitions trained on, each counted once).
    """

    def __init__(self, policy: NetHackPolicy, config: APPOConfig) -> None:
        self.policy = policy
        self.config = config
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate, eps=config.adam_eps)
        self.updates = 0
        self.sgd_steps = 0
        self.samples = 0

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Train on one rollout: ``epochs`` passes, each over ``num_minibatches`` random splits
        of the envs. Returns the loss statistics averaged over the optimiser steps, plus
        ``grad_norm`` (before clipping) and ``learning_rate``."""
        config = self.config
        if config.num_minibatches > batch.num_envs:
            raise ConfigError(f"appo: num_minibatches ({config.num_minibatches}) exceeds the batch's {batch.num_envs} envs")
        self.policy.train()
        totals: dict[str, float] = defaultdict(float)
        steps = 0
        for _ in range(config.epochs):
            for envs in torch.randperm(batch.num_envs).chunk(config.num_minibatches):
                stats = self._sgd_step(batch.select_envs(envs))
                for key, value in stats.items():
                    totals[key] += value
                steps += 1
        self.updates += 1
        self.samples += batch.num_steps * batch.num_envs
        result = {key: value / steps for key, value in totals.items()}
        result["learning_rate"] = self.optimizer.param_groups[0]["lr"]
        return result

    def _sgd_step(self, batch: RolloutBatch) -> dict[str, float]:
        out = self.policy(batch.obs, batch.initial_core_state, batch.dones, bptt_horizon=self.config.recurrence)
        loss, stats = appo_loss(
            out.logits[:-1],
            out.values,
            batch.actions,
            batch.behaviour_log_probs,
            batch.behaviour_values,
            batch.rewards,
            batch.dones,
            self.config,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)
        self.optimizer.step()
        self.sgd_steps += 1
        stats["grad_norm"] = grad_norm.item()
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Policy weights, optimiser state and counters."""
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            "sgd_steps": self.sgd_steps,
            "samples": self.samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        self.sgd_steps = int(state["sgd_steps"])
        self.samples = int(state["samples"])
