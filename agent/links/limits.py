"""How many connections a node holds: its file budget, and its handshake slots.

Every connection costs the process a file descriptor, and a process out of them can
neither accept a peer nor open its database (docs/operations.md, "The open-file limit
and connection floods"). The agent raises its soft open-file limit to the hard one at
start (`raise_file_limit`), and splits what it may use, less what the rest of the
process needs, between connections still in their handshake and established links
(`connection_limits`).

`HandshakeSlots` bounds the accepted connections that have not authenticated yet. When
every slot is taken, a new connection takes the oldest one's slot and the oldest is
closed: an honest handshake takes a few round trips, so connections that sit idle or
trickle bytes to hold slots are the ones displaced, and a flood of them cannot keep a
peer out (docs/security.md, "Bounded connections").
"""

from __future__ import annotations

import contextlib
import logging
import resource
from collections.abc import Iterator
from dataclasses import dataclass

import trio

from blazemesh.agent.errors import ConfigError

log = logging.getLogger(__name__)

# Descriptors kept for everything but peers and control clients: stdio, the data
# directory's lock, SQLite's database, WAL and shared-memory files for each connection,
# trio's and zeroconf's event loops and sockets, temporary files (21 on a running agent).
OTHER_FILES = 64
MIN_CONNECTION_FILES = 16  # below this a node could not hold a handful of links
MAX_HANDSHAKE_SLOTS = 256  # a few KiB each; far more than honest peers ever need at once
HANDSHAKE_SHARE = 4  # at most a quarter of the connection budget waits for handshakes
# Where the hard limit is "unlimited" (macOS), the soft limit is raised to this instead.
UNLIMITED_FILES = 65_536


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """What a node may hold at once, derived from its open-file limit."""

    files: int  # the process's open-file limit (the soft one, once raised)
    handshakes: int  # accepted connections that have not authenticated yet
    links: int  # established links, dialled or accepted


def raise_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one; return (before, after).

    If the system refuses, the soft limit stays as it was and a warning says so.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
            return soft, soft
        return soft, target
    return soft, soft


def connection_limits(files: int, *, control_clients: int) -> ConnectionLimits:
    """Split a process's open-file limit between handshakes and links, keeping
    `OTHER_FILES` and one per control client for the rest; raise `ConfigError` if the
    limit is too low to run."""
    reserved = OTHER_FILES + control_clients
    budget = files - reserved
    if budget < MIN_CONNECTION_FILES:
        raise ConfigError(
            f"the open-file limit is {files}, and blazemesh needs at least "
            f"{reserved + MIN_CONNECTION_FILES}: raise it (ulimit -n, or LimitNOFILE= "
            "in a systemd unit)"
        )
    handshakes = min(MAX_HANDSHAKE_SLOTS, budget // HANDSHAKE_SHARE)
    return ConnectionLimits(files=files, handshakes=handshakes, links=budget - handshakes)


class HandshakeSlots:
    """At most ``size`` handshakes on accepted connections at once; when all slots are
    taken, a new one takes the oldest one's slot and the oldest is cancelled."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a node needs at least one handshake slot, not {size}")
        self.size = size
        self._held: dict[trio.CancelScope, None] = {}  # oldest first
        self._evicted = 0  # in the current flood: since the slots were last all free

    def __len__(self) -> int:
        return len(self._held)

    @contextlib.contextmanager
    def hold(self) -> Iterator[trio.CancelScope]:
        """Hold a slot while the block runs. The block is cancelled if newer connections
        need the slot (the scope's ``cancelled_caught`` then says so); it does not wait."""
        if len(self._held) >= self.size:
            self._evict_oldest()
        scope = trio.CancelScope()
        self._held[scope] = None
        try:
            with scope:
                yield scope
        finally:
            self._held.pop(scope, None)
            if not self._held and self._evicted:
                log.info(
                    "connection flood over: %d connections were closed before their "
                    "handshake ended, to make room for newer ones",
                    self._evicted,
                )
                self._evicted = 0

    def _evict_oldest(self) -> None:
        oldest = next(iter(self._held))
        del self._held[oldest]
        oldest.cancel()
        if not self._evicted:
            # Once per flood: a line per connection would let the flood fill the log.
            log.warning(
                "%d connections are in their handshake, this node's limit: each new one "
                "closes the oldest (a connection flood?)",
                self.size,
            )
        self._evicted += 1
