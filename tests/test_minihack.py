"""MiniHack tasks: their own action sets, the compiled levels, the goal's reward and termination,
the key macros, and the same info fields as the NetHack tasks."""

import numpy as np
import pytest
from nle import nethack

from kudos.envs import NUM_ACTIONS, EndStatus, Transition, get_task, make_env
from kudos.envs.minihack import MiniHackTaskEnv, StairsRules
from kudos.envs.vector import VectorNetHack

MINIHACK_TASKS = ("MiniHack-River", "MiniHack-KeyRoom-S5")


def _transition(*, on_stairs: bool, time=(1, 2)) -> Transition:
    prev, cur = np.zeros(27, dtype=np.int64), np.zeros(27, dtype=np.int64)
    prev[nethack.NLE_BL_TIME], cur[nethack.NLE_BL_TIME] = time
    internal = np.zeros(9, dtype=np.int32)
    internal[4] = on_stairs
    glyphs = np.zeros((21, 79), dtype=np.int16)
    return Transition(prev, cur, np.zeros(9, dtype=np.int32), internal, glyphs, "")


def _count(glyphs: np.ndarray, glyph: int) -> int:
    return int(np.count_nonzero(glyphs == glyph))


def test_stairs_rules_pay_one_on_the_staircase_and_charge_frozen_steps():
    rules = StairsRules()
    assert rules.success(_transition(on_stairs=True)) and rules.reward(_transition(on_stairs=True)) == 1.0
    assert not rules.success(_transition(on_stairs=False)) and rules.reward(_transition(on_stairs=False)) == 0.0
    assert rules.reward(_transition(on_stairs=False, time=(3, 3))) == pytest.approx(-0.01)


def test_tasks_have_their_own_action_sets_and_nethack_tasks_keep_28():
    assert get_task("MiniHack-River-v0").num_actions == 8
    keyroom = get_task("minihack-keyroom-s5")
    assert keyroom.num_actions == 10 and nethack.Command.APPLY in keyroom.actions
    assert get_task("Score").num_actions == NUM_ACTIONS == 28
    with make_env("MiniHack-KeyRoom-S5") as env:
        assert isinstance(env, MiniHackTaskEnv) and env.action_space.n == 10


def test_river_level_is_compiled_and_seeded():
    water = nethack.GLYPH_CMAP_OFF + 41  # S_water
    with make_env("MiniHack-River") as env:
        first = env.reset(seed=3)[0]["glyphs"].copy()  # NLE refills its arrays in place
        other = env.reset(seed=4)[0]["glyphs"].copy()
    with make_env("MiniHack-River") as env:
        again = env.reset(seed=3)[0]["glyphs"].copy()
    # Water in sight at the start: not an ordinary first dungeon level.
    assert _count(first, water) > 0
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)  # boulders and start move with the seed


def test_keyroom_macros_answer_the_apply_and_unlock_prompts():
    with make_env("MiniHack-KeyRoom-S5") as env:
        assert env._task_answer("What do you want to use or apply? [gh or ?*]") == ord("g")
        assert env._task_answer("Unlock it? [yn] (n)") == ord("y")
        assert env._task_answer("Lock it? [yn] (n)") is None  # declined by the NetHack macros
        assert env._task_answer("Really attack the newt?") is None


def test_keyroom_random_play_succeeds_rarely_with_the_goal_reward_and_info_fields():
    """A seeded random agent: keys are picked up, locked doors met, and some episode ends on the
    staircase with +1, terminated, TASK_SUCCESSFUL; the others end truncated at 200 steps."""
    rng = np.random.default_rng(0)
    captions: set[str] = set()
    ends = []
    with make_env("MiniHack-KeyRoom-S5") as env:
        for episode in range(40):
            env.reset(seed=episode)
            while True:
                _, reward, terminated, truncated, info = env.step(int(rng.integers(10)))
                assert set(info) >= {"caption", "caption_count", "end_status", "success"}
                captions.add(info["caption"])
                if terminated or truncated:
                    assert info["depth"] == 1  # read before the game is quit on success
                    ends.append((reward, terminated, info["end_status"], info["success"], env._steps))
                    break
    successes = [e for e in ends if e[3]]
    assert 0 < len(successes) < len(ends) / 4
    for reward, terminated, status, _, _ in successes:
        assert reward >= 1.0 - 0.01 and terminated and status == EndStatus.TASK_SUCCESSFUL
    assert all(e[2] == EndStatus.ABORTED and e[4] == 200 for e in ends if not e[3])
    assert "This door is locked." in captions
    assert any(c.endswith("key named The Master Key of Thievery.") and " - " in c for c in captions)


def test_minihack_task_runs_in_the_env_workers():
    with VectorNetHack("MiniHack-River", 2, num_workers=1, seed=0) as vec:
        assert vec.single_action_space.n == 8
        vec.reset()
        step = vec.step(np.array([0, 7]))
    assert step.obs["glyphs"].shape == (2, 21, 79) and len(step.captions) == 2


def test_gymnasium_make_builds_the_minihack_env():
    import gymnasium

    env = gymnasium.make("kudos/MiniHack-KeyRoom-S5-v0")
    try:
        assert isinstance(env.unwrapped, MiniHackTaskEnv) and env.action_space.n == 10
    finally:
        env.close()
