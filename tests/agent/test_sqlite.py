from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack
import pytest

from blazemesh.agent.errors import StorageError
from blazemesh.agent.storage.paths import DB_FILE
from blazemesh.agent.storage.replica import open_replica
from blazemesh.agent.storage.schema import SCHEMA_VERSION
from blazemesh.agent.storage.sqlite import SNAPSHOT_EVERY_CHANGES
from blazemesh.protocol.hlc import pack
from blazemesh.protocol.model import Change, Put


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True):
        pass
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StorageError, match="upgrade blazemesh"):
        async with open_replica(tmp_path):
            pass


async def test_garbage_database_file_is_a_clear_error(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True):
        pass
    (tmp_path / DB_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="cannot open"):
        async with open_replica(tmp_path):
            pass


async def test_database_of_another_identity_is_refused(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "a", create=True):
        pass
    async with open_replica(tmp_path / "b", create=True):
        pass
    (tmp_path / "b" / DB_FILE).unlink()
    (tmp_path / "a" / DB_FILE).rename(tmp_path / "b" / DB_FILE)
    with pytest.raises(StorageError, match="another node identity"):
        async with open_replica(tmp_path / "b"):
            pass


async def test_corrupt_record_metadata_is_reported_not_crashed(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        await replica.put("c", "k", {"a": 1})
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute("UPDATE records SET meta = x'c1'")
    db.commit()
    db.close()
    async with open_replica(tmp_path) as replica:
        with pytest.raises(StorageError, match=r"c/k .* is corrupt"):
            await replica.put("c", "k", {"a": 2})
        # The replica carries on, and the failed write took no seq: a seq skipped would
        # be a gap in this node's changes that no peer could ever fill.
        assert (await replica.put("c", "other", {"a": 3})).seq == 2
        assert await replica.get("c", "other") == {"a": 3}


async def test_version_vector_survives_reopen(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        for i in range(3):
            await replica.put("c", str(i), {})
        vv = replica.vv.copy()
    async with open_replica(tmp_path) as replica:
        assert replica.vv == vv
        assert replica.info().changes_held == 3


async def test_wal_is_checkpointed_on_close(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        for i in range(50):
            await replica.put("c", str(i), {"x": "y" * 100})
    wal = tmp_path / (DB_FILE + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def read_snapshot(path: Path) -> bytes | None:
    db = sqlite3.connect(path / DB_FILE)
    try:
        row = db.execute("SELECT value FROM meta WHERE name = 'snapshot'").fetchone()
        return None if row is None else bytes(row[0])
    finally:
        db.close()


@pytest.mark.parametrize("snapshot", ["none", "mid-way"])
async def test_snapshot_and_log_tail_restore_vector_clock_and_seq(
    tmp_path: Path, snapshot: str
) -> None:
    total = SNAPSHOT_EVERY_CHANGES + 300
    mid: bytes | None = None
    async with open_replica(tmp_path, create=True) as replica:
        async with replica.transaction() as tx:
            tx.put("c", "first", {})
        for i in range(1, total):
            await replica.put("c", f"k{i}", {})
            if i == SNAPSHOT_EVERY_CHANGES + 10:
                mid = read_snapshot(tmp_path)
        vv = replica.vv.copy()
        clock = replica.read_clock().stamp
        fingerprint = replica.store.fingerprint(replica.node_id)
        assert fingerprint == replica.store.range_fingerprint(replica.node_id, 1, total)
    assert mid is not None
    assert msgpack.unpackb(mid)[0] == SNAPSHOT_EVERY_CHANGES
    final = read_snapshot(tmp_path)
    assert final is not None
    assert msgpack.unpackb(final)[0] == total  # close saved a snapshot of everything
    db = sqlite3.connect(tmp_path / DB_FILE)
    if snapshot == "none":
        db.execute("DELETE FROM meta WHERE name = 'snapshot'")  # replay the whole log
    else:
        db.execute("UPDATE meta SET value = ? WHERE name = 'snapshot'", (mid,))  # replay a tail
    db.commit()
    db.close()
    async with open_replica(tmp_path) as replica:
        assert replica.vv == vv
        assert replica.read_clock().stamp == clock
        assert replica.store.fingerprint(replica.node_id) == fingerprint
        assert (await replica.put("c", "next", {})).seq == total + 1


@pytest.mark.parametrize("written_by", ["runs", "seqs"])
async def test_a_snapshot_restores_gaps_as_runs(tmp_path: Path, written_by: str) -> None:
    """Snapshots hold an origin's early changes as runs; those written before runs (as
    single seqs) still open."""
    other = b"\x07" * 16
    async with open_replica(tmp_path, create=True) as replica:
        changes = [
            Change(
                origin=other,
                seq=s,
                hlc=pack(1_000, s),
                ops=(Put(collection="c", key=str(s), fields={}),),
            )
            for s in (1, 3, 4, 5, 9)
        ]
        await replica.apply_remote(changes)
        vv = replica.vv.copy()
        fingerprint = replica.store.fingerprint(other)
    assert vv.runs(other) == ((3, 5), (9, 9))
    if written_by == "seqs":  # as schema 1 wrote them: without fingerprints too
        lsn, clock, entries, _ = msgpack.unpackb(read_snapshot(tmp_path) or b"")
        old = [
            (o, base, [s for a, b in runs for s in range(a, b + 1)]) for o, base, runs in entries
        ]
        db = sqlite3.connect(tmp_path / DB_FILE)
        db.execute(
            "UPDATE meta SET value = ? WHERE name = 'snapshot'", (msgpack.packb((lsn, clock, old)),)
        )
        db.commit()
        db.close()
    async with open_replica(tmp_path) as replica:
        assert replica.vv == vv
        assert replica.store.fingerprint(other) == fingerprint


def corrupt_table(path: Path, table: str) -> None:
    """Overwrite the first page of ``table`` with garbage, as a failing disk might."""
    db = sqlite3.connect(path)
    try:
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
    finally:
        db.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xee" * page_size)


async def test_a_database_with_damaged_pages_is_refused_at_open(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        for i in range(200):
            await replica.put("c", f"k{i}", {"text": "x" * 100})
    path = tmp_path / DB_FILE
    db = sqlite3.connect(path)
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.close()
    with path.open("r+b") as f:  # bytes flipped inside a page, its header left alone
        f.seek((pages - 2) * page_size + 20)
        f.write(b"\xff\x00\x13" * 30)
    with pytest.raises(StorageError, match=rf"{path} is damaged \(.*PRAGMA quick_check"):
        async with open_replica(tmp_path):
            pass


async def test_a_failing_read_is_a_storage_error_not_a_raw_sqlite_one(tmp_path: Path) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        await replica.put("c", "k", {"a": 1})
    async with open_replica(tmp_path) as replica:
        corrupt_table(tmp_path / DB_FILE, "records")  # damaged once open, checked
        malformed = f"could not read {tmp_path / DB_FILE}: database disk image is malformed"
        with pytest.raises(StorageError, match=malformed):
            await replica.get("c", "k")
        with pytest.raises(StorageError, match=malformed):
            await replica.query("c")
        with pytest.raises(StorageError, match=malformed):
            replica.digest()
        with pytest.raises(StorageError, match=malformed):
            replica.info()
        assert [lsn for lsn, _ in replica.changes_since(0)] == [1]  # the log still reads


async def test_a_snapshot_that_cannot_be_saved_at_close_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_replica(tmp_path, create=True) as replica:
        await replica.put("c", "k", {"a": 1})

        def full(*args: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(replica.store, "_save_snapshot", full)
    assert "could not save a snapshot" in caplog.text
    assert "the next open replays the log" in caplog.text
    async with open_replica(tmp_path) as replica:
        assert await replica.get("c", "k") == {"a": 1}


class FailingCommit:
    """A write transaction whose COMMIT fails, as on a full disk (the WAL cannot grow)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, *exc: object) -> None:
        self._db.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")


async def test_a_write_that_fails_takes_no_seq_and_no_log_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write whose commit fails is rolled back: the next write takes the seq and the log
    position the failed one would have (the position used to jump, and a snapshot saved
    at close could record it)."""
    async with open_replica(tmp_path, create=True) as replica:
        first = await replica.put("c", "k", {"a": 1})
        store = replica.store
        with monkeypatch.context() as patch:
            patch.setattr(store, "_transaction", lambda: FailingCommit(store._writer))
            with pytest.raises(StorageError, match="full"):
                await replica.put("c", "lost", {"v": 1})
        second = await replica.put("c", "k2", {"a": 2})
        assert second.seq == first.seq + 1
        assert replica.info().last_lsn == 2
        assert [lsn for lsn, _ in replica.changes_since(0)] == [1, 2]


async def test_a_repair_of_the_clock_that_fails_leaves_the_clock_as_it_was(
    tmp_path: Path,
) -> None:
    """`repair-clock` on a disk that fails mid-way changes nothing: the changes keep
    their stamps, so the clock must stay past them (it was set back even so)."""
    now_ms = [1_790_000_000_000 + 3_600_000]  # an hour ahead ...
    async with open_replica(tmp_path, create=True, wall_ms=lambda: now_ms[0]) as replica:
        await replica.put("c", "k", {"a": 1})
        ahead = replica.read_clock().stamp
    now_ms[0] -= 3_600_000  # ... and set right
    async with open_replica(tmp_path, wall_ms=lambda: now_ms[0]) as replica:
        corrupt_table(tmp_path / DB_FILE, "records")  # the merge's writes fail
        with pytest.raises(StorageError, match="malformed"):
            await replica.repair_clock()
        assert replica.read_clock().stamp == ahead


async def test_a_version_1_database_gains_digests_and_fingerprints(tmp_path: Path) -> None:
    """Schema 2 (issue 19, section 1): the log of a database written by schema 1 is
    fingerprinted on upgrade, and takes versions of its changes from then on."""
    async with open_replica(tmp_path, create=True) as replica:
        for i in range(3):
            await replica.put("c", f"k{i}", {"n": i})
        me = replica.node_id
        fingerprint = replica.store.fingerprint(me)
    db = sqlite3.connect(tmp_path / DB_FILE, isolation_level=None)
    # Back to schema 1 as it was: no digests, one entry per dot, a snapshot without
    # fingerprints (saved at every close: it covers the whole log).
    snapshot = msgpack.unpackb(
        db.execute("SELECT value FROM meta WHERE name = 'snapshot'").fetchone()[0]
    )
    db.execute("UPDATE meta SET value = ? WHERE name = 'snapshot'", (msgpack.packb(snapshot[:3]),))
    db.execute("DROP INDEX log_version")
    db.execute("ALTER TABLE log DROP COLUMN digest")
    db.execute("CREATE UNIQUE INDEX log_dot ON log (origin, seq)")
    db.execute("PRAGMA user_version = 1")
    db.close()
    async with open_replica(tmp_path) as replica:
        store = replica.store
        assert store.fingerprint(me) == fingerprint != 0
        assert store.range_fingerprint(me, 1, 3) == fingerprint
        again = Change(
            origin=me, seq=2, hlc=pack(1_000, 0), ops=(Put(collection="c", key="x", fields={}),)
        )
        (outcome,) = await replica.apply_remote([again])
        assert outcome is not None
        assert replica.store.fingerprint(me) != fingerprint
    db = sqlite3.connect(tmp_path / DB_FILE)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert db.execute("SELECT count(*) FROM log WHERE seq = 2").fetchone() == (2,)
    db.close()
