"""The CPU budget of a run: who gets the cores, and who yields them.

One config section (``cpu``) says how many rollout worker processes step envs, how many threads
the learner, the embedded LLM and the reward-model trainer use, and how much the LLM defers to
training. :meth:`CPUConfig.resolve` turns it into a :class:`CPUBudget` of plain numbers for the
box the run is on; ``"auto"`` fields follow the rules below, so one config works on a 2-core
laptop and on a 16-core GPU box, and a run resumed on another machine resolves again there.

The rules (``C``: cores this process may use, ``os.sched_getaffinity``, or ``cpu.cores``):

- ``llm_threads``: 1 up to 4 cores (llama.cpp's threads compete with the env workers; 1 was best
  on 2 cores, docs/results.md), else ``min(4, C // 4)``.
- ``learner_threads``: 1 when the learner is on a GPU or up to 4 cores, else ``min(8, C // 4)``.
- ``env_workers``: the most workers, at least 2 where ``env.num_envs`` allows, that fit in the
  cores left once the learner (and an in-process LLM) have theirs and split ``env.num_envs`` into
  equal halves. On 2 cores that is 2 workers beside the learner and the LLM: oversubscribed, the
  most env steps/s measured there; one worker doubled the LLM's labels/s for 11% fewer env steps/s
  (docs/results.md, bench/train_throughput.py ``--splits``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from kudos.errors import ConfigError

Auto = Literal["auto"]


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one, as ``taskset``
    and container CPU sets restrict it; else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class CPUBudget:
    """A resolved budget: plain numbers (see :class:`CPUConfig` for each; ``env_workers`` is 0
    where the envs are not kudos's to step, as under RLlib)."""

    cores: int = 1
    env_workers: int = 2
    learner_threads: int = 1
    llm_threads: int = 1
    reward_trainer_threads: int = 1
    llm_nice: int = 5

    def describe(self) -> str:
        workers = f"{self.env_workers} env workers, " if self.env_workers else ""
        return (f"{self.cores} cores: {workers}learner {self.learner_threads} thread(s), LLM "
                f"{self.llm_threads} thread(s) at nice +{self.llm_nice}, reward trainer "
                f"{self.reward_trainer_threads} thread(s)")


@dataclass
class CPUConfig:
    """The ``cpu`` section: the run's CPU budget (module docstring for the ``"auto"`` rules).

    ``cores``: cores the budget spreads over ("auto": those this process may use).
    ``env_workers``: W rollout worker processes; each steps ``env.num_envs / W`` envs in two halves.
    ``learner_threads``: torch intra-op threads of the learner.
    ``llm_threads``: llama.cpp threads of the embedded LLM (unused with an HTTP endpoint).
    ``reward_trainer_threads``: torch threads of each online reward-model trainer.
    ``llm_nice``: niceness added to the LLM annotator's thread (Linux), so an in-process LLM
    yields the cores to training when both want them and takes what is left (0: equal share).
    """

    cores: int | Auto = "auto"
    env_workers: int | Auto = "auto"
    learner_threads: int | Auto = "auto"
    llm_threads: int | Auto = "auto"
    reward_trainer_threads: int = 1
    llm_nice: int = 5

    def __post_init__(self) -> None:
        for name in ("cores", "env_workers", "learner_threads", "llm_threads", "reward_trainer_threads"):
            value = getattr(self, name)
            if value != "auto" and value < 1:
                raise ConfigError(f"{name} must be >= 1 or auto, got {value}")
        if not 0 <= self.llm_nice <= 19:
            raise ConfigError(f"llm_nice must be in 0..19, got {self.llm_nice}")

    def resolve(self, num_envs: int | None, learner_on_gpu: bool = False, llm_in_process: bool = False) -> CPUBudget:
        """The budget on this box for a run of ``num_envs`` envs (None: the envs are not kudos's
        to step, as under RLlib; ``env_workers`` is then 0). ``learner_on_gpu``: the learner
        trains on cuda (its CPU thread mostly waits); ``llm_in_process``: the embedded LLM labels
        on this box's cores (not an HTTP endpoint, and the reward is not ``none``)."""
        if num_envs is not None and (num_envs < 2 or num_envs % 2):
            raise ConfigError(f"env.num_envs must be even and >= 2 (each worker steps two halves), got {num_envs}")
        cores = available_cores() if self.cores == "auto" else self.cores
        small = cores <= 4
        llm = (1 if small else min(4, cores // 4)) if self.llm_threads == "auto" else self.llm_threads
        learner = ((1 if learner_on_gpu or small else min(8, cores // 4))
                   if self.learner_threads == "auto" else self.learner_threads)
        if num_envs is None:
            workers = 0
        elif self.env_workers == "auto":
            room = max(2, cores - learner - (llm if llm_in_process else 0))
            workers = max(w for w in range(1, room + 1) if num_envs % (2 * w) == 0)
        else:
            workers = self.env_workers
            if num_envs % (2 * workers):
                raise ConfigError(
                    f"env.num_envs ({num_envs}) must be a multiple of 2 x cpu.env_workers ({workers}): "
                    "each worker steps two equal halves"
                )
        return CPUBudget(cores, workers, learner, llm, self.reward_trainer_threads, self.llm_nice)
