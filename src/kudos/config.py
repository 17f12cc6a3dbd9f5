"""Typed configuration: dataclasses for every option, loaded from YAML with CLI overrides.

A config file mirrors the dataclass tree::

    env:
      task: StaircaseLvl3
      num_envs: 16

and overrides use dotted paths: ``env.num_envs=32``. Unknown keys and values of the wrong type
are reported in one line naming the key (:class:`~kudos.errors.ConfigError`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kudos.errors import ConfigError

if typing.TYPE_CHECKING:
    from kudos.rewards.online import LLMConfig, RewardConfig
    from kudos.rl.appo import APPOConfig

T = TypeVar("T")


@dataclass
class EnvConfig:
    """The NetHack task and how many copies of it are stepped in parallel."""

    task: str = "Score"
    num_envs: int = 16  # B: envs stepped per batch
    num_workers: int = 2  # env worker processes
    seed: int = 0
    max_episode_steps: int | None = None  # None: the task's default
    macros: str = "oni"  # prompt macros: "oni" (ONI's) or "kudos" (--More-- chains joined, item prompts answered)


@dataclass
class RunConfig:
    """Length, outputs and bookkeeping of a training run."""

    steps: int = 100_000  # env steps to train on (all envs together)
    output_dir: str = "runs/latest"
    policy: str = "small"  # policy network preset (see kudos.rl.policy.POLICY_PRESETS)
    checkpoint_every_s: float = 300.0
    log_every_s: float = 2.0  # console and TensorBoard cadence
    torch_threads: int = 1  # intra-op threads of the learner (the envs and the LLM need the rest)
    device: str = "auto"  # the learner's: "auto" (cuda when a GPU is visible), "cpu" or "cuda"
    inference: str = "worker"  # who acts: "worker" (each rollout worker) or "policy-worker" (one, on the device)
    # Recorded by `kudos train` when it starts, not options: the kudos source commit ("unknown"
    # outside a git checkout; "A+B" for a run resumed on another commit) and uncommitted changes.
    commit: str = ""
    dirty: bool | None = None


@dataclass
class DiagnosticsConfig:
    """Reward-hacking diagnostics: computed while training (TensorBoard ``diagnostics/*``, a warning
    line in the live display) and in ``kudos report``. See docs/report.md.

    A warning is raised when the intrinsic and extrinsic returns of the last ``window_episodes``
    episodes correlate below ``min_return_correlation`` (the agent earns intrinsic reward at the
    expense of the task); when the 10 captions that earned most intrinsic reward in the run earn
    more than ``max_top10_share`` of it; when a caption is farmed: seen ``farm_min_count`` times or
    more per episode it appears in, earning ``farm_min_reward`` or more raw intrinsic reward per
    such episode above what the median caption earns per sighting (count x excess reward, what the
    count exponent ``beta`` is there to stop); and when
    the reward model disagrees with the LLM on more than ``max_disagreement`` of the last
    ``recent_labels`` classification labels (a reward >= 0.5 counts as "helpful").
    """

    window_episodes: int = 100
    min_episodes: int = 20  # no correlation warning from fewer episodes than this
    min_return_correlation: float = -0.3
    max_top10_share: float = 0.8
    farm_min_count: float = 10.0
    farm_min_reward: float = 5.0
    recent_labels: int = 500
    max_disagreement: float = 0.3


def _appo_config() -> Any:
    from kudos.rl.appo import APPOConfig

    return APPOConfig()


def _reward_config() -> Any:
    from kudos.rewards.online import RewardConfig

    return RewardConfig()


def _llm_config() -> Any:
    from kudos.rewards.online import LLMConfig

    return LLMConfig()


@dataclass
class KudosConfig:
    """Root of the configuration tree: ``env``, ``reward``, ``llm``, ``appo``, ``run`` and ``diagnostics``."""

    env: EnvConfig = field(default_factory=EnvConfig)
    reward: "RewardConfig" = field(default_factory=_reward_config)
    llm: "LLMConfig" = field(default_factory=_llm_config)
    appo: "APPOConfig" = field(default_factory=_appo_config)
    run: RunConfig = field(default_factory=RunConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)


def _lazy_types() -> dict[str, Any]:
    """The section types that live with their components (imported only when a config is built)."""
    from kudos.rewards.online import LLMConfig, RewardConfig
    from kudos.rl.appo import APPOConfig

    return {"LLMConfig": LLMConfig, "RewardConfig": RewardConfig, "APPOConfig": APPOConfig}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(annotation, value, prefix=f"{key}.")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
        try:
            converted = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and value != converted:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return converted
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls, localns=_lazy_types())
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown option {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a component's own validation: say which section it was
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    path, raw = text.split("=", 1)
    return path.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type[T] = KudosConfig) -> T:  # type: ignore[assignment]
    """Build ``cls`` from an optional YAML file, then apply ``key.path=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    for text in overrides or []:
        keys, value = _parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {key} is not a section")
            node = child
        node[keys[-1]] = value
    return _build(cls, data)
