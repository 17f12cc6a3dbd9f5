"""V-trace off-policy targets (Espeholt et al. 2018, "IMPALA", section 4.1).

Rollouts come from a behaviour policy mu that lags the learner's target policy pi. V-trace
corrects for the lag with truncated importance ratios rho_t = pi(a_t|x_t) / mu(a_t|x_t):

    delta_t   = min(clip_rho, rho_t) * (r_t + gamma_t * V(x_{t+1}) - V(x_t))
    v_s       = V(x_s) + sum_{t>=s} (prod_{i=s}^{t-1} gamma_i * c_i) * delta_t,
                c_i = lam * min(clip_c, rho_i)
    A_s       = min(clip_pg_rho, rho_s) * (r_s + gamma_s * v_{s+1} - V(x_s))

computed backwards with v_s - V(x_s) = delta_s + gamma_s * c_s * (v_{s+1} - V(x_{s+1})).
On-policy (rho = 1, lam = 1) v_s is the n-step bootstrapped return.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class VTraceReturns(NamedTuple):
    """``vs`` (T, B): value targets; ``pg_advantages`` (T, B): policy-gradient advantages."""

    vs: Tensor
    pg_advantages: Tensor


@torch.no_grad()
def vtrace(
    behaviour_log_probs: Tensor,
    target_log_probs: Tensor,
    rewards: Tensor,
    values: Tensor,
    bootstrap_value: Tensor,
    discounts: Tensor,
    clip_rho: float = 1.0,
    clip_pg_rho: float = 1.0,
    clip_c: float = 1.0,
    lam: float = 1.0,
) -> VTraceReturns:
    """V-trace targets and advantages; no gradient flows through them.

    Args:
        behaviour_log_probs: ``(T, B)`` log mu(a_t|x_t) of the actions taken.
        target_log_probs: ``(T, B)`` log pi(a_t|x_t) under the policy being trained.
        rewards: ``(T, B)`` reward of each step.
        values: ``(T, B)`` V(x_t) under the policy being trained.
        bootstrap_value: ``(B,)`` V(x_T), the value of the observation after the last step.
        discounts: ``(T, B)`` gamma_t: gamma, or 0 where step t ended an episode.
        clip_rho: truncation of rho in the value targets (rho-bar).
        clip_pg_rho: truncation of rho in the policy-gradient advantages.
        clip_c: truncation of the trace coefficients c (c-bar).
        lam: extra trace decay, as lambda in TD(lambda); 1 is plain V-trace.

    Returns:
        :class:`VTraceReturns` of ``(T, B)`` float tensors.
    """
    rhos = torch.exp(target_log_probs - behaviour_log_probs)
    clipped_rhos = rhos.clamp(max=clip_rho)
    cs = lam * rhos.clamp(max=clip_c)

    next_values = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0)
    deltas = clipped_rhos * (rewards + discounts * next_values - values)

    vs_minus_values = torch.zeros_like(values)
    acc = torch.zeros_like(bootstrap_value)
    for t in reversed(range(values.shape[0])):
        acc = deltas[t] + discounts[t] * cs[t] * acc
        vs_minus_values[t] = acc
    vs = vs_minus_values + values

    next_vs = torch.cat([vs[1:], bootstrap_value.unsqueeze(0)], dim=0)
    pg_advantages = rhos.clamp(max=clip_pg_rho) * (rewards + discounts * next_vs - values)
    return VTraceReturns(vs, pg_advantages)
