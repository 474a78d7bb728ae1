"""JSON in and out of the CLI: values, with bytes as ``{"$bytes": "<base64>"}``."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from blazemesh.protocol.errors import ValidationError
from blazemesh.protocol.model import Value


def _default(obj: object) -> object:
    if isinstance(obj, bytes):
        return {"$bytes": base64.b64encode(obj).decode("ascii")}
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj: object) -> str:
    """One line of JSON; bytes become ``{"$bytes": ...}``, non-ASCII text stays readable."""
    return json.dumps(obj, default=_default, ensure_ascii=False, separators=(",", ":"))


def _hook(obj: dict[str, Any]) -> object:
    if obj.keys() == {"$bytes"} and isinstance(obj["$bytes"], str):
        try:
            return base64.b64decode(obj["$bytes"], validate=True)
        except binascii.Error:
            raise ValidationError(f"$bytes holds invalid base64: {obj['$bytes'][:40]!r}") from None
    return obj


def loads(text: str) -> Value:
    """Parse JSON into a blazemesh value (raises ``json.JSONDecodeError`` if it is not JSON)."""
    value: Value = json.loads(text, object_hook=_hook)
    return value


def parse_assignment(arg: str) -> tuple[str, Value]:
    """``field=value``: the value is JSON if it parses as JSON, else the string as given."""
    name, sep, text = arg.partition("=")
    if not sep:
        raise ValidationError(f"expected field=value, got {arg!r}")
    try:
        return name, loads(text)
    except json.JSONDecodeError:
        return name, text
