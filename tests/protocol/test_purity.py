"""Rule 1 of the house: `protocol` does no I/O, reads no clock and draws no randomness.

CPython itself imports ``time`` while starting up (zipimport does), and msgpack imports
``datetime``, which imports ``time``; so a plain look at ``sys.modules`` cannot tell a
protocol module's own ``import time`` apart. The subprocess therefore (1) checks that
importing the package loads none of the forbidden modules that were not already loaded
at start-up, and (2) records, through a wrapper of ``__import__``, every module that a
``protocol`` module itself imports. The source is also checked statically.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import TypedDict

from blazemesh import protocol

FORBIDDEN = (
    "trio",
    "socket",
    "sqlite3",
    "zeroconf",
    "threading",
    "time",
    "asyncio",
    "selectors",
)
# Never imported by protocol code directly, whatever its dependencies do.
FORBIDDEN_DIRECT = (*FORBIDDEN, "random", "secrets", "datetime", "subprocess", "logging")

PROBE = r"""
import builtins, importlib, json, pkgutil, sys

baseline = set(sys.modules)
direct = []
real_import = builtins.__import__

def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "")
    if importer == "blazemesh.protocol" or importer.startswith("blazemesh.protocol."):
        if level:
            package = globals.get("__package__") or importer
            base = package.rsplit(".", level - 1)[0] if level > 1 else package
            name = f"{base}.{name}" if name else base
        direct.append([importer, name, list(fromlist or ())])
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = recording_import
from blazemesh import protocol
modules = [m.name for m in pkgutil.walk_packages(protocol.__path__, "blazemesh.protocol.")]
for name in modules:
    importlib.import_module(name)
builtins.__import__ = real_import
print(json.dumps({
    "baseline": sorted(baseline),
    "after": sorted(sys.modules),
    "modules": modules,
    "direct": direct,
}))
"""


class Probe(TypedDict):
    baseline: list[str]  # sys.modules at start-up
    after: list[str]  # sys.modules after importing every protocol module
    modules: list[str]  # the protocol modules found by pkgutil
    direct: list[tuple[str, str, list[str]]]  # (importer, module, fromlist)


def probe() -> Probe:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: Probe = json.loads(result.stdout)
    return loaded


def top(name: str) -> str:
    return name.split(".")[0]


def test_importing_protocol_loads_no_io_clock_or_threads() -> None:
    loaded = probe()
    # Every module of the package was imported, noise.py too if it exists by now.
    expected = {m.name for m in pkgutil.walk_packages(protocol.__path__, "blazemesh.protocol.")}
    assert set(loaded["modules"]) == expected
    assert {f"blazemesh.protocol.{m}" for m in ("codec", "crdt", "hlc", "vv")} <= expected
    new = set(loaded["after"]) - set(loaded["baseline"])
    assert "blazemesh.protocol.codec" in new
    for name in FORBIDDEN:
        if name not in loaded["baseline"]:
            assert name not in loaded["after"], f"importing protocol loaded {name}"
    for forbidden_module in ("trio", "sqlite3", "zeroconf", "asyncio"):
        assert forbidden_module not in loaded["after"]


def test_no_protocol_module_imports_a_forbidden_module() -> None:
    direct = probe()["direct"]
    assert direct, "the import recorder saw nothing: the probe is broken"
    seen = {(importer, name) for importer, name, _ in direct}
    assert ("blazemesh.protocol.codec.bounds", "msgpack") in seen  # it sees real imports
    offenders = [
        (importer, name, fromlist)
        for importer, name, fromlist in direct
        if top(name) in FORBIDDEN_DIRECT or (top(name) == "os" and "urandom" in fromlist)
    ]
    assert offenders == []


def protocol_sources() -> list[Path]:
    root = Path(protocol.__file__).parent
    sources = sorted(root.rglob("*.py"))
    assert root / "hlc.py" in sources
    return sources


def test_sources_import_nothing_forbidden() -> None:
    for path in protocol_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                if node.module == "os":
                    assert all(a.name != "urandom" for a in node.names), path
            else:
                continue
            for name in names:
                assert top(name) not in FORBIDDEN_DIRECT, f"{path.name} imports {name}"


def test_sources_call_no_urandom_or_random() -> None:
    pattern = re.compile(r"\bos\.urandom\b|\burandom\s*\(|\brandom\.\w+|\bimport\s+random\b")
    for path in protocol_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        # Look at code only: docstrings and comments may mention randomness.
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr not in {"urandom", "getrandom", "token_bytes"}, path.name
                if isinstance(node.value, ast.Name):
                    assert node.value.id not in {"random", "secrets"}, path.name
            if isinstance(node, ast.Name):
                assert node.id not in {"urandom", "randbytes"}, path.name
        code = "\n".join(
            line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()
        )
        docstrings = {
            n.value.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
        }
        for doc in docstrings:
            if isinstance(doc, str):
                code = code.replace(doc, "")
        assert not pattern.search(code), f"{path.name}: {pattern.search(code)}"
