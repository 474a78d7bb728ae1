"""A node whose clock runs ahead (issue 17, item 8): it learns that its peers refuse its
changes and why, stops stamping writes they would refuse, and once its clock is right
again `repair_clock` brings it back without its old future stamps winning later."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from blazemesh.agent.errors import ClockAheadError
from blazemesh.agent.storage.replica import open_replica
from tests.agent.cluster import cluster

DAY_MS = 86_400_000
START_MS = 1_700_000_000_000


async def test_a_node_whose_clock_ran_ahead_stops_then_comes_back(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    skew = [DAY_MS]  # how far node 0's clock is ahead of the true time

    def now() -> int:
        return START_MS + int(trio.current_time() * 1000)

    walls = [lambda: now() + skew[0], now, now]
    triangle = [(0, 1), (0, 2), (1, 2)]
    async with cluster(tmp_path, 3, triangle, wall_ms=walls) as c:
        r0, r1, _ = c.replicas
        await r0.put("c", "k", {"v": "from the future"})  # before any peer's clock is known
        await trio.sleep(2)  # virtual: links come up, the peers refuse it and say why
        assert (await c.replicas[1].get("c", "k")) is None
        refusals = [p.sync.refused_out for p in c.nodes[0].peers()]
        assert len(refusals) == 2
        assert all(r is not None and r.reason == "clock" for r in refusals)
        assert "refused 1 of this node's changes: their stamps are too far ahead" in caplog.text
        with pytest.raises(ClockAheadError, match=r"24.0 h ahead of its peers' \(2 of 2"):
            await r0.put("c", "k", {"v": "still the future"})
        await r1.put("c", "other", {"v": 1})  # the others write, and node 0 takes it
        await trio.sleep(1)
        assert await r0.get("c", "other") == {"v": 1}

        skew[0] = 0  # node 0's clock is set right: its replica's clock still stands ahead
        with pytest.raises(ClockAheadError, match="run `blazemesh repair-clock`"):
            await r0.put("c", "k", {"v": "now"})

    async with open_replica(tmp_path / "n0", wall_ms=now) as r0:
        assert await r0.repair_clock() == 1
        assert await r0.get("c", "k") == {"v": "from the future"}  # kept, stamped anew
        r0.check_clock()  # writes are taken again

    async with cluster(tmp_path, 3, triangle, wall_ms=now) as c:
        await c.until_converged()
        assert await c.replicas[2].get("c", "k") == {"v": "from the future"}
        await c.replicas[1].put("c", "k", {"v": "later"})  # newer than the repaired write
        await c.until_converged()
        for replica in c.replicas:
            assert await replica.get("c", "k") == {"v": "later"}


async def test_repair_without_changes_ahead_restamps_nothing(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        change = await replica.put("c", "k", {"v": 1})
        assert await replica.repair_clock() == 0
        assert replica.read_clock().stamp == change.hlc
        assert await replica.get("c", "k") == {"v": 1}
