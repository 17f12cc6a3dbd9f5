"""The APPO learner: it learns a contextual bandit through the real policy network and real
observation dicts, it trains on a real NetHack rollout without NaNs, and it checkpoints fully."""

import copy
import math

import numpy as np
import pytest
import torch
from nle import nethack

from kudos.envs import NUM_ACTIONS, make_env
from kudos.envs.vector import VectorNetHack
from kudos.errors import ConfigError
from kudos.rl.appo import APPOConfig
from kudos.rl.learner import Learner, RolloutBatch
from kudos.rl.policy import POLICY_OBSERVATION_KEYS, NetHackPolicy, PolicyConfig, obs_to_tensors

# The bandit: the right action depends on the caption AND on the gold in the bottom line, so a
# policy that reads only one of them is right at most half of the time (chance: 1/28).
CAPTIONS = (b"You hear the footsteps of a guard on patrol.", b"There is a staircase down here.")
GOLD = (0, 500)
RIGHT_ACTION = torch.tensor([[3, 11], [17, 25]])  # [caption, gold]


@pytest.fixture(scope="module")
def start_obs() -> dict[str, torch.Tensor]:
    env = make_env("Score")
    obs, _ = env.reset(seed=0)
    env.close()
    return obs_to_tensors(obs)


def bandit_obs(start_obs: dict[str, torch.Tensor], caption: torch.Tensor, gold: torch.Tensor) -> dict[str, torch.Tensor]:
    """Observations of shape ``caption.shape + obs shape``: the real first observation of a game
    with its message line replaced by ``CAPTIONS[caption]`` and its gold by ``GOLD[gold]``."""
    messages = torch.zeros(len(CAPTIONS), 256, dtype=torch.uint8)
    for i, text in enumerate(CAPTIONS):
        messages[i, : len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    obs = {k: start_obs[k].expand(*caption.shape, *start_obs[k].shape).clone() for k in POLICY_OBSERVATION_KEYS}
    obs["message"] = messages[caption]
    obs["blstats"][..., nethack.NLE_BL_GOLD] = torch.tensor(GOLD)[gold]
    return obs


def test_learns_a_contextual_bandit_through_the_real_network(start_obs):
    torch.manual_seed(0)
    steps, envs = 2, 64
    policy = NetHackPolicy(PolicyConfig(), NUM_ACTIONS)
    learner = Learner(policy, APPOConfig(rollout=steps, recurrence=steps, learning_rate=5e-4, entropy_coef=1e-3))
    behaviour = copy.deepcopy(policy)  # acts a few updates behind, as APPO's actors do
    dones = torch.ones(steps + 1, envs, dtype=torch.bool)  # every step is a one-step episode

    def right_action_probability() -> float:
        caption, gold = torch.meshgrid(torch.arange(2), torch.arange(2), indexing="ij")
        caption, gold = caption.reshape(1, 4), gold.reshape(1, 4)
        with torch.no_grad():
            out = policy(bandit_obs(start_obs, caption, gold), policy.initial_state(4), torch.ones(1, 4, dtype=torch.bool))
        probs = torch.softmax(out.logits[0], -1)
        return probs.gather(1, RIGHT_ACTION[caption[0], gold[0]][:, None]).mean().item()

    assert right_action_probability() < 0.1
    for update in range(350):
        if update % 4 == 0:
            behaviour.load_state_dict(policy.state_dict())
        caption = torch.randint(2, (steps + 1, envs))
        gold = torch.randint(2, (steps + 1, envs))
        obs = bandit_obs(start_obs, caption, gold)
        with torch.no_grad():
            out = behaviour(obs, behaviour.initial_state(envs), dones)
        dist = torch.distributions.Categorical(logits=out.logits[:-1])
        actions = dist.sample()
        rewards = (actions == RIGHT_ACTION[caption[:-1], gold[:-1]]).float()
        batch = RolloutBatch(
            obs=obs,
            actions=actions,
            behaviour_log_probs=dist.log_prob(actions),
            behaviour_values=out.values[:-1],
            rewards=rewards,
            dones=dones,
            initial_core_state=behaviour.initial_state(envs),
        )
        learner.update(batch)
    # Reading only the caption or only the gold gets at most 0.5.
    assert right_action_probability() > 0.9
    assert learner.updates == 350 and learner.samples == 350 * steps * envs


@pytest.fixture(scope="module")
def nethack_batch() -> RolloutBatch:
    """T=8 steps of B=2 real Score games, acted by a fresh policy through the vector env."""
    torch.manual_seed(1)
    policy = NetHackPolicy(PolicyConfig(), NUM_ACTIONS)
    steps, envs = 8, 2
    with VectorNetHack("Score", envs, num_workers=1, seed=7) as vec:
        obs = obs_to_tensors(vec.reset())
        done = torch.ones(envs, dtype=torch.bool)
        state = initial_state = policy.initial_state(envs)
        frames, dones, actions, log_probs, values, rewards = [], [], [], [], [], []
        for _ in range(steps):
            step = policy.act(obs, state, done)
            result = vec.step(step.actions.numpy())
            frames.append(obs)
            dones.append(done)
            actions.append(step.actions)
            log_probs.append(step.log_probs)
            values.append(step.values)
            rewards.append(torch.from_numpy(result.reward))
            obs, state = obs_to_tensors(result.obs), step.core_state
            done = torch.from_numpy(result.terminated | result.truncated)
        frames.append(obs)
        dones.append(done)
    return RolloutBatch(
        obs={k: torch.stack([f[k] for f in frames]) for k in POLICY_OBSERVATION_KEYS},
        actions=torch.stack(actions),
        behaviour_log_probs=torch.stack(log_probs),
        behaviour_values=torch.stack(values),
        rewards=torch.stack(rewards),
        dones=torch.stack(dones),
        initial_core_state=initial_state,
    )


def test_update_on_a_real_nethack_rollout_is_finite(nethack_batch):
    assert nethack_batch.obs["tty_chars"].shape == (9, 2, 24, 80) and nethack_batch.dones.shape == (9, 2)
    torch.manual_seed(2)
    policy = NetHackPolicy(PolicyConfig(), NUM_ACTIONS)
    before = [p.detach().clone() for p in policy.parameters()]
    learner = Learner(policy, APPOConfig(rollout=8, recurrence=4))
    stats = learner.update(nethack_batch)
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert stats["grad_norm"] > 0
    after = list(policy.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after))


def test_minibatches_and_epochs_count_sgd_steps(nethack_batch):
    learner = Learner(NetHackPolicy(PolicyConfig(), NUM_ACTIONS), APPOConfig(epochs=2, num_minibatches=2))
    learner.update(nethack_batch)
    assert (learner.updates, learner.sgd_steps, learner.samples) == (1, 4, 16)
    too_many = Learner(NetHackPolicy(PolicyConfig(), NUM_ACTIONS), APPOConfig(num_minibatches=3))
    with pytest.raises(ConfigError, match="num_minibatches"):
        too_many.update(nethack_batch)


def test_state_dict_resumes_exactly(nethack_batch):
    torch.manual_seed(3)
    config = APPOConfig(num_minibatches=2)
    learner = Learner(NetHackPolicy(PolicyConfig(), NUM_ACTIONS), config)
    learner.update(nethack_batch)
    resumed = Learner(NetHackPolicy(PolicyConfig(), NUM_ACTIONS), config)
    resumed.load_state_dict(copy.deepcopy(learner.state_dict()))
    assert (resumed.updates, resumed.sgd_steps, resumed.samples) == (learner.updates, learner.sgd_steps, learner.samples)

    torch.manual_seed(4)
    expected = learner.update(nethack_batch)
    torch.manual_seed(4)
    got = resumed.update(nethack_batch)
    assert got == expected
    for a, b in zip(learner.policy.parameters(), resumed.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
