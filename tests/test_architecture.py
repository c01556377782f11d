"""The package's import structure: no module imports another that (directly or through others) imports it back, and
the layers stay in order — the command line sits on top of everything and nothing below imports it; the config
and the built-in catalogs read no engine, runner or model code.

Imports inside functions count (a circle closed at call time is still a circle); imports under ``TYPE_CHECKING``
do not (they never run).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "privfed"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the privfed modules it imports (``from privfed import x`` of a submodule x names x itself)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and getattr(block.test, "id", None) == "TYPE_CHECKING"
                     for statement in block.body for node in ast.walk(statement)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("privfed"):
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("privfed")}
        graph[name] = {t for t in map(resolve, targets) if t and t != name}
    return graph


GRAPH = _imports()


def _circle_from(start: str) -> list[str] | None:
    """A shortest import path from ``start`` back to itself, if there is one (breadth-first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(GRAPH.get(module, ())):
                if target == start:
                    path = [module]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in previous and target != start:
                    previous[target] = module
                    following.append(target)
        frontier = following
    return None


def test_the_graph_sees_the_package():
    assert len(GRAPH) > 100 and "privfed.config.rules" in GRAPH["privfed.config.experiment"]
    assert "privfed.data.catalog" in GRAPH["privfed.config.rules"]  # imported inside functions: still an edge


def test_no_import_circles():
    circles = {" -> ".join(c) for m in GRAPH if (c := _circle_from(m))}
    assert not circles, "import circles:\n" + "\n".join(sorted(circles))


def test_a_circle_would_be_found(monkeypatch):
    monkeypatch.setitem(GRAPH, "privfed.data.catalog", GRAPH["privfed.data.catalog"] | {"privfed.config.rules"})
    assert _circle_from("privfed.config.rules") == ["privfed.config.rules", "privfed.data.catalog",
                                                    "privfed.config.rules"]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("lower, upper, allowed", [
    ("privfed", "privfed.cli", ("privfed.cli", "privfed.__main__")),  # only the command line imports it
    ("privfed.config", "privfed.engines", ()), ("privfed.config", "privfed.runners", ()),
    ("privfed.config", "privfed.models", ("privfed.models.catalog",)),  # the catalogs are facts, not model code
    ("privfed.data.catalog", "privfed.engines", ()), ("privfed.models.catalog", "privfed.models.sources", ()),
    ("privfed.engines.inprocess", "privfed.runners", ()), ("privfed.engines.runner", "privfed.runners", ()),
])
def test_layers(lower, upper, allowed):
    crossing = sorted(f"{m} -> {t}" for m, targets in GRAPH.items()
                      if _within(m, lower) and not _within(m, upper) and m not in allowed
                      for t in targets if _within(t, upper) and t not in allowed)
    assert not crossing, crossing


def test_the_config_reads_only_itself_the_errors_and_the_catalogs():
    allowed = ("privfed.config", "privfed.errors", "privfed.data.catalog", "privfed.models.catalog")
    reads = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if _within(m, "privfed.config")
                   for t in targets if not any(_within(t, a) for a in allowed))
    assert not reads, reads
