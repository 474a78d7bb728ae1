"""The replica core against plain SQLite and plain msgpack (issue 2's figures).

Every figure is measured beside its baseline in the same run, on a fresh database in a
temporary directory: the cost of being a CRDT is the ratio.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import trio

from agent.replica import open_replica
from agent.store import Durability
from benchmarks.common import Figure, rate
from protocol.codec import decode_batch, decode_change, encode_batch, encode_change
from protocol.hlc import pack
from protocol.model import Change, Put

SUITE = "replica"
SINGLE_PUTS = {Durability.NORMAL: 4_000, Durability.FULL: 600}
TX_OPS = 1_000
TX_COUNT = {Durability.NORMAL: 20, Durability.FULL: 10}
WRITERS = 8
PUTS_PER_WRITER = 150
GETS = 20_000
REMOTE_CHANGES = 20_000
REMOTE_BATCH = 100
CODEC_ROUNDS = 20_000
ORIGIN = bytes(range(16))


def typical_fields(i: int) -> dict[str, object]:
    """The typical op of the issue: a 20-character string, an int, a bool."""
    return {"title": f"crash on save {i:06d}", "priority": i % 5, "open": i % 3 != 0}


def key(i: int) -> str:
    return f"bug-{i:012d}"


def typical_change(i: int, seq: int = 1_000, origin: bytes = ORIGIN) -> Change:
    hlc = pack(1_795_000_000_000 + i // 8, i % 8)
    op = Put(collection="bugs", key=key(i), fields=typical_fields(i))
    return Change(origin=origin, seq=seq + i, hlc=hlc, ops=(op,))


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
    db.execute("BEGIN")
    for i in range(start, start + count):
        doc = msgpack.packb(typical_fields(i))
        db.execute("INSERT OR REPLACE INTO records VALUES ('bugs', ?, ?)", (key(i), doc))
    db.execute("COMMIT")


def tmpdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bm-bench-") as d:
        yield Path(d)


def run() -> Iterator[Figure]:
    for durability in Durability:
        yield from single_puts(durability)
    for durability in Durability:
        yield from transactions(durability)
    yield from group_commit()
    yield from loop_stalls()
    yield from gets()
    yield from remote_apply()
    yield from codec()


def single_puts(durability: Durability) -> Iterator[Figure]:
    n = SINGLE_PUTS[durability]
    for d in tmpdir():
        db = raw_db(d / "raw.db", durability)
        raw = timed_rate(n, lambda: [raw_upserts(db, i, 1) for i in range(n)])
        db.close()

        async def ours() -> float:
            async with open_replica(d / "node", create=True, durability=durability) as r:
                start = time.perf_counter()
                for i in range(n):
                    await r.put("bugs", key(i), typical_fields(i))
                return rate(n, time.perf_counter() - start)

        yield Figure(
            suite=SUITE,
            name=f"single durable puts, {durability.value}",
            value=trio.run(ours),
            unit="puts/s",
            baseline=f"raw sqlite3 one-row commits ({durability.value})",
            baseline_value=raw,
            target="ratio >= 0.5 (at most 2x slower than plain SQLite)",
        )


def transactions(durability: Durability) -> Iterator[Figure]:
    count = TX_COUNT[durability]
    total = count * TX_OPS
    for d in tmpdir():
        db = raw_db(d / "raw.db", durability)
        raw = timed_rate(total, lambda: [raw_upserts(db, t * TX_OPS, TX_OPS) for t in range(count)])
        db.close()

        async def ours() -> float:
            async with open_replica(d / "node", create=True, durability=durability) as r:
                start = time.perf_counter()
                for t in range(count):
                    async with r.transaction() as tx:
                        for i in range(t * TX_OPS, (t + 1) * TX_OPS):
                            tx.put("bugs", key(i), typical_fields(i))
                return rate(total, time.perf_counter() - start)

        yield Figure(
            suite=SUITE,
            name=f"ops in 1000-op transactions, {durability.value}",
            value=trio.run(ours),
            unit="ops/s",
            baseline=f"raw sqlite3 1000-row transactions ({durability.value})",
            baseline_value=raw,
            target="ratio >= 0.5",
        )


def group_commit() -> Iterator[Figure]:
    total = WRITERS * PUTS_PER_WRITER

    async def measure(d: Path, max_batch_ops: int) -> float:
        async with open_replica(
            d, create=True, durability=Durability.FULL, max_batch_ops=max_batch_ops
        ) as r:

            async def writer(w: int) -> None:
                for i in range(PUTS_PER_WRITER):
                    n = w * PUTS_PER_WRITER + i
                    await r.put("bugs", key(n), typical_fields(n))

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for w in range(WRITERS):
                    nursery.start_soon(writer, w)
            return rate(total, time.perf_counter() - start)

    for d in tmpdir():
        one_by_one = trio.run(measure, d / "single", 1)
        grouped = trio.run(measure, d / "grouped", 2_000)
        yield Figure(
            suite=SUITE,
            name=f"{WRITERS} concurrent writers, full, group commit",
            value=grouped,
            unit="puts/s",
            baseline="same writers committing one by one",
            baseline_value=one_by_one,
        )


STALL_PROBE_S = 0.001  # the probe task asks to wake this often


async def longest_stall(work: object) -> float:
    """The longest the loop left a 1 ms timer waiting beyond its deadline while ``work`` ran."""
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
        assert callable(work)
        await work()
        done.set()
    return worst * 1000


def loop_stalls() -> Iterator[Figure]:
    async def idle() -> None:
        await trio.sleep(0.5)

    idle_ms = trio.run(longest_stall, idle)
    for durability in Durability:
        for d in tmpdir():

            async def writes() -> float:
                async with open_replica(d, create=True, durability=durability) as r:

                    async def work() -> None:
                        for t in range(10):
                            async with r.transaction() as tx:
                                for i in range(t * TX_OPS, (t + 1) * TX_OPS):
                                    tx.put("bugs", key(i), typical_fields(i))

                    return await longest_stall(work)

            yield Figure(
                suite=SUITE,
                name=f"longest loop stall, 1000-op transactions, {durability.value}",
                value=trio.run(writes),
                unit="ms",
                baseline="the same probe on an idle loop",
                baseline_value=idle_ms,
                target="normal commits inline (bounded batch); full commits in a worker thread",
            )


def gets() -> Iterator[Figure]:
    for d in tmpdir():
        db = raw_db(d / "raw.db", Durability.NORMAL)
        raw_upserts(db, 0, GETS)
        select = "SELECT doc FROM records WHERE collection = 'bugs' AND key = ?"
        raw = timed_rate(
            GETS,
            lambda: [
                msgpack.unpackb(db.execute(select, (key(i),)).fetchone()[0]) for i in range(GETS)
            ],
        )
        db.close()

        async def ours() -> float:
            async with open_replica(d / "node", create=True) as r:
                async with r.transaction() as tx:
                    for i in range(GETS):
                        tx.put("bugs", key(i), typical_fields(i))
                start = time.perf_counter()
                for i in range(GETS):
                    await r.get("bugs", key(i))
                return rate(GETS, time.perf_counter() - start)

        yield Figure(
            suite=SUITE,
            name="gets",
            value=trio.run(ours),
            unit="gets/s",
            baseline="raw sqlite3 SELECT by key + msgpack decode",
            baseline_value=raw,
        )


def remote_apply() -> Iterator[Figure]:
    changes = [typical_change(i, seq=1) for i in range(REMOTE_CHANGES)]
    for d in tmpdir():
        db = raw_db(d / "raw.db", Durability.NORMAL)
        raw = timed_rate(
            REMOTE_CHANGES,
            lambda: [
                raw_upserts(db, s, REMOTE_BATCH) for s in range(0, REMOTE_CHANGES, REMOTE_BATCH)
            ],
        )
        db.close()

        async def ours() -> float:
            async with open_replica(d / "node", create=True) as r:
                start = time.perf_counter()
                for s in range(0, REMOTE_CHANGES, REMOTE_BATCH):
                    await r.apply_remote(changes[s : s + REMOTE_BATCH])
                return rate(REMOTE_CHANGES, time.perf_counter() - start)

        yield Figure(
            suite=SUITE,
            name=f"remote changes applied, batches of {REMOTE_BATCH}, normal",
            value=trio.run(ours),
            unit="ops/s",
            baseline=f"raw sqlite3 {REMOTE_BATCH}-row transactions",
            baseline_value=raw,
        )


def codec() -> Iterator[Figure]:
    single = typical_change(7)
    plain = {
        "origin": single.origin,
        "seq": single.seq,
        "hlc": single.hlc,
        "ops": [{"op": "put", "collection": "bugs", "key": key(7), "fields": typical_fields(7)}],
    }
    packer = msgpack.Packer()
    encoded = encode_change(single)
    plain_bytes = packer.pack(plain)
    n = CODEC_ROUNDS
    yield Figure(
        suite=SUITE,
        name="codec: encode one typical change",
        value=timed_rate(n, lambda: [encode_change(single) for _ in range(n)]),
        unit="changes/s",
        baseline="msgpack of the plain dict",
        baseline_value=timed_rate(n, lambda: [packer.pack(plain) for _ in range(n)]),
    )
    yield Figure(
        suite=SUITE,
        name="codec: decode + validate one typical change",
        value=timed_rate(n, lambda: [decode_change(encoded) for _ in range(n)]),
        unit="changes/s",
        baseline="msgpack unpack of the plain dict (no checks)",
        baseline_value=timed_rate(n, lambda: [msgpack.unpackb(plain_bytes) for _ in range(n)]),
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
    plain_batch = packer.pack(
        [
            {
                "origin": c.origin,
                "seq": c.seq,
                "hlc": c.hlc,
                "ops": [
                    {
                        "op": "put",
                        "collection": "bugs",
                        "key": c.ops[0].key,
                        "fields": c.ops[0].fields,
                    }
                ],
            }
            for c in batch
        ]
    )
    yield Figure(
        suite=SUITE,
        name="codec: bytes per op, batch of 100 from one origin",
        value=len(batch_bytes) / 100,
        unit="bytes/op",
        baseline="msgpack of the plain dicts",
        baseline_value=len(plain_batch) / 100,
        target="<= 60 bytes/op (the design we replace: 115)",
    )
    rounds = n // 100
    yield Figure(
        suite=SUITE,
        name="codec: decode + validate, batch of 100",
        value=timed_rate(rounds * 100, lambda: [decode_batch(batch_bytes) for _ in range(rounds)]),
        unit="ops/s",
        baseline="msgpack unpack of the plain dicts",
        baseline_value=timed_rate(
            rounds * 100, lambda: [msgpack.unpackb(plain_batch) for _ in range(rounds)]
        ),
    )


def timed_rate(count: int, fn: object) -> float:
    assert callable(fn)
    start = time.perf_counter()
    fn()
    return rate(count, time.perf_counter() - start)
