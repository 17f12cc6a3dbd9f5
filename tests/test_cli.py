"""The `kudos` command as a user runs it: real subprocesses, exit codes and one-line errors."""

import os
import subprocess
import sys

import pytest

from kudos.envs import TASKS


def kudos(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kudos", *args], capture_output=True, text=True, timeout=120,
        # PYTHONPATH passes through: the subprocess runs the checkout this test imports.
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )


def test_tasks_lists_every_task_with_its_reward():
    result = kudos("tasks")
    assert result.returncode == 0, result.stderr
    for name in TASKS:
        assert name in result.stdout
    assert "+50 on reaching dungeon level 3" in result.stdout


def test_eval_plays_a_random_episode_and_prints_captions():
    result = kudos("eval", "--task", "Score", "--max-steps", "200", "--seed", "0", "--show-captions")
    assert result.returncode == 0, result.stderr
    assert "ep 0 step" in result.stdout
    assert "random policy" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["eval", "--task", "Staircse"], "unknown task 'Staircse': did you mean Staircase"),
        (["eval", "--episodes", "0"], "--episodes must be >= 1"),
        (["eval", "--max-steps", "-3"], "--max-steps must be >= 1"),
    ],
)
def test_user_mistakes_get_one_line_errors(args, message):
    result = kudos(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_argparse_errors_exit_2_without_traceback():
    result = kudos("eval", "--episodes", "many")
    assert result.returncode == 2 and "invalid int value" in result.stderr
    assert "Traceback" not in result.stderr


def test_only_the_commands_package_imports_argparse_or_rich():
    """The library logs and returns data; turning it into options, tables and progress is the CLI's job."""
    import ast
    from pathlib import Path

    import kudos

    root = Path(kudos.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "commands":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] in ("argparse", "rich")]
    assert offenders == []


def test_the_no_label_warning_needs_an_llm_run_with_zero_labels():
    from kudos.commands.train import no_label_warning

    assert no_label_warning({"episode/return": 1.0}) is None  # reward none: no LLM asked
    assert no_label_warning({"llm/classify/labels": 3.0, "llm/classify/queue_depth": 9.0}) is None
    warning = no_label_warning({"llm/rank/labels": 0.0, "llm/rank/queue_depth": 12.0})
    assert warning is not None and "12 items wait" in warning and "\n" not in warning
