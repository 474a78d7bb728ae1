"""The contract every `Store` passes (like automerge-repo's storage adapter tests).

tests/agent/test_storage.py runs it on `SqliteStore` and on `MemoryStore`. Each check
gets a `Harness` whose ``open`` opens the store under test on the harness's own storage:
opening it again after a close is a restart, and must find everything committed.

The checks use the interface alone (`agent.storage.store.Store`), so that a store the
next issues bring keeps the same promises: a replica's merge and rules, its log read by
position and by origin, in pages bounded in bytes, and what survives a restart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import reduce
from operator import xor

import pytest

from blazemesh.agent.errors import StorageError
from blazemesh.agent.storage.merging import MAX_VERSIONS_PER_DOT
from blazemesh.agent.storage.store import Applied, Job, LocalWrite, Outcome, Store
from blazemesh.protocol.admission import MAX_RUNS_HELD
from blazemesh.protocol.codec import decode_change, decode_document, encode_change
from blazemesh.protocol.errors import (
    ClockSkewError,
    GapLimitError,
    OwnOriginError,
    ValidationError,
    VersionLimitError,
)
from blazemesh.protocol.fingerprints import change_digest
from blazemesh.protocol.hlc import COUNTER_BITS, DEFAULT_MAX_SKEW_MS, pack
from blazemesh.protocol.model import MAX_VALUE_BYTES, Change, Delete, Put, Value

ME = b"\x01" * 16
OTHER = b"\x07" * 16
THIRD = b"\x09" * 16
EPOCH_MS = 1_790_000_000_000  # the wall clock's reading when a check begins
KIB = 1 << 10


class WallClock:
    """A wall clock that a check sets."""

    def __init__(self) -> None:
        self.now_ms = EPOCH_MS

    def __call__(self) -> int:
        return self.now_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class Harness:
    """How a check opens the store under test: ``open(node_id, wall_ms)``, always on the
    same storage, with the skew limit `DEFAULT_MAX_SKEW_MS`."""

    open: Callable[[bytes, Callable[[], int]], Store]


@contextlib.contextmanager
def opened(harness: Harness, clock: WallClock, node_id: bytes = ME) -> Iterator[Store]:
    store = harness.open(node_id, clock)
    try:
        yield store
    finally:
        store.close()


def write(store: Store, *jobs: Job, with_updates: bool = True) -> list[Outcome]:
    """One batch, finished as the replica finishes it."""
    outcomes = store.write_batch(jobs, with_updates=with_updates)
    store.finish(outcomes)
    return outcomes


def put(collection: str, key: str, **fields: Value) -> LocalWrite:
    return LocalWrite((Put(collection=collection, key=key, fields=fields),))


def remote(origin: bytes, seq: int, hlc: int, *ops: Put | Delete) -> Change:
    return Change(origin=origin, seq=seq, hlc=hlc, ops=ops)


def applied(outcome: Outcome) -> Applied:
    assert isinstance(outcome, Applied), outcome
    return outcome


def scan(store: Store, collection: str, start: str = "", *, inclusive: bool = True) -> list[str]:
    with store.scan(collection, start, inclusive=inclusive) as rows:
        return [key for key, _ in rows.fetchmany(1_000)]


# -- writing ---------------------------------------------------------------------------


def local_writes_take_the_next_seqs_and_fresh_stamps(harness: Harness) -> None:
    clock = WallClock()
    with opened(harness, clock) as store:
        first, second = write(store, put("c", "a", n=1), put("c", "b", n=2))
        a, b = applied(first), applied(second)
        assert (a.lsn, a.change.origin, a.change.seq) == (1, ME, 1)
        assert (b.lsn, b.change.origin, b.change.seq) == (2, ME, 2)
        assert a.change.hlc >> COUNTER_BITS == EPOCH_MS
        assert b.change.hlc > a.change.hlc
        assert store.clock.last == b.change.hlc
        assert a.updates[0].document == {"n": 1}
        assert a.change_bytes > 0
        assert a.updates_bytes > 0
        assert store.get("c", "a") == {"n": 1}
        assert store.last_lsn == 2
        assert store.commits == 1


def a_change_of_several_ops_takes_a_stamp_each(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        ops = tuple(Put(collection="c", key=str(i), fields={"i": i}) for i in range(3))
        first, after = write(store, LocalWrite(ops), put("c", "after"))
        assert applied(after).change.hlc == applied(first).change.hlc + 3  # past all three
        assert [store.get("c", str(i)) for i in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]


def finish_grows_the_shared_vector(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        vv = store.vv
        outcomes = store.write_batch([put("c", "k")])
        assert (ME, 1) not in vv
        store.finish(outcomes)
        assert (ME, 1) in vv
        assert store.vv is vv  # the same object: the sync engine holds it


def remote_changes_merge_and_one_held_is_a_no_op(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        older = remote(
            OTHER, 1, pack(EPOCH_MS - 10, 0), Put(collection="c", key="k", fields={"a": 1})
        )
        newer = remote(
            OTHER, 2, pack(EPOCH_MS - 5, 0), Put(collection="c", key="k", fields={"a": 2})
        )
        first = write(store, newer, older, newer)
        assert [type(o) for o in first] == [Applied, Applied, type(None)]
        assert store.get("c", "k") == {"a": 2}  # the later stamp wins, whatever the order
        assert write(store, older) == [None]
        assert store.vv.base(OTHER) == 2
        assert store.clock.last >= newer.hlc


def a_delete_hides_older_fields_and_a_later_write_brings_the_record_back(
    harness: Harness,
) -> None:
    with opened(harness, WallClock()) as store:
        write(store, put("c", "k", a=1), put("c", "other", b=2))
        (deleted,) = write(store, LocalWrite((Delete(collection="c", key="k"),)))
        assert applied(deleted).updates[0].document is None
        assert store.get("c", "k") is None
        assert store.counts() == {"c": (1, 1)}
        assert scan(store, "c") == ["other"]
        write(store, put("c", "k", z=3))
        assert store.get("c", "k") == {"z": 3}
        assert store.counts() == {"c": (2, 0)}


def refused_jobs_get_their_error_and_the_others_go_on(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        future = remote(
            OTHER,
            1,
            pack(EPOCH_MS + DEFAULT_MAX_SKEW_MS + 1_000, 0),
            Put(collection="c", key="f", fields={}),
        )
        big = [
            Put(collection="c", key=f"b{i}", fields={"v": b"x" * MAX_VALUE_BYTES}) for i in range(5)
        ]
        outcomes = write(store, future, LocalWrite(tuple(big)), put("c", "ok"))
        assert isinstance(outcomes[0], ClockSkewError)
        assert isinstance(outcomes[1], ValidationError)  # over the change size limit
        assert applied(outcomes[2]).change.seq == 1  # the refused write took no seq
        assert (OTHER, 1) not in store.vv
        assert store.get("c", "f") is None
        assert store.get("c", "ok") == {}


def a_change_forged_under_this_nodes_id_is_refused_and_its_seq_skipped(
    harness: Harness,
) -> None:
    clock = WallClock()

    def forged(seq: int) -> Change:
        return remote(ME, seq, pack(EPOCH_MS, 0), Put(collection="c", key=f"x{seq}", fields={}))

    with opened(harness, clock) as store:
        write(store, put("c", "a"))
        (outcome,) = write(store, forged(2))
        assert isinstance(outcome, OwnOriginError)
        assert applied(write(store, put("c", "b"))[0]).change.seq == 3  # 2 is taken
        assert isinstance(write(store, forged(5))[0], OwnOriginError)
    with opened(harness, clock) as store:  # what is taken is kept
        c, d = write(store, put("c", "c"), put("c", "d"))
        assert (applied(c).change.seq, applied(d).change.seq) == (4, 6)
        assert store.get("c", "x2") is None
        assert store.get("c", "x5") is None


def gaps_past_the_bound_are_refused(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        stamp = pack(EPOCH_MS, 0)
        gappy = [
            remote(OTHER, 2 * i, stamp + i, Put(collection="c", key=str(i), fields={}))
            for i in range(1, MAX_RUNS_HELD + 2)
        ]
        outcomes = write(store, *gappy, with_updates=False)
        assert all(isinstance(o, Applied) for o in outcomes[:MAX_RUNS_HELD])
        assert isinstance(outcomes[MAX_RUNS_HELD], GapLimitError)
        assert len(store.vv.runs(OTHER)) == MAX_RUNS_HELD
        (filled,) = write(store, remote(OTHER, 1, stamp, Put(collection="c", key="1", fields={})))
        assert isinstance(filled, Applied)  # closing a gap is always taken


def updates_are_left_out_when_nobody_observes(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        (outcome,) = write(store, put("c", "k", a=1), with_updates=False)
        assert applied(outcome).updates == ()
        assert applied(outcome).updates_bytes == 0
        assert store.get("c", "k") == {"a": 1}


def a_record_two_changes_of_a_batch_touch_counts_as_it_ended(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        first, second = write(store, put("c", "k", a="x" * KIB), put("c", "k", b=1))
        assert applied(first).updates_bytes == applied(second).updates_bytes > KIB
        assert applied(first).updates[0].document == {"a": "x" * KIB}


# -- reading ---------------------------------------------------------------------------


def the_log_reads_by_position_in_pages_bounded_in_bytes(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        for i in range(5):
            write(store, put("c", str(i), v="x" * (10 * KIB)))
        assert [lsn for lsn, _ in store.log_since(0, 100)] == [1, 2, 3, 4, 5]
        assert [lsn for lsn, _ in store.log_since(1, 2)] == [2, 3]
        assert [lsn for lsn, _ in store.log_since(0, 100, 25 * KIB)] == [1, 2]
        assert [lsn for lsn, _ in store.log_since(3, 100, 1)] == [4]  # one, however large
        assert store.log_since(5, 100) == []
        _, blob = store.log_since(4, 1)[0]
        assert decode_change(blob).ops[0] == Put(
            collection="c", key="4", fields={"v": "x" * (10 * KIB)}
        )


def the_log_reads_by_origin_in_pages_bounded_in_bytes(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        stamp = pack(EPOCH_MS - 1_000, 0)
        for seq in (5, 1, 3, 2):  # out of order, with gaps
            write(
                store,
                remote(
                    OTHER,
                    seq,
                    stamp + seq,
                    Put(collection="c", key=str(seq), fields={"v": "y" * KIB}),
                ),
            )
        write(store, remote(THIRD, 1, stamp, Put(collection="c", key="t", fields={})))
        assert [seq for seq, _ in store.changes_in(OTHER, 1, 10)] == [1, 2, 3, 5]
        assert [seq for seq, _ in store.changes_in(OTHER, 2, 4)] == [2, 3]
        assert [seq for seq, _ in store.changes_in(OTHER, 1, 10, 2 * KIB)] == [1]
        assert [seq for seq, _ in store.changes_in(OTHER, 4, 10, 1)] == [5]
        assert store.changes_in(OTHER, 6, 10) == []
        assert store.changes_in(b"\x0a" * 16, 1, 10) == []
        assert [decode_change(blob).dot for _, blob in store.changes_in(THIRD, 1, 1)] == [
            (THIRD, 1)
        ]


def a_scan_reads_one_snapshot_in_key_order(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        write(store, *(put("c", key, v=key) for key in ("d", "b", "a", "c", "e")))
        write(store, put("other", "a"), LocalWrite((Delete(collection="c", key="e"),)))
        assert scan(store, "c") == ["a", "b", "c", "d"]
        assert scan(store, "c", "b") == ["b", "c", "d"]
        assert scan(store, "c", "b", inclusive=False) == ["c", "d"]
        assert scan(store, "none") == []
        with store.scan("c", "", inclusive=True) as rows:
            ((key, doc),) = rows.fetchmany(1)
            assert (key, decode_document(doc)) == ("a", {"v": "a"})
            write(store, put("c", "bb"), put("c", "c", v="changed"))
            rest = rows.fetchmany(10)
            assert [(k, decode_document(d)) for k, d in rest] == [
                ("b", {"v": "b"}),
                ("c", {"v": "c"}),
                ("d", {"v": "d"}),
            ]
            assert rows.fetchmany(10) == []


def the_digest_depends_on_the_visible_records_alone(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        empty = store.digest()
        write(store, put("c", "k", a=1))
        one = store.digest()
        assert one != empty
        write(store, put("c", "k", a=2))
        assert store.digest() != one
        write(store, put("c", "k", a=1), put("c", "gone"))
        write(store, LocalWrite((Delete(collection="c", key="gone"),)))
        assert store.digest() == one  # a tombstone is not a visible record


# -- restarts --------------------------------------------------------------------------


def a_reopened_store_holds_what_committed(harness: Harness) -> None:
    clock = WallClock()
    with opened(harness, clock) as store:
        write(store, put("c", "a", n=1))
        write(
            store,
            remote(OTHER, 3, pack(EPOCH_MS + 5_000, 7), Put(collection="c", key="o", fields={})),
        )
        vv, stamp = store.vv.copy(), store.clock.last
        log, digest = store.log_since(0, 100), store.digest()
        store.checkpoint()
    with opened(harness, clock) as store:
        assert store.vv == vv
        assert store.clock.last == stamp
        assert store.log_since(0, 100) == log
        assert (store.digest(), store.last_lsn) == (digest, 2)
        assert store.get("c", "a") == {"n": 1}
        (again,) = write(store, put("c", "b"))
        assert (applied(again).change.seq, applied(again).lsn) == (2, 3)
        assert applied(again).change.hlc > stamp


def a_store_of_another_node_is_refused(harness: Harness) -> None:
    clock = WallClock()
    with opened(harness, clock) as store:
        write(store, put("c", "k"))
    with pytest.raises(StorageError, match="another node identity"):
        harness.open(OTHER, clock)


def changes_stamped_ahead_get_fresh_stamps(harness: Harness) -> None:
    clock = WallClock()
    with opened(harness, clock) as store:
        write(store, put("c", "k", v="before"))
        clock.now_ms += 3_600_000  # the device's clock runs an hour ahead ...
        (ahead, _) = write(store, put("c", "k", v="ahead"), put("c", "j", v="ahead"))
        clock.now_ms -= 3_600_000  # ... and is set right
        assert store.restamp_ahead() == 2
        assert store.fingerprint(ME) == held_fingerprint(store, ME)
        assert store.clock.last < pack(clock.now_ms + 1, 0)
        restamped = [decode_change(blob) for _, blob in store.changes_in(ME, 1, 3)]
        assert [c.seq for c in restamped] == [1, 2, 3]
        assert restamped[1].hlc < applied(ahead).change.hlc
        assert store.log_since(1, 2) == store.changes_in(ME, 2, 3)  # in place, same lsns
        assert store.get("c", "j") == {"v": "ahead"}
        assert store.restamp_ahead() == 0
        clock.now_ms += 10
        later = Put(collection="c", key="k", fields={"v": "later"})
        write(store, remote(OTHER, 1, pack(clock.now_ms, 0), later))
        assert store.get("c", "k") == {"v": "later"}  # no longer beaten by the old stamp
        stamp = store.clock.last
    with opened(harness, clock) as store:
        assert store.clock.last == stamp
        assert store.fingerprint(ME) == held_fingerprint(store, ME)


def held_fingerprint(store: Store, origin: bytes, first: int = 1, last: int = 2**63 - 1) -> int:
    """The XOR of the digests of what `changes_in` reads: what the store's fingerprints
    must say."""
    blobs = (blob for _, blob in store.changes_in(origin, first, last))
    return reduce(xor, map(change_digest, blobs), 0)


def another_version_of_a_held_change_is_kept_and_merged(harness: Harness) -> None:
    """Issue 19, section 1: a seq issued twice (a restore, a clone) has two versions;
    every replica that holds both holds the same records (docs/design.md, "Versions")."""
    clock = WallClock()
    first = remote(OTHER, 1, pack(EPOCH_MS - 10, 0), Put(collection="c", key="k", fields={"a": 1}))
    second = remote(OTHER, 1, pack(EPOCH_MS - 5, 0), Put(collection="c", key="j", fields={"b": 2}))
    with opened(harness, clock) as store:
        write(store, first)
        assert store.fingerprint(OTHER) == held_fingerprint(store, OTHER) != 0
        before = store.fingerprint(OTHER)
        (outcome,) = write(store, second)
        assert applied(outcome).another_version
        assert applied(outcome).digest == change_digest(encode_change(second))
        assert store.get("c", "k") == {"a": 1}  # both versions' ops merge
        assert store.get("c", "j") == {"b": 2}
        held = [decode_change(b) for _, b in store.changes_in(OTHER, 1, 1)]
        assert sorted(held, key=lambda c: c.hlc) == [first, second]
        assert store.fingerprint(OTHER) == before ^ applied(outcome).digest
        assert store.fingerprint(OTHER) == held_fingerprint(store, OTHER)
        assert store.range_fingerprint(OTHER, 1, 1) == store.fingerprint(OTHER)
        assert store.range_fingerprint(OTHER, 2, 9) == 0
        assert write(store, second, first) == [None, None]  # each version held: no-ops
        assert store.vv.base(OTHER) == 1
        more = [
            remote(OTHER, 1, pack(EPOCH_MS - 5, n), Put(collection="c", key="j", fields={}))
            for n in range(1, MAX_VERSIONS_PER_DOT)
        ]
        outcomes = write(store, *more)  # two held already: the limit refuses the last
        assert [type(o) for o in outcomes] == [Applied] * (MAX_VERSIONS_PER_DOT - 2) + [
            VersionLimitError
        ]
        fingerprint = store.fingerprint(OTHER)
    with opened(harness, clock) as store:
        assert store.fingerprint(OTHER) == fingerprint == held_fingerprint(store, OTHER)
        assert len(store.changes_in(OTHER, 1, 1)) == MAX_VERSIONS_PER_DOT


def pages_by_origin_never_split_the_versions_of_a_seq(harness: Harness) -> None:
    with opened(harness, WallClock()) as store:
        big = "x" * KIB
        versions = [
            remote(OTHER, seq, pack(EPOCH_MS - 9, n), Put(collection="c", key=big, fields={}))
            for seq in (1, 2)
            for n in range(3)
        ]
        write(store, *versions)
        page = store.changes_in(OTHER, 1, 2, max_bytes=KIB)  # one change's worth
        assert [seq for seq, _ in page] == [1, 1, 1]


CONTRACT: Sequence[Callable[[Harness], None]] = [
    local_writes_take_the_next_seqs_and_fresh_stamps,
    a_change_of_several_ops_takes_a_stamp_each,
    finish_grows_the_shared_vector,
    remote_changes_merge_and_one_held_is_a_no_op,
    a_delete_hides_older_fields_and_a_later_write_brings_the_record_back,
    refused_jobs_get_their_error_and_the_others_go_on,
    a_change_forged_under_this_nodes_id_is_refused_and_its_seq_skipped,
    gaps_past_the_bound_are_refused,
    updates_are_left_out_when_nobody_observes,
    a_record_two_changes_of_a_batch_touch_counts_as_it_ended,
    the_log_reads_by_position_in_pages_bounded_in_bytes,
    the_log_reads_by_origin_in_pages_bounded_in_bytes,
    a_scan_reads_one_snapshot_in_key_order,
    the_digest_depends_on_the_visible_records_alone,
    a_reopened_store_holds_what_committed,
    a_store_of_another_node_is_refused,
    changes_stamped_ahead_get_fresh_stamps,
    another_version_of_a_held_change_is_kept_and_merged,
    pages_by_origin_never_split_the_versions_of_a_seq,
]
