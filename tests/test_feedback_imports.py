"""kudos.feedback's modules import each other without a cycle (lazy imports inside functions
included), so each can be read and loaded on its own: the LLM layer is split by job."""

from __future__ import annotations

import ast
from pathlib import Path

import kudos.feedback

PACKAGE = Path(kudos.feedback.__file__).parent


def _imports(path: Path) -> set[str]:
    """The kudos.feedback modules ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kudos.feedback."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("kudos.feedback."))
    return found


def test_the_feedback_modules_import_each_other_without_a_cycle() -> None:
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join((*path, module))
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    assert {"backend", "endpoints", "factory", "model_files", "serve", "embedded"} <= done


def test_the_backend_interface_and_the_model_files_import_no_other_feedback_module() -> None:
    assert _imports(PACKAGE / "backend.py") == set()
    assert _imports(PACKAGE / "model_files.py") == set()
