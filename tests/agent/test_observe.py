from __future__ import annotations

import pytest
import trio
import trio.testing

from blazemesh.agent.storage.observe import Overflow
from blazemesh.agent.storage.replica import Replica
from blazemesh.agent.storage.store import Applied
from blazemesh.protocol.hlc import pack
from blazemesh.protocol.model import Change, Delete, Put


async def test_observer_sees_committed_changes_in_order(replica: Replica) -> None:
    with replica.observe() as events:
        await replica.put("bugs", "b1", {"a": 1})
        await replica.delete("bugs", "b1")
        first = await events.__anext__()
        second = await events.__anext__()
    assert isinstance(first, Applied)
    assert isinstance(second, Applied)
    assert (first.lsn, second.lsn) == (1, 2)
    assert first.updates[0].document == {"a": 1}
    assert second.updates[0].document is None


async def test_observer_filters_by_collection(replica: Replica) -> None:
    with replica.observe("b") as events:
        await replica.put("a", "1", {})
        await replica.put("b", "1", {})
        event = await events.__anext__()
    assert isinstance(event, Applied)
    assert event.updates[0].collection == "b"


async def test_remote_changes_are_observed(replica: Replica) -> None:
    change = Change(
        origin=b"\x01" * 16, seq=1, hlc=pack(1, 0), ops=(Put(collection="c", key="k", fields={}),)
    )
    with replica.observe() as events:
        await replica.apply_remote([change])
        event = await events.__anext__()
    assert isinstance(event, Applied)
    assert event.change == change


async def test_a_batch_that_writes_and_then_deletes_a_record_commits_while_observed(
    replica: Replica,
) -> None:
    """A peer's put and its later delete of one record, in one batch: the put's update
    still holds the document (it counts its own bytes), the delete's none. (Both changes
    used to fail with a KeyError, and a catch-up that brought them, with them.)"""
    origin = b"\x01" * 16
    put = Change(
        origin=origin, seq=1, hlc=pack(1, 0), ops=(Put(collection="c", key="k", fields={"a": 1}),)
    )
    delete = Change(origin=origin, seq=2, hlc=pack(2, 0), ops=(Delete(collection="c", key="k"),))
    with replica.observe() as events:
        outcomes = await replica.apply_remote([put, delete])
        first, second = await events.__anext__(), await events.__anext__()
    assert [type(o) for o in outcomes] == [Applied, Applied]
    assert isinstance(first, Applied)
    assert isinstance(second, Applied)
    assert first.updates[0].document == {"a": 1}
    assert first.updates_bytes > 0
    assert second.updates_bytes == 0
    assert await replica.get("c", "k") is None


async def test_slow_observer_overflows_explicitly_and_resyncs(replica: Replica) -> None:
    await replica.put("c", "before", {})
    with replica.observe(capacity=3) as events:
        for i in range(10):
            await replica.put("c", f"k{i}", {"i": i})  # never blocks on the observer
        overflow = await events.__anext__()
        assert overflow == Overflow(resume_lsn=1, missed=10)
        missed = replica.changes_since(overflow.resume_lsn)
        assert [c.ops[0].key for _, c in missed] == [f"k{i}" for i in range(10)]
        await replica.put("c", "after", {})
        event = await events.__anext__()
    assert isinstance(event, Applied)
    assert event.change.ops[0].key == "after"


async def test_reader_that_keeps_up_never_overflows(replica: Replica) -> None:
    seen: list[int] = []
    with replica.observe(capacity=1) as events:

        async def read() -> None:
            async for event in events:
                assert isinstance(event, Applied)
                seen.append(event.lsn)
                if len(seen) == 20:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for i in range(20):
                await replica.put("c", f"k{i}", {})
                await trio.testing.wait_all_tasks_blocked()
    assert seen == list(range(1, 21))


async def test_closing_the_observer_ends_iteration(replica: Replica) -> None:
    with replica.observe() as events:
        await replica.put("c", "k", {})
    collected = [e async for e in events]
    assert len(collected) == 1


def test_capacity_must_be_positive() -> None:
    from blazemesh.agent.storage.observe import ObserverHub

    with pytest.raises(ValueError, match="capacity"):
        ObserverHub(0).add(collection=None, capacity=0, capacity_bytes=1)
