from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings

from blazemesh.protocol.errors import LocalProtocolError, ValidationError
from blazemesh.protocol.model import (
    INT_MAX,
    INT_MIN,
    MAX_COLLECTION_BYTES,
    MAX_FIELD_BYTES,
    MAX_FIELDS_PER_PUT,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    MAX_VALUE_DEPTH,
    Change,
    Delete,
    Put,
    Value,
    validate_field,
    validate_name,
    validate_op,
)

from .strategies import assert_valid_change, changes, values

LIMITS = [
    ("collection", MAX_COLLECTION_BYTES),
    ("key", MAX_KEY_BYTES),
    ("field", MAX_FIELD_BYTES),
]


def put(fields: dict[str, object], collection: str = "bugs", key: str = "k1") -> Put:
    return Put(collection=collection, key=key, fields=fields)  # type: ignore[arg-type]


def op_with(kind: str, name: str) -> Put:
    """A put whose collection, key or field (``kind``) is ``name``; the rest valid."""
    if kind == "collection":
        return put({"f": 1}, collection=name)
    if kind == "key":
        return put({"f": 1}, key=name)
    return put({name: 1})


def nested(depth: int, inner: Value = 0, *, as_map: bool = False) -> Value:
    """``depth`` levels of lists (or maps) around ``inner``."""
    value = inner
    for _ in range(depth):
        value = {"k": value} if as_map else [value]
    return value


def test_validation_error_is_local() -> None:
    assert issubclass(ValidationError, LocalProtocolError)


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "limit"), LIMITS)
def test_empty_name_is_refused_and_named(kind: str, limit: int) -> None:
    with pytest.raises(ValidationError, match=f"^{kind} must not be empty$"):
        validate_name(kind, "", limit)
    with pytest.raises(ValidationError, match=f"^{kind} must not be empty$"):
        validate_op(op_with(kind, ""))


@pytest.mark.parametrize(("kind", "limit"), LIMITS)
def test_name_length_limit_is_exact(kind: str, limit: int) -> None:
    validate_op(op_with(kind, "n" * limit))
    with pytest.raises(ValidationError, match=rf"^{kind} .* is {limit + 1} bytes; the limit is"):
        validate_op(op_with(kind, "n" * (limit + 1)))


@pytest.mark.parametrize(("kind", "limit"), LIMITS)
def test_name_limit_counts_utf8_bytes(kind: str, limit: int) -> None:
    two_byte = "é" * (limit // 2)
    validate_op(op_with(kind, two_byte))
    with pytest.raises(ValidationError, match=f"{limit + 1} bytes"):
        validate_op(op_with(kind, two_byte + "x"))
    with pytest.raises(ValidationError, match=f"{limit + 2} bytes"):
        validate_op(op_with(kind, "é" * (limit // 2 + 1)))


@pytest.mark.parametrize(("kind", "limit"), LIMITS)
def test_reserved_prefix_needs_system(kind: str, limit: int) -> None:
    with pytest.raises(
        ValidationError, match=rf"^{kind} '_meta' starts with '_', which is reserved"
    ):
        validate_op(op_with(kind, "_meta"))
    validate_op(op_with(kind, "_meta"), system=True)
    validate_name(kind, "_meta", limit, system=True)
    validate_name(kind, "a_b", limit)  # only a leading underscore is reserved


@pytest.mark.parametrize(("kind", "limit"), LIMITS)
def test_lone_surrogate_in_a_name(kind: str, limit: int) -> None:
    with pytest.raises(ValidationError, match=f"^{kind} .*lone surrogate"):
        validate_op(op_with(kind, "ab\ud800"))


@pytest.mark.parametrize("name", [None, 3, b"bytes", ["x"]])
def test_name_must_be_a_string(name: object) -> None:
    with pytest.raises(ValidationError, match="key must be a string"):
        validate_name("key", name, MAX_KEY_BYTES)


# --- values -------------------------------------------------------------------------------


@given(values(max_leaves=20))
def test_generated_values_are_valid(value: Value) -> None:
    validate_field("c", "k", "v", value)


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, INT_MAX, INT_MIN, 1.5, -0.0, math.inf, -math.inf, "", "✓", b"", b"\0"],
)
def test_scalars_are_valid(value: Value) -> None:
    validate_field("c", "k", "v", value)
    validate_op(put({"f": value}))


def test_tuple_is_refused_with_a_hint() -> None:
    with pytest.raises(
        ValidationError, match=r"^field bugs/k1\.f: tuple is not a storable type \(use a list\)$"
    ):
        validate_op(put({"f": (1, 2)}))


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({1, 2}, "set"), (frozenset(), "frozenset"), (bytearray(b"x"), "bytearray"), (1j, "complex")],
)
def test_other_types_are_refused(value: object, type_name: str) -> None:
    with pytest.raises(ValidationError, match=f"{type_name} is not a storable type$"):
        validate_op(put({"f": value}))


def test_nan_is_refused_even_nested() -> None:
    with pytest.raises(ValidationError, match=r"^field bugs/k1\.f: NaN"):
        validate_op(put({"f": math.nan}))
    with pytest.raises(ValidationError, match=re.escape("field bugs/k1.f[1]['x']: NaN")):
        validate_op(put({"f": [0, {"x": math.nan}]}))


@pytest.mark.parametrize("value", [INT_MAX + 1, INT_MIN - 1, 1 << 64, -(1 << 100)])
def test_ints_outside_int64_are_refused(value: int) -> None:
    with pytest.raises(ValidationError, match=f"integer {value} does not fit in 64 signed bits"):
        validate_op(put({"f": value}))
    with pytest.raises(ValidationError, match=re.escape("field bugs/k1.f[0]")):
        validate_op(put({"f": [value]}))


def test_bool_is_a_value_not_refused_as_int() -> None:
    validate_op(put({"f": True, "g": [False, {"h": True}]}))


@pytest.mark.parametrize("as_map", [False, True])
def test_nesting_limit_is_exact(as_map: bool) -> None:
    # MAX_VALUE_DEPTH containers, one inside the other, and no more.
    validate_field("c", "k", "v", nested(MAX_VALUE_DEPTH, as_map=as_map))
    validate_field("c", "k", "v", nested(MAX_VALUE_DEPTH - 1, [], as_map=as_map))
    for too_deep in (
        nested(MAX_VALUE_DEPTH + 1, as_map=as_map),
        nested(MAX_VALUE_DEPTH, [], as_map=as_map),
        nested(MAX_VALUE_DEPTH, {}, as_map=as_map),
    ):
        with pytest.raises(ValidationError, match=f"nested deeper than {MAX_VALUE_DEPTH} levels"):
            validate_field("c", "k", "v", too_deep)


def test_deep_nesting_bomb_is_refused_quickly() -> None:
    with pytest.raises(ValidationError, match="nested deeper"):
        validate_field("c", "k", "v", nested(100_000))


def test_value_size_limit_counts_the_encoding_of_bytes() -> None:
    # bin 32 has a 5-byte header: the payload may be MAX_VALUE_BYTES - 5 bytes.
    validate_field("c", "k", "v", b"\0" * (MAX_VALUE_BYTES - 5))
    with pytest.raises(
        ValidationError,
        match=rf"^field bugs/k1\.blob is {MAX_VALUE_BYTES + 1} bytes encoded; "
        rf"the limit is {MAX_VALUE_BYTES}$",
    ):
        validate_op(put({"blob": b"\0" * (MAX_VALUE_BYTES - 4)}))


def test_value_size_limit_text_counts_utf8() -> None:
    validate_field("c", "k", "v", "x" * (MAX_VALUE_BYTES - 5))
    with pytest.raises(ValidationError, match=f"is {MAX_VALUE_BYTES + 1} bytes encoded"):
        validate_field("c", "k", "v", "é" * (MAX_VALUE_BYTES // 2 - 3) + "xx")


def test_value_size_limit_containers_count_encoding() -> None:
    validate_field("c", "k", "v", [b"\0" * (MAX_VALUE_BYTES - 10)])
    with pytest.raises(ValidationError, match="bytes encoded"):
        validate_field("c", "k", "v", [b"\0" * MAX_VALUE_BYTES])  # the bin header pushes it over
    with pytest.raises(ValidationError, match="bytes encoded"):
        validate_field(
            "c",
            "k",
            "v",
            {"a": b"\0" * (MAX_VALUE_BYTES // 2), "b": b"\0" * (MAX_VALUE_BYTES // 2)},
        )


@pytest.mark.parametrize("key", [1, b"k", None, 1.5, (1,)])
def test_map_keys_must_be_strings(key: object) -> None:
    with pytest.raises(ValidationError, match=r"^field bugs/k1\.f: map keys must be strings"):
        validate_op(put({"f": {key: 1}}))


def test_lone_surrogates_in_values() -> None:
    with pytest.raises(ValidationError, match=r"^field bugs/k1\.f: string is not valid UTF-8"):
        validate_op(put({"f": "a\udfff"}))
    with pytest.raises(ValidationError, match=re.escape("field bugs/k1.f[0]: string")):
        validate_op(put({"f": ["\ud800"]}))
    with pytest.raises(ValidationError, match="lone surrogate"):
        validate_op(put({"f": {"\ud800": 1}}))


def test_empty_map_key_and_empty_containers_are_values() -> None:
    validate_op(put({"f": {"": []}, "g": {}, "h": []}))


# --- ops ----------------------------------------------------------------------------------


def test_op_must_be_put_or_delete() -> None:
    with pytest.raises(ValidationError, match="an op is a Put or a Delete, got dict"):
        validate_op({"collection": "c", "key": "k"})


def test_fields_must_be_a_mapping() -> None:
    bad = Put(collection="bugs", key="k1", fields=[("f", 1)])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="fields of bugs/k1 must be a mapping"):
        validate_op(bad)


def test_fields_per_put_limit_is_exact() -> None:
    validate_op(put({f"f{i}": i for i in range(MAX_FIELDS_PER_PUT)}))
    with pytest.raises(ValidationError, match=f"has {MAX_FIELDS_PER_PUT + 1} fields; the limit"):
        validate_op(put({f"f{i}": i for i in range(MAX_FIELDS_PER_PUT + 1)}))


def test_delete_names_are_checked() -> None:
    validate_op(Delete(collection="bugs", key="k"))
    with pytest.raises(ValidationError, match=r"^key must not be empty$"):
        validate_op(Delete(collection="bugs", key=""))


# --- changes ------------------------------------------------------------------------------


@settings(max_examples=50)  # a check of the strategy the other tests build on
@given(changes(system=False))
def test_generated_changes_are_valid(generated: Change) -> None:
    assert_valid_change(generated, system=False)
    assert generated.dot == (generated.origin, generated.seq)
