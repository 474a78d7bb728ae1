"""Which remote changes a replica takes: own id, gaps and origins (protocol.admission)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blazemesh.protocol.admission import MAX_RUNS_HELD, Admission
from blazemesh.protocol.codec.messages import MAX_VV_RUNS, MessageDecoder, MessageEncoder, Summary
from blazemesh.protocol.errors import GapLimitError, OriginLimitError, OwnOriginError
from blazemesh.protocol.hlc import pack
from blazemesh.protocol.model import MAX_SEQ, Change, Put
from blazemesh.protocol.vv import VersionVector

ME, PEER = b"\x01" * 16, b"\x02" * 16


def change(origin: bytes, seq: int) -> Change:
    op = Put(collection="c", key=str(seq), fields={})
    return Change(origin=origin, seq=seq, hlc=pack(1_000, 0), ops=(op,))


def take(vv: VersionVector, changes: list[Change], **bounds: int) -> list[Exception | None]:
    """One batch through `Admission`, as the store runs it: taken ones join ``vv``."""
    check = Admission(ME, vv, **bounds)
    outcomes: list[Exception | None] = []
    for c in changes:
        try:
            check.admit(c)
        except (OwnOriginError, GapLimitError, OriginLimitError) as exc:
            outcomes.append(exc)
            continue
        outcomes.append(None)
    for c, outcome in zip(changes, outcomes, strict=True):
        if outcome is None:
            vv.add(c.origin, c.seq)
    return outcomes


@pytest.mark.parametrize("seq", [1, 2, 7, MAX_SEQ])
def test_a_change_under_this_nodes_own_id_is_refused(seq: int) -> None:
    vv = VersionVector()
    vv.add_range(ME, 1, 1)
    (outcome,) = take(vv, [change(ME, seq)])
    assert isinstance(outcome, OwnOriginError)
    assert vv.max_seq(ME) == 1


def test_gaps_past_the_bound_are_refused_and_taken_once_they_close() -> None:
    """Issue 17, item 6: 4,097 changes with gaps between them, each opening a run."""
    vv = VersionVector()
    outcomes = take(vv, [change(PEER, 2 * k) for k in range(1, 4_098)])
    assert outcomes[:MAX_RUNS_HELD] == [None] * MAX_RUNS_HELD
    assert all(isinstance(o, GapLimitError) for o in outcomes[MAX_RUNS_HELD:])
    assert len(vv.runs(PEER)) == MAX_RUNS_HELD
    decoder = MessageDecoder()  # what this node says of itself, every peer can read
    summary = Summary(vv=vv, fingerprints={PEER: 0})
    decoder.feed(MessageEncoder().encode(summary))
    assert next(decoder) == summary
    # Changes next to a run or to the prefix open no gap: they are taken, and once the
    # gaps close the refused ones are taken too.
    assert take(vv, [change(PEER, s) for s in range(1, 2 * MAX_RUNS_HELD + 2, 2)]) == [None] * (
        MAX_RUNS_HELD + 1
    )
    assert vv.run_items() == {}
    assert take(vv, [change(PEER, 2 * MAX_RUNS_HELD + 4)]) == [None]


def test_the_gap_bound_counts_the_batch_and_leaves_the_decoders_room() -> None:
    vv = VersionVector()
    outcomes = take(vv, [change(PEER, 3 * k) for k in range(1, 3 * MAX_RUNS_HELD)])
    assert outcomes.count(None) == MAX_RUNS_HELD
    assert MAX_RUNS_HELD * 4 == MAX_VV_RUNS


@given(st.lists(st.integers(1, 300), max_size=200))
def test_no_batch_takes_an_origin_past_the_gap_bound(seqs: list[int]) -> None:
    vv = VersionVector()
    for start in range(0, len(seqs), 17):
        batch = [change(PEER, s) for s in set(seqs[start : start + 17]) if (PEER, s) not in vv]
        take(vv, batch, max_runs=5)
        assert len(vv.runs(PEER)) <= 5


def test_new_origins_past_the_bound_are_refused() -> None:
    vv = VersionVector()
    vv.add(PEER, 1)
    others = [bytes([9, k]) * 8 for k in range(4)]
    outcomes = take(vv, [change(o, 1) for o in others], max_origins=3)
    assert outcomes[:2] == [None, None]
    assert all(isinstance(o, OriginLimitError) for o in outcomes[2:])
    assert take(vv, [change(PEER, 2), change(others[0], 2)], max_origins=3) == [None, None]


@pytest.mark.parametrize("start", [1, 2, 500])
def test_a_batch_of_consecutive_changes_is_one_run(start: int) -> None:
    """A catch-up brings thousands of an origin's changes in order in one batch: side by
    side they make one run, whatever the bound (a count of one run each refused all but
    the first 1,024 of every batch)."""
    vv = VersionVector()
    changes = [change(PEER, s) for s in range(start, start + 5_000)]
    assert take(vv, changes, max_runs=2) == [None] * 5_000
    assert (
        take(vv, [change(PEER, s) for s in range(start + 5_001, start + 9_000)]) == [None] * 3_999
    )
