"""The receive path's CPU, counted in instructions: a stable figure on a noisy host.

``python -m benchmarks.apply N [BATCH]`` applies N remote changes (one typical put each, in
batches of BATCH, default 100, as a link's applier hands them over; 1 is a commit per
change, as when puts come one at a time) to a fresh SQLite store and exits.
Under callgrind, the instructions of a run of N less those of a run of 0 (imports and
start-up) divided by N are the cost of applying one change::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m benchmarks.apply 5000       # then again with 0

docs/performance.md compares commits this way (a worktree of the older commit, run with
``PYTHONPATH`` set to it).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from blazemesh.agent.storage.sqlite import SqliteStore
from blazemesh.agent.storage.store import Durability
from blazemesh.protocol.hlc import pack
from blazemesh.protocol.model import Change, Put

BATCH = 100  # changes per commit, as a link's applier groups them when they stream
EPOCH_MS = 1_790_000_000_000
ORIGIN = b"\x07" * 16


def typical(seq: int) -> Change:
    fields = {"title": f"crash on save {seq}", "priority": 2, "open": True}
    op = Put(collection="bugs", key=f"bug-{seq:012d}", fields=fields)
    return Change(origin=ORIGIN, seq=seq, hlc=pack(EPOCH_MS, seq), ops=(op,))


def main(count: int, batch: int = BATCH) -> None:
    changes = [typical(seq) for seq in range(1, count + 1)]
    with tempfile.TemporaryDirectory() as top:
        store = SqliteStore(
            Path(top) / "replica.db",
            node_id=b"\x01" * 16,
            durability=Durability.NORMAL,
            wall_ms=lambda: EPOCH_MS,
            max_skew_ms=60_000,
        )
        try:
            for first in range(0, count, batch):
                store.finish(store.write_batch(changes[first : first + batch]))
        finally:
            store.close()


if __name__ == "__main__":
    main(*map(int, sys.argv[1:3]))
