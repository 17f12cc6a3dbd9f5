"""The task env in the real game: prompt macros, captions in observations, seeding, gym API."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from nle import nethack

from kudos.envs import NUM_ACTIONS, make_env
from kudos.envs.actions import EXTENDED_ACTIONS, action_index
from kudos.envs.captions import decode_caption
from kudos.envs.nethack import MACROS, first_offered_item
from kudos.errors import ConfigError
from kudos.rl.experiment import EnvConfig


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


@pytest.mark.parametrize("command", [nethack.Command.EAT, nethack.Command.QUAFF])
def test_oni_leaves_the_item_prompt_to_the_agent_y_takes_the_first_item(env, command):
    """ONI (tasks_nle.py): the prompt is the step's caption; the agent's `y` (north-west) takes
    the first offered item, any other action cancels it instead of being played."""
    env.reset(seed=1)
    _, _, _, _, info = env.step(action_index(command))
    assert info["caption"].startswith(("What do you want to eat? [", "What do you want to drink? ["))
    _, _, _, _, info = env.step(action_index(nethack.CompassDirection.NW))
    assert info["caption"] and "What do you want" not in info["caption"] and info["caption"] != "Never mind."
    env.reset(seed=1)
    env.step(action_index(command))
    position = env.last_observation[env._blstats_index][:2].copy()
    _, _, _, _, info = env.step(action_index(nethack.CompassDirection.S))
    assert info["caption"] == "Never mind."
    np.testing.assert_array_equal(env.last_observation[env._blstats_index][:2], position)  # S was not played


@pytest.mark.parametrize("command", [nethack.Command.EAT, nethack.Command.QUAFF])
def test_kudos_macros_answer_the_item_prompt_with_the_first_item(command):
    env = make_env("Score", macros="kudos")
    env.reset(seed=1)
    _, _, _, _, info = env.step(action_index(command))
    env.close()
    assert "What do you want" not in info["caption"]
    assert info["caption"]  # the effect of the food or potion, not the prompt


def test_unknown_macros_are_a_one_line_config_error():
    with pytest.raises(ConfigError, match="env.macros must be one of oni, kudos"):
        make_env("Score", macros="nle")
    assert EnvConfig().macros == "oni"


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


def test_more_chains_are_joined_by_kudos_macros_and_cut_to_the_last_message_by_onis():
    """The same games (no eat/drink, the only macro that changes the game) under both macro sets:
    kudos's caption holds every message shown behind --More-- ("You die..." always is), ONI's
    only the last one; the observation's message is the caption in both."""
    envs = {macros: make_env("Score", macros=macros) for macros in MACROS}
    allowed = [i for i, key in enumerate(EXTENDED_ACTIONS) if key not in (nethack.Command.EAT, nethack.Command.QUAFF)]
    rng = np.random.default_rng(0)
    for env in envs.values():
        env.reset(seed=0)
    joined = died = 0
    for _ in range(3000):
        action = int(rng.choice(allowed))
        steps = {macros: env.step(action) for macros, env in envs.items()}
        captions = {macros: step[4]["caption"] for macros, step in steps.items()}
        for macros, (obs, *_rest) in steps.items():
            if len(captions[macros]) <= 256:
                assert decode_caption(obs["message"]) == captions[macros]
        assert captions["kudos"].endswith(captions["oni"])
        joined += captions["kudos"] != captions["oni"]
        if "You die..." in captions["kudos"]:  # always shown behind --More--
            assert "You die..." not in captions["oni"]
            died += 1
            break
        if steps["oni"][2] or steps["oni"][3]:
            assert steps["kudos"][2] or steps["kudos"][3]
            for env in envs.values():
                env.reset()
    for env in envs.values():
        env.close()
    assert died == 1 and joined > 1


def _press_until_more(env):
    """Real game keys until NetHack shows a --More--; returns that observation."""
    rng = np.random.default_rng(3)
    env.reset(seed=3)
    for _ in range(5000):
        observation, done = env.nethack.step(int(rng.choice(EXTENDED_ACTIONS)))
        if done:
            env.reset()
        elif observation[env._internal_index][3]:
            return observation
    raise AssertionError("no --More-- in 5000 keys")


def test_oni_keeps_the_stairs_message_across_more():
    env = make_env("Score")
    observation = _press_until_more(env)
    env._write_message(observation, "You descend the stairs.")  # the message NLE shows on the way down
    parts: list[str] = []
    env._answer_prompts(observation, False, parts, cast=False)
    env.close()
    assert parts == ["You descend the stairs."]


def test_skill_up_message_sends_enhance_then_the_first_skill():
    """ONI: after "You feel more confident in", #enhance and `a`. The message is written into a
    real --More-- screen (a skill-up takes thousands of turns to happen); the keys reach the game."""
    env = make_env("Score")
    observation = _press_until_more(env)
    env._write_message(observation, "You feel more confident in your skill in martial arts.")
    pressed: list[int] = []
    step = env.nethack.step

    def spy(key):
        pressed.append(key)
        return step(key)

    env.nethack.step = spy
    env._answer_prompts(observation, False, [], cast=False)
    if int(nethack.Command.ENHANCE) not in pressed:  # stopped at a prompt for the agent: still pending
        assert env._enhance
        env.step(action_index(nethack.Command.SEARCH))  # answers (cancels) it; then #enhance
    env.close()
    enhance = pressed.index(int(nethack.Command.ENHANCE))
    assert pressed[enhance + 1] == ord("a") and pressed.count(int(nethack.Command.ENHANCE)) == 1
    assert not env._enhance


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
