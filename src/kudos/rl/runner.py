"""``kudos train``: asynchronous APPO on a NetHack task with an intrinsic reward learned online.

Who does what (each in its own thread or process, so nothing waits for the LLM):

- rollout workers (processes, :mod:`kudos.rl.workers`) step the games and act with their own
  copy of the policy (or a policy worker's, ``run.inference``), writing T-step trajectories into
  shared memory; a dispatcher thread (:class:`~kudos.rl.sampler.Sampler`) collects them;
- the learner (this thread, on ``run.device``) takes one trajectory of every env, scores its
  captions with the latest reward model, submits them for labelling, shapes the rewards and runs
  one APPO update, then publishes the weights (shared memory, versioned);
- the annotator and reward-model trainer threads (:class:`~kudos.rewards.intrinsic.IntrinsicReward`)
  label captions with the LLM and fit the reward model as labels arrive: in the learner's
  process (``run.reward_placement = "thread"``) or in a child process of their own
  (``"process"``, :class:`~kudos.rewards.service.RewardProcess`: the learner then scores with the
  newest reward-model snapshot it has, asked for each update without waiting).

Checkpoints hold everything needed to continue (policy, optimiser, reward model, shaping
statistics, annotator backlog, counters, RNG states); steps collected after the last checkpoint
are not counted, so a killed run resumes with no step counted twice, and every label it got is
in the label store. Rollouts are asynchronous (which policy version acts on which step depends
on timing), so a run is not bit-reproducible from its seed.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kudos import STARTUP_LOG
from kudos.envs import get_task
from kudos.errors import ConfigError
from kudos.rl.experiment import KudosConfig, log_config, save_config
from kudos.rewards.intrinsic import IntrinsicReward
from kudos.rewards.service import RewardProcess
from kudos.rewards.shaping import RewardShaper
from kudos.rl.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from kudos.rl.learner import Learner
from kudos.rl.policy import NetHackPolicy
from kudos.rl.runstats import RunStats
from kudos.rl.sampler import SampleBatch, Sampler, SamplerConfig, resolve_device
from kudos.rl.timing import Stopwatch, TimeShares

log = logging.getLogger(__name__)
startup = logging.getLogger(STARTUP_LOG)

_RECENT_EPISODES = 100
#: Seconds between forced GIL hand-offs during a run (Python's default is 0.005), so threads that
#: mostly wait or call torch (the sampler's dispatcher, reward-model trainer) get the GIL back soon.
GIL_SWITCH_INTERVAL_S = 0.0005
# Where the learner's loop spends its time (``time/learner/*``): waiting for a full batch of
# slots, scoring and shaping the intrinsic reward, the APPO update and weight publication, and
# the rest (run statistics, reports, checkpoints).
LEARNER_TIME = ("waiting_for_workers", "reward", "learning", "bookkeeping")


@dataclasses.dataclass
class Progress:
    """Counters of a run (checkpointed): env steps trained on, updates, finished episodes."""

    env_steps: int = 0
    updates: int = 0
    episodes: int = 0


class Stats:
    """Rolling figures for the display and TensorBoard."""

    def __init__(self) -> None:
        self.returns: deque[float] = deque(maxlen=_RECENT_EPISODES)
        self.lengths: deque[int] = deque(maxlen=_RECENT_EPISODES)
        self.successes: deque[bool] = deque(maxlen=_RECENT_EPISODES)
        self.scores: deque[int] = deque(maxlen=_RECENT_EPISODES)
        self.depths: deque[int] = deque(maxlen=_RECENT_EPISODES)
        self.latest: dict[str, float] = {}

    def summary(self) -> dict[str, float]:
        out = dict(self.latest)
        if self.returns:
            out["episode/return"] = float(np.mean(self.returns))
            out["episode/length"] = float(np.mean(self.lengths))
            out["episode/success_rate"] = float(np.mean(self.successes))
            out["episode/score"] = float(np.mean(self.scores))
            out["episode/depth"] = float(np.mean(self.depths))
        return out


def source_revision() -> tuple[str, bool | None]:
    """The git commit of the kudos source that runs, and whether its tracked files differ from
    it; ("unknown", None) outside a git checkout (an installed wheel) or without git."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", None
    if commit.returncode != 0 or status.returncode != 0:
        return "unknown", None
    return commit.stdout.strip(), bool(status.stdout.strip())


def record_revision(config: KudosConfig) -> None:
    """Set ``run.commit``/``run.dirty`` to the running source; a run resumed on another commit
    keeps both ("A+B"), and stays dirty once dirty."""
    commit, dirty = source_revision()
    previous = config.run.commit
    if previous and previous != commit and not previous.endswith(f"+{commit}"):
        log.warning("resuming a run started on commit %s with commit %s", previous, commit)
        commit = f"{previous}+{commit}"
    elif previous:
        commit = previous
    config.run.commit = commit
    known = [d for d in (config.run.dirty, dirty) if d is not None]
    config.run.dirty = any(known) if known else None


def _llm_seconds(reward_figures: dict[str, float]) -> float:
    """Seconds every annotator has spent waiting on the LLM so far (their ``llm_seconds``)."""
    return sum(v for k, v in reward_figures.items() if k.endswith("/llm_seconds"))


class TrainingRun:
    """One training run: builds every component from ``config`` and trains to ``run.steps``.

    Args:
        config: the run's configuration.
        resume: continue from the checkpoint in ``config.run.output_dir``.
        on_progress: called every ``run.log_every_s`` with (progress, figures) for a live display.
    """

    def __init__(
        self,
        config: KudosConfig,
        resume: bool = False,
        on_progress: Callable[[Progress, dict[str, float]], None] | None = None,
    ) -> None:
        self.config = config
        self.task = get_task(config.env.task)
        self.output_dir = Path(config.run.output_dir)
        self.on_progress = on_progress
        self.progress = Progress()
        self.stats = Stats()
        self.device = resolve_device(config.run.device)
        self.cpu = config.cpu.resolve(
            config.env.num_envs, learner_on_gpu=self.device.type == "cuda",
            llm_in_process=config.llm_in_process,
        )
        startup.info("CPU budget: %s", self.cpu.describe())
        torch.set_num_threads(self.cpu.learner_threads)
        torch.manual_seed(config.env.seed)
        np.random.seed(config.env.seed)

        policy_config = config.policy
        self.policy = NetHackPolicy(policy_config, self.task.num_actions).to(self.device)
        self.learner = Learner(self.policy, config.appo)
        self.shaper = RewardShaper(config.reward.shaping_for(self.task.extrinsic_coef), config.env.num_envs)
        self.reward: IntrinsicReward | RewardProcess | None = None
        if config.reward.type != "none":
            placement = RewardProcess if config.run.reward_placement == "process" else IntrinsicReward
            self.reward = placement(config.reward, config.llm, self.task.goal, cpu=self.cpu)
        # What the run rewarded, per caption, and the reward-hacking diagnostics (kudos report).
        self.run_stats = RunStats(config.diagnostics, config.env.num_envs)
        feed = self.reward.label_feed() if self.reward is not None else None
        if feed is not None:
            self.run_stats.follow(feed)

        checkpoint = load_checkpoint(self.output_dir) if resume else None
        if checkpoint is not None:
            self._restore(checkpoint)
        # Resumed runs play new games: reseed so they do not replay the first run's episodes.
        env_seed = config.env.seed + 1_000_003 * self.progress.updates
        workers = self.cpu.env_workers
        startup.info("starting %d envs in %d worker processes", config.env.num_envs, workers)
        self.sampler = Sampler(
            self.task,
            policy_config,
            self.policy.state_dict(),
            SamplerConfig(
                num_workers=workers,
                envs_per_worker=config.env.num_envs // workers,
                rollout=config.appo.rollout,
                batch_slots=2 * workers,
                inference=config.run.inference,
                slots_ahead=config.run.slots_ahead,
                seed=env_seed,
                max_episode_steps=config.env.max_episode_steps,
                whole_rounds=True,  # per-env shaping and run statistics line up with env ids
            ),
            device=self.device,
            version=self.learner.updates,
            env_options={"macros": config.env.macros},
        )
        self.tensorboard: Any = None

    # --- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "progress": dataclasses.asdict(self.progress),
            "learner": self.learner.state_dict(),
            "shaper": self.shaper.state_dict(),
            "reward": self.reward.state_dict() if self.reward is not None else None,
            "rng": rng_state(),
            "task": self.task.name,
            "reward_type": self.config.reward.type,
            "run_stats": self.run_stats.state_dict(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("engine") == "rllib":  # its checkpoint.pt is for `kudos report`; RLlib's resumes it
            raise ConfigError("this run was trained with --engine rllib: "
                              "resume it with `kudos train --engine rllib --resume`")
        if state["task"] != self.task.name or state["reward_type"] != self.config.reward.type:
            raise ConfigError(
                f"the checkpoint is of a {state['task']} run with reward {state['reward_type']!r}; "
                f"resume it with the same task and reward"
            )
        self.progress = Progress(**state["progress"])
        self.learner.load_state_dict(state["learner"])
        self.shaper.load_state_dict(state["shaper"])
        if self.reward is not None:
            self.reward.load_state_dict(state["reward"])
        set_rng_state(state["rng"])
        if "run_stats" in state:  # absent from checkpoints of older versions
            self.run_stats.load_state_dict(state["run_stats"])
        log.info("resumed at %d env steps, %d updates", self.progress.env_steps, self.progress.updates)

    def checkpoint(self) -> Path:
        return save_checkpoint(self.output_dir, self.state_dict())

    # --- learning ----------------------------------------------------------------------------

    def _rewards(self, sample: SampleBatch) -> tuple[np.ndarray, np.ndarray]:
        """Shaped rewards ``(T, B)`` and the raw intrinsic rewards ``(T, B)`` of a batch."""
        flat = [c for row in sample.captions for c in row]
        if self.reward is None:
            r_int = np.zeros_like(sample.env_rewards)
        else:
            self.reward.submit(flat)
            r_int = self.reward(flat).reshape(sample.env_rewards.shape)
        shaped = self.shaper(sample.env_rewards, r_int, sample.caption_counts, sample.dones[1:])
        return shaped, r_int

    def _record(self, sample: SampleBatch, r_int: np.ndarray, update_stats: dict[str, float]) -> None:
        for episode in sample.episodes:
            self.stats.returns.append(episode.ret)
            self.stats.lengths.append(episode.length)
            self.stats.successes.append(episode.success)
            self.stats.scores.append(episode.score)
            self.stats.depths.append(episode.depth)
        self.progress.episodes += len(sample.episodes)
        latest = {f"learner/{k}": v for k, v in update_stats.items()}
        latest["reward/extrinsic_per_step"] = float(sample.env_rewards.mean())
        latest["intrinsic/mean"] = float(r_int.mean())
        latest["intrinsic/nonzero_fraction"] = float(np.mean(r_int != 0))
        latest["learner/policy_lag"] = float(sample.policy_lag.mean())
        latest.update(self.sampler.metrics())
        self.stats.latest = latest
        self.run_stats.record(sample.captions, sample.caption_counts, sample.dones, sample.env_rewards, r_int)

    def _where_time_goes(self, reward_figures: dict[str, float]) -> dict[str, float]:
        """Fractions of wall time since the last report: the learner's loop by
        :data:`LEARNER_TIME`, the rollout workers' (:meth:`Sampler.time_shares`) and the LLM's
        (``time/llm/busy``, from ``reward_figures``' ``llm_seconds``: answering the annotators'
        batches; above 1 when several ask at once)."""
        self._llm_seconds_so_far = _llm_seconds(reward_figures)
        shares = {f"time/learner/{part}": share for part, share in self._learner_time().items()}
        shares.update(self.sampler.time_shares())
        if self._llm_time is not None:
            shares.update({f"time/llm/{part}": share for part, share in self._llm_time().items()})
        return shares

    def _report(self, started: float, steps_at_start: int) -> None:
        figures = self.stats.summary()
        elapsed = max(time.monotonic() - started, 1e-9)
        figures["throughput/env_steps_per_s"] = (self.progress.env_steps - steps_at_start) / elapsed
        reward_figures = self.reward.metrics() if self.reward is not None else {}  # once: an RPC in process placement
        figures.update(self._where_time_goes(reward_figures))
        figures.update(reward_figures)
        figures.update(self.run_stats.diagnose(self.reward).figures())
        if self.tensorboard is not None:
            for key, value in figures.items():
                self.tensorboard.add_scalar(key, value, self.progress.env_steps)
        if self.on_progress is not None:
            self.on_progress(self.progress, figures)

    def train(self) -> Progress:
        """Train until ``run.steps`` env steps; returns the final counters."""
        from torch.utils.tensorboard import SummaryWriter

        record_revision(self.config)
        save_config(self.config, self.output_dir)
        self.tensorboard = SummaryWriter(str(self.output_dir / "tensorboard"))
        # The resolved tree beside the curves (TensorBoard's Text tab), as config.yaml holds it.
        log_config(self.tensorboard, self.config, self.progress.env_steps)
        self.tensorboard.add_text("cpu_budget", self.cpu.describe(), self.progress.env_steps)
        # The sampler's dispatcher thread mostly waits on worker pipes; with the default 5 ms GIL
        # switch interval a worker could wait that long for its next free slot.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        if self.reward is not None:
            self.reward.start()
        started, steps_at_start = time.monotonic(), self.progress.env_steps
        clock = Stopwatch(LEARNER_TIME)
        self._learner_time = TimeShares(LEARNER_TIME, lambda: clock.read("bookkeeping"))  # reports are bookkeeping
        self._llm_seconds_so_far = 0.0 if self.reward is None else _llm_seconds(self.reward.metrics())
        self._llm_time = None if self.reward is None else TimeShares(("busy",), lambda: [self._llm_seconds_so_far])
        self.sampler.time_shares()  # the workers' first share is of training, not of start-up
        next_report = started
        next_checkpoint = started + self.config.run.checkpoint_every_s
        try:
            while self.progress.env_steps < self.config.run.steps:
                clock.lap("bookkeeping")
                sample = self.sampler.next_batch()
                clock.lap("waiting_for_workers")
                rewards, r_int = self._rewards(sample)
                clock.lap("reward")
                batch = dataclasses.replace(sample.batch, rewards=torch.from_numpy(rewards).to(self.device))
                update_stats = self.learner.update(batch)
                self.sampler.publish(self.policy.state_dict(), self.learner.updates)
                clock.lap("learning")
                self.progress.updates = self.learner.updates
                self.progress.env_steps += sample.num_steps
                self._record(sample, r_int, update_stats)
                now = time.monotonic()
                if now >= next_report:
                    self._report(started, steps_at_start)
                    next_report = now + self.config.run.log_every_s
                if now >= next_checkpoint:
                    self.checkpoint()
                    next_checkpoint = now + self.config.run.checkpoint_every_s
            if self.reward is not None:
                self.reward.close()  # the LLM batch in flight is stored and counted before the last report
            self._report(started, steps_at_start)
            self.checkpoint()
        finally:
            sys.setswitchinterval(switch_interval)
            self.close()
        return self.progress

    def close(self) -> None:
        """Stop every thread and process of the run (idempotent)."""
        self.sampler.close()
        if self.reward is not None:
            self.reward.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
