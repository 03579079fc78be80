"""The import rules of docs/ARCHITECTURE.md, read from the source of every module in streamgenre/.

Parsed with :mod:`ast`, not imported, so a function-level (lazy) import counts as much as one at
the top of a file: it is still a dependency, and still a circle when it closes one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "streamgenre"

#: What each place may import from streamgenre (besides itself). ``None``: the rest of the package.
ALLOWED: dict[str, set[str] | None] = {
    "streamgenre.config": set(),
    "streamgenre.model": {"streamgenre.config"},
    "streamgenre.stream": {"streamgenre.config", "streamgenre.model"},
    "streamgenre.apps": None,
    "streamgenre.bench": {"streamgenre.config", "streamgenre.model", "streamgenre.stream", "streamgenre.apps"},
    "streamgenre.__main__": {"streamgenre.apps"},
}
FORBIDDEN_ROOTS = {"training", "torch"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str) -> set[str]:
    """Every module ``name`` imports, anywhere in its source, as absolute dotted names."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            # `from streamgenre.apps import catalog` imports the module streamgenre.apps.catalog.
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


def place(name: str) -> str:
    """The folder (or top-level module) a streamgenre module belongs to."""
    return ".".join(name.split(".")[:2])


def internal(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES and n != "streamgenre"}


def test_every_place_is_known() -> None:
    assert {place(name) for name in MODULES if name != "streamgenre"} <= ALLOWED.keys(), (
        "a new folder or top-level module needs its import rule here and in docs/ARCHITECTURE.md")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_nothing_imports_training_or_torch(name: str) -> None:
    bad = sorted(n for n in imported(name) if n.split(".")[0] in FORBIDDEN_ROOTS)
    assert not bad, f"{name} imports {bad}: the serving package must install and run without them"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "streamgenre"))
def test_each_place_imports_only_what_it_may(name: str) -> None:
    allowed = ALLOWED[place(name)]
    if allowed is None:
        return
    bad = sorted(n for n in internal(imported(name)) if place(n) != place(name) and place(n) not in allowed)
    assert not bad, f"{name} may import only {sorted(allowed)} from streamgenre, not {bad}"


def test_no_import_circles() -> None:
    graph = {name: internal(imported(name)) - {name} for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (circle := visit(target)):
                return circle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            circle = visit(name)
            assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_parser_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """Else the tests above could pass on a module that breaks the rules."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import torch\n    from ..stream import daemon\n")
    MODULES["streamgenre.model.probe"] = probe
    try:
        assert {"torch", "streamgenre.stream", "streamgenre.stream.daemon"} <= imported("streamgenre.model.probe")
    finally:
        del MODULES["streamgenre.model.probe"]
