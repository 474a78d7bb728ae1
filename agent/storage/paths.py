"""Where a node keeps its files, who may read them, and the lock that gives one process
the data directory.

The data directory holds the node key, the mesh secret and every record: it is private
to its owner (mode 0700, and every file in it 0600). A directory that group or others
can read or enter is refused, as PostgreSQL refuses its own (docs/operations.md, "The
data directory").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from blazemesh.agent.errors import ConfigError, DataDirLockedError

log = logging.getLogger(__name__)

KEY_FILE = "node.key"
DB_FILE = "replica.db"
DB_SIDE_FILES = ("-wal", "-shm")  # SQLite's WAL and shared-memory index, beside DB_FILE
LOCK_FILE = "lock"
CONTROL_SOCKET = "agent.sock"  # the running agent's local API (a Unix socket, mode 0600)
LOCK_RETRY_S = 0.05  # how often a waiting opener tries the lock again
OTHERS_ACCESS = 0o077  # the permission bits of group and others: none may be set


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


def make_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` (mode 0700) and its parents if missing, then `check_data_dir`."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create the data directory {data_dir}: {exc.strerror}") from None
    check_data_dir(data_dir)


def check_data_dir(data_dir: Path) -> None:
    """Raise `ConfigError` if ``data_dir`` is not a directory, or if group or others may
    read, write or enter it."""
    try:
        info = data_dir.stat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise ConfigError(f"cannot use the data directory {data_dir}: {exc.strerror}") from None
    if info is None or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"no data directory at {data_dir}: run `blazemesh init --data-dir {data_dir}`"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & OTHERS_ACCESS:
        raise ConfigError(
            f"{data_dir} is open to other users (mode {mode:04o}) and holds the node key, "
            f"the mesh secret and every record: run `chmod 700 {data_dir}`"
        )


@contextlib.contextmanager
def open_secret_file(data_dir: Path, name: str, *, holds: str, missing: str) -> Iterator[TextIO]:
    """Open the file ``name`` of ``data_dir``, which holds ``holds``, for reading; raise
    `ConfigError` if the data directory (`check_data_dir`) or the file is open to group
    or others, or, saying ``missing``, if there is no such file.

    The mode is read from the open file, so the file checked is the file read.
    """
    check_data_dir(data_dir)
    path = data_dir / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError(missing) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}, which holds {holds}: {exc.strerror}{_owner_hint(path)}"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigError(f"{path} is not a file: it should hold {holds}")
    with os.fdopen(fd) as f:
        mode = stat.S_IMODE(info.st_mode)
        if mode & OTHERS_ACCESS:
            raise ConfigError(
                f"{path} is readable by others (mode {mode:04o}) and holds {holds}: "
                f"if it was not exposed, run `chmod 600 {path}`"
            )
        yield f


def _owner_hint(path: Path) -> str:
    """Why a file may be unreadable: it belongs to another user (named by uid)."""
    try:
        owner = path.stat().st_uid
    except OSError:
        return ""
    if owner == os.geteuid():
        return ""
    return (
        f" (it belongs to uid {owner}: run blazemesh as that user, or give it a data "
        "directory of your own with --data-dir)"
    )


def private_database(path: Path) -> None:
    """Make sure the database at ``path``, and its WAL files, are readable by their owner
    alone: create it empty with mode 0600 if it is missing (SQLite gives the WAL files
    the database's mode), and make 0600 any that an older version left open, saying so.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in [path, *(path.with_name(path.name + side) for side in DB_SIDE_FILES)]:
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & OTHERS_ACCESS:
            file.chmod(0o600)
            log.warning("%s was open to other users (mode %04o): made it 0600", file, mode)


@contextlib.contextmanager
def lock_data_dir(data_dir: Path, *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on ``data_dir`` for the duration; if another process holds
    it, retry for up to ``wait_s`` seconds (blocking: call from a worker thread), then
    raise `DataDirLockedError`.

    The lock file records the holder's pid so that the error can name it. The kernel
    drops the lock when the process dies, however it dies.
    """
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock file {path}: {exc.strerror}") from None
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
