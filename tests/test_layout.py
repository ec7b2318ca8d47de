"""
The rules of the package's layout, read from the syntax tree of every
module (imports under C{TYPE_CHECKING} included, since a type-only cycle is
still a cycle for the reader):

  - each subpackage imports only the floors below it
    (L{FLOORS}; C{frontdoor} and C{proxies} share a floor and never import
    each other);
  - no module imports the C{remotedialer} facade except the programs;
  - no import cycle between modules;
  - no function-local import of the package's own modules (the way a cycle
    gets hidden);
  - C{remotedialer.protocol} imports only the standard library and attrs,
    and importing it loads no Twisted, zope or Autobahn module.

Each rule is also run on a planted violation, so the test cannot pass by
reading nothing.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import remotedialer

PACKAGE = Path(remotedialer.__file__).parent

#: Each subpackage (or top-level module) and its floor: a module may import
#: only from floors strictly below its own, and from its own subpackage.
FLOORS = {
    "protocol": 0,
    "tunnel": 1,
    "testing": 2,
    "client": 2,
    "server": 3,
    "frontdoor": 4,
    "proxies": 4,
    "ops": 5,
    "_tap": 6,
}
#: What the sans-IO core may import besides itself.
PROTOCOL_THIRD_PARTY = {"attrs", "attr"}


def module_name(path: Path) -> str:
    parts = ("remotedialer", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(tree: ast.Module, modules: set[str]) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in C{tree}, nested ones too."""
    top_level = {id(node) for node in _module_level(tree.body)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top_level
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield (sub if sub in modules else node.module), node.lineno, id(node) in top_level


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run when the module is imported: the body, and inside if/try at that level."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)


def floor_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "remotedialer" and len(parts) > 1 and parts[1] in FLOORS else None


def violations(trees: dict[str, ast.Module]) -> list[str]:
    """Every import against the rules (see module docstring), as lines."""
    modules = set(trees)
    found = []
    for module, tree in trees.items():
        here = floor_of(module)
        for target, line, top in imports(tree, modules):
            where = f"{module}:{line} imports {target}"
            if target == "remotedialer" and module != "remotedialer" and here != "_tap":
                found.append(f"{where}: only the programs may import the facade")
            if target.startswith("remotedialer.") and not top:
                found.append(f"{where}: a function-local import of our own module")
            if here == "protocol" and not target.startswith("remotedialer."):
                top_name = target.split(".")[0]
                if top_name not in sys.stdlib_module_names and top_name not in PROTOCOL_THIRD_PARTY:
                    found.append(f"{where}: the protocol core imports only the standard library and attrs")
            there = floor_of(target)
            if here is None or there is None or here == there:
                continue
            if FLOORS[there] >= FLOORS[here]:
                found.append(f"{where}: {here} may import only floors below it")
    return found


def cycles(trees: dict[str, ast.Module]) -> list[list[str]]:
    """The import cycles between modules (strongly connected components of more than one)."""
    modules = set(trees)
    graph = {m: {t for t, _, _ in imports(tree, modules) if t in modules and t != m}
             for m, tree in trees.items()}
    # (A package's __init__ re-exports its modules; a module importing its
    # own package's __init__ would close a cycle through it, and is one.)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def planted(trees: dict[str, ast.Module], module: str, source: str) -> dict[str, ast.Module]:
    """C{trees} with C{source} appended to C{module}."""
    copy = dict(trees)
    copy[module] = ast.parse(ast.unparse(trees[module]) + "\n" + source)
    return copy


class LayoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.trees = sources()

    def test_reads_every_floor(self) -> None:
        """The rules see every subpackage (a moved package would escape them)."""
        self.assertEqual({floor_of(m) for m in self.trees} - {None}, set(FLOORS))

    def test_imports_go_down(self) -> None:
        self.assertEqual(violations(self.trees), [])

    def test_no_cycles(self) -> None:
        self.assertEqual(cycles(self.trees), [])

    def test_planted_wrong_way_import(self) -> None:
        trees = planted(self.trees, "remotedialer.tunnel._session",
                        "from remotedialer.server._server import Server")
        self.assertEqual(violations(trees), [
            f"remotedialer.tunnel._session:{_last_line(trees, 'remotedialer.tunnel._session')} imports "
            "remotedialer.server._server: tunnel may import only floors below it"])

    def test_planted_sibling_import(self) -> None:
        trees = planted(self.trees, "remotedialer.proxies._forward",
                        "from remotedialer.frontdoor._pool import ClientPools")
        self.assertEqual(len(violations(trees)), 1)

    def test_planted_type_only_cycle(self) -> None:
        trees = planted(self.trees, "remotedialer.protocol._codec",
                        "if TYPE_CHECKING:\n    from remotedialer.protocol._multiplexer import Multiplexer")
        self.assertIn("remotedialer.protocol._codec", {m for cycle in cycles(trees) for m in cycle})

    def test_planted_hidden_import(self) -> None:
        trees = planted(self.trees, "remotedialer.server._drain",
                        "def f():\n    from remotedialer.server._server import Server")
        self.assertEqual(len(violations(trees)), 1)

    def test_planted_event_loop_in_core(self) -> None:
        trees = planted(self.trees, "remotedialer.protocol._text", "import twisted.logger")
        self.assertEqual(len(violations(trees)), 1)

    def test_protocol_loads_no_event_loop(self) -> None:
        """Importing the core in a fresh interpreter loads no Twisted, zope or Autobahn module."""
        out = subprocess.run(
            [sys.executable, "-c", "import remotedialer.protocol, sys; "
             "print([m for m in sys.modules if m.startswith(('twisted', 'zope', 'autobahn'))])"],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})  # this checkout's package
        self.assertEqual(out.stdout.strip(), "[]")


def _last_line(trees: dict[str, ast.Module], module: str) -> int:
    return max(node.lineno for node in ast.walk(trees[module]) if hasattr(node, "lineno"))
