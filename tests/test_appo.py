"""The APPO loss: PPO clipping, the value loss, the entropy bonus, a whole hand-computed case."""

import math

import pytest
import torch

from kudos.errors import ConfigError
from kudos.rl.appo import APPOConfig, appo_loss, clipped_surrogate, value_loss


def _surrogate_grad(ratio: float, advantage: float, clip: float = 0.1) -> float:
    """d loss / d log pi for one sample with the given ratio pi/mu and advantage."""
    log_prob = torch.tensor([math.log(ratio)], requires_grad=True)
    loss, _ = clipped_surrogate(log_prob, torch.zeros(1), torch.tensor([advantage]), clip)
    loss.backward()
    return log_prob.grad.item()


@pytest.mark.parametrize(
    ("ratio", "advantage", "expected_grad"),
    [
        (1.0, 2.0, -2.0),  # inside the clip region: plain policy gradient -A * ratio
        (1.5, 2.0, 0.0),  # already more likely than 1 + eps and A > 0: no further push
        (0.5, 2.0, -1.0),  # less likely than 1 / (1 + eps) with A > 0: still pushed up
        (0.5, -2.0, 0.0),  # already less likely and A < 0: no further push down
        (1.5, -2.0, 3.0),  # more likely with A < 0: still pushed down (-A * ratio = 3)
    ],
)
def test_clip_zeroes_the_gradient_only_past_the_bound_in_the_favoured_direction(ratio, advantage, expected_grad):
    assert _surrogate_grad(ratio, advantage) == pytest.approx(expected_grad)


def test_clip_bounds_are_symmetric_in_log_space():
    # 1 / 1.1 = 0.909...: a ratio of 0.92 is inside, 0.9 outside.
    assert _surrogate_grad(0.92, -1.0) != 0.0
    assert _surrogate_grad(0.90, -1.0) == 0.0


def test_value_loss_hand_case():
    values = torch.tensor([1.0, 2.0], requires_grad=True)
    behaviour_values = torch.tensor([0.0, 2.0])
    targets = torch.tensor([3.0, 1.0])
    # Unclipped: mean((1 - 3)^2, (2 - 1)^2) = (4 + 1) / 2, with no 1/2 in front (sample-factory).
    assert value_loss(values, behaviour_values, targets, None).item() == pytest.approx(2.5)
    # Clip 0.5: V0 is kept at 0 + 0.5; its error (0.5 - 3)^2 = 6.25 exceeds 4, so it counts.
    loss = value_loss(values, behaviour_values, targets, 0.5)
    assert loss.item() == pytest.approx((6.25 + 1.0) / 2)
    loss.backward()
    # V0 lies past the clip, so the pessimistic branch is constant in it; V1 moves freely.
    torch.testing.assert_close(values.grad, torch.tensor([0.0, 1.0]))


def _one_step_inputs(num_actions: int = 4) -> dict[str, torch.Tensor]:
    """T=1, B=1: reward 1, the episode ends after the step, V(x0) = 0.5, on-policy."""
    logits = torch.zeros(1, 1, num_actions, requires_grad=True)
    return {
        "logits": logits,
        "values": torch.tensor([[0.5], [7.0]], requires_grad=True),
        "actions": torch.tensor([[2]]),
        "behaviour_log_probs": torch.full((1, 1), -math.log(num_actions)),
        "behaviour_values": torch.tensor([[0.5]]),
        "rewards": torch.tensor([[1.0]]),
        "dones": torch.tensor([[False], [True]]),
    }


def test_appo_loss_hand_case():
    config = APPOConfig(gamma=0.9, normalize_advantages=False, value_coef=0.5, entropy_coef=0.01)
    loss, stats = appo_loss(**_one_step_inputs(), config=config)
    # The episode ends, so the bootstrap value 7 is ignored: v = r = 1, A = 1 - 0.5 = 0.5.
    # policy loss = -1 * 0.5; value loss = (0.5 - 1)^2 = 0.25; entropy = log 4.
    assert stats["policy_loss"] == pytest.approx(-0.5)
    assert stats["value_loss"] == pytest.approx(0.25)
    assert stats["entropy"] == pytest.approx(math.log(4))
    assert loss.item() == pytest.approx(-0.5 + 0.5 * 0.25 - 0.01 * math.log(4))
    assert stats["target_mean"] == pytest.approx(1.0)
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert stats["clip_fraction"] == 0.0


def test_appo_loss_bootstraps_when_the_episode_goes_on():
    inputs = _one_step_inputs()
    inputs["dones"] = torch.tensor([[False], [False]])
    _, stats = appo_loss(**inputs, config=APPOConfig(gamma=0.9, normalize_advantages=False))
    assert stats["target_mean"] == pytest.approx(1.0 + 0.9 * 7.0)


def test_entropy_bonus_pushes_towards_uniform():
    # Zero rewards and values: no advantage and no value error, so only the entropy term acts.
    logits = torch.tensor([[[3.0, 0.0, -1.0, 0.5]]], requires_grad=True)
    inputs = dict(_one_step_inputs(), logits=logits)
    inputs["rewards"] = torch.zeros(1, 1)
    inputs["values"] = torch.zeros(2, 1, requires_grad=True)
    inputs["behaviour_values"] = torch.zeros(1, 1)
    inputs["behaviour_log_probs"] = torch.log_softmax(logits.detach(), -1)[..., 2]
    loss, stats = appo_loss(**inputs, config=APPOConfig(entropy_coef=0.1))
    assert loss.item() == pytest.approx(-0.1 * stats["entropy"])
    loss.backward()
    stepped = torch.distributions.Categorical(logits=logits.detach() - 1.0 * logits.grad)
    assert stepped.entropy().item() > stats["entropy"]


def test_stats_report_off_policy_ratios():
    inputs = _one_step_inputs()
    inputs["behaviour_log_probs"] = torch.full((1, 1), math.log(0.5))  # pi = 0.25: ratio 0.5
    _, stats = appo_loss(**inputs, config=APPOConfig())
    assert stats["ratio_mean"] == pytest.approx(0.5)
    assert stats["clip_fraction"] == 1.0
    assert stats["approx_kl"] == pytest.approx(0.5 - 1 - math.log(0.5))


@pytest.mark.parametrize(
    "bad",
    [{"gamma": 1.5}, {"clip_ratio": 0.0}, {"value_clip": -1.0}, {"epochs": 0}, {"rollout": 0}, {"max_grad_norm": -1.0}],
)
def test_bad_options_raise_one_line_config_errors(bad):
    with pytest.raises(ConfigError, match="appo: "):
        APPOConfig(**bad)


def test_defaults_are_onis():
    """ONI's scripts/main.py over sample-factory v1: gamma 0.99, entropy 0.003, value weight 0.5
    on the plain squared error, lr 1e-4, Adam eps 1e-6, clip 0.1, value clip 1, grad norm 4."""
    config = APPOConfig()
    assert (config.gamma, config.entropy_coef, config.value_coef) == (0.99, 0.003, 0.5)
    assert (config.learning_rate, config.adam_eps, config.clip_ratio, config.value_clip) == (1e-4, 1e-6, 0.1, 1.0)
    assert (config.max_grad_norm, config.rollout, config.recurrence) == (4.0, 32, 32)
