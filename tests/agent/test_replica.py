from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from blazemesh.agent.errors import DataDirLockedError, ReplicaClosedError, StorageError
from blazemesh.agent.storage.paths import DB_FILE
from blazemesh.agent.storage.replica import Replica, open_replica
from blazemesh.agent.storage.store import Applied, Durability
from blazemesh.protocol.errors import ClockSkewError, OwnOriginError, ValidationError
from blazemesh.protocol.hlc import pack
from blazemesh.protocol.model import MAX_SEQ, MAX_VALUE_BYTES, Change, Delete, Put

OTHER = b"\x07" * 16


def remote(seq: int, hlc: int, *ops: Put | Delete, origin: bytes = OTHER) -> Change:
    return Change(origin=origin, seq=seq, hlc=hlc, ops=ops)


async def test_put_get_delete(replica: Replica) -> None:
    assert await replica.get("bugs", "b1") is None
    change = await replica.put("bugs", "b1", {"title": "crash", "open": True})
    assert change.origin == replica.node_id
    assert change.seq == 1
    assert await replica.get("bugs", "b1") == {"title": "crash", "open": True}
    await replica.put("bugs", "b1", {"open": False})
    assert await replica.get("bugs", "b1") == {"title": "crash", "open": False}
    await replica.delete("bugs", "b1")
    assert await replica.get("bugs", "b1") is None
    await replica.put("bugs", "b1", {"title": "again"})
    assert await replica.get("bugs", "b1") == {"title": "again"}


async def test_every_value_type_round_trips(replica: Replica) -> None:
    fields = {
        "none": None,
        "bool": True,
        "int": -(1 << 63),
        "float": 2.5,
        "str": "zürich ☃",
        "bytes": b"\x00\xff",
        "list": [1, "two", [3.0]],
        "map": {"a": {"b": [None]}},
    }
    await replica.put("c", "k", fields)
    assert await replica.get("c", "k") == fields


async def test_transaction_is_one_change_and_ordered(replica: Replica) -> None:
    async with replica.transaction() as tx:
        tx.put("bugs", "b1", {"a": 1})
        tx.delete("bugs", "b1")
        tx.put("bugs", "b1", {"b": 2})
        tx.put("bugs", "b2", {"c": 3})
        tx.put("bugs", "b3", {"d": 4})
        tx.delete("bugs", "b3")
    assert tx.change is not None
    assert tx.change.seq == 1
    assert len(tx.change.ops) == 6
    assert await replica.get("bugs", "b1") == {"b": 2}
    assert await replica.get("bugs", "b2") == {"c": 3}
    assert await replica.get("bugs", "b3") is None
    assert replica.info().changes_held == 1


async def test_transaction_that_raises_commits_nothing(replica: Replica) -> None:
    async def failing_transaction() -> None:
        async with replica.transaction() as tx:
            tx.put("bugs", "b1", {"a": 1})
            raise RuntimeError("app bug")

    with pytest.raises(RuntimeError):
        await failing_transaction()
    assert await replica.get("bugs", "b1") is None
    assert replica.info().changes_held == 0


async def test_query_filters_prefix_after_limit(replica: Replica) -> None:
    for i in range(10):
        await replica.put("t", f"k{i}", {"even": i % 2 == 0, "n": i})
    await replica.put("t", "other", {"even": True})
    await replica.put("u", "k0", {"even": True})
    await replica.delete("t", "k4")
    keys = [r.key for r in await replica.query("t", where={"even": True}, prefix="k")]
    assert keys == ["k0", "k2", "k6", "k8"]
    assert [r.key for r in await replica.query("t", prefix="k", after="k6")] == ["k7", "k8", "k9"]
    assert [r.key for r in await replica.query("t", limit=2)] == ["k0", "k1"]
    assert [r.key for r in await replica.query("t", where={"n": 3})] == ["k3"]
    assert await replica.query("t", where={"missing": None}) == []
    assert await replica.query("nothing") == []


async def test_query_equality_is_type_strict(replica: Replica) -> None:
    await replica.put("t", "bool", {"v": True})
    await replica.put("t", "int", {"v": 1})
    await replica.put("t", "float", {"v": 1.0})
    await replica.put("t", "list", {"v": [1]})
    await replica.put("t", "list-bool", {"v": [True]})
    assert [r.key for r in await replica.query("t", where={"v": 1})] == ["int"]
    assert [r.key for r in await replica.query("t", where={"v": True})] == ["bool"]
    assert [r.key for r in await replica.query("t", where={"v": 1.0})] == ["float"]
    assert [r.key for r in await replica.query("t", where={"v": [1]})] == ["list"]


async def test_query_pages_across_many_records(replica: Replica) -> None:
    async with replica.transaction() as tx:
        for i in range(1000):
            tx.put("t", f"k{i:04}", {"i": i})
    records = await replica.query("t", where={"i": 999})
    assert [r.key for r in records] == ["k0999"]
    assert len(await replica.query("t")) == 1000


async def test_prefix_scan_handles_keys_beyond_the_bmp(replica: Replica) -> None:
    for key in ["a", "a\U0010ffff", "a\U0010ffffz", "ab", "b"]:
        await replica.put("t", key, {})
    keys = [r.key for r in await replica.query("t", prefix="a\U0010ffff")]
    assert keys == ["a\U0010ffff", "a\U0010ffffz"]


@pytest.mark.parametrize(
    ("collection", "key", "fields", "message"),
    [
        ("", "k", {}, "collection must not be empty"),
        ("_sys", "k", {}, "reserved"),
        ("c", "k", {"_f": 1}, "field '_f'"),
        ("c", "k", {"f": (1, 2)}, "use a list"),
        ("c", "k", {"f": float("nan")}, "NaN"),
        ("c", "k", {"f": 1 << 64}, "64 signed bits"),
        ("c", "k", {"f": b"x" * (MAX_VALUE_BYTES + 1)}, "the limit is"),
    ],
)
async def test_invalid_writes_are_refused_clearly(
    replica: Replica, collection: str, key: str, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        await replica.put(collection, key, fields)  # type: ignore[arg-type]
    assert replica.info().changes_held == 0


async def test_oversized_transaction_is_refused_and_consumes_no_seq(replica: Replica) -> None:
    big = b"x" * (MAX_VALUE_BYTES - 16)
    ops = [Put(collection="c", key=f"k{i}", fields={"blob": big}) for i in range(5)]
    with pytest.raises(ValidationError, match=r"transaction is \d+ bytes"):
        await replica.commit(ops)
    assert (await replica.put("c", "small", {"a": 1})).seq == 1
    assert await replica.get("c", "k0") is None


async def test_bad_job_in_a_batch_does_not_fail_the_others(replica: Replica) -> None:
    big = b"x" * (MAX_VALUE_BYTES - 16)
    results: dict[str, object] = {}

    async def write(name: str, n: int) -> None:
        try:
            ops = [Put(collection="c", key=f"{name}{i}", fields={"b": big}) for i in range(n)]
            results[name] = (await replica.commit(ops)).seq
        except ValidationError as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, "ok-a", 1)
        nursery.start_soon(write, "too-big", 5)
        nursery.start_soon(write, "ok-b", 1)
    assert isinstance(results["too-big"], ValidationError)
    assert sorted([results["ok-a"], results["ok-b"]]) == [1, 2]  # type: ignore[type-var]


async def test_concurrent_writers_share_commits(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True, durability=Durability.FULL) as replica:
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(replica.put, "c", f"k{i}", {"i": i})
        assert replica.info().changes_held == 8
        assert replica.store.commits < 8


async def test_one_by_one_when_batching_is_off(tmp_path: Path) -> None:
    async with open_replica(
        tmp_path, create=True, durability=Durability.FULL, max_batch_ops=1
    ) as replica:
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(replica.put, "c", f"k{i}", {"i": i})
        assert replica.store.commits == 8


async def test_reopen_keeps_data_seq_and_clock(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        first = await replica.put("c", "k", {"a": 1})
    async with open_replica(tmp_path) as replica:
        assert await replica.get("c", "k") == {"a": 1}
        second = await replica.put("c", "k", {"a": 2})
    assert second.seq == first.seq + 1
    assert second.hlc > first.hlc


async def test_clock_never_goes_back_after_a_wall_clock_jump(tmp_path: Path) -> None:
    now = [pack(10_000_000, 0) >> 16]
    async with open_replica(tmp_path, create=True, wall_ms=lambda: now[0]) as replica:
        first = await replica.put("c", "k", {"a": 1})
        now[0] -= 5_000
        second = await replica.put("c", "k", {"a": 2})
    assert second.hlc > first.hlc
    async with open_replica(tmp_path) as replica:
        assert await replica.get("c", "k") == {"a": 2}


async def test_remote_changes_apply_once_and_merge(replica: Replica) -> None:
    stamp = pack(1_000, 0)
    change = remote(1, stamp, Put(collection="c", key="k", fields={"a": "remote"}))
    outcomes = await replica.apply_remote([change, change])
    assert isinstance(outcomes[0], Applied)
    assert outcomes[1] is None  # the same dot twice in one batch
    assert await replica.apply_remote([change]) == [None]
    assert await replica.get("c", "k") == {"a": "remote"}
    await replica.put("c", "k", {"a": "local"})  # the local clock is past the remote stamp
    assert await replica.get("c", "k") == {"a": "local"}
    assert replica.info().changes_held == 2


async def test_out_of_order_remote_changes_converge(replica: Replica) -> None:
    c1 = remote(1, pack(1_000, 0), Put(collection="c", key="k", fields={"a": 1}))
    c2 = remote(2, pack(1_000, 1), Delete(collection="c", key="k"))
    c3 = remote(3, pack(1_000, 2), Put(collection="c", key="k", fields={"b": 3}))
    for change in (c3, c1, c2):
        await replica.apply_remote([change])
    assert await replica.get("c", "k") == {"b": 3}
    assert replica.vv.base(OTHER) == 3


async def test_future_stamp_is_refused_and_the_rest_applies(tmp_path: Path) -> None:
    now_ms = 50_000_000
    async with open_replica(tmp_path, create=True, wall_ms=lambda: now_ms) as replica:
        future = remote(1, pack(now_ms + 61_000, 0), Put(collection="c", key="f", fields={}))
        fine = remote(
            1,
            pack(now_ms + 59_000, 0),
            Put(collection="c", key="ok", fields={}),
            origin=b"\x08" * 16,
        )
        outcomes = await replica.apply_remote([future, fine])
        assert isinstance(outcomes[0], ClockSkewError)
        assert isinstance(outcomes[1], Applied)
        assert await replica.get("c", "f") is None
        assert (OTHER, 1) not in replica.vv


@pytest.mark.parametrize("forged_seq", [3, 4, MAX_SEQ])
async def test_a_change_forged_under_this_nodes_id_is_refused_and_skipped(
    tmp_path: Path, forged_seq: int
) -> None:
    """Issue 17, item 5: a member sent a change under this node's id with its next seq
    (its next writes failed on a UNIQUE constraint until it restarted), or with seq
    2^63-1 (they failed for good). The node refuses it, and its own writes never take a
    seq that peers hold a forged change under, restart or not."""
    async with open_replica(tmp_path, create=True) as replica:
        me = replica.node_id
        for i in range(2):
            await replica.put("c", f"real{i}", {})
        forged = remote(
            forged_seq, pack(1_000, 0), Put(collection="c", key="x", fields={}), origin=me
        )
        (outcome,) = await replica.apply_remote([forged])
        assert isinstance(outcome, OwnOriginError)
        assert await replica.get("c", "x") is None
        seqs = [(await replica.put("c", f"after{i}", {})).seq for i in range(3)]
        assert seqs[0] == (4 if forged_seq == 3 else 3)
        assert seqs == sorted(seqs)
        assert forged_seq not in seqs
    async with open_replica(tmp_path) as replica:
        seqs += [(await replica.put("c", f"later{i}", {})).seq for i in range(2)]
        assert forged_seq not in seqs
        assert len(set(seqs)) == len(seqs)
        (again,) = await replica.apply_remote([forged])
        assert isinstance(again, OwnOriginError)


async def test_second_open_of_a_data_dir_is_refused(tmp_path: Path) -> None:
    async def open_again() -> None:
        async with open_replica(tmp_path):
            pass

    async with open_replica(tmp_path, create=True):
        with pytest.raises(DataDirLockedError, match="in use by another blazemesh process"):
            await open_again()


async def test_a_waiting_opener_gets_the_directory_once_it_is_free(tmp_path: Path) -> None:
    release, opened = trio.Event(), trio.Event()

    async def holder(*, task_status: trio.TaskStatus[None]) -> None:
        async with open_replica(tmp_path, create=True):
            task_status.started()
            await release.wait()

    async def waiter() -> None:
        async with open_replica(tmp_path, lock_wait_s=60):
            opened.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(holder)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()  # the waiter is retrying the lock
        assert not opened.is_set()
        release.set()
        await opened.wait()


async def test_closed_replica_refuses_use(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        pass
    with pytest.raises(ReplicaClosedError):
        await replica.put("c", "k", {})
    with pytest.raises(ReplicaClosedError):
        await replica.get("c", "k")


async def test_pending_writes_commit_before_close(tmp_path: Path) -> None:
    async with (
        trio.open_nursery() as writers,
        open_replica(tmp_path, create=True, durability=Durability.FULL) as replica,
    ):
        for i in range(20):
            writers.start_soon(replica.put, "c", f"k{i}", {})
        # Every writer has queued its put; the first batch is in the worker thread.
        await trio.testing.wait_all_tasks_blocked()
    async with open_replica(tmp_path) as replica:
        assert replica.info().collections == {"c": (20, 0)}


async def test_changes_since_reads_the_log_in_order(replica: Replica) -> None:
    for i in range(5):
        await replica.put("c", f"k{i}", {"i": i})
    entries = replica.changes_since(2)
    assert [lsn for lsn, _ in entries] == [3, 4, 5]
    assert [c.ops[0].key for _, c in entries] == ["k2", "k3", "k4"]
    assert replica.changes_since(0, limit=2)[-1][0] == 2


async def test_info_counts_records_and_tombstones(replica: Replica) -> None:
    await replica.put("a", "1", {})
    await replica.put("a", "2", {})
    await replica.delete("a", "2")
    await replica.put("b", "1", {})
    info = replica.info()
    assert info.collections == {"a": (1, 1), "b": (1, 0)}
    assert info.changes_held == 4
    assert info.last_lsn == 4


@pytest.mark.parametrize("durability", list(Durability))
async def test_readers_never_see_half_a_change(tmp_path: Path, durability: Durability) -> None:
    rounds = 60
    async with open_replica(tmp_path, create=True, durability=durability) as replica:
        writes_done = trio.Event()

        async def writer() -> None:
            for n in range(rounds):
                async with replica.transaction() as tx:
                    tx.put("pair", "a", {"n": n})
                    for i in range(40):  # big enough to commit in the worker thread
                        tx.put("pad", f"p{i}", {"n": n})
                    tx.put("pair", "b", {"n": n})
            writes_done.set()

        async def reader() -> None:
            seen = 0
            while not writes_done.is_set():
                records = await replica.query("pair")
                if records:
                    assert records[0].fields == records[1].fields
                    seen += 1
                a, b = await replica.get("pair", "a"), await replica.get("pair", "b")
                assert a is None or b is None or a["n"] <= b["n"]  # b is written after a
            assert seen > 0

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)
        assert await replica.get("pair", "a") == {"n": rounds - 1}


async def test_checkpoints_bound_the_wal_of_single_writes(tmp_path: Path) -> None:
    wal_bytes = {}
    for every in (8, 1_000):
        path = tmp_path / str(every)
        async with open_replica(
            path, create=True, threads=False, checkpoint_every_commits=every
        ) as replica:
            for i in range(64):
                await replica.put("c", f"k{i}", {"i": i})
            await trio.testing.wait_all_tasks_blocked()  # the last checkpoint has run
            wal_bytes[every] = (await trio.Path(f"{path / DB_FILE}-wal").stat()).st_size
    # Checkpointed every 8 commits, the WAL is reused from its start and holds about
    # 8 commits' pages at most, where unbounded it holds all 64.
    assert wal_bytes[8] * 4 < wal_bytes[1_000]


async def test_checkpoint_every_commits_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_every_commits must be >= 1"):
        async with open_replica(tmp_path, create=True, checkpoint_every_commits=0):
            pass


def before_each_checkpoint(
    replica: Replica, monkeypatch: pytest.MonkeyPatch, hook: Callable[[int], None]
) -> None:
    """Call ``hook(n)`` before the store's n-th checkpoint pass (from 1): it may block it,
    or raise in its place."""
    real = replica.store.checkpoint
    passes = 0

    def checkpoint(*, truncate: bool = False) -> None:
        nonlocal passes
        passes += 1
        hook(passes)
        real(truncate=truncate)

    monkeypatch.setattr(replica.store, "checkpoint", checkpoint)


async def test_writes_wait_for_the_second_pass_of_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint that only ever races writes never copies the last frames, and the WAL
    # is then never started over: it grows without bound. The first pass runs beside
    # the writes; the second, which copies the rest, holds them.
    second_started, release = threading.Event(), threading.Event()
    async with open_replica(tmp_path, create=True, checkpoint_every_commits=2) as replica:

        def hold_the_second(n: int) -> None:
            if n == 2:
                second_started.set()
                release.wait(timeout=30)

        before_each_checkpoint(replica, monkeypatch, hold_the_second)
        await replica.put("c", "a", {"n": 1})
        await replica.put("c", "b", {"n": 2})  # the second commit: a checkpoint starts
        assert await trio.to_thread.run_sync(second_started.wait, 10.0)
        done = trio.Event()

        async def put() -> None:
            await replica.put("c", "c", {"n": 3})
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(put)
            await trio.testing.wait_all_tasks_blocked()
            waited = not done.is_set()
            release.set()
        assert waited  # the write waited for the second pass
        assert await replica.get("c", "c") == {"n": 3}


FULL = StorageError("could not checkpoint replica.db: database or disk is full")


async def test_a_checkpoint_that_fails_is_logged_and_writes_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_replica(
        tmp_path, create=True, threads=False, checkpoint_every_commits=1
    ) as replica:
        passes = []

        def full_at_first(n: int) -> None:
            passes.append(n)
            if n <= 2:
                raise FULL

        before_each_checkpoint(replica, monkeypatch, full_at_first)
        for i in range(4):
            await replica.put("c", f"k{i}", {"i": i})
            await trio.testing.wait_all_tasks_blocked()  # its checkpoint has run
        assert passes == [1, 2, 3, 4]
        assert [await replica.get("c", f"k{i}") for i in range(4)] == [{"i": i} for i in range(4)]
    assert caplog.text.count("database or disk is full; the WAL keeps every change") == 2


async def test_a_second_checkpoint_pass_that_fails_is_logged_and_writes_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failed = threading.Event()
    async with open_replica(tmp_path, create=True, checkpoint_every_commits=2) as replica:

        def second_pass_full(n: int) -> None:
            if n == 2:
                failed.set()
                raise FULL

        before_each_checkpoint(replica, monkeypatch, second_pass_full)
        await replica.put("c", "a", {"n": 1})
        await replica.put("c", "b", {"n": 2})  # the second commit: a checkpoint starts
        assert await trio.to_thread.run_sync(failed.wait, 10.0)
        await replica.put("c", "c", {"n": 3})  # committed after the failed pass
        assert await replica.get("c", "c") == {"n": 3}
        assert "database or disk is full; the WAL keeps every change" in caplog.text
