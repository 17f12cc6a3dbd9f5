"""The task env in the real game: prompt macros, captions in observations, seeding, gym API."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from nle import nethack

from kudos.envs import NUM_ACTIONS, make_env
from kudos.envs.actions import EXTENDED_ACTIONS, action_index
from kudos.envs.captions import decode_caption
from kudos.envs.nethack import first_offered_item


@pytest.fixture
def env():
    environment = make_env("Score")  # a Monk: spells, potions and food in the starting kit
    yield environment
    environment.close()


def test_extended_action_set_has_28_actions():
    assert NUM_ACTIONS == 28 and len(set(EXTENDED_ACTIONS)) == 28
    for key in ("CAST", "QUAFF", "PRAY", "PICKUP", "PAY"):
        assert getattr(nethack.Command, key) in EXTENDED_ACTIONS


def test_passes_gymnasium_env_checker(env):
    check_env(env, skip_render_check=True)


@pytest.mark.parametrize(
    "prompt,item",
    [
        ("What do you want to eat? [fg or ?*]", "f"),
        ("What do you want to drink? [d-f or ?*]", "d"),
        ("What do you want to eat? [*]", None),
        ("What do you want to eat? [$ or ?*]", None),
        ("Really attack the newt? [yn] (n)", None),
    ],
)
def test_first_offered_item(prompt, item):
    assert first_offered_item(prompt) == item


def test_quaff_answers_the_item_prompt_with_the_first_item(env):
    env.reset(seed=1)
    _, _, _, _, info = env.step(action_index(nethack.Command.QUAFF))
    assert "What do you want to drink" not in info["caption"]
    assert info["caption"]  # the effect of the potion, not the prompt


def test_eat_answers_the_item_prompt(env):
    env.reset(seed=1)
    _, _, _, _, info = env.step(action_index(nethack.Command.EAT))
    assert "What do you want to eat" not in info["caption"]
    assert info["caption"]


def test_cast_selects_the_first_spell(env):
    env.reset(seed=1)
    obs, _, _, _, info = env.step(action_index(nethack.Command.CAST))
    assert "Choose which spell" not in bytes(obs["tty_chars"][0]).decode("latin-1")
    # the Monk's first spell either asks for a direction or reports its effect
    assert info["caption"]


def test_pray_prompt_is_left_to_the_agent(env):
    env.reset(seed=1)
    _, _, _, _, info = env.step(action_index(nethack.Command.PRAY))
    assert info["caption"].startswith("Are you sure you want to pray?")


def test_more_chain_keeps_the_message_before_the_prompt():
    """Whatever the game shows behind --More-- ends up in the caption and the observation."""
    env = make_env("Score")
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    found = False
    for _ in range(3000):
        obs, _, terminated, truncated, info = env.step(int(rng.integers(NUM_ACTIONS)))
        if len(info["caption"]) <= 256:
            assert decode_caption(obs["message"]) == info["caption"]
        if "You die..." in info["caption"]:  # always shown behind --More--
            found = True
            break
        if terminated or truncated:
            env.reset()
    env.close()
    assert found


def _captions(seed: int, steps: int = 100) -> list[str]:
    env = make_env("Score")
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    captions = []
    for _ in range(steps):
        _, _, terminated, truncated, info = env.step(int(rng.integers(NUM_ACTIONS)))
        captions.append(info["caption"])
        if terminated or truncated:
            env.reset()
    env.close()
    return captions


def test_same_seed_gives_the_same_first_100_captions():
    first = _captions(seed=7)
    assert first == _captions(seed=7)
    assert first != _captions(seed=8)


def test_later_episodes_follow_the_seed():
    def episode_starts(seed: int) -> list[bytes]:
        env = make_env("Score")
        starts = [env.reset(seed=seed)[0]["glyphs"].tobytes()]
        starts += [env.reset()[0]["glyphs"].tobytes() for _ in range(2)]
        env.close()
        return starts

    a, b = episode_starts(3), episode_starts(3)
    assert a == b
    assert len(set(a)) == 3  # each episode is a different game


def test_observation_keys_can_be_chosen():
    env = make_env("Score", observation_keys=("glyphs", "message"))
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"glyphs", "message"}
    obs, *_ = env.step(action_index(nethack.Command.CAST))
    assert set(obs) == {"glyphs", "message"}
    env.close()


def test_gymnasium_make_by_id():
    import gymnasium as gym

    env = gym.make("kudos/StaircaseLvl3-v0")
    assert env.unwrapped.spec_task.name == "StaircaseLvl3"
    env.close()
