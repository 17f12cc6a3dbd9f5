import dataclasses
import json
import logging
import subprocess
import sys
import types
import typing
from typing import Any, Iterator

import pytest
import yaml

from kudos.config import dump_config
from kudos.cpu import CPUConfig
from kudos.errors import ConfigError
from kudos.rl.experiment import EnvConfig, KudosConfig, load_config, resume_config, save_config
from kudos.rewards.shaping import NormalizerConfig, ShapingConfig
from kudos.rl.policy import POLICY_PRESETS


def test_a_saved_config_loads_back_equal(tmp_path):
    """What resuming relies on: the YAML a run writes (every section, nested ones included) loads
    back into the same config. Default values themselves are checked against ONI in test_fidelity."""
    config = load_config(overrides=["env.task=Oracle", "env.macros=kudos", "reward.ranker.normalizer.threshold_value=0.25",
                                    "reward.classifier.output=probability", "appo.value_clip=none", "run.steps=123"])
    assert config != KudosConfig()
    save_config(config, tmp_path)
    assert resume_config(tmp_path, []) == config
    assert load_config() == KudosConfig()


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("env:\n  task: Oracle\n  num_envs: 8\n")
    config = load_config(path, ["env.num_envs=32", "env.max_episode_steps=100"])
    assert config.env == EnvConfig(task="Oracle", num_envs=32, max_episode_steps=100)
    assert load_config(path, ["env.max_episode_steps=none"]).env.max_episode_steps is None


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["env.num_env=3"], "unknown option env.num_env"),
        (["envs.task=Score"], "unknown option envs"),
        (["env.num_envs=many"], "env.num_envs: expected int"),
        (["env.num_envs=2.5"], "env.num_envs: expected an integer"),
        (["env.seed=true"], "env.seed: expected int"),
        (["env.task"], "must look like section.key=value"),
        (["env=3"], "env: expected a mapping"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(scalar)


def _leaf_types(cls: type, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf option of the config tree rooted at ``cls``: (dotted key, annotated type)."""
    for name, annotation in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(annotation):
            yield from _leaf_types(annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, annotation


#: Options whose valid values are not derived from their type alone.
_VALID = {"env.task": "Oracle", "reward.goal": "gold", "reward.members": "retrieval,cosine",
          "run.policy": "baseline", "llm.backend": "http://127.0.0.1:9/v1"}


def _another_value(key: str, annotation: Any, current: Any) -> Any:
    """A valid value of ``annotation`` other than ``current``."""
    if key in _VALID:
        return _VALID[key]
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        first = options[0]  # e.g. int of `int | Literal["auto"]`: "auto" is no int to change
        same_kind = current is not None and (not isinstance(first, type) or isinstance(current, first))
        return _another_value(key, first, current if same_kind else None)
    if typing.get_origin(annotation) is typing.Literal:
        return next(choice for choice in typing.get_args(annotation) if choice != current)
    if typing.get_origin(annotation) is tuple:
        return (*current, 8)
    if annotation is bool:
        return not current
    if annotation is int:
        return (current or 0) + 1
    if annotation is float:
        return current / 2 if current else 0.5  # halving keeps shares and rates in their ranges
    assert annotation is str, f"{key}: no test value for {annotation}"
    return f"{current}-other"


def _get(config: Any, key: str) -> Any:
    for name in key.split("."):
        config = getattr(config, name)
    return config


def test_every_option_is_settable_and_round_trips_through_config_yaml(tmp_path):
    """Each leaf of the resolved tree takes a --set override (JSON, a subset of YAML, for the
    value) and the run's config.yaml loads back the same tree."""
    leaves = list(_leaf_types(KudosConfig))
    assert len(leaves) > 140  # the nested library configs (trainer, annotator, http, policy) are in it
    defaults = KudosConfig()
    for key, annotation in leaves:
        value = _another_value(key, annotation, _get(defaults, key))
        config = load_config(overrides=[f"{key}={json.dumps(value)}"])
        assert _get(config, key) == value, key
        save_config(config, tmp_path)
        assert resume_config(tmp_path, []) == config, key


def test_tuples_are_set_as_lists():
    assert load_config(overrides=["policy.crop_channels=[8, 16, 32]"]).policy.crop_channels == (8, 16, 32)
    with pytest.raises(ConfigError, match=r"policy.crop_channels: expected a list"):
        load_config(overrides=["policy.crop_channels=8"])
    with pytest.raises(ConfigError, match=r"policy.crop_channels\[1\]: expected int"):
        load_config(overrides=["policy.crop_channels=[8, wide]"])


def test_policy_sizes_start_from_the_preset():
    config = load_config(overrides=["run.policy=baseline", "policy.hidden_size=256"])
    assert config.policy == dataclasses.replace(POLICY_PRESETS["baseline"], hidden_size=256)
    with pytest.raises(ConfigError, match="unknown policy preset 'huge'"):
        load_config(overrides=["run.policy=huge"])


@pytest.mark.parametrize("key,allowed", [
    ("reward.classifier.encoder", "bytes, minilm"),
    ("reward.type", "none, retrieval, classification, ranking, motif, cosine, ensemble"),
    ("run.device", "auto, cpu, cuda"),
    ("run.inference", "worker, policy-worker"),
    ("env.macros", "oni, kudos"),
    ("llm.format", "short, long"),
    ("llm.annotator.pair_sampling", "oni, per_new_caption"),
    ("reward.shaping.intrinsic.threshold", "none, zscore, quantile"),
])
def test_choices_are_checked_on_load(key, allowed):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[f"{key}=bogus"])
    assert str(error.value) == f"{key}: must be one of {allowed}, got 'bogus'"


OLD_LAYOUT = """\
env:
  task: Oracle
  num_workers: 4
reward:
  type: ranking
  c_ext: 0.0
  c_int: 0.2
  ext_clip: 5.0
  intrinsic:
    normalize: true
  skip_empty_caption: true
  pair_sampling: per_new_caption
llm:
  batch_size: 4
  nice: 3
  threads: 2
  client_error_limit_s: 5.0
run:
  policy: baseline
  torch_threads: 3
"""


def test_an_old_layout_config_yaml_resumes_with_one_warning_per_moved_key(tmp_path, caplog):
    """A run written before the keys moved (reward.c_int, llm.nice, ...) resumes as it was."""
    (tmp_path / "config.yaml").write_text(OLD_LAYOUT)
    with caplog.at_level(logging.WARNING, logger="kudos.config"):
        config = resume_config(tmp_path, ["reward.beta=2"])
    assert config.reward.shaping == ShapingConfig(
        c_ext=0.0, c_int=0.2, ext_clip=5.0, beta=2.0, intrinsic=NormalizerConfig(normalize=True)
    )
    annotator = config.llm.annotator
    assert (annotator.skip_empty, annotator.pair_sampling, annotator.batch_size) == (True, "per_new_caption", 4)
    assert config.cpu == CPUConfig(env_workers=4, learner_threads=3, llm_threads=2, llm_nice=3)
    assert config.llm.http.client_error_limit_s == 5.0
    assert config.policy == POLICY_PRESETS["baseline"]  # no policy section then: the preset's sizes
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 13 and all("\n" not in w and "deprecated" in w for w in warnings)
    assert "config key reward.beta is deprecated: use reward.shaping.beta" in warnings


def test_a_new_key_wins_over_its_old_alias(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("reward:\n  c_int: 0.2\n  shaping:\n    c_int: 0.3\n")
    assert load_config(path).reward.shaping.c_int == 0.3
    # An override under a moved section moves with it.
    assert load_config(overrides=["reward.intrinsic.normalize=true"]).reward.shaping.intrinsic.normalize


def test_print_config_prints_the_resolved_tree_and_exits(tmp_path, capsys):
    from kudos.commands.main import main

    status = main(["train", "--print-config", "--task", "Oracle", "--set", "reward.c_int=0.2",
                   "--output", str(tmp_path / "run")])
    assert status in (0, None)
    printed = capsys.readouterr().out
    expected = load_config(overrides=["env.task=Oracle", "reward.shaping.c_int=0.2", f"run.output_dir={tmp_path / 'run'}"])
    assert yaml.safe_load(printed) == yaml.safe_load(dump_config(expected))
    assert not (tmp_path / "run").exists()  # nothing ran


def test_the_config_machinery_is_a_leaf():
    """kudos.config imports no kudos component (the tree that gathers them is kudos.rl.experiment)."""
    code = "import sys, kudos.config; print(sorted(m for m in sys.modules if m.startswith('kudos')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['kudos', 'kudos.config', 'kudos.errors']"
