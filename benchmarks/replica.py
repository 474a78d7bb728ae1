"""The replica core against plain SQLite and plain msgpack (issue 2's figures).

Every figure is measured beside its baseline in the same run, on fresh databases in a
temporary directory: the cost of being a CRDT is the ratio.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import msgpack
import trio

from benchmarks.common import Figure, rate
from blazemesh.agent.storage.paths import DB_FILE
from blazemesh.agent.storage.replica import Replica, open_replica
from blazemesh.agent.storage.store import Durability
from blazemesh.protocol.codec import decode_batch, decode_change, encode_batch, encode_change
from blazemesh.protocol.hlc import pack
from blazemesh.protocol.model import Change, Put, Value

SUITE = "replica"
SINGLE_PUTS = {Durability.NORMAL: 4_000, Durability.FULL: 600}
TX_OPS = 1_000
TX_COUNT = {Durability.NORMAL: 20, Durability.FULL: 10}
WRITERS = 8
PUTS_PER_WRITER = 150
GETS = 20_000
REMOTE_CHANGES = 20_000
REMOTE_BATCH = 100
WAL_PUTS = 5_000  # single puts while the write-ahead log is watched
CODEC_ROUNDS = 20_000
STALL_PROBE_S = 0.001  # the loop-stall probe asks to wake this often
ORIGIN = bytes(range(16))


def typical_fields(i: int) -> dict[str, Value]:
    """The typical op of the issue: a 20-character string, an int, a bool."""
    return {"title": f"crash on save {i:06d}", "priority": i % 5, "open": i % 3 != 0}


def key(i: int) -> str:
    """A 16-character key."""
    return f"bug-{i:012d}"


def typical_change(i: int, seq: int = 1_000, origin: bytes = ORIGIN) -> Change:
    hlc = pack(1_795_000_000_000 + i // 8, i % 8)
    op = Put(collection="bugs", key=key(i), fields=typical_fields(i))
    return Change(origin=origin, seq=seq + i, hlc=hlc, ops=(op,))


def run() -> Iterator[Figure]:
    for durability in Durability:
        yield single_puts(durability)
    for durability in Durability:
        yield transactions(durability)
    yield group_commit()
    yield from loop_stalls()
    yield gets()
    yield remote_apply()
    yield wal_largest()
    yield from codec()


# -- plain SQLite, the baseline ---------------------------------------------------------


def raw_db(path: Path, durability: Durability) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {durability.name}")
    db.execute(
        "CREATE TABLE records (collection TEXT, key TEXT, doc BLOB, "
        "PRIMARY KEY (collection, key)) WITHOUT ROWID"
    )
    return db


def raw_upserts(db: sqlite3.Connection, start: int, count: int) -> None:
    """One transaction upserting ``count`` typical records as msgpack documents."""
    db.execute("BEGIN")
    for i in range(start, start + count):
        doc = msgpack.packb(typical_fields(i))
        db.execute("INSERT OR REPLACE INTO records VALUES ('bugs', ?, ?)", (key(i), doc))
    db.execute("COMMIT")


def raw_rate(durability: Durability, count: int, per_commit: int) -> float:
    """Rows per second that plain sqlite3 upserts, ``per_commit`` rows per transaction."""
    with tempfile.TemporaryDirectory(prefix="bm-bench-") as d:
        db = raw_db(Path(d) / "raw.db", durability)
        start = time.perf_counter()
        for s in range(0, count, per_commit):
            raw_upserts(db, s, per_commit)
        seconds = time.perf_counter() - start
        db.close()
    return rate(count, seconds)


# -- blazemesh --------------------------------------------------------------------------


def with_replica(body: Callable[[Replica], Awaitable[float]], **options: object) -> float:
    """Run ``body`` on a fresh replica in a temporary directory; return what it returns."""

    async def main() -> float:
        with tempfile.TemporaryDirectory(prefix="bm-bench-") as d:
            async with open_replica(Path(d), create=True, **options) as replica:  # type: ignore[arg-type]
                return await body(replica)

    return trio.run(main)


async def put_each(replica: Replica, start: int, count: int) -> None:
    for i in range(start, start + count):
        await replica.put("bugs", key(i), typical_fields(i))


async def put_in_transactions(replica: Replica, count: int) -> None:
    for t in range(count):
        async with replica.transaction() as tx:
            for i in range(t * TX_OPS, (t + 1) * TX_OPS):
                tx.put("bugs", key(i), typical_fields(i))


def single_puts(durability: Durability) -> Figure:
    n = SINGLE_PUTS[durability]

    async def ours(replica: Replica) -> float:
        start = time.perf_counter()
        await put_each(replica, 0, n)
        return rate(n, time.perf_counter() - start)

    return Figure(
        suite=SUITE,
        name=f"single durable puts, {durability.value}",
        value=with_replica(ours, durability=durability),
        unit="puts/s",
        baseline=f"raw sqlite3 one-row commits ({durability.value})",
        baseline_value=raw_rate(durability, n, 1),
        target="ratio >= 0.5 (at most 2x slower than plain SQLite)",
    )


def transactions(durability: Durability) -> Figure:
    count = TX_COUNT[durability]

    async def ours(replica: Replica) -> float:
        start = time.perf_counter()
        await put_in_transactions(replica, count)
        return rate(count * TX_OPS, time.perf_counter() - start)

    return Figure(
        suite=SUITE,
        name=f"ops in 1000-op transactions, {durability.value}",
        value=with_replica(ours, durability=durability),
        unit="ops/s",
        baseline=f"raw sqlite3 1000-row transactions ({durability.value})",
        baseline_value=raw_rate(durability, count * TX_OPS, TX_OPS),
        target="ratio >= 0.5",
    )


def group_commit() -> Figure:
    async def ours(replica: Replica) -> float:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(WRITERS):
                nursery.start_soon(put_each, replica, w * PUTS_PER_WRITER, PUTS_PER_WRITER)
        return rate(WRITERS * PUTS_PER_WRITER, time.perf_counter() - start)

    return Figure(
        suite=SUITE,
        name=f"{WRITERS} concurrent writers, full, group commit",
        value=with_replica(ours, durability=Durability.FULL),
        unit="puts/s",
        baseline="same writers committing one by one",
        baseline_value=with_replica(ours, durability=Durability.FULL, max_batch_ops=1),
    )


async def longest_stall(work: Callable[[], Awaitable[None]]) -> float:
    """The longest a 1 ms timer waited past its deadline while ``work`` ran, in ms."""
    worst = 0.0
    done = trio.Event()

    async def probe() -> None:
        nonlocal worst
        while not done.is_set():
            deadline = trio.current_time() + STALL_PROBE_S
            await trio.sleep_until(deadline)
            worst = max(worst, trio.current_time() - deadline)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        await work()
        done.set()
    return worst * 1000


def loop_stalls() -> Iterator[Figure]:
    async def idle() -> None:
        await trio.sleep(0.5)

    idle_ms = trio.run(longest_stall, idle)
    changes = [
        [Put(collection="bugs", key=key(i), fields=typical_fields(i)) for i in range(t, t + TX_OPS)]
        for t in range(0, 10 * TX_OPS, TX_OPS)
    ]
    for durability in Durability:

        async def ours(replica: Replica) -> float:
            async def commit_all() -> None:
                for ops in changes:
                    await replica.commit(ops)

            return await longest_stall(commit_all)

        yield Figure(
            suite=SUITE,
            name=f"longest loop stall, committing 1000-op changes, {durability.value}",
            value=with_replica(ours, durability=durability),
            unit="ms",
            baseline="the same probe on an idle loop",
            baseline_value=idle_ms,
            target="small writes inline, large ones in a worker thread",
        )


def gets() -> Figure:
    async def ours(replica: Replica) -> float:
        async with replica.transaction() as tx:
            for i in range(GETS):
                tx.put("bugs", key(i), typical_fields(i))
        start = time.perf_counter()
        for i in range(GETS):
            await replica.get("bugs", key(i))
        return rate(GETS, time.perf_counter() - start)

    with tempfile.TemporaryDirectory(prefix="bm-bench-") as d:
        db = raw_db(Path(d) / "raw.db", Durability.NORMAL)
        raw_upserts(db, 0, GETS)
        select = "SELECT doc FROM records WHERE collection = 'bugs' AND key = ?"
        start = time.perf_counter()
        for i in range(GETS):
            msgpack.unpackb(db.execute(select, (key(i),)).fetchone()[0])
        raw = rate(GETS, time.perf_counter() - start)
        db.close()
    return Figure(
        suite=SUITE,
        name="gets",
        value=with_replica(ours),
        unit="gets/s",
        baseline="raw sqlite3 SELECT by key + msgpack decode",
        baseline_value=raw,
    )


def remote_apply() -> Figure:
    changes = [typical_change(i, seq=1) for i in range(REMOTE_CHANGES)]

    async def ours(replica: Replica) -> float:
        start = time.perf_counter()
        for s in range(0, REMOTE_CHANGES, REMOTE_BATCH):
            await replica.apply_remote(changes[s : s + REMOTE_BATCH])
        return rate(REMOTE_CHANGES, time.perf_counter() - start)

    return Figure(
        suite=SUITE,
        name=f"remote changes applied, batches of {REMOTE_BATCH}, normal",
        value=with_replica(ours),
        unit="ops/s",
        baseline=f"raw sqlite3 {REMOTE_BATCH}-row transactions",
        baseline_value=raw_rate(Durability.NORMAL, REMOTE_CHANGES, REMOTE_BATCH),
    )


def raw_wal_largest(count: int) -> float:
    """MiB of WAL that plain sqlite3, checkpointing itself (`wal_autocheckpoint`, 1,000
    pages), holds at most after ``count`` one-row commits."""
    with tempfile.TemporaryDirectory(prefix="bm-bench-") as d:
        path = Path(d) / "raw.db"
        db = raw_db(path, Durability.NORMAL)
        for i in range(count):
            raw_upserts(db, i, 1)
        largest = Path(f"{path}-wal").stat().st_size  # a WAL never shrinks while open
        db.close()
    return largest / 2**20


def wal_largest() -> Figure:
    async def ours(replica: Replica) -> float:
        await put_each(replica, 0, WAL_PUTS)
        assert replica.data_dir is not None  # `with_replica` opens one on a directory
        wal = trio.Path(f"{replica.data_dir / DB_FILE}-wal")
        return (await wal.stat()).st_size / 2**20  # the largest: a WAL never shrinks while open

    return Figure(
        suite=SUITE,
        name=f"write-ahead log at its largest, {WAL_PUTS:,} single puts, normal",
        value=with_replica(ours),
        unit="MiB",
        baseline="raw sqlite3 one-row commits, its own checkpoints",
        baseline_value=raw_wal_largest(WAL_PUTS),
        target="<= 8 MiB",
    )


# -- codec ------------------------------------------------------------------------------


def per_second(count: int, fn: Callable[[], object], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return rate(count * rounds, time.perf_counter() - start)


def as_plain_dict(change: Change) -> dict[str, object]:
    op = change.ops[0]
    assert isinstance(op, Put)
    return {
        "origin": change.origin,
        "seq": change.seq,
        "hlc": change.hlc,
        "ops": [{"op": "put", "collection": op.collection, "key": op.key, "fields": op.fields}],
    }


def codec() -> Iterator[Figure]:
    n = CODEC_ROUNDS
    single = typical_change(7)
    encoded = encode_change(single)
    plain = as_plain_dict(single)
    plain_bytes = msgpack.packb(plain)
    yield Figure(
        suite=SUITE,
        name="codec: encode one typical change",
        value=per_second(1, lambda: encode_change(single), n),
        unit="changes/s",
        baseline="msgpack.packb of the plain dict",
        baseline_value=per_second(1, lambda: msgpack.packb(plain), n),
    )
    yield Figure(
        suite=SUITE,
        name="codec: decode + validate one typical change",
        value=per_second(1, lambda: decode_change(encoded), n),
        unit="changes/s",
        baseline="msgpack.unpackb of the plain dict, no checks",
        baseline_value=per_second(1, lambda: msgpack.unpackb(plain_bytes), n),
    )
    yield Figure(
        suite=SUITE,
        name="codec: bytes of one typical change",
        value=len(encoded),
        unit="bytes",
        baseline="msgpack of the plain dict",
        baseline_value=len(plain_bytes),
        target="<= 100 bytes",
    )
    batch = [typical_change(i) for i in range(100)]
    batch_bytes = encode_batch(batch)
    plain_batch = msgpack.packb([as_plain_dict(c) for c in batch])
    yield Figure(
        suite=SUITE,
        name="codec: bytes per op, batch of 100 from one origin",
        value=len(batch_bytes) / 100,
        unit="bytes/op",
        baseline="msgpack of the plain dicts",
        baseline_value=len(plain_batch) / 100,
        target="<= 60 bytes/op (the design we replace: 115)",
    )
    yield Figure(
        suite=SUITE,
        name="codec: encode a batch of 100",
        value=per_second(100, lambda: encode_batch(batch), n // 100),
        unit="ops/s",
        baseline="msgpack.packb of the plain dicts",
        baseline_value=per_second(
            100, lambda: msgpack.packb([as_plain_dict(c) for c in batch]), n // 100
        ),
    )
    yield Figure(
        suite=SUITE,
        name="codec: decode + validate a batch of 100",
        value=per_second(100, lambda: decode_batch(batch_bytes), n // 100),
        unit="ops/s",
        baseline="msgpack.unpackb of the plain dicts, no checks",
        baseline_value=per_second(100, lambda: msgpack.unpackb(plain_batch), n // 100),
    )
