"""The NetHack environment kudos trains on: real NLE, a task's rules, the extended action set,
ONI's prompt macros and a caption for every step.

Prompt macros (what the environment answers for the agent, inside one agent step), ONI's
(``rl_baseline/tasks_nle.py``) by default, ``macros="oni"``:

- ``--More--``: pressed away; the step's caption is the message on screen when the game waits for
  the agent, except that "You descend the stairs." is kept when it was shown behind a ``--More--``
  (so "You kill the newt!" behind a ``--More--`` is lost, as in ONI);
- "What do you want to eat/drink? [fg or ?*]": left to the agent (it is the step's caption); its
  next action answers it: ``y`` (the north-west move) takes the first offered item, any other
  action cancels;
- after "You feel more confident in ...", ``#enhance`` is sent and its first skill advanced;
- other y/n prompts are declined, except those about eating, attacking, praying, drinking and
  directions, which the agent answers with its next action;
- text input (``getlin``) is escaped; casting (``Z``) selects the first spell.

``macros="kudos"`` differs in two places: a ``--More--`` chain is joined into the caption in
order (every message the step showed reaches the LLM), and eat/drink item prompts are answered
with the first offered item inside the same step.

Observations are NLE's dict observations; ``message`` holds the step's caption (Latin-1 bytes,
NUL-padded to 256), so the policy sees what the LLM is asked about. ``info`` of every step holds
``caption`` (str), ``caption_count`` (int, sightings of this caption in the episode, this one
included), ``end_status`` (:class:`EndStatus` as int), ``success`` (bool), and the in-game
``score`` and dungeon ``depth`` (ints, from the bottom line; the last in-game ones once the game
has ended).
"""

from __future__ import annotations

import enum
import logging
import re
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from nle import nethack
from nle.env.base import ASCII_ESC, ASCII_SPACE, NLE

from kudos.envs.captions import CaptionCounter, decode_caption, join_captions
from kudos.envs.tasks import TaskSpec, Transition, get_task
from kudos.errors import ConfigError

log = logging.getLogger(__name__)

#: What the policy network reads (see the sample-factory NetHack baselines).
DEFAULT_OBSERVATION_KEYS: tuple[str, ...] = (
    "tty_chars",
    "tty_colors",
    "tty_cursor",
    "blstats",
    "message",
    "glyphs",
)

#: Values of ``NetHackTaskEnv(macros=...)`` (see the module docstring).
MACROS = ("oni", "kudos")

_ITEM_PROMPT = re.compile(r"What do you want to (?:eat|drink)\? \[([^\]]*)\]")
_AGENT_ANSWERS = ("eat", "attack", "pray", "drink", "direction")
_STAIRS = "You descend the stairs."  # the one message ONI keeps across a --More--
_SKILL_UP = "You feel more confident in"  # NetHack's hint that a skill can be advanced
_TAKE_FIRST_ITEM = ord("y")  # the key (north-west) that takes the first item at an item prompt
_SPELL_MENU = b"Choose which spell to cast"
# A macro chain longer than this means the game is stuck in a prompt loop; give the step back.
_MAX_MACRO_KEYS = 64
_IN_YN, _IN_GETLIN, _WAIT_SPACE = 1, 2, 3  # indices in NLE's "internal" observation


class EndStatus(enum.IntEnum):
    """How a step left the episode (``info["end_status"]``)."""

    ABORTED = -1  # truncated: step limit or no progress
    RUNNING = 0
    DEATH = 1  # the game ended (death, or quitting)
    TASK_SUCCESSFUL = 2


def first_offered_item(prompt: str, pattern: re.Pattern[str] = _ITEM_PROMPT) -> str | None:
    """The first inventory letter offered by an item prompt (eat/drink unless ``pattern`` says
    otherwise), or None if it offers none.

    >>> first_offered_item("What do you want to eat? [fg or ?*]")
    'f'
    """
    match = pattern.search(prompt)
    if match is None:
        return None
    letters = match.group(1).split(" or ")[0]
    return next((c for c in letters if c.isalpha()), None)


class NetHackTaskEnv(NLE):
    """One NetHack game under a task's rules (see the module docstring for the macros).

    Args:
        task: a task name (``"Score"``, ``"StaircaseLvl3"``, ...) or a :class:`TaskSpec`.
        observation_keys: NLE observation keys returned to the agent.
        max_episode_steps: agent steps before the episode is truncated; default: the task's.
        character: NetHack character string; default: the task's.
        macros: ``"oni"`` (ONI's prompt macros) or ``"kudos"`` (``--More--`` chains joined into
            the caption, eat/drink prompts answered with the first item); see the module docstring.

    Seeding: ``reset(seed=s)`` fixes the game's core and display RNGs, and every later episode
    draws its game seeds from a generator seeded by ``s``, so a seeded run of episodes replays
    exactly given the same actions.
    """

    metadata = {"render_modes": ["human", "ansi"]}

    def __init__(
        self,
        task: str | TaskSpec = "Score",
        *,
        observation_keys: Sequence[str] = DEFAULT_OBSERVATION_KEYS,
        max_episode_steps: int | None = None,
        character: str | None = None,
        macros: str = "oni",
    ) -> None:
        if macros not in MACROS:
            raise ConfigError(f"env.macros must be one of {', '.join(MACROS)}, got {macros!r}")
        self.macros = macros
        self.spec_task = task if isinstance(task, TaskSpec) else get_task(task)
        keys = list(observation_keys)
        wants_tty_chars = "tty_chars" in keys
        if not wants_tty_chars:
            keys.append("tty_chars")  # needed to recognise the spell menu
        options = None
        if self.spec_task.options:
            options = tuple(nethack.NETHACKOPTIONS) + self.spec_task.options
        super().__init__(
            character=character or self.spec_task.character,
            max_episode_steps=max_episode_steps or self.spec_task.max_episode_steps,
            observation_keys=keys,
            actions=self.spec_task.actions,
            options=options,
            spawn_monsters=self.spec_task.spawn_monsters,
            fix_moon_phase=True,
        )
        self._tty_index = self._observation_keys.index("tty_chars")
        if not wants_tty_chars:
            self._original_observation_keys = tuple(observation_keys)
            self._original_indices = tuple(self._observation_keys.index(k) for k in observation_keys)
            self.observation_space = gym.spaces.Dict(
                {k: self.observation_space[k] for k in observation_keys}
            )
        self.rules = self.spec_task.make_rules()
        self.captions = CaptionCounter()
        self._cast_key = int(nethack.Command.CAST)
        self._frozen_steps = 0
        self._item_prompt: str | None = None  # an eat/drink prompt the agent's next action answers
        self._enhance = False  # a skill can be advanced: send #enhance when the game next waits

    # --- episode ------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        core, disp = (int(s) for s in self.np_random.integers(1, 2**62, size=2))
        self.nethack.set_initial_seeds(core, disp, False, None)
        self.rules.reset()
        self.captions.reset()
        self._frozen_steps = 0
        self._item_prompt = None
        self._enhance = False
        # The game seeds are set; NLE must not reseed gymnasium's generator again.
        return super().reset(seed=None, options=None)

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        last = self.last_observation
        prev_blstats = last[self._blstats_index].copy()  # NLE refills its arrays in place
        prev_internal = last[self._internal_index].copy()

        key = self.actions[action]
        if self._item_prompt is not None:  # ONI: y takes the first offered item, anything else cancels
            item = first_offered_item(self._item_prompt) if key == _TAKE_FIRST_ITEM else None
            key = ord(item) if item else ASCII_SPACE
            self._item_prompt = None
        observation, done = self.nethack.step(key)
        parts: list[str] = []
        observation, done = self._answer_prompts(observation, done, parts, key == self._cast_key)
        caption = join_captions(parts)
        if caption != decode_caption(observation[self._message_index]):
            self._write_message(observation, caption)

        self._steps += 1
        self.last_observation = observation
        transition = Transition(
            prev_blstats,
            observation[self._blstats_index],
            prev_internal,
            observation[self._internal_index],
            observation[self._glyph_index],
            caption,
        )
        in_game = not done and self.nethack.in_normal_game()
        success = in_game and self.rules.success(transition)
        # A finished game (or quitting one, below) zeroes the bottom line: keep the last in-game one.
        bottom = transition.blstats if in_game else prev_blstats
        score, depth = int(bottom[nethack.NLE_BL_SCORE]), int(bottom[nethack.NLE_BL_DEPTH])
        reward = self.rules.reward(transition) if in_game else 0.0
        if prev_blstats[nethack.NLE_BL_TIME] == transition.blstats[nethack.NLE_BL_TIME]:
            self._frozen_steps += 1
        else:
            self._frozen_steps = 0
        timeout = self.spec_task.no_progress_timeout
        truncated = not (done or success) and (
            self._steps >= self._max_episode_steps
            or (timeout is not None and self._frozen_steps >= timeout)
        )
        if success:
            self._quit_game(observation, done)
            status = EndStatus.TASK_SUCCESSFUL
        elif done:
            status = EndStatus.DEATH
        elif truncated:
            status = EndStatus.ABORTED
        else:
            status = EndStatus.RUNNING
        info = {
            "caption": caption,
            "caption_count": self.captions.observe(caption),
            "end_status": int(status),
            "success": success,
            "score": score,
            "depth": depth,
        }
        return self._get_observation(observation), float(reward), done or success, truncated, info

    def bind_observation_buffers(self, buffers: dict[str, np.ndarray]) -> None:
        """Make the game write the given observations straight into ``buffers`` (e.g. shared
        memory), saving a copy per step. Takes effect from the next ``reset()``.

        Each array must have the shape and dtype of the observation it replaces.
        """
        game = self.nethack
        for key, array in buffers.items():
            current = game._obs_buffers[key]
            if array.shape != current.shape or array.dtype != current.dtype:
                raise ValueError(f"buffer for {key!r} must be {current.dtype}{current.shape}, got {array.dtype}{array.shape}")
            game._obs_buffers[key] = array
        # NLE 1.3 keeps its buffers in these two places; the C side gets the new pointers here.
        game._pynethack.set_buffers(**game._obs_buffers)
        game._obs = tuple(game._obs_buffers[k] for k in self._observation_keys)

    # --- macros -------------------------------------------------------------------------------

    def _answer_prompts(
        self, observation: tuple[np.ndarray, ...], done: bool, parts: list[str], cast: bool
    ) -> tuple[tuple[np.ndarray, ...], bool]:
        """Press the keys the macros prescribe until the game waits for the agent; ``parts``
        receives the messages that make the step's caption."""
        join = self.macros == "kudos"
        kept: str | None = None  # ONI: the stairs message, kept across --More--
        for _ in range(_MAX_MACRO_KEYS):
            if done:
                break
            internal = observation[self._internal_index]
            message = decode_caption(observation[self._message_index])
            if _SKILL_UP in message:
                self._enhance = True
            if internal[_WAIT_SPACE]:
                if cast and _SPELL_MENU in observation[self._tty_index][0].tobytes():
                    cast, kept = False, None
                    observation, done = self.nethack.step(ord("a"))
                    continue
                if join:
                    parts.append(message)
                elif _STAIRS in message:
                    kept = message
                observation, done = self.nethack.step(ASCII_SPACE)
                continue
            if internal[_IN_GETLIN]:
                kept = None
                observation, done = self.nethack.step(ASCII_ESC)
                continue
            if internal[_IN_YN]:
                key = self._task_answer(message)
                if key is not None:
                    observation, done = self.nethack.step(key)
                    continue
                if join and _ITEM_PROMPT.search(message):
                    item = first_offered_item(message)
                    observation, done = self.nethack.step(ord(item) if item else ASCII_ESC)
                    continue
                if any(word in message for word in _AGENT_ANSWERS):
                    if _ITEM_PROMPT.search(message):
                        self._item_prompt = message
                    parts.append(kept or message)
                    break
                kept = None
                observation, done = self.nethack.step(ASCII_ESC)
                continue
            if self._enhance:
                # ONI: #enhance, then the first skill of its menu; then handle what that shows.
                self._enhance, kept = False, None
                observation, done = self.nethack.step(int(nethack.Command.ENHANCE))
                if not done:
                    observation, done = self.nethack.step(ord("a"))
                continue
            parts.append(kept or message)
            break
        else:
            log.warning("prompt macros pressed %d keys without reaching the game; giving the step back", _MAX_MACRO_KEYS)
        return observation, done

    def _task_answer(self, message: str) -> int | None:
        """The key a task's own macro presses at a y/n or item prompt; None leaves the prompt to
        the macros above. NetHack tasks have none; MiniHack tasks answer e.g. "Unlock it?"."""
        return None

    def _write_message(self, observation: tuple[np.ndarray, ...], caption: str) -> None:
        buffer = observation[self._message_index]
        encoded = caption.encode("latin-1", errors="replace")[: buffer.shape[0]]
        buffer[:] = 0
        buffer[: len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)


def make_env(task: str | TaskSpec = "Score", **kwargs: Any) -> NetHackTaskEnv:
    """Build one task environment, of the task's ``env_class`` (see :class:`NetHackTaskEnv` for
    the arguments)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    return (spec.env_class or NetHackTaskEnv)(spec, **kwargs)
