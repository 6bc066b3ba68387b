"""The shape of the tree: no import cycle (between modules, or between the packages of
``chextriev/``), no module of ``indexer/`` over 400 lines, and nothing of the index's write side
imported by the server or by the index's read side (``indexer.catalog`` and what it imports).

Imports are read with ``ast`` from the source, every one of them: at module level and inside
functions (a lazy import is still an arrow), so the checks cost no import of the tree.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("chextriev", "chextriev_cli", "indexer", "server", "metrics", "benchmarks")
#: What writes an index: nothing the server or the read side imports may reach these.
WRITE_SIDE = frozenset({
    "indexer.cli", "indexer.db_cli", "indexer.db_write", "indexer.decode", "indexer.decode_pool",
    "indexer.discovery", "indexer.ledger", "indexer.distributed", "indexer.embedder", "indexer.lock",
    "indexer.pipeline", "indexer.shards", "indexer.sync", "indexer.verify", "indexer.writer",
})
READ_SIDE = ("indexer.catalog",)
MAX_INDEXER_LINES = 400


def modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """``{dotted name: file}`` of every Python module of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: modules of the tree it imports}`` (any import statement anywhere in it)."""

    def resolve(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [resolve(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package[:len(package) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in found
                           else resolve(base) for alias in node.names]
            graph[name].update(t for t in targets if t and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def package_of(module: str, found: dict[str, Path]) -> str:
    """The unit of the package-level check: a subpackage of ``chextriev`` (``chextriev.io``), a
    top-level module of ``chextriev`` itself, or a top-level package (``indexer``)."""
    parts = module.split(".")
    if parts[0] == "chextriev" and len(parts) > 1:
        sub = ".".join(parts[:2])
        return sub if found[sub].name == "__init__.py" else module
    return parts[0]


def package_graph(graph: dict[str, set[str]], found: dict[str, Path]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = package_of(module, found)
        out.setdefault(source, set()).update(
            package_of(t, found) for t in targets if package_of(t, found) != source)
    return out


def reachable(graph: dict[str, set[str]], starts: Iterable[str]) -> dict[str, list[str]]:
    """``{module: import chain from a start}`` of everything ``starts`` import, transitively."""
    chains = {start: [start] for start in starts}
    todo = list(chains)
    while todo:
        node = todo.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt not in chains:
                chains[nxt] = chains[node] + [nxt]
                todo.append(nxt)
    return chains


def write_side_reached(graph: dict[str, set[str]], starts: Iterable[str]) -> dict[str, list[str]]:
    return {module: chain for module, chain in reachable(graph, starts).items()
            if module in WRITE_SIDE}


# ---------------------------------------------------------------------- the tree
FOUND = modules(ROOT, PACKAGES)
GRAPH = import_graph(FOUND)


def test_no_import_cycle_between_modules():
    assert cycles(GRAPH) == []


def test_no_import_cycle_between_packages():
    assert cycles(package_graph(GRAPH, FOUND)) == []


def test_no_module_of_the_indexer_over_400_lines():
    long = {name: n for name, path in FOUND.items() if name.startswith("indexer")
            and (n := len(path.read_text().splitlines())) > MAX_INDEXER_LINES}
    assert long == {}


def test_the_server_and_the_read_side_import_nothing_of_the_write_side():
    server = [name for name in FOUND if name.split(".")[0] == "server"]
    assert write_side_reached(GRAPH, server) == {}
    assert write_side_reached(GRAPH, READ_SIDE) == {}
    assert set(WRITE_SIDE) <= set(FOUND)  # the list names modules that exist


# ---------------------------------------------------------------------- the checks can fail
def _tree(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return modules(root, ("chextriev", "server", "indexer"))


def test_the_walker_finds_cycles_lazy_imports_and_write_side_reach(tmp_path):
    found = _tree(tmp_path, {
        "chextriev/__init__.py": "",
        "chextriev/io/__init__.py": "",
        "chextriev/io/a.py": "from chextriev.io import b\n",
        "chextriev/io/b.py": "def f():\n    from .a import thing\n",  # lazy and relative
        "chextriev/synth/__init__.py": "",
        "chextriev/synth/c.py": "import chextriev.io.a\n",
        "chextriev/io/d.py": "from chextriev.synth.c import x\n",
        "indexer/__init__.py": "",
        "indexer/catalog.py": "from indexer.store import s\n",
        "indexer/store.py": "def g():\n    import indexer.writer\n",
        "indexer/writer.py": "",
        "server/__init__.py": "",
        "server/api.py": "from indexer import catalog\n",
    })
    graph = import_graph(found)
    assert cycles(graph) == [["chextriev.io.a", "chextriev.io.b"]]
    assert cycles(package_graph(graph, found)) == [["chextriev.io", "chextriev.synth"]]
    reached = write_side_reached(graph, ["server.api"])
    assert reached == {"indexer.writer": ["server.api", "indexer.catalog", "indexer.store",
                                          "indexer.writer"]}
