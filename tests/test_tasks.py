"""Task rewards and terminations on crafted states, and the same rules inside the real game."""

import numpy as np
import pytest
from nle import nethack

from kudos.envs import TASKS, EndStatus, Transition, get_task, make_env
from kudos.envs.actions import action_index
from kudos.envs.tasks import DepthRules, OracleRules
from kudos.errors import UnknownTaskError


def _blstats(**fields: int) -> np.ndarray:
    stats = np.zeros(27, dtype=np.int64)
    for name, value in fields.items():
        stats[getattr(nethack, f"NLE_BL_{name.upper()}")] = value
    return stats


def _transition(prev: dict, cur: dict, *, glyphs=None, hunger=(0, 0), caption="") -> Transition:
    internal_prev = np.zeros(9, dtype=np.int32)
    internal_cur = np.zeros(9, dtype=np.int32)
    internal_prev[7], internal_cur[7] = hunger
    if glyphs is None:
        glyphs = np.full((21, 79), nethack.GLYPH_CMAP_OFF, dtype=np.int16)
    return Transition(_blstats(**prev), _blstats(**cur), internal_prev, internal_cur, glyphs, caption)


def rules(name: str):
    return get_task(name).make_rules()


@pytest.mark.parametrize(
    "oni_env_id,extrinsic_coef",
    # ONI's task ids and its README's extrinsic_reward_coeff per task ("0.1 for Score and 10 for the others").
    [("NetHackScoreExtendedActions-v1", 0.1), ("NetHackStaircaseLvl3ExtendedActions-v1", 10.0),
     ("NetHackStaircaseLvl4ExtendedActions-v1", 10.0), ("NetHackOracleExtendedActions-v1", 10.0)],
)
def test_onis_tasks_are_registered_with_its_extrinsic_coefficients(oni_env_id, extrinsic_coef):
    name = oni_env_id.removeprefix("NetHack").removesuffix("ExtendedActions-v1")
    assert name in TASKS
    assert get_task(name).extrinsic_coef == extrinsic_coef


@pytest.mark.parametrize("name", ["score", "NetHackScore-v0", " Score ", "SCORE"])
def test_task_lookup_is_forgiving(name):
    assert get_task(name).name == "Score"


def test_unknown_task_names_close_matches():
    with pytest.raises(UnknownTaskError, match="did you mean Staircase"):
        get_task("Stairs")
    with pytest.raises(UnknownTaskError, match="known tasks: Score"):
        get_task("zzzz")


def test_score_is_score_delta_with_frozen_penalty():
    r = rules("Score")
    assert r.reward(_transition({"score": 10, "time": 5}, {"score": 30, "time": 6})) == 20.0
    assert r.reward(_transition({"score": 10, "time": 5}, {"score": 10, "time": 5})) == pytest.approx(-0.01)
    assert r.reward(_transition({"score": 10, "time": 5}, {"score": 14, "time": 5})) == pytest.approx(3.99)
    assert not r.success(_transition({}, {"score": 10**6}))


def test_challenge_has_no_penalty():
    r = rules("Challenge")
    assert r.reward(_transition({"score": 1, "time": 5}, {"score": 1, "time": 5})) == 0.0
    assert r.reward(_transition({"score": 1, "time": 5}, {"score": 21, "time": 6})) == 20.0


@pytest.mark.parametrize("name,depth", [("Staircase", 2), ("StaircaseLvl3", 3), ("StaircaseLvl4", 4)])
def test_staircase_pays_50_on_reaching_the_target_level(name, depth):
    r = rules(name)
    below = _transition({"depth": depth - 1}, {"depth": depth - 1})
    reached = _transition({"depth": depth - 1}, {"depth": depth})
    assert not r.success(below) and r.reward(below) == 0.0
    assert r.success(reached) and r.reward(reached) == 50.0
    assert isinstance(r, DepthRules) and r.depth == depth


def test_oracle_pays_50_when_adjacent():
    r = rules("Oracle")
    assert isinstance(r, OracleRules)
    glyphs = np.full((21, 79), nethack.GLYPH_CMAP_OFF, dtype=np.int16)
    pos = {"x": 40, "y": 10}
    assert not r.success(_transition(pos, pos, glyphs=glyphs))
    glyphs[11, 41] = r.oracle_glyph  # diagonal neighbour
    assert r.success(_transition(pos, pos, glyphs=glyphs))
    assert r.reward(_transition(pos, pos, glyphs=glyphs)) == 50.0
    glyphs[11, 41] = nethack.GLYPH_CMAP_OFF
    glyphs[12, 42] = r.oracle_glyph  # two squares away: not adjacent
    assert not r.success(_transition(pos, pos, glyphs=glyphs))


def test_gold_is_gold_delta():
    r = rules("Gold")
    assert r.reward(_transition({"gold": 3, "time": 1}, {"gold": 10, "time": 2})) == 7.0
    assert r.reward(_transition({"gold": 3, "time": 1}, {"gold": 3, "time": 1})) == pytest.approx(-0.01)
    assert "pickup_types:$" in get_task("Gold").options


def test_eat_rewards_nutrition_gains_only():
    r = rules("Eat")
    assert r.reward(_transition({"time": 1}, {"time": 2}, hunger=(500, 1300))) == 800.0
    assert r.reward(_transition({"time": 1}, {"time": 2}, hunger=(500, 499))) == 0.0


def test_scout_counts_newly_seen_squares_per_level():
    r = rules("Scout")
    glyphs = np.full((21, 79), nethack.GLYPH_CMAP_OFF, dtype=np.int16)
    glyphs[0, :5] = 0
    level1 = {"dnum": 0, "dlevel": 1, "time": 1}
    assert r.reward(_transition(level1, {**level1, "time": 2}, glyphs=glyphs)) == 5.0
    glyphs[1, :3] = 0
    assert r.reward(_transition(level1, {**level1, "time": 3}, glyphs=glyphs)) == 3.0
    level2 = {"dnum": 0, "dlevel": 2, "time": 4}
    assert r.reward(_transition(level1, level2, glyphs=glyphs)) == 8.0  # a fresh level counts from 0
    r.reset()
    assert r.reward(_transition(level1, {**level1, "time": 5}, glyphs=glyphs)) == 8.0


# --- the same rules inside the real game ------------------------------------------------------


def test_walking_into_a_wall_costs_the_frozen_penalty():
    env = make_env("Score")
    env.reset(seed=0)
    west = action_index(nethack.CompassDirection.W)
    for _ in range(60):  # walk west until the wall stops us
        _, reward, terminated, truncated, info = env.step(west)
        if info["caption"] == "It's a wall.":
            break
    assert info["caption"] == "It's a wall."
    assert reward == pytest.approx(-0.01)
    _, reward, _, _, info = env.step(west)
    assert info["caption_count"] >= 2
    env.close()


def test_truncation_at_the_step_limit():
    env = make_env("Score", max_episode_steps=5)
    env.reset(seed=0)
    search = action_index(nethack.Command.SEARCH)
    flags = [env.step(search)[2:4] for _ in range(5)]
    assert flags[:4] == [(False, False)] * 4
    assert flags[4] == (False, True)
    env.close()


def test_success_ends_the_episode_with_the_goal_reward():
    env = make_env("Staircase")
    env.reset(seed=0)
    env.rules.depth = 1  # already at depth 1: the next step reaches the goal
    _, reward, terminated, truncated, info = env.step(action_index(nethack.Command.SEARCH))
    assert (reward, terminated, truncated) == (50.0, True, False)
    assert info["success"] and info["end_status"] == EndStatus.TASK_SUCCESSFUL
    env.close()


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_spec_pickles_for_the_env_workers(name):
    import pickle

    spec = pickle.loads(pickle.dumps(TASKS[name]))
    assert type(spec.make_rules()) is type(TASKS[name].make_rules())
