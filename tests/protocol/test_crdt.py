"""The merge laws, generatively, and the LWW-with-tombstones semantics, by example.

Replicas are modelled as the agent holds them: a version vector plus record states, a
change being skipped when its dot is already held. Whatever the order, duplication and
grouping of delivery, every replica must end in the same states as an independent
reference computed straight from the definitions in protocol/crdt.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from blazemesh.protocol.crdt import NO_STAMP, RecordKey, RecordState, Stamp, apply_change
from blazemesh.protocol.model import Change, Delete, Fields, Op, Put, Value
from blazemesh.protocol.vv import VersionVector

from .strategies import (
    CRDT_ORIGINS,
    canon_documents,
    canon_state,
    canon_states,
    canon_value,
    crdt_histories,
    stamped_ops,
)

A, B, C = sorted(CRDT_ORIGINS)  # A < B < C as bytes
REC: RecordKey = ("bugs", "k1")
PROPERTY = settings(max_examples=150)


class Replica:
    """A version vector plus states: a change whose dot is held is skipped."""

    def __init__(self) -> None:
        self.vv = VersionVector()
        self.states: dict[RecordKey, RecordState] = {}
        self.log: list[Change] = []

    def receive(self, change: Change) -> set[RecordKey]:
        if change.dot in self.vv:
            return set()
        assert self.vv.add(change.origin, change.seq)
        self.log.append(change)
        return apply_checked(change, self.states)

    def receive_all(self, changes: Iterable[Change]) -> None:
        for change in changes:
            self.receive(change)


def apply_checked(change: Change, states: dict[RecordKey, RecordState]) -> set[RecordKey]:
    """`apply_change`, also checking that it reports exactly the records it changed."""
    before = canon_states(states)
    touched = apply_change(change, states)
    after = canon_states(states)
    assert touched == {rk for rk in after if before.get(rk) != after[rk]}
    assert set(after) == set(before) | {(op.collection, op.key) for op in change.ops}
    return touched


def reference(changes: Iterable[Change]) -> dict[RecordKey, object]:
    """The states straight from the definitions: maxima over the set of (distinct) ops."""
    live: dict[RecordKey, Stamp] = {}
    tomb: dict[RecordKey, Stamp] = {}
    best: dict[RecordKey, dict[str, tuple[Stamp, Value]]] = {}
    for stamp, op in stamped_ops({c.dot: c for c in changes}.values()):
        rk = (op.collection, op.key)
        best.setdefault(rk, {})
        if isinstance(op, Delete):
            tomb[rk] = max(tomb.get(rk, NO_STAMP), stamp)
            continue
        live[rk] = max(live.get(rk, NO_STAMP), stamp)
        for name, value in op.fields.items():
            held = best[rk].get(name)
            if held is None or stamp > held[0]:
                best[rk][name] = (stamp, value)
    out: dict[RecordKey, object] = {}
    for rk, names in best.items():
        t = tomb.get(rk, NO_STAMP)
        kept = sorted(
            (name, stamp, canon_value(value)) for name, (stamp, value) in names.items() if stamp > t
        )
        out[rk] = (live.get(rk, NO_STAMP), t, tuple(kept))
    return out


def assert_converged(replicas: Sequence[Replica], changes: Sequence[Change]) -> None:
    expected = reference(changes)
    for replica in replicas:
        assert canon_states(replica.states) == expected
        assert replica.vv.count() == len({c.dot for c in changes})
    documents = canon_documents(replicas[0].states)
    for replica in replicas[1:]:
        assert canon_documents(replica.states) == documents


# --- the merge laws -----------------------------------------------------------------------


@PROPERTY
@given(crdt_histories())
def test_matches_the_reference_and_reapplying_is_idempotent(changes: list[Change]) -> None:
    replica = Replica()
    replica.receive_all(changes)
    assert_converged([replica], changes)
    # Without the dot check too: every op is a maximum, so a second application is a no-op.
    once = canon_states(replica.states)
    for change in changes:
        assert apply_checked(change, replica.states) == set()
    assert canon_states(replica.states) == once


@PROPERTY
@given(st.data())
def test_any_order_and_any_duplication_converge(data: st.DataObject) -> None:
    changes = data.draw(crdt_histories())
    # A drawn permutation (they stay close to the original order, and shrink well), the
    # reverse, and a seeded shuffle (far from both).
    shuffled = list(changes)
    random.Random(data.draw(st.integers(0, 2**32))).shuffle(shuffled)
    orders = []
    for base_order in (data.draw(st.permutations(changes)), changes[::-1], shuffled):
        order = list(base_order)
        # Re-deliver some changes anywhere in the stream (duplicates by dot, as on a mesh).
        for dup in data.draw(st.lists(st.sampled_from(changes), max_size=6)) if changes else []:
            order.insert(data.draw(st.integers(0, len(order))), dup)
        orders.append(order)
    replicas = [Replica() for _ in orders]
    for replica, order in zip(replicas, orders, strict=True):
        replica.receive_all(order)
    assert_converged(replicas, changes)


@PROPERTY
@given(st.data())
def test_any_grouping_converges(data: st.DataObject) -> None:
    """Split the changes among replicas (overlapping), then let each receive the others' logs."""
    changes = data.draw(crdt_histories())
    n = data.draw(st.integers(2, 3))
    # One draw per choice keeps generation cheap: a bitmask of holders, a seed per shuffle.
    n_changes = len(changes)
    masks = data.draw(
        st.lists(st.integers(1, (1 << n) - 1), min_size=n_changes, max_size=n_changes)
    )
    shuffle = random.Random(data.draw(st.integers(0, 2**32))).shuffle
    subsets = [[c for c, m in zip(changes, masks, strict=True) if m >> i & 1] for i in range(n)]
    replicas = [Replica() for _ in range(n)]
    for replica, subset in zip(replicas, subsets, strict=True):
        shuffle(subset)
        replica.receive_all(subset)
    # Snapshot the logs: what each replica forwards is what it held before the exchange.
    logs = [list(r.log) for r in replicas]
    for i, replica in enumerate(replicas):
        incoming = [c for j, log in enumerate(logs) if j != i for c in log]
        shuffle(incoming)
        replica.receive_all(incoming)
    assert_converged(replicas, changes)


# --- semantics, by example ----------------------------------------------------------------


def put(fields: Fields, key: str = "k1") -> Put:
    return Put(collection="bugs", key=key, fields=fields)


def delete(key: str = "k1") -> Delete:
    return Delete(collection="bugs", key=key)


def ch(origin: bytes, seq: int, hlc: int, *ops: Op) -> Change:
    return Change(origin=origin, seq=seq, hlc=hlc, ops=ops)


def run(*changes: Change) -> dict[RecordKey, RecordState]:
    states: dict[RecordKey, RecordState] = {}
    for change in changes:
        apply_checked(change, states)
    return states


def both_orders(*changes: Change) -> dict[RecordKey, RecordState]:
    forward = run(*changes)
    backward = run(*reversed(changes))
    assert canon_states(forward) == canon_states(backward)
    return forward


def doc(states: dict[RecordKey, RecordState], rk: RecordKey = REC) -> dict[str, Value] | None:
    return states[rk].document()


def test_later_put_wins_per_field() -> None:
    states = both_orders(
        ch(A, 1, 10, put({"title": "old", "open": True})),
        ch(B, 1, 20, put({"title": "new"})),
    )
    assert doc(states) == {"title": "new", "open": True}
    assert states[REC].fields["title"] == ("new", (20, B))
    assert states[REC].fields["open"] == (True, (10, A))
    assert states[REC].live == (20, B)


def test_same_hlc_tie_is_broken_by_origin_bytes() -> None:
    assert A < B < C
    states = both_orders(ch(C, 1, 10, put({"f": "c"})), ch(A, 1, 10, put({"f": "a", "g": 1})))
    assert doc(states) == {"f": "c", "g": 1}
    states = both_orders(ch(A, 1, 10, put({"f": "a"})), ch(B, 1, 10, put({"f": "b"})))
    assert doc(states) == {"f": "b"}


def test_origin_order_is_bytewise_not_by_length_or_sign() -> None:
    low, high = b"\x7f" + bytes(15), b"\x80" + bytes(15)
    states = both_orders(ch(high, 1, 5, put({"f": "high"})), ch(low, 1, 5, put({"f": "low"})))
    assert doc(states) == {"f": "high"}


def test_delete_hides_older_fields_and_a_later_put_resurrects_with_new_fields_only() -> None:
    states = both_orders(
        ch(A, 1, 10, put({"title": "t", "open": True})),
        ch(B, 1, 20, delete()),
        ch(A, 2, 30, put({"open": False})),
    )
    assert doc(states) == {"open": False}
    assert states[REC].tomb == (20, B)
    assert states[REC].live == (30, A)


def test_delete_keeps_fields_written_after_it() -> None:
    states = both_orders(
        ch(A, 1, 10, put({"a": 1})),
        ch(A, 2, 30, put({"b": 2})),
        ch(B, 1, 20, delete()),
    )
    assert doc(states) == {"b": 2}
    assert set(states[REC].fields) == {"b"}


def test_deleted_record_is_invisible_and_keeps_no_fields() -> None:
    states = both_orders(ch(A, 1, 10, put({"a": 1})), ch(B, 1, 20, delete()))
    assert doc(states) is None
    assert not states[REC].visible
    assert states[REC].fields == {}


def test_put_older_than_the_tombstone_is_ignored() -> None:
    states = run(ch(B, 1, 20, delete()))
    touched = apply_checked(ch(A, 1, 10, put({"a": 1})), states)
    assert doc(states) is None
    assert states[REC].fields == {}
    assert touched == {REC}  # only its stamp is remembered (live), as a maximum
    assert states[REC].live == (10, A)


def test_put_at_tombstone_hlc_loses_or_wins_by_origin() -> None:
    states = both_orders(ch(B, 1, 20, delete()), ch(A, 1, 20, put({"a": 1})))
    assert doc(states) is None
    states = both_orders(ch(A, 1, 20, delete()), ch(B, 1, 20, put({"a": 1})))
    assert doc(states) == {"a": 1}


def test_put_then_delete_in_one_change_leaves_the_record_deleted() -> None:
    states = run(ch(A, 1, 10, put({"a": 1}), delete()))
    assert doc(states) is None
    assert states[REC].live == (10, A)
    assert states[REC].tomb == (11, A)


def test_delete_then_put_in_one_change_leaves_it_alive_with_only_new_fields() -> None:
    states = run(
        ch(B, 1, 5, put({"old": 1, "a": 0})),
        ch(A, 1, 10, delete(), put({"a": 1})),
    )
    assert doc(states) == {"a": 1}
    assert states[REC].fields["a"] == (1, (11, A))


def test_op_i_of_a_change_is_stamped_hlc_plus_i() -> None:
    states = run(ch(A, 1, 100, put({"f": 0}, key="x"), put({"f": 1}, key="y"), put({"f": 2})))
    assert states[("bugs", "x")].fields["f"][1] == (100, A)
    assert states[("bugs", "y")].fields["f"][1] == (101, A)
    assert states[REC].fields["f"][1] == (102, A)
    # B's ops at (100, B) and (101, B) lose to A's at 101 and 102 ...
    apply_checked(ch(B, 1, 100, put({"f": "b"}, key="y"), put({"f": "b"})), states)
    assert doc(states, ("bugs", "y")) == {"f": 1}
    assert doc(states) == {"f": 2}
    # ... and C's at (101, C) beats A's op 1 at (101, A), as C > A.
    apply_checked(ch(C, 1, 101, put({"f": "c"}, key="y")), states)
    assert doc(states, ("bugs", "y")) == {"f": "c"}


def test_later_op_in_one_change_wins_over_earlier_one() -> None:
    states = run(ch(A, 1, 10, put({"f": 1, "g": 1}), put({"f": 2})))
    assert doc(states) == {"f": 2, "g": 1}


def test_empty_put_creates_a_visible_empty_record() -> None:
    states = run(ch(A, 1, 10, put({})))
    assert doc(states) == {}
    assert states[REC].visible


def test_empty_put_after_delete_resurrects_empty() -> None:
    states = both_orders(ch(A, 1, 10, put({"a": 1})), ch(B, 1, 20, delete()), ch(A, 2, 30, put({})))
    assert doc(states) == {}


def test_never_written_state_is_invisible() -> None:
    state = RecordState()
    assert state.document() is None
    assert not state.visible
    assert state.live == state.tomb == NO_STAMP


def test_delete_of_unknown_record_creates_a_tombstone() -> None:
    states = run(ch(A, 1, 10, delete()))
    assert doc(states) is None
    assert states[REC].tomb == (10, A)
    # It then hides a late-arriving older put of the same record.
    apply_checked(ch(B, 1, 5, put({"a": 1})), states)
    assert doc(states) is None


def test_apply_change_returns_exactly_the_changed_keys() -> None:
    states: dict[RecordKey, RecordState] = {}
    first = ch(A, 1, 10, put({"a": 1}, key="x"), put({"a": 1}, key="y"))
    assert apply_change(first, states) == {("bugs", "x"), ("bugs", "y")}
    assert apply_change(first, states) == set()  # re-applying changes nothing
    # Newer for x, older than what y holds: only x changes.
    second = ch(B, 1, 5, put({"a": 0}, key="y"))
    assert apply_change(second, states) == set()
    third = ch(B, 2, 20, put({"a": 2}, key="x"), delete(key="zz"))
    assert apply_change(third, states) == {("bugs", "x"), ("bugs", "zz")}
    assert apply_change(third, states) == set()
    # An old delete below the current tombstone and the live stamp changes nothing.
    assert apply_change(ch(C, 1, 1, delete(key="zz")), states) == set()


def test_apply_change_leaves_unrelated_records_alone() -> None:
    states = run(ch(A, 1, 10, put({"a": 1}, key="other")))
    other = canon_state(states[("bugs", "other")])
    apply_checked(ch(B, 1, 20, delete()), states)
    assert canon_state(states[("bugs", "other")]) == other


def test_record_in_another_collection_is_another_record() -> None:
    states = run(
        ch(A, 1, 10, Put(collection="a", key="k", fields={"f": 1})),
        ch(A, 2, 20, Delete(collection="b", key="k")),
    )
    assert states[("a", "k")].document() == {"f": 1}
    assert states[("b", "k")].document() is None
