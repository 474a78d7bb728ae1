"""Hypothesis strategies and comparison helpers shared by the protocol tests."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from hypothesis import strategies as st

from blazemesh.protocol.crdt import RecordKey, RecordState, Stamp
from blazemesh.protocol.hlc import MAX_STAMP
from blazemesh.protocol.ids import NODE_ID_BYTES
from blazemesh.protocol.model import (
    INT_MAX,
    INT_MIN,
    MAX_OPS_PER_CHANGE,
    MAX_SEQ,
    Change,
    Delete,
    Op,
    Put,
    Value,
    validate_op,
)

# --- the oracle ---------------------------------------------------------------------------


def assert_valid_change(change: Change, *, system: bool = True) -> None:
    """Fail unless ``change`` keeps the data model's rules (docs/protocol.md): the tests'
    own statement of them, apart from the decoder, which checks them inline as it reads.
    Whatever a decoder returns must pass. ``system`` allows reserved names, as from peers.
    """
    assert isinstance(change.origin, bytes), change.origin
    assert len(change.origin) == NODE_ID_BYTES, change.origin
    assert 1 <= change.seq <= MAX_SEQ, change.seq
    assert 1 <= len(change.ops) <= MAX_OPS_PER_CHANGE, len(change.ops)
    assert 1 <= change.hlc <= MAX_STAMP - len(change.ops) + 1, change.hlc
    for op in change.ops:
        validate_op(op, system=system)


# --- values -------------------------------------------------------------------------------

# Only what UTF-8 can encode, so no lone surrogates: they are not values (test_model checks
# that they are refused).
TEXT_CHARS = st.characters(codec="utf-8")


@functools.cache
def texts(*, min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    return st.text(TEXT_CHARS, min_size=min_size, max_size=max_size)


scalars: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT_MIN, INT_MAX),
    st.integers(-200, 200),
    st.floats(allow_nan=False),
    texts(),
    st.binary(max_size=12),
)


# Values of every type, equal-but-distinct ones among them (1, 1.0, True; 0.0, -0.0); the
# merge never looks at values, so a fixed pool is as good as generated ones, and much cheaper.
CRDT_VALUES: tuple[Value, ...] = (
    None,
    True,
    False,
    0,
    1,
    1.0,
    0.0,
    -0.0,
    -(1 << 63),
    float("inf"),
    "",
    "s",
    "✓",
    b"",
    b"s",
    [],
    [1, "x"],
    {},
    {"k": [None, {"n": b"\0"}]},
)

# Strategies are built once, at import: building one is far slower than drawing from it.


@functools.cache
def values(*, max_leaves: int = 8) -> st.SearchStrategy[Value]:
    """Any blazemesh value: scalars, and lists and string-keyed maps of values."""
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(texts(max_size=6), inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )


# --- names, ids, changes ------------------------------------------------------------------


@functools.cache
def node_ids() -> st.SearchStrategy[bytes]:
    return st.binary(min_size=16, max_size=16)


@functools.cache
def names(*, max_chars: int = 10, system: bool = False) -> st.SearchStrategy[str]:
    """Valid names; ``system`` allows the reserved ``_`` prefix."""
    strategy = texts(min_size=1, max_size=max_chars)
    if system:
        return strategy
    return strategy.filter(lambda s: not s.startswith("_"))


# A small pool makes names repeat, which is what exercises the codec's interning.
NAME_POOL = ("bugs", "notes", "title", "open", "priority", "tags", "_sys", "é✓")


@functools.cache
def pooled_names(*, system: bool = True) -> st.SearchStrategy[str]:
    pool = NAME_POOL if system else tuple(n for n in NAME_POOL if not n.startswith("_"))
    return st.one_of(st.sampled_from(pool), names(system=system))


@functools.cache
def _keys(system: bool) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(("k1", "k2")), names(max_chars=20, system=system))


@functools.cache
def _field_maps(system: bool, rich: bool) -> st.SearchStrategy[dict[str, Value]]:
    if rich:
        return st.dictionaries(pooled_names(system=system), values(), max_size=4)
    # Cheaper to draw, for tests that need many changes: scalars and a few fixed nestings.
    return st.dictionaries(
        pooled_names(system=system), st.one_of(scalars, st.sampled_from(CRDT_VALUES)), max_size=3
    )


@st.composite
def _ops(draw: st.DrawFn, *, system: bool, rich: bool) -> Op:
    collection = draw(pooled_names(system=system))
    key = draw(_keys(system))
    if draw(st.integers(0, 4)) == 0:
        return Delete(collection=collection, key=key)
    fields = draw(_field_maps(system, rich))
    return Put(collection=collection, key=key, fields=fields)


@functools.cache
def ops(*, system: bool = True, rich: bool = True) -> st.SearchStrategy[Op]:
    """Valid ops; ``rich`` draws arbitrary nested values, else cheaper ones."""
    return _ops(system=system, rich=rich)


@st.composite
def _changes(
    draw: st.DrawFn,
    *,
    origins: st.SearchStrategy[bytes],
    max_ops: int,
    system: bool,
    rich: bool,
) -> Change:
    origin = draw(origins)
    n_ops = draw(st.integers(1, max_ops))
    hlc = draw(st.one_of(st.integers(1, MAX_STAMP - n_ops + 1), realistic_hlcs()))
    seq = draw(st.one_of(st.integers(1, MAX_SEQ), st.integers(1, 2_000)))
    op = ops(system=system, rich=rich)
    change_ops = tuple(draw(op) for _ in range(n_ops))
    return Change(origin=origin, seq=seq, hlc=hlc, ops=change_ops)


@functools.cache
def changes(
    *,
    origins: st.SearchStrategy[bytes] | None = None,
    max_ops: int = 4,
    system: bool = True,
    rich: bool = True,
) -> st.SearchStrategy[Change]:
    """One valid change (valid with ``system=True``; pass ``system=False`` for local rules)."""
    return _changes(
        origins=origins if origins is not None else node_ids(),
        max_ops=max_ops,
        system=system,
        rich=rich,
    )


@functools.cache
def realistic_hlcs() -> st.SearchStrategy[int]:
    """Stamps of the 2020s: 41-bit milliseconds and a small counter."""
    return st.builds(
        lambda ms, ctr: (ms << 16) | ctr,
        st.integers(1_600_000_000_000, 1_900_000_000_000),
        st.integers(0, 300),
    )


# --- CRDT histories -----------------------------------------------------------------------

# Origin bytes deliberately not in the order of their index, so ties exercise byte order.
CRDT_ORIGINS = (b"\x02" * 16, b"\x01" * 16, b"\xff" + b"\x00" * 15)
CRDT_RECORDS: tuple[RecordKey, ...] = (("a", "x"), ("a", "y"), ("b", "x"))
CRDT_FIELDS = ("f", "g", "h")
_CRDT_RECORD_KEYS = st.sampled_from(CRDT_RECORDS)
_CRDT_FIELD_MAPS = st.dictionaries(
    st.sampled_from(CRDT_FIELDS), st.sampled_from(CRDT_VALUES), max_size=3
)


@st.composite
def crdt_ops(draw: st.DrawFn) -> Op:
    collection, key = draw(_CRDT_RECORD_KEYS)
    if draw(st.integers(0, 2)) == 0:
        return Delete(collection=collection, key=key)
    fields = draw(_CRDT_FIELD_MAPS)
    return Put(collection=collection, key=key, fields=fields)


_CRDT_OP_LISTS = st.lists(crdt_ops(), min_size=1, max_size=3)
_CRDT_ORIGIN_SETS = st.lists(st.sampled_from(CRDT_ORIGINS), min_size=1, max_size=3, unique=True)


@st.composite
def crdt_histories(draw: st.DrawFn, *, max_changes_per_origin: int = 5) -> list[Change]:
    """Changes from up to three origins with unique dots and unique op stamps.

    Per origin the changes' HLC ranges are disjoint (what one honest clock produces), but
    they start low and close together, so stamps of different origins tie often. The seqs
    are assigned to the ranges in any order: the merge must not look at seqs.
    """
    out: list[Change] = []
    origins = draw(_CRDT_ORIGIN_SETS)
    for origin in origins:
        n = draw(st.integers(0, max_changes_per_origin))
        hlc = draw(st.integers(1, 4))
        layout: list[tuple[int, tuple[Op, ...]]] = []
        for _ in range(n):
            change_ops = tuple(draw(_CRDT_OP_LISTS))
            layout.append((hlc, change_ops))
            hlc += len(change_ops) + draw(st.integers(0, 2))
        seqs = draw(st.permutations(range(1, n + 1)))
        out += [
            Change(origin=origin, seq=seq, hlc=h, ops=o)
            for seq, (h, o) in zip(seqs, layout, strict=True)
        ]
    return out


# --- comparison helpers -------------------------------------------------------------------


def canon_value(value: object) -> object:
    """A form of ``value`` whose equality also sees types (``1``, ``1.0``, ``True``, ``-0.0``)."""
    if isinstance(value, bool) or value is None:
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", repr(value))  # repr tells -0.0 from 0.0
    if isinstance(value, int | str | bytes):
        return (type(value).__name__, value)
    if isinstance(value, list):
        return ("list", tuple(canon_value(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, canon_value(v)) for k, v in value.items()))
    return ("other", repr(value))


def canon_fields(fields: Mapping[str, object]) -> tuple[object, ...]:
    return tuple(sorted((name, canon_value(v)) for name, v in fields.items()))


def canon_op(op: Op) -> object:
    if isinstance(op, Delete):
        return ("delete", op.collection, op.key)
    return ("put", op.collection, op.key, canon_fields(op.fields))


def canon_change(change: Change) -> object:
    return (change.origin, change.seq, change.hlc, tuple(canon_op(op) for op in change.ops))


def canon_state(state: RecordState) -> object:
    fields = sorted(
        (name, stamp, canon_value(value)) for name, (value, stamp) in state.fields.items()
    )
    return (state.live, state.tomb, tuple(fields))


def canon_states(states: Mapping[RecordKey, RecordState]) -> dict[RecordKey, object]:
    return {rk: canon_state(s) for rk, s in states.items()}


def canon_documents(states: Mapping[RecordKey, RecordState]) -> dict[RecordKey, object]:
    out: dict[RecordKey, object] = {}
    for rk, state in states.items():
        doc = state.document()
        if doc is not None:
            out[rk] = canon_fields(doc)
    return out


def stamped_ops(changes: Iterable[Change]) -> Iterable[tuple[Stamp, Op]]:
    for change in changes:
        for i, op in enumerate(change.ops):
            yield (change.hlc + i, change.origin), op
