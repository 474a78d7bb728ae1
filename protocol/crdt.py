"""The merge: how ops fold into a record, identically on every replica.

Each field is a last-writer-wins register ordered by its *stamp* ``(hlc, origin)``; a
delete is a record-level tombstone at its stamp. A record's state is

- ``live``: the greatest stamp of any put on it,
- ``tomb``: the greatest stamp of any delete of it,
- ``fields``: for each name, the value and stamp of the greatest put of that name,
  kept only while that stamp is greater than ``tomb``.

The record is visible when ``live > tomb``, and then its fields are exactly its
document. Each part is a maximum over the ops seen, and a field is dropped exactly when
it loses to the tombstone, so the state after a set of ops does not depend on their
order, grouping or repetition (tests/protocol/test_crdt.py proves it generatively).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import assert_never

from blazemesh.protocol.model import Change, Delete, Fields, Put, Value

Stamp = tuple[int, bytes]  # (hlc, origin): unique per op, see protocol.model
NO_STAMP: Stamp = (0, b"")  # below every real stamp (real HLC stamps are >= 1)


@dataclass(slots=True)
class RecordState:
    """One record's mergeable state. ``fields`` maps name to (value, stamp)."""

    live: Stamp = NO_STAMP
    tomb: Stamp = NO_STAMP
    fields: dict[str, tuple[Value, Stamp]] = field(default_factory=dict)

    @property
    def visible(self) -> bool:
        return self.live > self.tomb

    def document(self) -> dict[str, Value] | None:
        """The record as apps see it (fields in name order, the same on every replica), or
        None when it is deleted (or never existed)."""
        if not self.visible:
            return None
        return {name: value for name, (value, _) in sorted(self.fields.items())}

    def put(self, fields: Fields, stamp: Stamp) -> bool:
        """Apply a put at ``stamp``; return whether the state changed."""
        changed = False
        if stamp > self.live:
            self.live = stamp
            changed = True
        if stamp <= self.tomb:
            return changed
        current = self.fields
        for name, value in fields.items():
            held = current.get(name)
            if held is None or stamp > held[1]:
                current[name] = (value, stamp)
                changed = True
        return changed

    def delete(self, stamp: Stamp) -> bool:
        """Apply a delete at ``stamp``; return whether the state changed."""
        if stamp <= self.tomb:
            return False
        self.tomb = stamp
        self.fields = {name: held for name, held in self.fields.items() if held[1] > stamp}
        return True


RecordKey = tuple[str, str]  # (collection, key)


def apply_change(change: Change, load: dict[RecordKey, RecordState]) -> set[RecordKey]:
    """Fold every op of ``change`` into the states in ``load``; return the keys it changed.

    A record absent from ``load`` starts empty and is added. Op ``i`` is stamped
    ``(change.hlc + i, change.origin)``.
    """
    touched: set[RecordKey] = set()
    origin = change.origin
    for i, op in enumerate(change.ops):
        rk = (op.collection, op.key)
        state = load.get(rk)
        if state is None:
            state = load[rk] = RecordState()
        stamp = (change.hlc + i, origin)
        match op:
            case Delete():
                hit = state.delete(stamp)
            case Put():
                hit = state.put(op.fields, stamp)
            case _:
                assert_never(op)
        if hit:
            touched.add(rk)
    return touched
