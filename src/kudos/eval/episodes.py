"""Evaluation episodes: play a policy (random, or a run's checkpoint) on a task, summarise what
happened and optionally record each episode for the report's replay viewer.

A recorded episode is one JSONL file, ``episode_<i>.jsonl``: a header line
``{"type": "episode", ...}``, one line per step ``{"t", "caption", "reward", "r_int", "rows"}``
where ``rows`` maps the index of each terminal row that changed since the previous frame to its
text (the first frame, ``t = 0``, after the reset, holds all 24), and a closing line
``{"type": "end", ...}`` with the episode's summary.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Protocol

import gymnasium as gym
import numpy as np
from nle import nethack

from kudos.envs import EndStatus, make_env

if TYPE_CHECKING:  # torch is imported only when a checkpoint's policy acts
    from kudos.rl.policy import PolicyConfig

# How a game ended, by NLE's ``how_done()`` code.
_HOW_DONE = {getattr(nethack, name): name.lower().replace("_", " ") for name in (
    "DIED", "CHOKING", "POISONING", "STARVING", "DROWNING", "BURNING", "DISSOLVED", "CRUSHING", "STONING",
    "TURNED_SLIME", "GENOCIDED", "PANICKED", "TRICKED", "QUIT", "ESCAPED", "ASCENDED",
)}


class Policy(Protocol):
    """Maps one observation to an action index in the task's action set."""

    def __call__(self, obs: dict[str, np.ndarray]) -> int: ...

    def reset(self) -> None:
        """Forget the last episode (recurrent state)."""


class RandomPolicy:
    """Uniformly random actions, seeded."""

    def __init__(self, action_space: gym.spaces.Discrete, seed: int | None = None) -> None:
        self.n = int(action_space.n)
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: dict[str, np.ndarray]) -> int:
        return int(self.rng.integers(self.n))

    def reset(self) -> None:
        pass


@dataclass
class EpisodeReport:
    """One evaluation episode: extrinsic return, length in agent steps, how it ended, captions,
    and the game's figures at its end: in-game ``score``, deepest dungeon level reached
    (``max_depth``), ``gold``, experience ``level``, game ``turns``; ``death``: how it ended in
    words (NLE's cause and the last message for a death; "task success"; "truncated")."""

    ret: float
    length: int
    end_status: EndStatus
    captions: Counter[str] = field(default_factory=Counter)
    score: int = 0
    max_depth: int = 0
    gold: int = 0
    level: int = 0
    turns: int = 0
    death: str = ""

    def summary(self) -> dict[str, object]:
        """The figures as plain values (no caption counts)."""
        out = asdict(self)
        del out["captions"]
        out["end_status"] = self.end_status.name
        return out


#: Called after every step with (episode index, step index, caption, caption count, reward).
StepCallback = Callable[[int, int, str, int, float], None]


def _rows(tty_chars: np.ndarray) -> list[str]:
    return [bytes(row).decode("latin-1").rstrip() for row in tty_chars]


def _ending(env: gym.Env, status: EndStatus, last_caption: str) -> str:
    if status == EndStatus.TASK_SUCCESSFUL:
        return "task success"
    if status == EndStatus.ABORTED:
        return "truncated"
    how = _HOW_DONE.get(int(env.unwrapped.nethack.how_done()), "ended")
    return f"{how}: {last_caption}" if last_caption else how


def run_episodes(
    task: str,
    policy_factory: Callable[[gym.Env], Policy],
    episodes: int = 1,
    *,
    seed: int | None = None,
    max_steps: int | None = None,
    on_step: StepCallback | None = None,
    record_dir: str | Path | None = None,
    intrinsic: dict[str, float] | None = None,
) -> list[EpisodeReport]:
    """Play ``episodes`` episodes of ``task`` with the policy built by ``policy_factory(env)``.

    The first episode is reset with ``seed``; later ones continue the seeded sequence. With
    ``record_dir``, each episode is written there as ``episode_<i>.jsonl`` (see the module
    docstring), each step with ``intrinsic[caption]`` as its ``r_int`` where given.
    """
    env = make_env(task, max_episode_steps=max_steps)
    policy = policy_factory(env)
    if record_dir is not None:
        Path(record_dir).mkdir(parents=True, exist_ok=True)
    reports = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed if episode == 0 else None)
            policy.reset()
            report = EpisodeReport(0.0, 0, EndStatus.RUNNING)
            blstats = obs["blstats"].copy()
            max_depth = int(blstats[nethack.NLE_BL_DEPTH])
            last_caption = ""
            out: IO[str] | None = None
            if record_dir is not None:
                out = open(Path(record_dir) / f"episode_{episode}.jsonl", "w")
                out.write(json.dumps({"type": "episode", "task": env.unwrapped.spec_task.name, "episode": episode}) + "\n")
                frame = _rows(obs["tty_chars"])
                out.write(json.dumps({"t": 0, "caption": "", "reward": 0.0, "r_int": None, "rows": dict(enumerate(frame))}) + "\n")
            try:
                while True:
                    obs, reward, terminated, truncated, info = env.step(policy(obs))
                    caption = info["caption"]
                    report.ret += reward
                    report.length += 1
                    report.captions[caption] += 1
                    last_caption = caption or last_caption
                    if not terminated:  # the game's end screens hold no status line
                        blstats = obs["blstats"].copy()
                        max_depth = max(max_depth, int(blstats[nethack.NLE_BL_DEPTH]))
                    if on_step is not None:
                        on_step(episode, report.length, caption, info["caption_count"], reward)
                    if out is not None:
                        rows = _rows(obs["tty_chars"])
                        changed = {i: row for i, (row, old) in enumerate(zip(rows, frame)) if row != old}
                        frame = rows
                        r_int = intrinsic.get(caption) if intrinsic is not None and caption else None
                        out.write(json.dumps({"t": report.length, "caption": caption, "reward": reward,
                                              "r_int": r_int, "rows": changed}) + "\n")
                    if terminated or truncated:
                        report.end_status = EndStatus(info["end_status"])
                        break
                report.score = int(blstats[nethack.NLE_BL_SCORE])
                report.max_depth = max_depth
                report.gold = int(blstats[nethack.NLE_BL_GOLD])
                report.level = int(blstats[nethack.NLE_BL_XP])
                report.turns = int(blstats[nethack.NLE_BL_TIME])
                report.death = _ending(env, report.end_status, last_caption)
                if out is not None:
                    out.write(json.dumps({"type": "end", **report.summary()}) + "\n")
            finally:
                if out is not None:
                    out.close()
            reports.append(report)
    finally:
        env.close()
    return reports


class CheckpointPolicy:
    """The policy of a run's checkpoint, acting on one env (its recurrent state carried between
    steps and cleared by :meth:`reset`).

    Args:
        policy_state: the ``learner["policy"]`` state dict of a checkpoint.
        sizes: the run's ``policy`` section (its network's sizes).
        num_actions: the size of the run's task's action set (``TaskSpec.num_actions``).
        greedy: take the most likely action instead of sampling one.
        seed: seeds the sampling.
    """

    def __init__(
        self, policy_state: dict[str, object], sizes: PolicyConfig, num_actions: int, *, greedy: bool = False,
        seed: int | None = None,
    ) -> None:
        import torch

        from kudos.rl.checkpoint import CheckpointError
        from kudos.rl.policy import NetHackPolicy

        self.policy = NetHackPolicy(sizes, num_actions)
        try:
            self.policy.load_state_dict(policy_state)
        except (RuntimeError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"the checkpoint's policy does not fit the run's policy sizes ({first})") from None
        self.policy.eval()
        self.greedy = greedy
        self.generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        self._torch = torch
        self.reset()

    def reset(self) -> None:
        self._state = self.policy.initial_state(1)
        self._done = self._torch.ones(1, dtype=self._torch.bool)

    def __call__(self, obs: dict[str, np.ndarray]) -> int:
        from kudos.rl.policy import POLICY_OBSERVATION_KEYS, obs_to_tensors

        torch = self._torch
        batch = obs_to_tensors({k: obs[k][None, None] for k in POLICY_OBSERVATION_KEYS})  # (T=1, B=1, ...)
        with torch.no_grad():
            out = self.policy(batch, self._state, self._done[None])
        logits = out.logits[0, 0]
        if self.greedy:
            action = int(logits.argmax())
        else:
            action = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator))
        self._state, self._done = out.core_state, torch.zeros(1, dtype=torch.bool)
        return action


def evaluate_run(
    run_dir: str | Path,
    episodes: int = 1,
    *,
    task: str | None = None,
    greedy: bool = False,
    seed: int | None = 0,
    max_steps: int | None = None,
    record_dir: str | Path | None = None,
    on_step: StepCallback | None = None,
) -> tuple[str, list[EpisodeReport]]:
    """Play ``episodes`` episodes with the policy of the checkpoint in ``run_dir``; returns the
    task played (``task``, default the run's) and the reports. Recorded steps carry the reward
    their caption got when the run last saw it (from the checkpoint's run statistics).

    Raises:
        CheckpointError: no checkpoint, or a corrupt one, in ``run_dir``.
    """
    from kudos.rl.experiment import load_config
    from kudos.envs import get_task
    from kudos.errors import KudosError
    from kudos.rl.checkpoint import CheckpointError, load_checkpoint
    from kudos.rl.experiment import CONFIG_NAME

    state = load_checkpoint(run_dir)
    config_path = Path(run_dir) / CONFIG_NAME
    if not config_path.is_file():
        raise KudosError(f"{config_path} not found: is {run_dir} a `kudos train` output directory?")
    config = load_config(config_path)
    try:
        policy_state = state["learner"]["policy"]
    except (KeyError, TypeError):
        raise CheckpointError(f"the checkpoint in {run_dir} holds no policy weights") from None
    spec = get_task(task or config.env.task)
    stats = state.get("run_stats") or {}
    intrinsic = dict(zip(stats.get("captions", []), np.asarray(stats.get("last_reward", [])).tolist()))
    reports = run_episodes(
        spec.name,
        lambda env: CheckpointPolicy(policy_state, config.policy, env.action_space.n, greedy=greedy, seed=seed),
        episodes,
        seed=seed,
        max_steps=max_steps or config.env.max_episode_steps,
        on_step=on_step,
        record_dir=record_dir,
        intrinsic=intrinsic if config.reward.type != "none" else None,
    )
    return spec.name, reports
