"""cmvl's subpackages import one way: the graph of "a module of X imports from Y" between the parts of the package
(its subpackages and top-level modules) has no cycle. Every import counts, the ones inside functions and under
`if TYPE_CHECKING:` too: an import deferred into a function still makes the two parts depend on each other."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cmvl"
ROOT = "cmvl"  # the package's own __init__.py: `from cmvl import x` where x is no submodule


def _part(module: str) -> str | None:
    """The part of cmvl a dotted module name belongs to (`cmvl.training.build` → `training`); None outside cmvl."""
    names = module.split(".")
    if names[0] != "cmvl":
        return None
    return names[1] if len(names) > 1 else ROOT


def _module_name(path: Path) -> tuple[str, bool]:
    """The dotted name of a source file, and whether it is a package's __init__."""
    names = ["cmvl", *path.relative_to(PACKAGE).with_suffix("").parts]
    if names[-1] == "__init__":
        return ".".join(names[:-1]), True
    return ".".join(names), False


def _imported(path: Path) -> list[tuple[str, int]]:
    """(module, line) for every import in a file: absolute and relative, `from cmvl import x` as `cmvl.x`."""
    module, is_package = _module_name(path)
    package = module if is_package else module.rpartition(".")[0]
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "cmvl" and alias.asname is None:  # the package itself: what the file uses of it
                    found += [(name, line) for name, line in _package_uses(tree) if name != "cmvl.__dunder__"]
                else:
                    found.append((alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target == "cmvl":  # `from cmvl import errors`: the submodule, if it is one
                for alias in node.names:
                    is_module = (PACKAGE / f"{alias.name}.py").is_file() or (PACKAGE / alias.name).is_dir()
                    found.append((f"cmvl.{alias.name}" if is_module else "cmvl", node.lineno))
            else:
                found.append((target, node.lineno))
    return found


def _package_uses(tree: ast.AST) -> list[tuple[str, int]]:
    """After a bare `import cmvl`, what `cmvl.<name>` the file reads: a submodule (`cmvl.errors`), a name the package's
    __init__ exports (`cmvl.load_run`: the root part), or its own dunders (`cmvl.__file__`, which every module of the
    package has without depending on anything: no part)."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cmvl":
            if node.attr.startswith("__"):
                uses.append(("cmvl.__dunder__", node.lineno))
            elif (PACKAGE / f"{node.attr}.py").is_file() or (PACKAGE / node.attr).is_dir():
                uses.append((f"cmvl.{node.attr}", node.lineno))
            else:
                uses.append(("cmvl", node.lineno))
    return uses


def part_graph() -> dict[str, dict[str, list[str]]]:
    """part → {imported part: ["file:line", ...]} over every .py file of the package."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _part(_module_name(path)[0])
        for target, line in _imported(path):
            part = _part(target)
            if part is not None and part != source:
                graph[source][part].append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    return graph


def _reachable(graph: dict[str, dict[str, list[str]]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), {}):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def tangles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The groups of parts that import each other, directly or through others (the graph's strongly connected
    components of more than one part), each sorted; empty when imports run one way."""
    reach = {node: _reachable(graph, node) for node in graph}
    groups = {frozenset(n for n in reach if n in reach[node] and node in reach[n]) for node in reach}
    return sorted(sorted(group) for group in groups if len(group) > 1)


def test_the_parts_of_cmvl_import_one_way():
    graph = part_graph()
    found = tangles(graph)
    lines = [
        f"{a} -> {b} ({', '.join(where[:2])})"
        for group in found
        for a in group
        for b, where in sorted(graph[a].items())
        if b in group
    ]
    assert not found, "parts of cmvl that import each other: " + "; ".join(lines)


def test_the_graph_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The parser itself: absolute, relative, deferred (in a function), TYPE_CHECKING and `from cmvl import x`
    imports all make edges, and a cycle through them is found."""
    package = tmp_path / "cmvl"
    for folder in ("a", "b", "c", "d"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "e.py").write_text("")
    (package / "a" / "x.py").write_text("from ..b import y\n")
    (package / "b" / "y.py").write_text("def f():\n    from cmvl.c.z import g\n")
    (package / "c" / "z.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cmvl.d.w\n")
    (package / "d" / "w.py").write_text("from cmvl import e\nimport os\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", package)
    graph = part_graph()
    assert {a: sorted(b) for a, b in graph.items()} == {"a": ["b"], "b": ["c"], "c": ["d"], "d": ["e"]}
    assert tangles(graph) == []
    (package / "e.py").write_text("from .a import x\n")
    assert tangles(part_graph()) == [["a", "b", "c", "d", "e"]]
    (package / "e.py").write_text("")
    (package / "__init__.py").write_text("from cmvl.d.w import e\n")  # the package's root is a part of its own
    (package / "d" / "w.py").write_text("from cmvl import something_defined_in_init\n")
    assert tangles(part_graph()) == [["cmvl", "d"]]
    (package / "d" / "w.py").write_text("import cmvl\nHERE = cmvl.__file__\n")  # the package's location only
    assert tangles(part_graph()) == []
    (package / "d" / "w.py").write_text("import cmvl\nrun = cmvl.load_run\n")  # a name its __init__ exports
    assert tangles(part_graph()) == [["cmvl", "d"]]
    (package / "d" / "w.py").write_text("import cmvl\ne = cmvl.e\n")  # a submodule through the package
    assert part_graph()["d"].keys() == {"e"}
