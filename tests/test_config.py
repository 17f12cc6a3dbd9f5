import pytest

from kudos.errors import ConfigError
from kudos.experiment import EnvConfig, KudosConfig, load_config


def test_a_saved_config_loads_back_equal(tmp_path):
    """What resuming relies on: the YAML a run writes (every section, nested ones included) loads
    back into the same config. Default values themselves are checked against ONI in test_fidelity."""
    from kudos.rl.runner import resume_config, save_config

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
