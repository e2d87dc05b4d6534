"""The package's layering (docs/architecture.md), read from the source with an AST walk over
every import, those inside functions included:

* each module imports only from its own layer or the layers below (:data:`LAYERS`), with no
  exceptions list: ``evaluation/`` and ``serving/`` never reach a training stage or the
  Lightning core, the data layer never reaches evaluation, the model never reaches training;
* the method (the core) never imports the tooling around it (:data:`TOOLING`: the stand-in
  `tiny` and its pretraining, the catalogue generators, crawl, download and import), so the
  core can be read, packaged and reused without it;
* imports form no cycle (a lazy import inside a function hides a cycle, it does not remove it);
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


# Bottom to top. The method: ground floor < data < model < cache < evaluation < training <
# the stages; then the tooling and the service around it, and the commands that run it all.
LAYERS: list[set[str]] = [
    {
        "lavic",
        "lavic.errors",
        "lavic.constants",
        "lavic.io",
        "lavic.config",
        "lavic.prompts",
        "lavic.precision",
        "lavic.metrics",
        "lavic.artifacts",
    },
    {"lavic.data"},
    {"lavic.model"},
    {"lavic.cache"},
    {"lavic.evaluation"},
    {"lavic.training"},
    {"lavic.distill", "lavic.tune"},
    {"lavic.pretrain", "lavic.serving"},
    {"lavic.demo", "lavic.demo_report", "lavic.cli"},
]


# The tooling around the method: what makes `tiny` (a stand-in backbone and its one-off
# pretraining), the synthetic catalogues, and the crawler, downloader and importer that bring a
# catalogue in. The commands on top (demo, cli) run both.
TOOLING = (
    "lavic.pretrain",
    "lavic.model.tiny",
    "lavic.data.synthetic",
    "lavic.data.unseen",
    "lavic.data.catalogue_folder",
    "lavic.data.crawl",
    "lavic.data.download",
    "lavic.data.importer",
    "lavic.data.netguard",
)
COMMANDS = ("lavic.demo", "lavic.demo_report", "lavic.cli")


def _layer(module: str) -> int:
    """The layer of ``module``: its own entry, else its package's (``lavic.data.check``:
    ``lavic.data``)."""
    name = module
    while name:
        for i, layer in enumerate(LAYERS):
            if name in layer:
                return i
        name = name.rpartition(".")[0]
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add it")


def test_no_import_points_up():
    up = {
        module: sorted(
            n for n in _imports(path, top_level_only=False) if _layer(n) > _layer(module)
        )
        for module, path in MODULES.items()
    }
    assert {m: v for m, v in up.items() if v} == {}


def test_evaluation_and_serving_never_import_a_training_stage():
    bad = {
        module: sorted(
            n
            for n in _imports(path, top_level_only=False)
            if any(_under(n, s) for s in ("lavic.distill", "lavic.tune", "lavic.training"))
        )
        for module, path in MODULES.items()
        if _under(module, "lavic.evaluation") or _under(module, "lavic.serving")
    }
    assert {m: v for m, v in bad.items() if v} == {}


def test_the_core_never_imports_the_tooling():
    """Backbone families plug in by registering themselves (``lavic.model.__init__`` imports
    each family's module for that, and that is the only import of one); everything else a
    stand-in adds reaches the core through the registry (e.g. ``check_catalogue``)."""
    core = {
        m: p
        for m, p in MODULES.items()
        if not any(_under(m, t) for t in TOOLING + COMMANDS) and m != "lavic.model"
    }
    bad = {
        module: sorted(
            n for n in _imports(path, top_level_only=False) if any(_under(n, t) for t in TOOLING)
        )
        for module, path in core.items()
    }
    assert {m: v for m, v in bad.items() if v} == {}
    assert "lavic.model.tiny" in _imports(MODULES["lavic.model"], top_level_only=True)
    # not vacuous: the demo (a command) does reach the tooling, and the walk sees it
    assert any(
        _under(n, "lavic.pretrain") for n in _imports(MODULES["lavic.demo"], top_level_only=False)
    )


def test_no_import_cycle():
    graph = {m: _imports(p, top_level_only=False) & set(MODULES) for m, p in MODULES.items()}
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
    assert "lavic.model.decoding" in _imports(
        MODULES["lavic.evaluation.evaluate"], top_level_only=True
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
