"""Where a node keeps its files, and the lock that gives one process the data directory."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from agent.errors import DataDirLockedError

KEY_FILE = "node.key"
DB_FILE = "replica.db"
LOCK_FILE = "lock"
CONTROL_SOCKET = "agent.sock"  # the running agent's local API (a Unix socket, mode 0600)
LOCK_RETRY_S = 0.05  # how often a waiting opener tries the lock again


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
def lock_data_dir(data_dir: Path, *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on ``data_dir`` for the duration; if another process holds
    it, retry for up to ``wait_s`` seconds (blocking: call from a worker thread), then
    raise `DataDirLockedError`.

    The lock file records the holder's pid so that the error can name it. The kernel
    drops the lock when the process dies, however it dies.
    """
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise DataDirLockedError(
                    f"{data_dir} is in use by another blazemesh process (pid {holder}); "
                    "one agent at most runs on a data directory, and commands go through it"
                )
            time.sleep(LOCK_RETRY_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        return False
    return True
