"""docs/fidelity.md states every default kudos has, beside ONI's: a default that changes without
its row changing, or a setting with no row, fails here."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator

from kudos.envs import get_task
from kudos.rl.experiment import KudosConfig
from kudos.rewards.shaping import ShapingConfig

FIDELITY = Path(__file__).resolve().parents[1] / "docs" / "fidelity.md"
#: `key = value` in the doc's tables: a dotted key and a Python literal.
_SETTING = re.compile(r"`([a-z]\w*(?:\.\w+)+) = ([^`]+)`")
#: The roots whose whole default tree the doc must cover: `kudos train`'s config (the library's
#: RewardModelTrainerConfig and AnnotatorConfig are in it, as reward.trainer and llm.annotator) and the
#: library's ShapingConfig, whose c_ext differs from a run's.
ROOTS = {"": KudosConfig(), "shaping.": ShapingConfig()}


def _leaves(config: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{field.name}.")
        else:
            yield prefix + field.name, value


def _documented() -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for line in FIDELITY.read_text().splitlines():
        if not line.startswith("|"):
            continue
        for key, text in _SETTING.findall(line):
            value = ast.literal_eval(text.strip())
            assert settings.get(key, value) == value, f"docs/fidelity.md gives {key} two values"
            settings[key] = value
    return settings


def _same(documented: Any, value: Any) -> bool:
    return documented == value and isinstance(documented, bool) == isinstance(value, bool)


def test_every_default_has_its_row_with_its_value():
    documented = _documented()
    defaults = {key: value for prefix, root in ROOTS.items() for key, value in _leaves(root, prefix)}
    missing = [f"{key} = {value!r}" for key, value in defaults.items() if key not in documented]
    assert not missing, f"docs/fidelity.md has no row for: {', '.join(missing)} (add each beside ONI's value)"
    changed = [f"{key}: doc {documented[key]!r}, code {value!r}" for key, value in defaults.items()
               if not _same(documented[key], value)]
    assert not changed, f"defaults changed without docs/fidelity.md: {'; '.join(changed)}"
    tasks = {key: value for key, value in documented.items() if key.startswith("task.")}
    stale = sorted(set(documented) - set(defaults) - set(tasks))
    assert not stale, f"docs/fidelity.md documents settings that do not exist: {', '.join(stale)}"
    assert tasks, "the ONI tasks' presets are documented"
    for key, value in tasks.items():
        _, name, field = key.split(".")
        assert _same(value, getattr(get_task(name), field)), f"{key}: doc {value!r}, code {getattr(get_task(name), field)!r}"


def test_the_check_sees_a_changed_default(monkeypatch):
    """The comparison above can fail: a default moved away from the table is reported."""
    monkeypatch.setattr(ROOTS["shaping."], "ext_clip", 100.0)
    try:
        test_every_default_has_its_row_with_its_value()
    except AssertionError as error:
        assert "shaping.ext_clip: doc 10.0, code 100.0" in str(error)
    else:
        raise AssertionError("a changed default went unnoticed")
