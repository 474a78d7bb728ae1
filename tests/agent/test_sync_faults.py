"""Sync through a network that delays, splits and cuts messages at random points."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from blazemesh.agent.links.network import MemoryNetwork
from blazemesh.agent.storage.paths import DB_FILE
from tests.agent.cluster import cluster
from tests.agent.faults import Faults

WRITES = 60


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("secure", [True, False], ids=["noise", "plain"])
async def test_faults_lose_nothing_and_duplicate_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, seed: int, secure: bool
) -> None:
    faults = Faults(seed, cuts=25, p_cut=0.15, p_delay=0.2)
    network = MemoryNetwork(wrap=faults.wrap)
    async with cluster(
        tmp_path, 3, [(0, 1), (1, 2), (2, 0)], network=network, secure=secure, seed=seed
    ) as c:
        written: list[tuple[int, str]] = []
        async with trio.open_nursery() as nursery:
            for i in range(len(c.replicas)):

                async def writer(i: int = i) -> None:
                    for k in range(WRITES):
                        await c.replicas[i].put("c", f"{i}-{k}", {"k": k})
                        written.append((i, f"{i}-{k}"))
                        await trio.sleep(faults.rng.uniform(0, 0.5))

                nursery.start_soon(writer)
        await c.until_converged(timeout_s=600)
        assert faults.cuts > 5, "the test must actually cut connections"
        assert len(c.digests()) == 1
        for replica in c.replicas:
            for _, key in written:
                assert await replica.get("c", key) is not None, f"lost {key}"
    for i in range(3):
        db = sqlite3.connect(tmp_path / f"n{i}" / DB_FILE)
        (rows,) = db.execute("SELECT count(*) FROM log").fetchone()
        db.close()
        assert rows == 3 * WRITES  # each change applied exactly once, on every node
