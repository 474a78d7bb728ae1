"""The distribution installs one top-level name, ``blazemesh``, and says its version."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import blazemesh
from tests.system.agents import blazemesh as run_blazemesh

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_blazemesh_alone(tmp_path: Path) -> None:
    """`pip install` used to put `agent`, `protocol`, `simulations` and `benchmarks` at the
    top of site-packages, where an app's own `agent.py` would clash with them."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("blazemesh-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"blazemesh", f"blazemesh-{blazemesh.__version__}.dist-info"}
    for package in ("agent", "protocol", "simulations"):
        assert f"blazemesh/{package}/__init__.py" in names
    assert "blazemesh/agent/links/node.py" in names
    assert not [name for name in names if "benchmarks" in name or "tests" in name]


def test_the_version_comes_from_one_place() -> None:
    result = run_blazemesh("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"blazemesh {blazemesh.__version__}"
