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
  - no private name (C{_name}, not a module) imported from another floor;
  - C{remotedialer.protocol} imports only the standard library and attrs,
    and importing it loads no Twisted, zope or Autobahn module.

Each rule is also run on a planted violation, so the test cannot pass by
reading nothing.
"""

from __future__ import annotations

import ast
import configparser
import functools
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


@functools.cache
def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(tree: ast.Module, modules: set[str], module: str = "") -> Iterator[tuple[str, int, bool]]:
    """
    (imported module, line, run at import time) for every import in C{tree}
    (of C{module}, against which relative imports are resolved), nested
    ones too.  (C{importlib.import_module} and C{__import__} are not read:
    the package has none, and a review would ask why.)
    """
    at_import = {id(node) for node in _import_time(tree.body)}
    package = module if _is_package(module, modules) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in at_import
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                up = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in modules else base), node.lineno, id(node) in at_import


def _is_package(module: str, modules: set[str]) -> bool:
    return any(other.startswith(module + ".") for other in modules)


def _import_time(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run when the module is imported: all but those inside functions."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                yield from _import_time([n for n in block if isinstance(n, (ast.stmt, ast.excepthandler))])


def floor_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "remotedialer" and len(parts) > 1 and parts[1] in FLOORS else None


def violations(trees: dict[str, ast.Module]) -> list[str]:
    """Every import against the rules (see module docstring), as lines."""
    modules = set(trees)
    found = []
    for module, tree in trees.items():
        here = floor_of(module)
        if here is None and module != "remotedialer":
            found.append(f"{module}: a module outside every floor (give it one in FLOORS)")
        for target, line, top in imports(tree, modules, module):
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
        found += _private_names_across(module, tree, modules)
    return found


def _private_names_across(module: str, tree: ast.Module, modules: set[str]) -> list[str]:
    """Private names (not modules) imported from another floor: each floor speaks through public ones."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if floor_of(node.module) in (None, floor_of(module)):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and f"{node.module}.{alias.name}" not in modules:
                    found.append(f"{module}:{node.lineno} imports {node.module}.{alias.name}: "
                                 "a private name of another floor")
    return found


def cycles(trees: dict[str, ast.Module]) -> list[list[str]]:
    """The import cycles between modules (strongly connected components of more than one)."""
    modules = set(trees)
    graph = {m: {t for t, _, _ in imports(tree, modules, m) if t in modules and t != m}
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
    """C{trees} with C{source} appended to C{module} (or as a new module)."""
    copy = dict(trees)
    before = ast.unparse(trees[module]) if module in trees else ""
    copy[module] = ast.parse(before + "\n" + source)
    return copy


def new_violations(trees: dict[str, ast.Module], planted_trees: dict[str, ast.Module]) -> list[str]:
    """What the planted tree breaks that the tree did not (so one real failure fails one test)."""
    clean = set(violations(trees))
    return [v for v in violations(planted_trees) if v not in clean]


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

    def plant(self, module: str, source: str) -> list[str]:
        return new_violations(self.trees, planted(self.trees, module, source))

    def test_planted_wrong_way_import(self) -> None:
        found = self.plant("remotedialer.tunnel._session", "from remotedialer.server._server import Server")
        self.assertEqual(len(found), 1, found)
        self.assertIn("imports remotedialer.server._server: tunnel may import only floors below it", found[0])

    def test_planted_wrong_way_forms(self) -> None:
        """Relative imports, module imports and package imports are read as what they name."""
        for module, source in [
            ("remotedialer.tunnel._relay", "from ..server import _server"),
            ("remotedialer.tunnel._relay", "from ..server._server import Server"),
            ("remotedialer.tunnel._relay", "import remotedialer.server._server as x"),
            ("remotedialer.tunnel._relay", "from remotedialer import server"),
            ("remotedialer.proxies._forward", "from ..frontdoor import _pool"),
            ("remotedialer.client", "from ..server import Server"),
        ]:
            self.assertEqual(len(self.plant(module, source)), 1, (module, source))

    def test_planted_sibling_import(self) -> None:
        self.assertEqual(len(self.plant("remotedialer.proxies._forward",
                                        "from remotedialer.frontdoor._pool import ClientPools")), 1)

    def test_planted_private_name_across_floors(self) -> None:
        found = self.plant("remotedialer.client._link",
                           "from remotedialer.tunnel._websocket import _SendPressure")
        self.assertEqual(len(found), 1, found)
        self.assertIn("a private name of another floor", found[0])

    def test_planted_module_outside_the_floors(self) -> None:
        self.assertEqual(len(self.plant("remotedialer._compat", "import os")), 1)

    def test_planted_type_only_cycle(self) -> None:
        trees = planted(self.trees, "remotedialer.protocol._codec",
                        "if TYPE_CHECKING:\n    from remotedialer.protocol._multiplexer import Multiplexer")
        self.assertIn("remotedialer.protocol._codec", {m for cycle in cycles(trees) for m in cycle})

    def test_planted_hidden_import(self) -> None:
        found = self.plant("remotedialer.server._drain",
                           "def f():\n    from remotedialer.server._server import Server")
        self.assertEqual(len(found), 1, found)
        self.assertIn("function-local", found[0])

    def test_import_time_blocks_are_not_hidden(self) -> None:
        """An import in a class body, or under if/try/with at module level, runs at import: not 'hidden'."""
        source = ("class C:\n    from remotedialer.protocol._text import printable\n"
                  "with open(__file__):\n    from remotedialer.protocol._text import cut\n")
        self.assertEqual(self.plant("remotedialer.server._drain", source), [])

    def test_planted_event_loop_in_core(self) -> None:
        self.assertEqual(len(self.plant("remotedialer.protocol._text", "import twisted.logger")), 1)

    def test_every_subpackage_is_installed(self) -> None:
        """setup.cfg lists its packages by hand: each subpackage must be there, or the wheel lacks it."""
        config = configparser.ConfigParser()
        config.read(PACKAGE.parent / "setup.cfg")
        listed = set(config["options"]["packages"].split())
        packages = {m for m in self.trees if _is_package(m, set(self.trees))}
        self.assertEqual(packages - listed, set())

    def test_protocol_loads_no_event_loop(self) -> None:
        """Importing the core in a fresh interpreter loads no Twisted, zope or Autobahn module."""
        out = subprocess.run(
            [sys.executable, "-c", "import remotedialer.protocol, sys; "
             "print([m for m in sys.modules if m.startswith(('twisted', 'zope', 'autobahn'))])"],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})  # this checkout's package
        self.assertEqual(out.stdout.strip(), "[]")

