"""NetHack tasks: each defines its extrinsic reward and when its episode ends successfully.

The rules follow the ONI/Motif setups. A task's rules are a small object with per-episode state
(``reset``), a reward for one agent step and a success test; they see only a :class:`Transition`,
so they can be tested on crafted states without running the game.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
from nle import nethack

from kudos.envs.actions import EXTENDED_ACTIONS
from kudos.errors import UnknownTaskError

# A step that does not advance game time (menus, walking into walls, unknown commands) costs
# this much in the score-like tasks, as in NLE's "constant" penalty mode.
FROZEN_STEP_PENALTY = -0.01
GOAL_REWARD = 50.0
_UHUNGER = 7  # index of u.uhunger in NLE's "internal" observation


class Transition(NamedTuple):
    """What the rules see of one agent step (all arrays are NLE observations, unmodified).

    ``prev_blstats``/``blstats``: int64 ``(27,)`` bottom-line stats before/after the step.
    ``prev_internal``/``internal``: int32 ``(9,)``. ``glyphs``: int16 ``(21, 79)`` after the step.
    ``caption``: the step's caption (see :mod:`kudos.envs.captions`).
    """

    prev_blstats: np.ndarray
    blstats: np.ndarray
    prev_internal: np.ndarray
    internal: np.ndarray
    glyphs: np.ndarray
    caption: str


class TaskRules:
    """Reward and success of a task. Subclasses override :meth:`reward` and/or :meth:`success`."""

    #: Penalty added to the reward of a step in which game time does not advance (0 = none).
    frozen_step_penalty: float = 0.0

    def reset(self) -> None:
        """Forget per-episode state; called at every episode start."""

    def reward(self, t: Transition) -> float:
        """Extrinsic reward of one agent step, in task units (score points, gold pieces, ...)."""
        return 0.0

    def success(self, t: Transition) -> bool:
        """True when the task is accomplished: the episode then ends (terminated)."""
        return False

    def frozen_penalty(self, t: Transition) -> float:
        if t.prev_blstats[nethack.NLE_BL_TIME] == t.blstats[nethack.NLE_BL_TIME]:
            return self.frozen_step_penalty
        return 0.0


class ScoreRules(TaskRules):
    """In-game score delta, with a small penalty for steps where game time does not advance."""

    frozen_step_penalty = FROZEN_STEP_PENALTY

    def reward(self, t: Transition) -> float:
        delta = float(t.blstats[nethack.NLE_BL_SCORE] - t.prev_blstats[nethack.NLE_BL_SCORE])
        return delta + self.frozen_penalty(t)


class ChallengeRules(ScoreRules):
    """NetHack Challenge scoring: the in-game score delta, no penalty."""

    frozen_step_penalty = 0.0


@dataclass
class DepthRules(TaskRules):
    """+50 and the end of the episode when the agent reaches dungeon level ``depth``."""

    depth: int = 2

    def reward(self, t: Transition) -> float:
        return GOAL_REWARD if self.success(t) else 0.0

    def success(self, t: Transition) -> bool:
        return int(t.blstats[nethack.NLE_BL_DEPTH]) >= self.depth


class OracleRules(TaskRules):
    """+50 and the end of the episode when the Oracle stands next to the agent."""

    def __init__(self) -> None:
        self.oracle_glyph = next(
            g
            for g in range(nethack.GLYPH_MON_OFF, nethack.GLYPH_PET_OFF)
            if nethack.permonst(nethack.glyph_to_mon(g)).mname == "Oracle"
        )

    def reward(self, t: Transition) -> float:
        return GOAL_REWARD if self.success(t) else 0.0

    def success(self, t: Transition) -> bool:
        x, y = int(t.blstats[nethack.NLE_BL_X]), int(t.blstats[nethack.NLE_BL_Y])
        around = t.glyphs[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
        return bool(np.any(around == self.oracle_glyph))


class GoldRules(TaskRules):
    """Gold delta (gold is picked up automatically), with the frozen-step penalty."""

    frozen_step_penalty = FROZEN_STEP_PENALTY

    def reward(self, t: Transition) -> float:
        delta = float(t.blstats[nethack.NLE_BL_GOLD] - t.prev_blstats[nethack.NLE_BL_GOLD])
        return delta + self.frozen_penalty(t)


class EatRules(TaskRules):
    """Increase of nutrition (``u.uhunger``) from eating, with the frozen-step penalty."""

    frozen_step_penalty = FROZEN_STEP_PENALTY

    def reward(self, t: Transition) -> float:
        gain = max(0, int(t.internal[_UHUNGER]) - int(t.prev_internal[_UHUNGER]))
        return float(gain) + self.frozen_penalty(t)


class ScoutRules(TaskRules):
    """Number of map squares newly seen on the current level, with the frozen-step penalty."""

    frozen_step_penalty = FROZEN_STEP_PENALTY

    def __init__(self) -> None:
        self.explored: dict[tuple[int, int], int] = {}

    def reset(self) -> None:
        self.explored.clear()

    def reward(self, t: Transition) -> float:
        level = (int(t.blstats[nethack.NLE_BL_DNUM]), int(t.blstats[nethack.NLE_BL_DLEVEL]))
        seen = int(np.count_nonzero(t.glyphs != nethack.GLYPH_CMAP_OFF))
        gain = seen - self.explored.get(level, 0)
        self.explored[level] = seen
        return float(gain) + self.frozen_penalty(t)


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: how to build its rules and the game settings it needs.

    ``actions`` is the task's action set (NetHack key codes); the policy's output size is its
    length. NetHack tasks use the 28-action extended set; MiniHack tasks their own smaller sets.
    ``env_class`` builds the task's env (None: :class:`~kudos.envs.nethack.NetHackTaskEnv`); it
    must take the spec as its first argument and be importable by name.
    """

    name: str
    reward: str  # one line for `kudos tasks`
    make_rules: Callable[[], TaskRules]
    character: str = "mon-hum-neu-mal"
    max_episode_steps: int = 5000
    # Extra NetHack options appended to NLE's defaults (e.g. autopickup of gold).
    options: tuple[str, ...] = ()
    # End the episode (truncated) after this many steps without game time advancing.
    no_progress_timeout: int | None = None
    # ONI's coefficient of the extrinsic reward for this task (0.1 for score-like rewards, 10 for
    # the sparse goal tasks), and the goal preset of the LLM prompt.
    extrinsic_coef: float = 1.0
    goal: str = "score"
    actions: tuple[int, ...] = EXTENDED_ACTIONS
    # NetHack's random monster generation (MiniHack levels turn it off: only the level's monsters).
    spawn_monsters: bool = True
    env_class: Any = None

    @property
    def num_actions(self) -> int:
        """Size of the task's action set (the policy's number of logits)."""
        return len(self.actions)


# make_rules are picklable (classes, functools.partial; no lambdas): specs are sent to spawned env workers.
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "Score", "in-game score delta; -0.01 when game time does not advance", ScoreRules, extrinsic_coef=0.1
        ),
        TaskSpec(
            "Staircase", "+50 on reaching dungeon level 2 (episode ends)", functools.partial(DepthRules, 2),
            extrinsic_coef=10.0, goal="stairs",
        ),
        TaskSpec(
            "StaircaseLvl3", "+50 on reaching dungeon level 3 (episode ends)", functools.partial(DepthRules, 3),
            extrinsic_coef=10.0, goal="stairs",
        ),
        TaskSpec(
            "StaircaseLvl4", "+50 on reaching dungeon level 4 (episode ends)", functools.partial(DepthRules, 4),
            extrinsic_coef=10.0, goal="stairs",
        ),
        TaskSpec(
            "Oracle", "+50 when the Oracle is adjacent (episode ends)", OracleRules,
            extrinsic_coef=10.0, goal="stairs",
        ),
        TaskSpec(
            "Gold",
            "gold delta (gold is auto-picked up); -0.01 when game time does not advance",
            GoldRules,
            options=("pickup_types:$",),
            goal="gold",
        ),
        TaskSpec(
            "Eat", "nutrition gained by eating; -0.01 when game time does not advance", EatRules, goal="none"
        ),
        TaskSpec(
            "Scout", "newly seen map squares; -0.01 when game time does not advance", ScoutRules, goal="none"
        ),
        TaskSpec(
            "Challenge",
            "in-game score delta, random character, no penalty (NetHack Challenge rules)",
            ChallengeRules,
            character="@",
            max_episode_steps=1_000_000,
            no_progress_timeout=10_000,
            extrinsic_coef=0.1,
        ),
    )
}


def register_task(spec: TaskSpec, *, replace: bool = False) -> None:
    """Add a task to the registry (``kudos train --task NAME`` and ``make_env`` find it).

    ``spec.make_rules`` must be importable by name (a module-level class or function), so that
    env worker processes can rebuild the rules.
    """
    if spec.name in TASKS and not replace:
        raise ValueError(f"a task named {spec.name!r} is already registered; pass replace=True to replace it")
    TASKS[spec.name] = spec


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, case-insensitively; ``NetHack`` prefixes and ``-vN`` suffixes
    (``NetHackScore-v0``, ``MiniHack-River-v0``) are accepted. Unknown names raise
    :class:`UnknownTaskError` listing close matches."""
    key = name.strip()
    if key.lower().startswith("nethack"):
        key = key[len("nethack") :]
    key = key.split("-v")[0].lower()
    for spec in TASKS.values():
        if spec.name.lower() == key:
            return spec
    close = difflib.get_close_matches(key, [n.lower() for n in TASKS], n=3, cutoff=0.5)
    by_lower = {n.lower(): n for n in TASKS}
    hint = f"did you mean {', '.join(by_lower[c] for c in close)}? " if close else ""
    raise UnknownTaskError(
        f"unknown task {name!r}: {hint}(known tasks: {', '.join(TASKS)}; see `kudos tasks`)"
    )
