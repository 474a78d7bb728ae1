"""`SqliteStore` and `MemoryStore` pass the storage contract, and agree with each other."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blazemesh.agent.storage.memory import MemoryData, MemoryStore
from blazemesh.agent.storage.sqlite import SqliteStore
from blazemesh.agent.storage.store import Durability, Job, LocalWrite, Outcome, Store
from blazemesh.protocol.hlc import DEFAULT_MAX_SKEW_MS, pack
from blazemesh.protocol.model import Change, Delete, Put
from tests.agent.storage_contract import (
    CONTRACT,
    EPOCH_MS,
    ME,
    OTHER,
    THIRD,
    Harness,
    WallClock,
    write,
)


def sqlite_harness(path: Path) -> Harness:
    def open_store(node_id: bytes, wall_ms: Callable[[], int]) -> Store:
        return SqliteStore(
            path,
            node_id=node_id,
            durability=Durability.NORMAL,
            wall_ms=wall_ms,
            max_skew_ms=DEFAULT_MAX_SKEW_MS,
        )

    return Harness(open=open_store)


def memory_harness(data: MemoryData) -> Harness:
    def open_store(node_id: bytes, wall_ms: Callable[[], int]) -> Store:
        return MemoryStore(data, node_id=node_id, wall_ms=wall_ms, max_skew_ms=DEFAULT_MAX_SKEW_MS)

    return Harness(open=open_store)


@pytest.fixture(params=["sqlite", "memory"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "sqlite":
        return sqlite_harness(tmp_path / "replica.db")
    return memory_harness(MemoryData())


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
def test_store_keeps_the_contract(check: Callable[[Harness], None], harness: Harness) -> None:
    check(harness)


# -- the two stores agree ----------------------------------------------------------------

ORIGINS = (ME, OTHER, THIRD)  # ME: changes forged under the store's own id
KEYS = [("a", f"k{i}") for i in range(3)] + [("b", "k0")]


@st.composite
def ops(draw: st.DrawFn) -> Put | Delete:
    collection, key = draw(st.sampled_from(KEYS))
    if draw(st.integers(0, 4)) == 0:
        return Delete(collection=collection, key=key)
    fields = draw(st.dictionaries(st.sampled_from("xyz"), st.integers(0, 3), max_size=2))
    return Put(collection=collection, key=key, fields=fields)


@st.composite
def jobs(draw: st.DrawFn) -> Job:
    some_ops = tuple(draw(st.lists(ops(), min_size=1, max_size=3)))
    if draw(st.booleans()):
        return LocalWrite(some_ops)
    # Stamps from a minute in the past to two ahead: past the skew limit, some are refused.
    ahead_ms = draw(st.integers(-60_000, 2 * DEFAULT_MAX_SKEW_MS))
    return Change(
        origin=draw(st.sampled_from(ORIGINS)),
        seq=draw(st.integers(1, 8)),
        hlc=pack(EPOCH_MS + ahead_ms, draw(st.integers(0, 3))),
        ops=some_ops,
    )


# Each step: a batch, how far the wall clock moves before it, and whether the store is
# reopened or re-stamps first.
steps = st.lists(
    st.tuples(
        st.lists(jobs(), min_size=1, max_size=6),
        st.integers(-5_000, 5_000),
        st.sampled_from(["write", "reopen", "restamp"]),
    ),
    min_size=1,
    max_size=12,
)


def outcome_text(outcome: Outcome) -> object:
    return outcome if not isinstance(outcome, Exception) else (type(outcome), str(outcome))


def everything(store: Store) -> tuple[object, ...]:
    """What a store shows to its users."""
    scans = {}
    for collection in ("a", "b"):
        with store.scan(collection, "", inclusive=True) as rows:
            scans[collection] = rows.fetchmany(100)
    return (
        store.vv,
        store.clock.last,
        store.last_lsn,
        store.log_since(0, 1_000),
        [sorted(store.changes_in(origin, 1, 10)) for origin in ORIGINS],  # versions: any order
        [store.fingerprint(origin) for origin in ORIGINS],
        [store.range_fingerprint(origin, 2, 5) for origin in ORIGINS],
        store.digest(),
        store.counts(),
        scans,
        [store.get(c, k) for c, k in KEYS],
    )


@settings(max_examples=60)
@given(steps=steps)
def test_the_stores_agree_on_every_history(steps: list[tuple[list[Job], int, str]]) -> None:
    """The same batches, clock and restarts give the same outcomes and the same reads."""
    clock = WallClock()
    with tempfile.TemporaryDirectory() as top:
        harnesses = [sqlite_harness(Path(top) / "replica.db"), memory_harness(MemoryData())]
        stores = [h.open(ME, clock) for h in harnesses]
        try:
            for batch, move_ms, before in steps:
                clock.now_ms += move_ms
                if before == "reopen":
                    for i, harness in enumerate(harnesses):
                        stores[i].close()
                        stores[i] = harness.open(ME, clock)
                elif before == "restamp":
                    assert len({store.restamp_ahead() for store in stores}) == 1
                results = [write(store, *batch) for store in stores]
                sqlite_outcomes, memory_outcomes = (
                    [outcome_text(o) for o in outcomes] for outcomes in results
                )
                assert sqlite_outcomes == memory_outcomes
                assert everything(stores[0]) == everything(stores[1])
        finally:
            for store in stores:
                store.close()
