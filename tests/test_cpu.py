"""The CPU budget (kudos.cpu): the "auto" rules on a 2-core and a 16-core box, explicit values,
and one-line errors for budgets that cannot run."""

import pytest

from kudos.cpu import CPUBudget, CPUConfig, available_cores
from kudos.errors import ConfigError
from kudos.rl.experiment import load_config


def test_two_cores_oversubscribe_two_workers_beside_the_learner_and_the_llm():
    budget = CPUConfig(cores=2).resolve(16, learner_on_gpu=False, llm_in_process=True)
    assert budget == CPUBudget(cores=2, env_workers=2, learner_threads=1, llm_threads=1,
                               reward_trainer_threads=1, llm_nice=5)


def test_sixteen_cores_give_the_workers_what_the_learner_and_the_llm_leave():
    # Learner on cuda, embedded LLM: 4 LLM threads, 1 learner thread, 11 cores left; 16 envs
    # split into equal halves allow at most 8 workers.
    assert CPUConfig(cores=16).resolve(16, learner_on_gpu=True, llm_in_process=True).env_workers == 8
    budget = CPUConfig(cores=16).resolve(960, learner_on_gpu=True, llm_in_process=False)
    assert (budget.env_workers, budget.learner_threads, budget.llm_threads) == (15, 1, 4)
    # A CPU learner takes a quarter of the box; the embedded LLM another quarter.
    budget = CPUConfig(cores=16).resolve(960, learner_on_gpu=False, llm_in_process=True)
    assert (budget.env_workers, budget.learner_threads, budget.llm_threads) == (8, 4, 4)


def test_auto_workers_always_split_the_envs_into_equal_halves():
    for cores in range(1, 33):
        for num_envs in (2, 6, 16, 24, 30, 64):
            workers = CPUConfig(cores=cores).resolve(num_envs).env_workers
            assert workers >= 1 and num_envs % (2 * workers) == 0, (cores, num_envs)


def test_explicit_values_win_and_auto_cores_are_this_process_s():
    budget = CPUConfig(env_workers=1, learner_threads=3, llm_threads=2, reward_trainer_threads=2,
                       llm_nice=0).resolve(8, llm_in_process=True)
    assert budget == CPUBudget(available_cores(), 1, 3, 2, 2, 0)
    assert CPUConfig().resolve(None).env_workers == 0  # RLlib steps its own envs


@pytest.mark.parametrize(("overrides", "message"), [
    (["cpu.env_workers=0"], "cpu: env_workers must be >= 1 or auto, got 0"),
    (["cpu.llm_nice=25"], "cpu: llm_nice must be in 0..19, got 25"),
    (["cpu.cores=lots"], "cpu.cores"),
])
def test_a_bad_budget_is_a_one_line_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_workers_that_cannot_split_the_envs_are_a_one_line_error():
    with pytest.raises(ConfigError, match=r"env.num_envs \(16\) must be a multiple of 2 x cpu.env_workers \(3\)"):
        CPUConfig(env_workers=3).resolve(16)
    with pytest.raises(ConfigError, match="must be even"):
        CPUConfig().resolve(7)
