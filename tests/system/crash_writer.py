"""Writes transactions until killed, printing each index once its commit has returned.

Usage: crash_writer.py DATA_DIR DURABILITY FIRST_INDEX. Each transaction puts two
records, ``{i}a`` and ``{i}b``, so a reader can check that no change is half-applied.
"""

from __future__ import annotations

import sys

import trio

from blazemesh.agent.storage.replica import open_replica
from blazemesh.agent.storage.store import Durability

MAX_WRITES = 100_000  # the parent kills us long before; this only bounds a runaway


async def main(data_dir: str, durability: str, first: int) -> None:
    async with open_replica(data_dir, create=True, durability=Durability(durability)) as r:
        for i in range(first, first + MAX_WRITES):
            async with r.transaction() as tx:
                tx.put("crash", f"{i}a", {"i": i, "pad": "x" * (i % 300)})
                tx.put("crash", f"{i}b", {"i": i})
            print(i, flush=True)  # noqa: T201 (the acknowledgement the parent reads)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
