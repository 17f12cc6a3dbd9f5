"""NetHack and MiniHack tasks with captions, per-task action sets and vectorised rollout workers."""

from gymnasium.envs.registration import register, registry

from kudos.envs.actions import ACTION_NAMES, EXTENDED_ACTIONS, NUM_ACTIONS
from kudos.envs.captions import CaptionCounter, clean_caption, decode_caption
from kudos.envs.nethack import DEFAULT_OBSERVATION_KEYS, EndStatus, NetHackTaskEnv, make_env
from kudos.envs.minihack import MiniHackTaskEnv, MiniHackTaskSpec  # registers the MiniHack tasks
from kudos.envs.tasks import TASKS, TaskRules, TaskSpec, Transition, get_task, register_task

# `gymnasium.make("kudos/Score-v0")`, `gymnasium.make("kudos/MiniHack-River-v0")` etc., for
# trainers that build envs by id.
for _name in TASKS:
    if f"kudos/{_name}-v0" not in registry:
        register(id=f"kudos/{_name}-v0", entry_point="kudos.envs.nethack:make_env", kwargs={"task": _name})

__all__ = [
    "ACTION_NAMES",
    "CaptionCounter",
    "DEFAULT_OBSERVATION_KEYS",
    "EXTENDED_ACTIONS",
    "EndStatus",
    "MiniHackTaskEnv",
    "MiniHackTaskSpec",
    "NUM_ACTIONS",
    "NetHackTaskEnv",
    "TASKS",
    "TaskRules",
    "TaskSpec",
    "Transition",
    "clean_caption",
    "decode_caption",
    "get_task",
    "make_env",
    "register_task",
]
