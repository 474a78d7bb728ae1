"""The layers of the house (docs/design.md, "Layers"), read from every module's imports.

Each module's source is parsed (nothing is imported) and every import in it counts: at
the top, inside a function (a lazy import is still a dependency), or under
``TYPE_CHECKING`` (a type is one too). A module may import from its own layer and the
layers below it, never from one above; and no modules import each other, directly or
round a loop. What the installed code imports from outside the standard library is
declared in pyproject.toml. (That `protocol` does no I/O is tests/protocol/test_purity.py.)
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The installed package's parts: the repository's folders, linked from blazemesh/.
SOURCES = {
    "blazemesh.protocol": REPO / "protocol",
    "blazemesh.agent": REPO / "agent",
    "blazemesh.simulations": REPO / "simulations",
}
ROOT_MODULES = {
    "blazemesh": REPO / "blazemesh" / "__init__.py",
    "blazemesh.cli": REPO / "blazemesh" / "cli.py",
}

# The package's face (it holds the version) and the faces of two of its parts: they import
# nothing, and stand below everything.
FACES = frozenset({"blazemesh", "blazemesh.agent", "blazemesh.simulations"})
# Lowest first, above the faces. A module belongs to the layer of the longest name here that
# is it or a package holding it; names in one tuple share a layer (may import each other).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("blazemesh.protocol",),  # sans-IO: bytes and values in, values and bytes out
    ("blazemesh.agent.errors",),
    ("blazemesh.agent.storage", "blazemesh.agent.trust"),  # what a node keeps on disk
    ("blazemesh.agent.links",),  # the network edge, secure channels, links, the node
    ("blazemesh.agent.discovery",),  # finding peers, and choosing whom to link to
    ("blazemesh.agent.api",),  # the local API: operations, control socket, client
    ("blazemesh.agent.assemble",),  # the one place a node and its services are put together
    # `blazemesh agent`: runs a node on a data directory, and tells a service manager
    ("blazemesh.agent.service", "blazemesh.agent.sdnotify"),
    ("blazemesh.agent.cli",),  # the agent's commands
    ("blazemesh.simulations",),  # the agent on a virtual network
    ("blazemesh.cli",),  # the `blazemesh` command: the agent's commands and `sim`
)

# Breaks being mended on another branch, each with why; the test fails once one is gone,
# so that its entry goes with the mend.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    path: Path

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def modules() -> dict[str, Module]:
    """Every module of the installed package, by name."""
    found = {name: Module(name, path) for name, path in ROOT_MODULES.items()}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            found[name] = Module(name, path)
    return found


def imported_names(module: Module) -> Iterator[tuple[str, tuple[str, ...]]]:
    """``(module, names taken from it)`` for every import statement in ``module``."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.name if module.is_package else module.name.rpartition(".")[0]
                package = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{package}.{base}" if base else package
            yield base, tuple(alias.name for alias in node.names)


@functools.cache
def graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from X import Y`` names module X.Y
    when there is one, else X)."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, module in known.items():
        targets = edges.setdefault(name, set())
        for base, names in imported_names(module):
            submodules = {f"{base}.{n}" for n in names} & known.keys()
            targets |= submodules or ({base} & known.keys())
        targets.discard(name)
    return edges


def layer_of(name: str) -> int:
    """``name``'s layer: 0 for a face, else 1 + its index in `LAYERS`; fails if no layer
    names it."""
    if name in FACES:
        return 0
    matches = [
        (len(prefix), index + 1)
        for index, names in enumerate(LAYERS)
        for prefix in names
        if name == prefix or name.startswith(prefix + ".")
    ]
    assert matches, f"{name} is in no layer: add it to LAYERS and docs/design.md"
    return max(matches)[1]


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return [
        f"{importer} (layer {layer_of(importer)}) imports {target} (layer {layer_of(target)})"
        for importer, targets in sorted(edges.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(importer)
    ]


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer_of(name)


def test_nothing_imports_upward() -> None:
    assert upward_imports(graph()) == []


def test_no_modules_import_each_other() -> None:
    found = cycles(graph())
    unknown = [sorted(cycle) for cycle in found if cycle not in KNOWN_CYCLES]
    assert unknown == [], "modules that import each other, directly or round a loop"
    mended = [sorted(cycle) for cycle in KNOWN_CYCLES if cycle not in found]
    assert mended == [], "mended: remove these from KNOWN_CYCLES"


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"blazemesh.agent.links.node": {"blazemesh.agent.service"}}, "upward"),
        ({"blazemesh.protocol.sync": {"blazemesh.agent.links.node"}}, "upward"),
        ({"blazemesh.agent.cli.main": {"blazemesh.simulations.cli"}}, "upward"),
        ({"blazemesh.agent.service": {"blazemesh.cli"}}, "upward"),
        ({"blazemesh.agent.links.link": {"blazemesh.agent.links.node"}}, "cycle"),
        ({"blazemesh.agent.cli.main": {"blazemesh.agent.service"}}, None),
    ],
)
def test_the_checks_see_a_break(edges: dict[str, set[str]], expected: str | None) -> None:
    """Each rule against today's graph with one import added (a loop or an upward one)."""
    changed = {name: set(targets) for name, targets in graph().items()}
    for importer, targets in edges.items():
        changed[importer] |= targets
    upward = upward_imports(changed)
    new_cycles = set(cycles(changed)) - KNOWN_CYCLES.keys()
    assert bool(upward) == (expected == "upward")
    if expected != "upward":  # an upward import back to an importer is a loop as well
        assert bool(new_cycles) == (expected == "cycle")


def declared_distributions() -> set[str]:
    """The distributions pyproject.toml says the package needs (extras but ``test``)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra, more in project.get("optional-dependencies", {}).items():
        if extra != "test":
            requirements += more
    return {normalized(re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0]) for r in requirements}


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()  # PEP 503


def test_what_the_package_imports_is_declared() -> None:
    providers = importlib.metadata.packages_distributions()
    declared = declared_distributions()
    undeclared = set()
    for module in modules().values():
        for base, _ in imported_names(module):
            top = base.partition(".")[0]
            if top in sys.stdlib_module_names or top in ("blazemesh", "__future__"):
                continue
            distributions = {normalized(d) for d in providers.get(top, [top])}
            if not distributions & declared:
                undeclared.add(f"{module.name} imports {top} ({', '.join(sorted(distributions))})")
    assert sorted(undeclared) == []
