"""Fixtures of the system tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory path that does not exist yet, short enough for a Unix socket in
    it (paths are limited to 107 bytes: pytest's tmp_path can be longer)."""
    with tempfile.TemporaryDirectory(prefix="bm-") as top:
        yield Path(top) / "node"
