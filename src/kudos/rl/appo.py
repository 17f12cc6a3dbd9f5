"""The APPO objective (sample-factory's asynchronous PPO): PPO's clipped surrogate on V-trace
advantages, a (clipped) value loss on V-trace targets, and an entropy bonus.

    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kudos.errors import ConfigError
from kudos.rl.vtrace import vtrace

# Bound on |log(pi/mu)|: a very stale behaviour log-prob must not turn the ratio into inf.
_MAX_LOG_RATIO = math.log(20.0)


@dataclass
class APPOConfig:
    """Hyperparameters of the APPO learner. Every default is ONI's (sample-factory v1 as ONI's
    ``scripts/main.py`` runs it: gamma 0.99, lr 1e-4, Adam epsilon 1e-6, clip 0.1, value clip 1.0,
    value coefficient 0.5 on an un-halved squared error, entropy coefficient 0.003, grad norm 4,
    rollout = recurrence = 32); docs/fidelity.md lists them beside ONI's."""

    gamma: float = 0.99  # discount per agent step
    rollout: int = 32  # T: steps per env in one training batch
    recurrence: int = 32  # backpropagate through at most this many steps of the GRU core
    learning_rate: float = 1e-4
    adam_eps: float = 1e-6
    clip_ratio: float = 0.1  # PPO clip: ratio kept in [1 / (1 + clip_ratio), 1 + clip_ratio]
    value_clip: float | None = 1.0  # max change of V from the behaviour value; None: no clipping
    value_coef: float = 0.5
    entropy_coef: float = 0.003
    max_grad_norm: float = 4.0  # global L2 norm the gradient is clipped to; 0: no clipping
    normalize_advantages: bool = True  # zero mean, unit std over the minibatch
    vtrace_clip_rho: float = 1.0  # rho-bar, also used for the policy-gradient advantages
    vtrace_clip_c: float = 1.0  # c-bar
    epochs: int = 1  # passes over each batch (APPO: 1, to keep the policy lag low)
    num_minibatches: int = 1  # splits of each batch along the env axis B

    def __post_init__(self) -> None:
        checks = {
            "gamma must be in [0, 1]": 0.0 <= self.gamma <= 1.0,
            "rollout must be >= 1": self.rollout >= 1,
            "recurrence must be >= 1": self.recurrence >= 1,
            "learning_rate must be > 0": self.learning_rate > 0,
            "clip_ratio must be > 0": self.clip_ratio > 0,
            "value_clip must be > 0 or None": self.value_clip is None or self.value_clip > 0,
            "max_grad_norm must be >= 0": self.max_grad_norm >= 0,
            "epochs must be >= 1": self.epochs >= 1,
            "num_minibatches must be >= 1": self.num_minibatches >= 1,
        }
        for message, ok in checks.items():
            if not ok:
                raise ConfigError(f"appo: {message}")


def clipped_surrogate(
    log_probs: Tensor, behaviour_log_probs: Tensor, advantages: Tensor, clip_ratio: float
) -> tuple[Tensor, Tensor]:
    """PPO's clipped policy loss, ``-mean(min(ratio * A, clip(ratio) * A))``.

    The ratio pi/mu is clipped to ``[1 / (1 + clip_ratio), 1 + clip_ratio]`` (symmetric in log
    space, as sample-factory does), so the gradient vanishes once the policy has moved past the
    bound in the direction the advantage favours, and not in the other.

    Args:
        log_probs: ``(N...)`` log pi(a|x) of the taken actions, with gradient.
        behaviour_log_probs: same shape, log mu(a|x) recorded when acting.
        advantages: same shape, no gradient.
        clip_ratio: epsilon.

    Returns:
        ``(loss, ratio)``: scalar loss and the (detached) ratios, same shape as the inputs.
    """
    log_ratio = (log_probs - behaviour_log_probs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 / (1.0 + clip_ratio), 1.0 + clip_ratio)
    loss = -torch.min(ratio * advantages, clipped * advantages).mean()
    return loss, ratio.detach()


def value_loss(values: Tensor, behaviour_values: Tensor, targets: Tensor, clip: float | None) -> Tensor:
    """Mean squared error of ``values`` against ``targets`` (no 1/2, as in sample-factory, so
    ``value_coef`` weighs the plain squared error); with ``clip``, the pessimistic (larger) of the
    errors of V and of V kept within ``clip`` of ``behaviour_values``, as in PPO.

    All arguments ``(N...)``; ``targets`` and ``behaviour_values`` carry no gradient.
    """
    error = (values - targets) ** 2
    if clip is not None:
        clipped_values = behaviour_values + (values - behaviour_values).clamp(-clip, clip)
        error = torch.max(error, (clipped_values - targets) ** 2)
    return error.mean()


def appo_loss(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    behaviour_log_probs: Tensor,
    behaviour_values: Tensor,
    rewards: Tensor,
    dones: Tensor,
    config: APPOConfig,
) -> tuple[Tensor, dict[str, float]]:
    """The APPO loss of one (T, B) rollout under the current network.

    Args:
        logits: ``(T, B, A)`` current policy logits at the T acting steps.
        values: ``(T+1, B)`` current values, the last row at the bootstrap observation.
        actions: ``(T, B)`` int64 actions taken.
        behaviour_log_probs: ``(T, B)`` their log-probabilities under the acting policy.
        behaviour_values: ``(T, B)`` values the acting policy estimated (for value clipping).
        rewards: ``(T, B)`` float rewards, already shaped.
        dones: ``(T+1, B)`` bool; ``dones[t]`` means observation t starts a new episode, so step
            t-1 ended one and its target is not bootstrapped across the boundary.
        config: coefficients and clips.

    Returns:
        ``(loss, stats)``: the scalar loss and floats ``loss``, ``policy_loss``, ``value_loss``,
        ``entropy``, ``approx_kl`` (KL(mu || pi) estimate), ``clip_fraction``, ``ratio_mean``,
        ``advantage_mean``, ``advantage_std`` (before normalisation), ``value_mean``,
        ``target_mean``.
    """
    dist = torch.distributions.Categorical(logits=logits, validate_args=False)
    log_probs = dist.log_prob(actions)
    discounts = config.gamma * (~dones[1:].bool()).to(rewards.dtype)
    targets = vtrace(
        behaviour_log_probs,
        log_probs.detach(),
        rewards,
        values[:-1].detach(),
        values[-1].detach(),
        discounts,
        clip_rho=config.vtrace_clip_rho,
        clip_pg_rho=config.vtrace_clip_rho,
        clip_c=config.vtrace_clip_c,
    )
    advantages = targets.pg_advantages
    advantage_mean, advantage_std = advantages.mean(), advantages.std(unbiased=False)
    if config.normalize_advantages:
        # The floor keeps near-constant advantages (e.g. an all-zero reward batch) from being
        # blown up into noise.
        advantages = (advantages - advantage_mean) / advantage_std.clamp(min=1e-3)

    policy_loss, ratio = clipped_surrogate(log_probs, behaviour_log_probs, advantages, config.clip_ratio)
    critic_loss = value_loss(values[:-1], behaviour_values, targets.vs, config.value_clip)
    entropy = dist.entropy().mean()
    loss = policy_loss + config.value_coef * critic_loss - config.entropy_coef * entropy

    with torch.no_grad():
        log_ratio = ratio.log()
        clipped = (ratio < 1.0 / (1.0 + config.clip_ratio)) | (ratio > 1.0 + config.clip_ratio)
        stats = {
            "loss": loss.item(),
            "policy_loss": policy_loss.item(),
            "value_loss": critic_loss.item(),
            "entropy": entropy.item(),
            # k3 estimator of KL(mu || pi): unbiased and never negative.
            "approx_kl": ((ratio - 1.0) - log_ratio).mean().item(),
            "clip_fraction": clipped.float().mean().item(),
            "ratio_mean": ratio.mean().item(),
            "advantage_mean": advantage_mean.item(),
            "advantage_std": advantage_std.item(),
            "value_mean": values[:-1].mean().item(),
            "target_mean": targets.vs.mean().item(),
        }
    return loss, stats
