"""The NetHack policy network on real observations: shapes, the crop, blstats features, the
episode-boundary reset of the core, acting vs training consistency, truncated BPTT."""

import numpy as np
import pytest
import torch
from nle import nethack

from kudos.envs import NUM_ACTIONS, make_env
from kudos.errors import ConfigError
from kudos.rl.policy import (
    NUM_BLSTATS_FEATURES,
    POLICY_OBSERVATION_KEYS,
    POLICY_PRESETS,
    NetHackPolicy,
    PolicyConfig,
    crop_around,
    get_policy_config,
    normalize_blstats,
    obs_to_tensors,
)


@pytest.fixture(scope="module")
def observations() -> dict[str, np.ndarray]:
    """Six consecutive real observations of one Score game, stacked: ``(6, ...)``."""
    env = make_env("Score")
    obs, _ = env.reset(seed=3)
    frames = [{k: v.copy() for k, v in obs.items()}]  # NLE refills the same arrays every step
    rng = np.random.default_rng(3)
    while len(frames) < 6:
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(NUM_ACTIONS)))
        if terminated or truncated:
            obs, _ = env.reset()
        frames.append({k: v.copy() for k, v in obs.items()})
    env.close()
    return {k: np.stack([f[k] for f in frames]) for k in frames[0]}


@pytest.fixture()
def policy() -> NetHackPolicy:
    torch.manual_seed(0)
    return NetHackPolicy(PolicyConfig(), NUM_ACTIONS)


def _time_batch(observations: dict[str, np.ndarray], steps: int, batch: int) -> dict[str, torch.Tensor]:
    """``(steps, batch, ...)`` tensors: env b sees frames b, b+1, ..., so the envs differ."""
    return {
        k: torch.stack([obs_to_tensors(observations)[k][b : b + steps] for b in range(batch)], dim=1)
        for k in POLICY_OBSERVATION_KEYS
    }


def test_forward_and_act_shapes(policy, observations):
    obs = _time_batch(observations, steps=3, batch=2)
    out = policy(obs, policy.initial_state(2), torch.zeros(3, 2, dtype=torch.bool))
    assert out.logits.shape == (3, 2, NUM_ACTIONS) and out.values.shape == (3, 2)
    assert out.core_state.shape == (2, policy.hidden_size)
    step = policy.act({k: v[0] for k, v in obs.items()}, policy.initial_state(2), torch.ones(2, dtype=torch.bool))
    assert step.actions.shape == (2,) and step.actions.dtype == torch.int64
    assert ((step.actions >= 0) & (step.actions < NUM_ACTIONS)).all()
    assert step.log_probs.shape == (2,) and (step.log_probs <= 0).all()
    assert step.values.shape == (2,) and step.core_state.shape == (2, policy.hidden_size)
    greedy = policy.act({k: v[0] for k, v in obs.items()}, policy.initial_state(2), torch.ones(2, dtype=torch.bool), deterministic=True)
    fresh = policy(obs, policy.initial_state(2), torch.ones(3, 2, dtype=torch.bool))
    torch.testing.assert_close(greedy.actions, fresh.logits[0].argmax(-1))


def test_training_forward_replays_acting_step_by_step(policy, observations):
    """What the learner computes over (T, B) must be what the actors computed step by step."""
    obs = _time_batch(observations, steps=4, batch=2)
    done = torch.tensor([[True, False], [False, False], [False, True], [False, False]])
    state = torch.randn(2, policy.hidden_size)
    replay = policy(obs, state, done)
    for t in range(4):
        step = policy.act({k: v[t] for k, v in obs.items()}, state, done[t])
        log_probs = torch.log_softmax(replay.logits[t], -1).gather(1, step.actions[:, None]).squeeze(1)
        torch.testing.assert_close(step.log_probs, log_probs)
        torch.testing.assert_close(step.values, replay.values[t])
        state = step.core_state
    torch.testing.assert_close(state, replay.core_state)


def test_done_resets_the_core_state(policy, observations):
    obs = _time_batch(observations, steps=2, batch=1)
    carried = torch.randn(1, policy.hidden_size)
    reset = policy(obs, carried, torch.tensor([[False], [True]]))
    fresh = policy({k: v[1:] for k, v in obs.items()}, policy.initial_state(1), torch.tensor([[False]]))
    torch.testing.assert_close(reset.values[1], fresh.values[0])
    kept = policy(obs, carried, torch.tensor([[False], [False]]))
    assert not torch.allclose(kept.values[1], fresh.values[0])


def test_bptt_horizon_cuts_the_gradient_to_earlier_steps(policy, observations):
    obs = _time_batch(observations, steps=4, batch=1)
    done = torch.zeros(4, 1, dtype=torch.bool)
    for horizon, reaches_start in ((None, True), (2, False)):
        state = torch.zeros(1, policy.hidden_size, requires_grad=True)
        policy(obs, state, done, bptt_horizon=horizon).values[-1].sum().backward()
        assert (state.grad.abs().sum() > 0).item() == reaches_start


def test_crop_is_centred_on_the_hero(observations):
    chars = obs_to_tensors(observations)["tty_chars"]
    blstats = observations["blstats"]
    rows = torch.from_numpy(blstats[:, nethack.NLE_BL_Y] + 1)
    cols = torch.from_numpy(blstats[:, nethack.NLE_BL_X])
    crop = crop_around(chars, rows, cols, 9, ord(" "))
    assert (crop[:, 4, 4] == ord("@")).all()
    # A window at the corner: the cells off the screen are blank.
    corner = crop_around(chars[:1], torch.tensor([0]), torch.tensor([0]), 5, ord(" "))
    assert (corner[0, :2, :] == ord(" ")).all() and (corner[0, :, :2] == ord(" ")).all()
    torch.testing.assert_close(corner[0, 2:, 2:], chars[0, :3, :3])


def test_blstats_features(observations):
    blstats = torch.from_numpy(observations["blstats"]).clone()
    blstats[0, nethack.NLE_BL_CONDITION] = nethack.BL_MASK_STONE | nethack.BL_MASK_HALLU
    blstats[1, nethack.NLE_BL_GOLD] = 10**9
    features = normalize_blstats(blstats)
    assert features.shape == (6, NUM_BLSTATS_FEATURES) and features.dtype == torch.float32
    assert features.abs().max() <= 5.0
    conditions = features[:, -nethack.BL_MASK_BITS :]
    assert conditions[0].nonzero().flatten().tolist() == [0, 9]  # stone is bit 0, hallu bit 9
    assert conditions[1:].sum() == 0
    blstats[2, nethack.NLE_BL_HP], blstats[2, nethack.NLE_BL_HPMAX] = 37, 100
    assert torch.isclose(normalize_blstats(blstats)[2], torch.tensor(0.37)).any()  # HP as a fraction


def test_message_encoder_encodes_repeats_like_singletons(policy, observations):
    messages = torch.from_numpy(observations["message"])
    messages[1] = messages[0]
    together = policy.message(messages)
    alone = torch.cat([policy.message(m[None]) for m in messages])
    torch.testing.assert_close(together, alone)


def test_presets_build_and_unknown_preset_is_a_config_error(observations):
    for name in POLICY_PRESETS:
        net = NetHackPolicy(get_policy_config(name), NUM_ACTIONS)
        obs = _time_batch(observations, steps=1, batch=1)
        assert net(obs, net.initial_state(1), torch.zeros(1, 1, dtype=torch.bool)).logits.shape == (1, 1, NUM_ACTIONS)
    with pytest.raises(ConfigError, match="small"):
        get_policy_config("huge")


def test_initial_policy_is_near_uniform(policy, observations):
    obs = _time_batch(observations, steps=1, batch=2)
    logits = policy(obs, policy.initial_state(2), torch.ones(1, 2, dtype=torch.bool)).logits
    entropy = torch.distributions.Categorical(logits=logits).entropy()
    assert (entropy > 0.99 * np.log(NUM_ACTIONS)).all()
