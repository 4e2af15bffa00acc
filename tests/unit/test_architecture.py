"""The shape of the package, checked: dependencies point inward, production code never
reaches the devstack's stand-ins, no import cycle (function-level imports included),
and no function-level import of our own modules without a comment saying why."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "provisioner"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (the deepest one that exists)
    line: int
    top_level: bool
    commented: bool  # the import line (or the one above it) says why


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """``name`` or its deepest existing parent among our modules."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports() -> Iterator[Import]:
    for module, path in MODULES.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        top = {id(node) for node in tree.body}
        type_checking = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                type_checking |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            if id(node) in type_checking:
                continue
            for name in names:
                target = _resolve(name) if name.startswith("provisioner") else None
                if target is None or target == module:
                    continue
                line = lines[node.lineno - 1]
                above = lines[node.lineno - 2] if node.lineno > 1 else ""
                commented = "#" in line or above.strip().startswith("#")
                yield Import(module, target, node.lineno, id(node) in top, commented)


IMPORTS = list(_imports())


def _graph() -> dict[str, set[str]]:
    """Module -> modules its import runs: the target, and the packages above it (importing
    a submodule runs every package ``__init__`` on the way; the importer's own packages
    are running already, so only an explicit import of one of them counts)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        graph[imp.module].add(imp.target)
        parts = imp.target.split(".")
        for i in range(1, len(parts)):
            name = ".".join(parts[:i])
            if name in MODULES and not imp.module.startswith(name + "."):
                graph[imp.module].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_the_package_modules() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_function_level_import_of_our_modules_without_a_reason() -> None:
    silent = [f"{i.module}:{i.line} imports {i.target}" for i in IMPORTS
              if not i.top_level and not i.commented]
    assert silent == []


PRODUCTION = ("provisioner.domain", "provisioner.store", "provisioner.pipeline", "provisioner.adapters",
              "provisioner.api", "provisioner.bootstrap", "provisioner.tasks", "provisioner.config",
              "provisioner.errors", "provisioner.timeutil", "provisioner.keyfiles")


@pytest.mark.parametrize("layer", PRODUCTION)
def test_production_code_never_imports_the_devstack(layer: str) -> None:
    leaks = [f"{i.module}:{i.line} imports {i.target}" for i in IMPORTS
             if (i.module == layer or i.module.startswith(layer + "."))
             and i.target.startswith("provisioner.devstack")]
    assert leaks == []


def test_importing_pipeline_and_adapters_loads_nothing_of_the_devstack() -> None:
    """What the issue asks, run as asked, with every production module imported too."""
    code = (
        "import importlib, json, sys\n"
        "import provisioner.pipeline, provisioner.adapters\n"
        f"for name in {sorted(m for m in MODULES if m.startswith(PRODUCTION))!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('provisioner'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=PACKAGE.parent, timeout=120)
    loaded = json.loads(out.stdout)
    assert "provisioner.pipeline.engine.runner" in loaded  # the check sees what it imports
    assert [m for m in loaded if m.startswith("provisioner.devstack")] == []


@pytest.mark.parametrize("layer", ["provisioner.domain"])
def test_the_domain_depends_on_nothing_of_ours_but_itself_and_errors(layer: str) -> None:
    outside = [f"{i.module}:{i.line} imports {i.target}" for i in IMPORTS
               if i.module.startswith(layer) and not i.target.startswith(layer)
               and i.target != "provisioner.errors"]
    assert outside == []


def test_adapters_do_not_reach_into_the_pipeline_or_the_entry_points() -> None:
    inward = [f"{i.module}:{i.line} imports {i.target}" for i in IMPORTS
              if i.module.startswith("provisioner.adapters")
              and i.target.startswith(("provisioner.pipeline", "provisioner.api", "provisioner.cli",
                                       "provisioner.bootstrap", "provisioner.tasks"))]
    assert inward == []
