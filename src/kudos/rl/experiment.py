"""The experiment: the whole configuration tree of a training run, shared by both engines.

:class:`KudosConfig` gathers every component's section (``env``, ``reward``, ``llm``, ``appo``,
``policy``, ``cpu``, ``run``, ``diagnostics``); the native runner (:mod:`kudos.rl.runner`) and the RLlib
engine (:mod:`kudos.integrations.rllib`) both build from it. It sits above the components it
gathers, so :mod:`kudos.config` (the YAML/override machinery) stays a leaf. :data:`ALIASES` keeps
``config.yaml`` files and ``--set`` overrides written before a key moved loading.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kudos import config as _config
from kudos.cpu import CPUConfig
from kudos.errors import ConfigError
from kudos.feedback.config import LLMConfig
from kudos.fsutil import atomic_write
from kudos.rewards.intrinsic import RewardConfig
from kudos.rl.appo import APPOConfig
from kudos.rl.policy import PolicyConfig, get_policy_config
from kudos.rl.runstats import DiagnosticsConfig


@dataclass
class EnvConfig:
    """The NetHack task and how many copies of it are stepped in parallel (by ``cpu.env_workers``
    processes)."""

    task: str = "Score"
    num_envs: int = 16  # B: envs stepped per batch
    seed: int = 0
    max_episode_steps: int | None = None  # None: the task's default
    macros: Literal["oni", "kudos"] = "oni"  # prompt macros: "oni" (ONI's) or "kudos" (--More-- chains joined, item prompts answered)


@dataclass
class RunConfig:
    """Length, outputs and bookkeeping of a training run."""

    steps: int = 100_000  # env steps to train on (all envs together)
    output_dir: str = "runs/latest"
    policy: str = "small"  # the preset (kudos.rl.policy.POLICY_PRESETS) the `policy` section's sizes start from
    checkpoint_every_s: float = 300.0
    log_every_s: float = 2.0  # console and TensorBoard cadence
    device: Literal["auto", "cpu", "cuda"] = "auto"  # the learner's: "auto" (cuda when a GPU is visible), "cpu" or "cuda"
    inference: Literal["worker", "policy-worker"] = "worker"  # who acts: "worker" (each rollout worker) or "policy-worker" (one, on the device)
    slots_ahead: int = 1  # free rollout slots each half of a worker's envs holds beyond the one it fills
    # Where the LLM, annotators and reward-model trainers run: "thread" (threads of the learner's
    # process) or "process" (a child process; the learner scores with versioned snapshots).
    reward_placement: Literal["thread", "process"] = "thread"
    # Recorded by `kudos train` when it starts, not options: the kudos source commit ("unknown"
    # outside a git checkout; "A+B" for a run resumed on another commit) and uncommitted changes.
    commit: str = ""
    dirty: bool | None = None


@dataclass
class KudosConfig:
    """Root of the configuration tree: ``env``, ``reward``, ``llm``, ``appo``, ``policy``, ``cpu``,
    ``run`` and ``diagnostics``. ``policy``: the network's sizes, starting from the ``run.policy``
    preset (``--set run.policy=baseline policy.hidden_size=256``). ``cpu``: the run's CPU budget
    (worker processes, threads, the LLM's priority; :mod:`kudos.cpu`)."""

    env: EnvConfig = field(default_factory=EnvConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    appo: APPOConfig = field(default_factory=APPOConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    cpu: CPUConfig = field(default_factory=CPUConfig)
    run: RunConfig = field(default_factory=RunConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)

    @property
    def llm_in_process(self) -> bool:
        """The embedded LLM labels on this box's cores (the CPU budget reserves them)."""
        return self.reward.type != "none" and self.llm.backend == "embedded"


#: The file in a run's output directory that holds its resolved config.
CONFIG_NAME = "config.yaml"

#: Keys that moved: old dotted path -> new. Old ``config.yaml`` files (``--resume``) and ``--set``
#: overrides keep working, with one deprecation warning line each.
ALIASES: dict[str, str] = {
    **{f"reward.{key}": f"reward.shaping.{key}"
       for key in ("c_ext", "ext_scale", "ext_clip", "c_int", "beta", "episode_cap", "intrinsic")},
    "reward.skip_empty_caption": "llm.annotator.skip_empty",
    "reward.pair_sampling": "llm.annotator.pair_sampling",
    "llm.batch_size": "llm.annotator.batch_size",
    # The CPU budget, gathered into one section (it was spread over four).
    "env.num_workers": "cpu.env_workers",
    "run.torch_threads": "cpu.learner_threads",
    "llm.threads": "cpu.llm_threads",
    "reward.trainer.torch_threads": "cpu.reward_trainer_threads",
    "llm.annotator.nice": "cpu.llm_nice",
    "llm.nice": "cpu.llm_nice",
    "llm.client_error_limit_s": "llm.http.client_error_limit_s",
}


def _expand_policy_preset(data: dict[str, Any]) -> None:
    """Fill the ``policy`` section from the ``run.policy`` preset; sizes given explicitly win (a
    saved config.yaml holds them all, so it loads back the same)."""
    run = data.get("run") if isinstance(data.get("run"), dict) else {}
    policy = data.get("policy", {})
    if not isinstance(policy, dict):
        return  # _build names the key
    preset = dataclasses.asdict(get_policy_config(str(run.get("policy", RunConfig.policy))))
    data["policy"] = {**preset, **policy}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> KudosConfig:
    """The run's :class:`KudosConfig` from an optional YAML file and ``key.path=value`` overrides."""
    return _config.load_config(KudosConfig, path, overrides, aliases=ALIASES, prepare=_expand_policy_preset)


def save_config(config: KudosConfig, directory: Path) -> None:
    """Write ``config`` to ``directory/config.yaml`` (both engines' runs start with it)."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / CONFIG_NAME, _config.dump_config(config))  # --resume reads it


def log_config(tensorboard: Any, config: KudosConfig, step: int) -> None:
    """The resolved config as a YAML block in TensorBoard's text tab (tag ``config``); both
    engines write it when a run starts or resumes."""
    tensorboard.add_text("config", f"```yaml\n{_config.dump_config(config)}```", step)


def resume_config(directory: str | Path, overrides: list[str]) -> KudosConfig:
    """The config a run in ``directory`` was started with, plus ``overrides`` (e.g. more steps)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"cannot resume: {path} not found (is {directory} a `kudos train` output directory?)")
    return load_config(path, overrides)
