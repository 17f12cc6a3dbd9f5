"""The extended action set: NLE's 23 task actions plus cast, quaff, pray, pickup and pay (28).

ONI trains on this set; the extra commands give the LLM's favourite events (drinking, praying,
picking things up, paying shopkeepers, casting) a way to happen at all.
"""

from __future__ import annotations

from nle import nethack
from nle.env.tasks import TASK_ACTIONS

EXTRA_ACTIONS: tuple[int, ...] = (
    nethack.Command.CAST,
    nethack.Command.QUAFF,
    nethack.Command.PRAY,
    nethack.Command.PICKUP,
    nethack.Command.PAY,
)

EXTENDED_ACTIONS: tuple[int, ...] = tuple(TASK_ACTIONS) + EXTRA_ACTIONS
NUM_ACTIONS = len(EXTENDED_ACTIONS)

ACTION_NAMES: tuple[str, ...] = tuple(
    f"{type(a).__name__}.{a.name}" for a in EXTENDED_ACTIONS  # e.g. "CompassDirection.N"
)


def action_index(key: int) -> int:
    """Index in the extended action set of a NetHack key code (e.g. ``nethack.Command.PRAY``)."""
    try:
        return EXTENDED_ACTIONS.index(key)
    except ValueError:
        raise ValueError(f"key {key!r} is not in the extended action set") from None
