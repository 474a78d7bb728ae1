"""JSON in and out of the CLI: values, with bytes as ``{"$bytes": "<base64>"}`` and the
floats JSON has no number for (infinities, NaN) as ``{"$float": "Infinity"}``.

What is printed is always strict JSON (RFC 8259), and what is read must be: JSON has no
``Infinity`` or ``NaN``, and a number too large for a 64-bit float is refused rather than
read as an infinity.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sys
from typing import Any

from blazemesh.protocol.errors import ValidationError
from blazemesh.protocol.model import MAX_CHANGE_BYTES, MAX_VALUE_DEPTH, Value

# The text forms of the floats JSON has no number for, tagged as {"$float": text}.
_SPECIAL_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}
MAX_INPUT_BYTES = MAX_CHANGE_BYTES  # a file or stdin read for a put: more cannot be stored
INT64_DIGITS = 19  # decimal digits of the largest 64-bit integer, 9223372036854775807


def _default(obj: object) -> object:
    if isinstance(obj, bytes):
        return {"$bytes": base64.b64encode(obj).decode("ascii")}
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj: object) -> str:
    """One line of strict JSON; bytes become ``{"$bytes": ...}``, infinities and NaN
    ``{"$float": ...}``; non-ASCII text stays readable."""
    try:
        return _dumps(obj)
    except ValueError:  # a float JSON cannot hold: rare, so only then walk the value
        return _dumps(_tag_floats(obj))


def _dumps(obj: object) -> str:
    return json.dumps(
        obj, default=_default, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )


def _tag_floats(obj: object) -> object:
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"$float": "NaN" if obj != obj else ("Infinity" if obj > 0 else "-Infinity")}
    if isinstance(obj, list | tuple):
        return [_tag_floats(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _tag_floats(item) for key, item in obj.items()}
    return obj


def _hook(obj: dict[str, Any]) -> object:
    if len(obj) != 1:
        return obj
    if isinstance(obj.get("$bytes"), str):
        try:
            return base64.b64decode(obj["$bytes"], validate=True)
        except binascii.Error:
            raise ValidationError(
                f"$bytes holds invalid base64: {_clip(obj['$bytes'])!r}"
            ) from None
    special = obj.get("$float")
    if isinstance(special, str):
        if special not in _SPECIAL_FLOATS:
            raise ValidationError(
                f"$float is one of {', '.join(_SPECIAL_FLOATS)}, not {special[:40]!r}"
            )
        return _SPECIAL_FLOATS[special]
    return obj


class _NotJsonError(ValueError):
    """Raised while parsing for what JSON does not have (``Infinity``, ``NaN``)."""


def _constant(name: str) -> float:
    raise _NotJsonError(f'{name} is not a JSON number (write {{"$float": "{name}"}})')


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValidationError(f"the number {_clip(text)} is too large for a 64-bit float")
    return value


def _clip(text: str, chars: int = 40) -> str:
    return text if len(text) <= chars else f"{text[:chars]}..."


def _int(text: str) -> int:
    # More digits than any 64-bit integer has: refused before Python converts it (which
    # it refuses itself past 4,300 digits, with a message about its own limit).
    if len(text.lstrip("-")) > INT64_DIGITS:
        raise ValidationError(f"the integer {_clip(text)} does not fit in 64 signed bits")
    return int(text)


def loads(text: str) -> Value:
    """Parse strict JSON into a blazemesh value; raise ``json.JSONDecodeError`` if it is
    not JSON, and `ValidationError` if it is JSON that cannot be a value (a number too
    large for a float, nesting far past `MAX_VALUE_DEPTH`, bad ``$bytes``)."""
    try:
        value: Value = json.loads(
            text,
            object_hook=_hook,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
        )
    except _NotJsonError as exc:
        raise json.JSONDecodeError(str(exc), text, 0) from None
    except RecursionError:
        raise ValidationError(
            f"the JSON is nested far deeper than the {MAX_VALUE_DEPTH} levels a value may have"
        ) from None
    return value


def parse_assignment(arg: str) -> tuple[str, Value]:
    """``field=value``: the value is JSON if it parses as JSON, else the string as given.
    ``field=@PATH`` takes the value from the file PATH (``@-``: standard input), read by
    the same rule, or as bytes if it is not UTF-8 (`value_of_file`); ``field=@@text`` is
    the text ``@text``."""
    name, sep, text = arg.partition("=")
    if not sep:
        raise ValidationError(f"expected field=value, got {arg!r}")
    try:
        if text.startswith("@") and not text.startswith("@@"):
            return name, value_of_file(read_input(text[1:]))
        return name, _value_of_text(text.removeprefix("@"))
    except ValidationError as exc:
        raise ValidationError(f"field {name}: {exc}") from None


def _value_of_text(text: str) -> Value:
    try:
        return loads(text)
    except json.JSONDecodeError:
        return text


def value_of_file(data: bytes) -> Value:
    """A value given as a file's contents: as typed text would be (JSON if it parses, else
    the text, trailing newline and all), or the bytes themselves if they are not UTF-8."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return data
    return _value_of_text(text)


def read_input(source: str) -> bytes:
    """The contents of the file ``source``, or of standard input if it is ``-``;
    `ValidationError` past `MAX_INPUT_BYTES` (`OSError` if the file cannot be read)."""
    if not source:
        raise ValidationError("@ names no file (@PATH, or @- for standard input)")
    if source == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    else:
        with open(source, "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        where = "standard input" if source == "-" else source
        raise ValidationError(
            f"{where} holds more than the {MAX_INPUT_BYTES >> 20} MiB one change may hold"
        )
    return data
