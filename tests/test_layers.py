"""The package's layers (docs/architecture.md, "Layers"): a module imports only from layers below
its own, or from its own package. Read from the source (every ``import``, lazy and
``TYPE_CHECKING`` ones included), so an upward import fails here before it becomes a cycle.
(That only ``kudos.commands`` imports argparse and rich is tests/test_cli.py's check.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. A unit is a subpackage or a top-level module of kudos.
LAYERS: list[set[str]] = [
    {"kudos", "kudos.errors", "kudos.config", "kudos.backoff", "kudos.fsutil", "kudos.paths", "kudos.cpu"},
    {"kudos.envs", "kudos.feedback"},
    {"kudos.rewards"},
    {"kudos.rl"},
    {"kudos.eval", "kudos.integrations"},
    {"kudos.commands"},
    {"kudos.__main__"},  # `python -m kudos`
]
LAYER_OF = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """``kudos.rl.learner`` -> ``kudos.rl``; ``kudos.config`` -> ``kudos.config``; ``kudos`` -> ``kudos``."""
    parts = module.split(".")
    return ".".join(parts[:2])


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "kudos":  # `from kudos import rl` imports the subpackage
                found += [(node.lineno, f"kudos.{alias.name}") for alias in node.names]
    return found


def layer_violations(module: str, imported: list[tuple[int, str]]) -> list[str]:
    """What ``module``'s imports break: an import from its own layer or above, outside its own
    unit. The base layer's few small modules may use one another."""
    unit = unit_of(module)
    depth = LAYER_OF[unit]
    bad: list[str] = []
    for line, target in imported:
        target_unit = unit_of(target)
        if target.split(".")[0] != "kudos" or target_unit == unit or target_unit not in LAYER_OF:
            continue  # not kudos, its own unit, or unplaced (test_every_module_has_a_layer says so)
        target_depth = LAYER_OF[target_unit]
        if target_depth > depth or (target_depth == depth and depth > 0):
            bad.append(f"{module}:{line} imports {target} (layer {target_depth}, its own is {depth})")
    return bad


MODULES = sorted((module_name(p), p) for p in (SRC / "kudos").rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({unit_of(m) for m, _ in MODULES} - set(LAYER_OF))
    assert not unplaced, f"put these in LAYERS (and in docs/architecture.md): {unplaced}"


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_down_the_layers(module: str, path: Path) -> None:
    if unit_of(module) not in LAYER_OF:
        pytest.skip("not placed; see test_every_module_has_a_layer")
    assert layer_violations(module, imports(path)) == []


def test_the_check_catches_an_upward_import() -> None:
    assert layer_violations("kudos.config", [(3, "kudos.rl.appo")]) == [
        "kudos.config:3 imports kudos.rl.appo (layer 3, its own is 0)"
    ]
    assert layer_violations("kudos.envs.vector", [(5, "kudos.feedback.store")])  # a sibling, same layer
    assert layer_violations("kudos.rl.runner", [(7, "kudos.rewards.base"), (8, "kudos.rl.policy")]) == []
