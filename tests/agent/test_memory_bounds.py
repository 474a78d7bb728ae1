"""Caches and buffers of changes are bounded in bytes, not only in changes (issue 17, item 7):
the node's cache of recent changes, observers, watches and reads of the log."""

from __future__ import annotations

import contextlib
import functools
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from blazemesh.agent.api import operations as api
from blazemesh.agent.api.operations import Operations
from blazemesh.agent.assemble import Services, run_node
from blazemesh.agent.links.network import MemoryNetwork
from blazemesh.agent.links.node import Node, NodeConfig
from blazemesh.agent.storage.observe import Overflow
from blazemesh.agent.storage.replica import Replica, open_replica
from blazemesh.agent.storage.store import Applied
from blazemesh.agent.trust.membership import new_mesh
from blazemesh.protocol.codec import encode_change
from blazemesh.protocol.model import Change, Put, held_bytes

KIB = 1 << 10
MIB = 1 << 20


def value(i: int, size: int) -> bytes:
    """A value of its own (not shared with any other put), ``size`` bytes long."""
    return bytes([i % 256]) * size


@contextlib.asynccontextmanager
async def running_node(tmp_path: Path, config: NodeConfig) -> AsyncIterator[Node]:
    """A node that links to nobody, on a replica that commits on the trio thread."""
    async with (
        open_replica(tmp_path / "node", create=True, threads=False) as replica,
        trio.open_nursery() as nursery,
    ):
        run = functools.partial(
            run_node, replica, mesh=new_mesh("test"), network=MemoryNetwork(), config=config
        )
        services: Services = await nursery.start(run)
        yield services.node
        nursery.cancel_scope.cancel()


async def put_values(replica: Replica, count: int, size: int, *, first: int = 0) -> list[Change]:
    return [
        await replica.put("c", f"k{i}", {"v": value(i, size)}) for i in range(first, first + count)
    ]


# -- the node's cache of recent changes ------------------------------------------------


async def test_megabyte_changes_stay_within_the_default_cache_bytes(tmp_path: Path) -> None:
    """What 300 puts of 1 MiB did to an agent (54 to 355 MB), at a tenth of the scale."""
    bound = NodeConfig().cache_bytes
    count = bound // MIB + 16  # well past the bound, and far below the 65,536 changes
    async with running_node(tmp_path, NodeConfig()) as node:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await put_values(node.replica, count, MIB - KIB)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert node.cache_statistics().bytes <= bound
    # Python objects still held, the cache among them: within its bound and a little.
    assert held < bound + 4 * MIB, f"{held / MIB:.1f} MiB held after {count} puts of 1 MiB"


async def test_the_cache_never_holds_more_than_its_bytes(tmp_path: Path) -> None:
    config = NodeConfig(cache_bytes=MIB)
    async with running_node(tmp_path, config) as node:
        for i in range(40):
            await put_values(node.replica, 1, 100 * KIB, first=i)
            stats = node.cache_statistics()
            assert stats.bytes <= MIB
        assert stats.changes == 10  # 1 MiB of 100 KiB changes, and their objects
        assert stats.changes <= config.cache_changes


async def test_the_cache_keeps_its_count_bound_for_small_changes(tmp_path: Path) -> None:
    async with running_node(tmp_path, NodeConfig(cache_changes=5)) as node:
        await put_values(node.replica, 20, 10)
        assert node.cache_statistics().changes == 5


async def test_fetch_reads_changes_evicted_by_bytes_back_from_the_log(tmp_path: Path) -> None:
    async with running_node(tmp_path, NodeConfig(cache_bytes=350 * KIB)) as node:
        changes = await put_values(node.replica, 20, 100 * KIB)
        assert node.cache_statistics().changes == 3  # 18, 19 and 20
        origin = node.node_id
        assert list(node.fetch([(origin, (1, 20))])) == changes  # from the log
        assert list(node.fetch([(origin, (18, 20))])) == changes[17:]  # from memory
        assert list(node.fetch([(origin, (15, 19)), (origin, (20, 20))])) == changes[14:]


async def test_a_change_larger_than_the_cache_is_not_held(tmp_path: Path) -> None:
    async with running_node(tmp_path, NodeConfig(cache_bytes=100 * KIB)) as node:
        (change,) = await put_values(node.replica, 1, 200 * KIB)
        assert node.cache_statistics() == type(node.cache_statistics())(changes=0, bytes=0)
        assert list(node.fetch([(node.node_id, (1, 1))])) == [change]


# -- what a change is counted as --------------------------------------------------------


async def test_held_bytes_count_a_change_s_objects_as_well_as_its_encoding(
    replica: Replica,
) -> None:
    small_ops = [Put(collection="c", key=f"k{i}", fields={"i": i}) for i in range(10_000)]
    with replica.observe() as events:
        big = await replica.put("c", "big", {"v": value(1, 500 * KIB)})
        many = await replica.commit(small_ops)
        first, second = await events.__anext__(), await events.__anext__()
    assert isinstance(first, Applied)
    assert isinstance(second, Applied)
    big_encoded, many_encoded = len(encode_change(big)), len(encode_change(many))
    assert big_encoded < first.change_bytes < big_encoded + 4 * KIB  # a blob is its bytes
    # 10,000 small ops: about 130 KiB encoded, about 3.3 MB of Python objects.
    assert second.change_bytes > 20 * many_encoded
    assert second.change_bytes == held_bytes(many_encoded, 4 + 10_000 + 10_000)
    # Observers also hold each changed record as it now is.
    assert first.updates_bytes > 500 * KIB
    assert second.updates_bytes >= 10_000 * 160


# -- observers and watches --------------------------------------------------------------


async def test_an_observer_that_falls_behind_by_bytes_overflows(replica: Replica) -> None:
    await replica.put("c", "before", {})
    with replica.observe(capacity_bytes=MIB) as events:
        for i in range(10):
            await replica.put("c", f"k{i}", {"v": value(i, 300 * KIB)})
            assert events.buffered_bytes <= MIB
        overflow = await events.__anext__()
        assert overflow == Overflow(resume_lsn=1, missed=10)
        missed = []
        lsn = overflow.resume_lsn
        while page := replica.changes_since(lsn):
            missed += [change for _, change in page]
            lsn = page[-1][0]
        assert [c.ops[0].key for c in missed] == [f"k{i}" for i in range(10)]


async def test_a_change_larger_than_an_observer_s_bytes_still_reaches_a_reader_that_keeps_up(
    replica: Replica,
) -> None:
    with replica.observe(capacity_bytes=100 * KIB) as events:
        for i in range(3):
            change = await replica.put("c", f"k{i}", {"v": value(i, 300 * KIB)})
            event = await events.__anext__()
            assert isinstance(event, Applied)
            assert event.change == change
            assert events.buffered_bytes == 0


def test_capacity_bytes_must_be_positive() -> None:
    from blazemesh.agent.storage.observe import ObserverHub

    with pytest.raises(ValueError, match="capacity_bytes"):
        ObserverHub(0).add(collection=None, capacity=1, capacity_bytes=0)


async def test_a_watch_that_falls_behind_by_bytes_catches_up_from_the_log(
    autojump_clock: trio.testing.MockClock,
    replica: Replica,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api, "WATCH_BUFFER_BYTES", MIB)
    log_reads: list[int] = []
    read_log = replica.changes_since

    def changes_since(lsn: int, **options: int) -> list[tuple[int, Change]]:
        log_reads.append(lsn)
        return read_log(lsn, **options)

    monkeypatch.setattr(replica, "changes_since", changes_since)
    keys: list[str] = []
    resume = trio.Event()

    async def watch(task_status: trio.TaskStatus[None]) -> None:
        events = Operations(replica).watch({"collection": "c"})
        async with contextlib.aclosing(events):
            task_status.started()
            async for event in events:
                assert isinstance(event, dict)
                ops = event["ops"]
                assert isinstance(ops, list)
                keys.extend(str(op["key"]) for op in ops if isinstance(op, dict))
                if len(keys) == 1:
                    await resume.wait()  # a client that stops reading for a while
                if len(keys) == 11:
                    return

    async with trio.open_nursery() as nursery:
        await nursery.start(watch)
        await trio.testing.wait_all_tasks_blocked()  # the watch follows the observer now
        for i in range(11):
            await put_values(replica, 1, 300 * KIB, first=i)
            await trio.testing.wait_all_tasks_blocked()
        reads_before = len(log_reads)
        resume.set()
    assert keys == [f"k{i}" for i in range(11)]  # every one, once, in order
    assert len(log_reads) > reads_before  # it overflowed and read the log again


async def test_reads_of_the_log_are_pages_bounded_in_bytes(replica: Replica) -> None:
    await put_values(replica, 10, 300 * KIB)
    page = replica.changes_since(0)  # up to 1,000 changes: here, up to 1 MiB of them
    assert [lsn for lsn, _ in page] == [1, 2, 3]
    assert [lsn for lsn, _ in replica.changes_since(3, max_bytes=KIB)] == [4]  # one at least
    assert len(replica.changes_since(0, max_bytes=10 * MIB)) == 10
    assert [lsn for lsn, _ in replica.store.log_since(8, 100)] == [9, 10]


async def test_fetch_reads_the_log_a_page_at_a_time_as_it_is_consumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link takes from a plan only what its window holds: fetching a plan of big
    changes must not read (and hold) all of them first."""
    async with running_node(tmp_path, NodeConfig(cache_bytes=KIB)) as node:
        changes = await put_values(node.replica, 40, 100 * KIB)
        store = node.replica.store
        pages: list[int] = []
        read = store.changes_in

        def counted(origin: bytes, first: int, last: int) -> list[tuple[int, bytes]]:
            page = read(origin, first, last)
            pages.append(len(page))
            return page

        monkeypatch.setattr(store, "changes_in", counted)
        fetched = node.fetch([(node.node_id, (1, 40))])
        assert next(fetched) == changes[0]
        assert len(pages) == 1
        assert pages[0] * 100 * KIB <= 1 << 20  # one page of at most 1 MiB
        assert [changes[0], *fetched] == changes
        assert sum(pages) == 40
