"""The layering of the code, checked on every import statement (function-level ones included).

* no pass imports another pass: shared machinery lives in ``lightir.analysis``,
  ``lightir.quant``, ``lightir.lowrank`` or the framework;
* nothing outside ``lightir.passes`` imports a pass (the registry finds them by entry point);
* no import cycles between modules.

import-linter would state these as contracts, but its import graph (grimp) walks the package
directory and cannot see ``lightir.passes`` and ``lightir.lowering``, which setuptools maps
from ``passes/`` and ``lowering/``; so the graph is built here from the source files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "lightir": ROOT / "lightir",
    "lightir.passes": ROOT / "passes",
    "lightir.lowering": ROOT / "lowering",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _import_graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in targets:
                # The longest known module the target names (a module or a member of one).
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph.add_edge(name, target, line=node.lineno)
    return graph


def _is_pass(module: str) -> bool:
    return module.startswith("lightir.passes.")


def test_the_graph_sees_every_package():
    graph = _import_graph()
    assert "lightir.passes.fold_bn" in graph and "lightir.lowering.tvm_backend" in graph
    assert graph.has_edge("lightir.passes.fold_bn", "lightir.registry")


def test_no_pass_imports_another_pass():
    graph = _import_graph()
    bad = [f"{a} -> {b}" for a, b in graph.edges if _is_pass(a) and _is_pass(b)]
    assert not bad, "passes share machinery through lightir.*, not each other: " + ", ".join(bad)


def test_nothing_outside_passes_imports_a_pass():
    graph = _import_graph()
    bad = [
        f"{a} -> {b}"
        for a, b in graph.edges
        if _is_pass(b) and not _is_pass(a) and a != "lightir.passes"
    ]
    assert not bad, "the framework finds passes through the registry: " + ", ".join(bad)


def test_no_import_cycles():
    graph = _import_graph()
    # A package's __init__ importing its own modules is how packages work, not a cycle.
    graph.remove_edges_from([(a, b) for a, b in graph.edges if b.startswith(a + ".")])
    cycles = sorted(nx.simple_cycles(graph), key=len)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_every_package_is_installed():
    """A package missing from pyproject's list works in an editable install and is absent
    from a wheel (lightir.search was, until this test)."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {
        "lightir." + ".".join(init.parent.relative_to(ROOT / "lightir").parts)
        for init in (ROOT / "lightir").rglob("__init__.py")
        if init.parent != ROOT / "lightir"
    }
    assert on_disk <= listed, sorted(on_disk - listed)
    assert set(setuptools["package-dir"]) == listed
