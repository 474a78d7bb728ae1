"""Where a node keeps its files, and the lock that gives one process the data directory."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from agent.errors import DataDirLockedError

KEY_FILE = "node.key"
DB_FILE = "replica.db"
LOCK_FILE = "lock"
CONTROL_SOCKET = "agent.sock"  # the running agent's local API (a Unix socket, mode 0600)


def default_data_dir() -> Path:
    """``$BLAZEMESH_HOME``, else the platform's per-user data directory + ``blazemesh``."""
    env = os.environ.get("BLAZEMESH_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "blazemesh"
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "blazemesh"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "blazemesh"


@contextlib.contextmanager
def lock_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``data_dir`` for the duration, or raise at once.

    The lock file records the holder's pid so that the error can name it. The kernel
    drops the lock when the process dies, however it dies.
    """
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise DataDirLockedError(
                f"{data_dir} is in use by another blazemesh process (pid {holder}); "
                "while an agent runs, commands go through it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
