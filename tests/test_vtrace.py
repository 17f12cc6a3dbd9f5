"""V-trace against hand-computed cases and the on-policy n-step return."""

import pytest
import torch

from kudos.rl.vtrace import vtrace

# A T=3, B=1 rollout with importance ratios rho = pi/mu = (2, 0.5, 1), so with clip 1 the
# clipped rhos and the traces c are (1, 0.5, 1).
BEHAVIOUR = torch.log(torch.tensor([[0.25], [0.5], [0.4]]))
TARGET = torch.log(torch.tensor([[0.5], [0.25], [0.4]]))
REWARDS = torch.tensor([[1.0], [0.0], [2.0]])
VALUES = torch.tensor([[0.5], [1.0], [1.5]])
BOOTSTRAP = torch.tensor([2.0])


def _column(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).unsqueeze(1)


def test_hand_computed_case():
    # deltas = rho_clip * (r + 0.9 V' - V) = (1.4, 0.5 * 0.35, 2.3) = (1.4, 0.175, 2.3)
    # v2 - V2 = 2.3; v1 - V1 = 0.175 + 0.9 * 0.5 * 2.3 = 1.21; v0 - V0 = 1.4 + 0.9 * 1.21 = 2.489
    # A_t = rho_clip * (r + 0.9 v_{t+1} - V): (1 + 1.989 - 0.5, 0.5 * (3.42 - 1), 2 + 1.8 - 1.5)
    out = vtrace(BEHAVIOUR, TARGET, REWARDS, VALUES, BOOTSTRAP, torch.full((3, 1), 0.9))
    torch.testing.assert_close(out.vs, _column([2.989, 2.21, 3.8]))
    torch.testing.assert_close(out.pg_advantages, _column([2.489, 1.21, 2.3]))


def test_hand_computed_case_with_lambda():
    # c = 0.5 * (1, 0.5, 1) = (0.5, 0.25, 0.5); deltas as above.
    # v2 - V2 = 2.3; v1 - V1 = 0.175 + 0.9 * 0.25 * 2.3 = 0.6925;
    # v0 - V0 = 1.4 + 0.9 * 0.5 * 0.6925 = 1.711625
    # A_0 = 1 + 0.9 * 1.6925 - 0.5 = 2.02325; A_1 = 0.5 * (0.9 * 3.8 - 1) = 1.21; A_2 = 2.3
    out = vtrace(BEHAVIOUR, TARGET, REWARDS, VALUES, BOOTSTRAP, torch.full((3, 1), 0.9), lam=0.5)
    torch.testing.assert_close(out.vs, _column([2.211625, 1.6925, 3.8]))
    torch.testing.assert_close(out.pg_advantages, _column([2.02325, 1.21, 2.3]))


def test_hand_computed_case_with_episode_end():
    # Step 1 ends an episode (discount 0): nothing flows from step 2 back to steps 0-1.
    # deltas = (1.4, 0.5 * (0 - 1.0), 2.3) = (1.4, -0.5, 2.3)
    # v2 - V2 = 2.3; v1 - V1 = -0.5; v0 - V0 = 1.4 + 0.9 * (-0.5) = 0.95
    # A_0 = 1 + 0.9 * 0.5 - 0.5 = 0.95; A_1 = 0.5 * (0 - 1) = -0.5; A_2 = 2.3
    discounts = _column([0.9, 0.0, 0.9])
    out = vtrace(BEHAVIOUR, TARGET, REWARDS, VALUES, BOOTSTRAP, discounts)
    torch.testing.assert_close(out.vs, _column([1.45, 0.5, 3.8]))
    torch.testing.assert_close(out.pg_advantages, _column([0.95, -0.5, 2.3]))


def test_clip_thresholds_are_separate():
    # clip_rho = 2 lets rho_0 = 2 through in the targets; clip_pg_rho = 0.5 caps the advantages.
    out = vtrace(BEHAVIOUR, TARGET, REWARDS, VALUES, BOOTSTRAP, torch.full((3, 1), 0.9), clip_rho=2.0, clip_pg_rho=0.5)
    # deltas = (2 * 1.4, 0.175, 2.3); c = (1, 0.5, 1); v0 - V0 = 2.8 + 0.9 * 1.21 = 3.889
    torch.testing.assert_close(out.vs, _column([4.389, 2.21, 3.8]))
    torch.testing.assert_close(out.pg_advantages, _column([0.5 * 2.489, 1.21, 0.5 * 2.3]))


def test_on_policy_equals_n_step_bootstrapped_return():
    torch.manual_seed(0)
    steps, batch, gamma = 6, 4, 0.95
    log_probs = torch.randn(steps, batch)
    rewards = torch.randn(steps, batch)
    values = torch.randn(steps, batch)
    bootstrap = torch.randn(batch)
    ended = torch.rand(steps, batch) < 0.2
    discounts = gamma * (~ended).float()
    out = vtrace(log_probs, log_probs, rewards, values, bootstrap, discounts)

    for b in range(batch):
        for s in range(steps):
            ret, scale = 0.0, 1.0
            for t in range(s, steps):
                ret += scale * rewards[t, b].item()
                scale *= discounts[t, b].item()
            ret += scale * bootstrap[b].item()
            assert out.vs[s, b].item() == pytest.approx(ret, abs=1e-5)
            next_return = out.vs[s + 1, b].item() if s + 1 < steps else bootstrap[b].item()
            advantage = rewards[s, b].item() + discounts[s, b].item() * next_return - values[s, b].item()
            assert out.pg_advantages[s, b].item() == pytest.approx(advantage, abs=1e-5)


def test_no_gradient_flows_through_targets():
    values = VALUES.clone().requires_grad_()
    target = TARGET.clone().requires_grad_()
    out = vtrace(BEHAVIOUR, target, REWARDS, values, BOOTSTRAP, torch.full((3, 1), 0.9))
    assert not out.vs.requires_grad and not out.pg_advantages.requires_grad
