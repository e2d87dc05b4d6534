"""The package's layering (docs/architecture.md), read from the source with an AST walk:

* ``evaluation/`` and ``serving/`` never import a training stage (``distill/``, ``tune/``),
  nor the Lightning training core (``training/``, except its torch-only ``precision``);
* module-level imports form no cycle (a cycle breaks whichever module is imported first);
* every module imports in a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "lavic"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The ``lavic`` modules ``path`` imports (``from a import b``: ``a.b`` if a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        else:
            continue
        found.update(n for n in names if n == "lavic" or n.startswith("lavic."))
    return found


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_evaluation_and_serving_never_import_a_training_stage():
    allowed = {"lavic.training", "lavic.training.precision"}  # torch only
    bad = {
        module: sorted(
            n
            for n in _imports(path, top_level_only=False)
            if any(_under(n, s) for s in ("lavic.distill", "lavic.tune", "lavic.training"))
            and n not in allowed
        )
        for module, path in MODULES.items()
        if _under(module, "lavic.evaluation") or _under(module, "lavic.serving")
    }
    assert {m: v for m, v in bad.items() if v} == {}


def test_no_module_level_import_cycle():
    graph = {m: _imports(p, top_level_only=True) & set(MODULES) for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            # Importing a package's own submodule from its __init__ is not a cycle.
            if _under(dep, module) and MODULES[module].name == "__init__.py":
                continue
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_walk_sees_the_imports():
    """The AST walk is not vacuous: it finds known edges, top-level and inside functions."""
    assert "lavic.model.compute" in _imports(
        MODULES["lavic.evaluation.decoding"], top_level_only=True
    )
    assert "lavic.training.trainer" in _imports(MODULES["lavic.tune.train"], top_level_only=True)
    assert "lavic.model.inference" in _imports(
        MODULES["lavic.serving.recommender"], top_level_only=False
    )


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-c", code, *sorted(MODULES)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
