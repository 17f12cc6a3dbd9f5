"""MiniHack tasks: small hand-made NetHack levels with a sparse goal, under kudos's macros and captions.

A MiniHack task is a NetHack game whose first level is compiled from a MiniHack level description
(``.des``) into the env's own copy of the game data, the way MiniHack does it; everything else
(prompt macros, captions, per-episode caption counts, ``info`` fields, shared-memory buffers) is
:class:`~kudos.envs.nethack.NetHackTaskEnv`'s. The goal of every task here is MiniHack's
default: stand on the down staircase (+1, the episode ends); a step in which game time does not
advance costs 0.01, as in MiniHack. Random monster generation is off, as in MiniHack.

The tasks (see docs/tasks.md for why these and a random agent's message census):

- ``MiniHack-River``: cross a river by pushing boulders into it ("You push the boulder into the
  water. Now you can cross it!"); 8 moves.
- ``MiniHack-KeyRoom-S5``: pick up a key ("f - a skeleton key named The Master Key of
  Thievery."), find the locked door ("This door is locked."), unlock it with the key
  ("You succeed in unlocking the door.") and open it; MiniHack's action set for it (8 moves,
  pickup, apply). Applying asks which item (the macro offers the first one), which direction
  (the agent's next action answers) and "Unlock it?" (the macro says yes), so one agent step
  does what MiniHack's own scripted apply does.

``minihack`` itself is imported only when an env is built, for its level tools and data.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from nle import nethack

from kudos.envs.nethack import NetHackTaskEnv, first_offered_item
from kudos.envs.tasks import FROZEN_STEP_PENALTY, TASKS, TaskRules, TaskSpec, Transition, register_task
from kudos.errors import KudosError

_STAIRS_DOWN = 4  # index of "standing on the down staircase" in NLE's "internal" observation
GOAL_REWARD = 1.0  # MiniHack's reward_win

MOVES: tuple[int, ...] = tuple(nethack.CompassDirection)
KEYROOM_ACTIONS: tuple[int, ...] = MOVES + (nethack.Command.PICKUP, nethack.Command.APPLY)
_APPLY_PROMPT = re.compile(r"What do you want to use or apply\? \[([^\]]*)\]")


class StairsRules(TaskRules):
    """MiniHack's default goal: +1 and the end of the episode on the down staircase."""

    frozen_step_penalty = FROZEN_STEP_PENALTY

    def reward(self, t: Transition) -> float:
        return (GOAL_REWARD if self.success(t) else 0.0) + self.frozen_penalty(t)

    def success(self, t: Transition) -> bool:
        return bool(t.internal[_STAIRS_DOWN])


@dataclass(frozen=True)
class MiniHackTaskSpec(TaskSpec):
    """A MiniHack task: a :class:`TaskSpec` plus ``level``, which returns the level's ``.des`` text."""

    level: Callable[[], str] | None = None


def _minihack() -> Any:
    """The ``minihack`` package (its import warns about pkg_resources, which it still uses)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import minihack.base
            import minihack.level_generator
    except ImportError as exc:
        raise KudosError(f"MiniHack tasks need the minihack package ({exc}); install it with `pip install minihack`") from None
    return minihack


def river_level(boulders: int = 5) -> str:
    """MiniHack-River: a 3-square-wide river between the start area and the staircase, and
    ``boulders`` boulders placed at random on the near bank."""
    generator = _minihack().level_generator.LevelGenerator(map="\n".join(["..................WWW...."] * 7))
    generator.set_start_rect((0, 0), (18, 6))
    generator.set_area_variable("$boulder_area", type="fillrect", x1=1, y1=1, x2=18, y2=5)
    for _ in range(boulders):
        generator.add_object_area("$boulder_area", name="boulder", symbol="`")
    generator.add_goal_pos((24, 2))
    return generator.get_des()


def keyroom_level(room: int = 5, subroom: int = 2) -> str:
    """MiniHack-KeyRoom: a lit ``room`` x ``room`` room holding a skeleton key, with a locked
    ``subroom`` x ``subroom`` room (placed at random) that holds the staircase."""
    with open(os.path.join(_minihack().level_generator.PATH_DAT_DIR, "key_and_door_tmp.des")) as f:
        return f.read().replace("RS", str(room)).replace("SS", str(subroom))


class MiniHackTaskEnv(NetHackTaskEnv):
    """A :class:`NetHackTaskEnv` whose level comes from the task's MiniHack ``.des`` description.

    Takes the arguments of :class:`NetHackTaskEnv`; ``task`` must be a :class:`MiniHackTaskSpec`
    (or the name of one). Its own macros: "What do you want to use or apply?" is answered with the
    first offered item and "Unlock it?" with yes (other prompts: as in NetHack tasks).
    """

    def __init__(self, task: str | TaskSpec, **kwargs: Any) -> None:
        super().__init__(task, **kwargs)
        if not isinstance(self.spec_task, MiniHackTaskSpec) or self.spec_task.level is None:
            raise KudosError(f"task {self.spec_task.name} has no MiniHack level description")
        self._compile_level(self.spec_task.level())

    def _task_answer(self, message: str) -> int | None:
        if _APPLY_PROMPT.search(message):
            item = first_offered_item(message, _APPLY_PROMPT)
            return ord(item) if item else None
        if "Unlock it?" in message:
            return ord("y")
        return None

    def _compile_level(self, des: str) -> None:
        """Compile ``des`` into this game's private data directory (MiniHack's patch script), so the
        game starts on that level at every reset."""
        minihack = _minihack()
        vardir = self.nethack._vardir
        with tempfile.NamedTemporaryFile("w", suffix=".des", dir=vardir, delete=False) as f:
            f.write(des)
        try:
            done = subprocess.run(
                [minihack.base.PATCH_SCRIPT, vardir, minihack.base.HACKDIR, minihack.base.LIB_DIR, f.name],
                capture_output=True, text=True, check=False,
            )
        finally:
            os.unlink(f.name)
        if done.returncode != 0 or not os.path.isfile(os.path.join(vardir, "nhdat")):
            raise KudosError(f"could not compile the MiniHack level of {self.spec_task.name}: {done.stderr.strip()[:200]}")


# make_rules and level are module-level (picklable): specs travel to spawned env workers.
for _spec in (
    MiniHackTaskSpec(
        "MiniHack-River",
        "+1 on the down staircase beyond a river (push boulders in to cross); -0.01 when time does not advance",
        StairsRules,
        character="rog-hum-cha-mal",
        max_episode_steps=350,
        options=("pettype:none",),
        extrinsic_coef=10.0,
        goal="stairs",
        actions=MOVES,
        spawn_monsters=False,
        env_class=MiniHackTaskEnv,
        level=river_level,
    ),
    MiniHackTaskSpec(
        "MiniHack-KeyRoom-S5",
        "+1 on the down staircase behind a locked door (pick up and apply the key); -0.01 when time does not advance",
        StairsRules,
        character="rog-hum-cha-mal",
        max_episode_steps=200,
        options=("!autopickup", "pettype:none"),
        extrinsic_coef=10.0,
        goal="stairs",
        actions=KEYROOM_ACTIONS,
        spawn_monsters=False,
        env_class=MiniHackTaskEnv,
        level=keyroom_level,
    ),
):
    if _spec.name not in TASKS:  # a reload must not fail
        register_task(_spec)
