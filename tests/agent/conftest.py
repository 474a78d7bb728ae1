from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blazemesh.agent.storage.replica import Replica, open_replica


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[Replica]:
    async with open_replica(tmp_path / "node", create=True) as r:
        yield r


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The data directory of the CLI's commands run without ``--data-dir``."""
    monkeypatch.setenv("BLAZEMESH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
