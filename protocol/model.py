"""The data model: values, ops and changes, and the rules every one of them must obey.

A mesh holds collections; a collection holds records addressed by a string key; a record
maps field names to values. A change is the ops of one local transaction, stamped with its
origin node id, a per-origin sequence number (together, its *dot*) and the HLC stamp of
its first op: op ``i`` of a change is stamped ``hlc + i`` (docs/protocol.md, "Changes").

Every limit below is part of the protocol: a peer that exceeds one is misbehaving.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

import msgpack

from protocol.errors import ValidationError
from protocol.hlc import MAX_STAMP
from protocol.ids import NODE_ID_BYTES

Value: TypeAlias = bool | int | float | str | bytes | list["Value"] | dict[str, "Value"] | None
Fields: TypeAlias = Mapping[str, Value]

MAX_COLLECTION_BYTES = 128  # a name people type; long enough for any namespacing scheme
MAX_KEY_BYTES = 1024  # room for composite keys and URLs, small enough to index cheaply
MAX_FIELD_BYTES = 256
MAX_VALUE_BYTES = 1 << 20  # 1 MiB encoded: bigger blobs belong in files, not records
MAX_CHANGE_BYTES = 4 << 20  # 4 MiB encoded: bounds what one peer message can make us hold
MAX_OPS_PER_CHANGE = 65_535  # a change's HLC range fits in one millisecond's counter space
MAX_FIELDS_PER_PUT = 4_096
MAX_VALUE_DEPTH = 32  # nesting of lists and maps; deeper input is hostile, not useful
MAX_SEQ = (1 << 63) - 1
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
RESERVED_PREFIX = "_"  # names starting with it belong to blazemesh itself


@dataclass(frozen=True, slots=True, kw_only=True)
class Put:
    """Set ``fields`` on the record ``key`` of ``collection``, creating it if needed."""

    collection: str
    key: str
    fields: Fields


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    """Delete the record: a tombstone that hides every older field of it."""

    collection: str
    key: str


Op: TypeAlias = Put | Delete


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """The ops of one transaction at its origin, identified by the dot ``(origin, seq)``."""

    origin: bytes
    seq: int
    hlc: int
    ops: tuple[Op, ...]

    @property
    def dot(self) -> tuple[bytes, int]:
        return (self.origin, self.seq)


def validate_name(kind: str, name: object, max_bytes: int, *, system: bool = False) -> None:
    """Check a collection, key or field name; ``kind`` names it in the error."""
    if not isinstance(name, str):
        raise ValidationError(f"{kind} must be a string, got {type(name).__name__}")
    if not name:
        raise ValidationError(f"{kind} must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{kind} {name!r} is not valid UTF-8 (lone surrogate)") from None
    if size > max_bytes:
        raise ValidationError(f"{kind} {name[:40]!r}... is {size} bytes; the limit is {max_bytes}")
    if not system and name.startswith(RESERVED_PREFIX):
        raise ValidationError(
            f"{kind} {name!r} starts with {RESERVED_PREFIX!r}, which is reserved for blazemesh"
        )


def validate_value(value: object, where: str) -> None:
    """Check that ``value`` is a blazemesh value within the size and depth limits."""
    _check_value(value, where, 0)
    if isinstance(value, list | dict):
        size = len(msgpack.packb(value, use_bin_type=True))
    elif isinstance(value, str):
        size = len(value.encode("utf-8"))
    elif isinstance(value, bytes):
        size = len(value)
    else:
        return
    if size > MAX_VALUE_BYTES:
        raise ValidationError(f"{where} is {size} bytes encoded; the limit is {MAX_VALUE_BYTES}")


def _check_value(value: object, where: str, depth: int) -> None:
    if value is None or isinstance(value, bool | bytes):
        return
    if isinstance(value, str):
        _check_text(value, where)
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise ValidationError(f"{where}: integer {value} does not fit in 64 signed bits")
        return
    if isinstance(value, float):
        if math.isnan(value):
            raise ValidationError(f"{where}: NaN is not a value (it is not equal to itself)")
        return
    if depth >= MAX_VALUE_DEPTH:
        raise ValidationError(f"{where}: nested deeper than {MAX_VALUE_DEPTH} levels")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise ValidationError(f"{where}: map keys must be strings, got {k!r}")
            _check_text(k, where)
            _check_value(item, f"{where}[{k!r}]", depth + 1)
        return
    hint = " (use a list)" if isinstance(value, tuple) else ""
    raise ValidationError(f"{where}: {type(value).__name__} is not a storable type{hint}")


def _check_text(text: str, where: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{where}: string is not valid UTF-8 (lone surrogate)") from None


def validate_op(op: object, *, system: bool = False) -> None:
    """Check one op: its names, and for a put every field name and value."""
    if not isinstance(op, Put | Delete):
        raise ValidationError(f"an op is a Put or a Delete, got {type(op).__name__}")
    validate_name("collection", op.collection, MAX_COLLECTION_BYTES, system=system)
    validate_name("key", op.key, MAX_KEY_BYTES, system=system)
    if isinstance(op, Delete):
        return
    if not isinstance(op.fields, Mapping):
        raise ValidationError(f"fields of {op.collection}/{op.key} must be a mapping")
    if len(op.fields) > MAX_FIELDS_PER_PUT:
        raise ValidationError(
            f"{op.collection}/{op.key} has {len(op.fields)} fields; the limit is "
            f"{MAX_FIELDS_PER_PUT}"
        )
    for name, value in op.fields.items():
        validate_name("field", name, MAX_FIELD_BYTES, system=system)
        validate_value(value, f"field {op.collection}/{op.key}.{name}")


def validate_change(change: Change, *, system: bool = False) -> None:
    """Check a whole change except its encoded size (the codec checks that)."""
    if not isinstance(change.origin, bytes) or len(change.origin) != NODE_ID_BYTES:
        raise ValidationError(f"origin must be a {NODE_ID_BYTES}-byte node id")
    if not 1 <= change.seq <= MAX_SEQ:
        raise ValidationError(f"seq must be in 1..{MAX_SEQ}, got {change.seq}")
    if not change.ops:
        raise ValidationError("a change must hold at least one op")
    if len(change.ops) > MAX_OPS_PER_CHANGE:
        raise ValidationError(
            f"a change holds at most {MAX_OPS_PER_CHANGE} ops, got {len(change.ops)}"
        )
    if not change.hlc >= 1 or change.hlc + len(change.ops) - 1 > MAX_STAMP:
        raise ValidationError(f"HLC stamp {change.hlc} is out of range for {len(change.ops)} ops")
    for op in change.ops:
        validate_op(op, system=system)
