"""The data model: values, ops and changes, and the rules every one of them must obey.

A mesh holds collections; a collection holds records addressed by a string key; a record
maps field names to values. A change is the ops of one local transaction, stamped with its
origin node id, a per-origin sequence number (together, its *dot*) and the HLC stamp of
its first op: op ``i`` of a change is stamped ``hlc + i`` (docs/protocol.md, "Changes").

Every limit below is part of the protocol: a peer that exceeds one is misbehaving.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias, assert_never

from blazemesh.protocol.errors import ValidationError

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
    if (
        type(name) is str
        and name.isascii()
        and 0 < len(name) <= max_bytes
        and (system or name[0] != RESERVED_PREFIX)
    ):
        return
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


def validate_field(collection: str, key: str, field: str, value: object) -> None:
    """Check one field's value; errors name it as ``field collection/key.field[...]``."""
    try:
        size = encoded_size(value)
    except _Invalid as exc:
        raise ValidationError(f"field {collection}/{key}.{field}{exc.path}: {exc.reason}") from None
    if size > MAX_VALUE_BYTES:
        raise ValidationError(
            f"field {collection}/{key}.{field} is {size} bytes encoded; the limit is "
            f"{MAX_VALUE_BYTES}"
        )


class _Invalid(Exception):
    """A value breaks a rule; ``path`` locates the offending part inside it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path = ""


def encoded_size(value: object, depth: int = 0) -> int:
    """The msgpack size of a valid value; raises `_Invalid` for anything that is not one.

    Computed rather than encoded, so that checking a value costs no copy of it.
    """
    kind = type(value)
    if kind is str:
        assert isinstance(value, str)
        n = len(value) if value.isascii() else _utf8_length(value)
        return n + (1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5)
    if kind is int:
        assert isinstance(value, int)
        if -32 <= value < 128:
            return 1
        if not INT_MIN <= value <= INT_MAX:
            raise _Invalid(f"integer {value} does not fit in 64 signed bits")
        if value > 0:  # uint8, uint16, uint32, uint64
            return 2 if value < 1 << 8 else 3 if value < 1 << 16 else 5 if value < 1 << 32 else 9
        # int8, int16, int32, int64
        return (
            2
            if value >= -(1 << 7)
            else 3
            if value >= -(1 << 15)
            else 5
            if value >= -(1 << 31)
            else 9
        )
    if value is None or kind is bool:
        return 1
    if kind is float:
        assert isinstance(value, float)
        if value != value:
            raise _Invalid("NaN is not a value (it is not equal to itself)")
        return 9
    if kind is bytes:
        assert isinstance(value, bytes)
        n = len(value)
        return n + (2 if n < 256 else 3 if n < 65536 else 5)
    if kind is list or kind is dict:
        assert isinstance(value, list | dict)
        if depth >= MAX_VALUE_DEPTH:
            raise _Invalid(f"nested deeper than {MAX_VALUE_DEPTH} levels")
        n = len(value)
        size = 1 if n < 16 else 3 if n < 65536 else 5
        if isinstance(value, list):
            for i, item in enumerate(value):
                try:
                    size += encoded_size(item, depth + 1)
                except _Invalid as exc:
                    exc.path = f"[{i}]{exc.path}"
                    raise
            return size
        for k, item in value.items():
            if type(k) is not str:
                raise _Invalid(f"map keys must be strings, got {k!r}")
            try:
                size += encoded_size(k) + encoded_size(item, depth + 1)
            except _Invalid as exc:
                exc.path = f"[{k!r}]{exc.path}"
                raise
        return size
    hint = " (use a list)" if isinstance(value, tuple) else ""
    raise _Invalid(f"{kind.__name__} is not a storable type{hint}")


def _utf8_length(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Invalid("string is not valid UTF-8 (lone surrogate)") from None


def validate_op(op: object, *, system: bool = False) -> None:
    """Check one op: its names, and for a put every field name and value."""
    if not isinstance(op, Put | Delete):
        raise ValidationError(f"an op is a Put or a Delete, got {type(op).__name__}")
    validate_name("collection", op.collection, MAX_COLLECTION_BYTES, system=system)
    validate_name("key", op.key, MAX_KEY_BYTES, system=system)
    match op:
        case Delete():
            return
        case Put():
            pass
        case _:
            assert_never(op)
    if not isinstance(op.fields, Mapping):
        raise ValidationError(f"fields of {op.collection}/{op.key} must be a mapping")
    if len(op.fields) > MAX_FIELDS_PER_PUT:
        raise ValidationError(
            f"{op.collection}/{op.key} has {len(op.fields)} fields; the limit is "
            f"{MAX_FIELDS_PER_PUT}"
        )
    for name, value in op.fields.items():
        validate_name("field", name, MAX_FIELD_BYTES, system=system)
        validate_field(op.collection, op.key, name, value)


# What Python holds per decoded object beyond the object's encoded bytes, about (tracemalloc:
# 110-330 bytes per op or field, 1.1 KiB for a one-op change): a change of 65,535 small
# ops is 0.8 MiB encoded but 22 MB decoded, so a bound in bytes counts its objects too.
OBJECT_BYTES = 160
CHANGE_OBJECTS = 4  # a change's own: itself, its origin, its tuple of ops, its stamp


def held_bytes(encoded_bytes: int, objects: int) -> int:
    """The memory a decoded value of ``encoded_bytes`` made of ``objects`` objects holds,
    about. Values nested in lists and maps count by their bytes alone: for many small
    ones Python holds more (8-9x for lists of numbers or short strings)."""
    return encoded_bytes + OBJECT_BYTES * objects


def change_objects(change: Change) -> int:
    """The objects of ``change`` that `held_bytes` counts: its own, its ops, their fields."""
    objects = CHANGE_OBJECTS + len(change.ops)
    for op in change.ops:  # a loop, not a generator: this runs for every change applied
        match op:
            case Put():
                objects += len(op.fields)
            case Delete():
                pass
            case _:
                assert_never(op)
    return objects
