"""The control protocol: frames between a running agent and the apps on its device.

The CLI and other local programs reach the agent over a Unix socket (docs/api.md,
"The control socket"). Each frame is a 4-byte big-endian length and then one msgpack
map; a frame is at most `MAX_CONTROL_FRAME_BYTES`. A client sends requests::

    {"id": 7, "op": "put", "args": {"collection": "orders", "key": "o-1", "fields": {...}}}

and the agent answers every request with exactly one final frame, a result or an error;
a streaming request (``watch``) gets events first::

    {"id": 7, "ok": <result>}
    {"id": 7, "error": {"code": "invalid", "message": "field orders/o-1.x: NaN is not a value"}}
    {"id": 7, "event": <event>}

`RequestDecoder` and `ReplyDecoder` take bytes in any chunking and yield whole frames as
the dataclasses below; anything malformed or oversized raises `DecodeError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeAlias, assert_never

import msgpack

from blazemesh.protocol.codec.bounds import unpack
from blazemesh.protocol.errors import DecodeError
from blazemesh.protocol.ids import node_id_text
from blazemesh.protocol.model import MAX_CHANGE_BYTES, MAX_SEQ, Change, Delete, Op, Put, Value

CONTROL_VERSION = 1
# One request may carry a whole change (a `commit` of many ops), plus room for framing.
MAX_CONTROL_FRAME_BYTES = MAX_CHANGE_BYTES + (64 << 10)
MAX_OP_NAME_BYTES = 64
_HEADER = struct.Struct(">I")


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """Client to agent: run ``op`` with ``args``; ``id`` pairs the answer with it."""

    id: int
    op: str
    args: dict[str, Value]


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """The request ``id`` succeeded (for a stream: ended normally)."""

    id: int
    value: Value


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """The request ``id`` failed; ``code`` is one of the documented error codes."""

    id: int
    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEvent:
    """One item of the stream opened by request ``id``."""

    id: int
    value: Value


Reply: TypeAlias = Result | Failure | StreamEvent
Frame: TypeAlias = Request | Reply


def encode_frame(frame: Frame) -> bytes:
    """The bytes of one frame, length prefix included."""
    body: dict[str, Value]
    match frame:
        case Request():
            body = {"id": frame.id, "op": frame.op, "args": frame.args}
        case Result():
            body = {"id": frame.id, "ok": frame.value}
        case StreamEvent():
            body = {"id": frame.id, "event": frame.value}
        case Failure():
            body = {"id": frame.id, "error": {"code": frame.code, "message": frame.message}}
        case _:
            assert_never(frame)
    data: bytes = msgpack.packb(body, use_bin_type=True)
    if len(data) > MAX_CONTROL_FRAME_BYTES:
        raise ValueError(f"a frame of {len(data)} bytes exceeds {MAX_CONTROL_FRAME_BYTES}")
    return _HEADER.pack(len(data)) + data


class _FrameDecoder:
    """Splits one direction of a control connection into msgpack bodies."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data
        self._check_size()

    def _check_size(self) -> int | None:
        """The size the next frame announces, once its header is here."""
        if len(self._buffer) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self._buffer)
        if size > MAX_CONTROL_FRAME_BYTES:
            raise DecodeError(
                f"a frame of {size} bytes exceeds the limit of {MAX_CONTROL_FRAME_BYTES}"
            )
        return int(size)

    def _next_body(self) -> object:
        size = self._check_size()
        end = _HEADER.size + (size or 0)
        if size is None or len(self._buffer) < end:
            raise StopIteration
        body = unpack(bytes(self._buffer[_HEADER.size : end]), MAX_CONTROL_FRAME_BYTES)
        del self._buffer[:end]
        self._check_size()  # refuse an oversized next frame as soon as its header is here
        return body


class RequestDecoder(_FrameDecoder):
    """The agent's side: bytes from a client, in any chunking, to `Request`s."""

    def __iter__(self) -> Iterator[Request]:
        return self

    def __next__(self) -> Request:
        return _request(self._next_body())


class ReplyDecoder(_FrameDecoder):
    """The client's side: bytes from the agent, in any chunking, to replies."""

    def __iter__(self) -> Iterator[Reply]:
        return self

    def __next__(self) -> Reply:
        return _reply(self._next_body())


def _names(keys: Iterable[object]) -> str:
    return ", ".join(sorted(repr(k) for k in keys))


def _frame_id(body: object) -> tuple[dict[str, Value], int]:
    if not isinstance(body, dict):
        raise DecodeError("a control frame is a msgpack map")
    frame_id = body.get("id")
    if type(frame_id) is not int or not 0 <= frame_id <= MAX_SEQ:
        raise DecodeError(f"a frame's id must be an integer in [0, {MAX_SEQ}]")
    return body, frame_id


def _request(raw: object) -> Request:
    body, frame_id = _frame_id(raw)
    op, args = body.get("op"), body.get("args", {})
    unknown = body.keys() - {"id", "op", "args"}
    if unknown:
        raise DecodeError(f"unknown keys in a request: {_names(unknown)}")
    if type(op) is not str or not 0 < len(op) <= MAX_OP_NAME_BYTES:
        raise DecodeError(f"a request's op must be a name of 1 to {MAX_OP_NAME_BYTES} characters")
    if not isinstance(args, dict):
        raise DecodeError("a request's args must be a map")
    return Request(id=frame_id, op=op, args=args)


def _reply(raw: object) -> Reply:
    body, frame_id = _frame_id(raw)
    if body.keys() == {"id", "ok"}:
        return Result(id=frame_id, value=body["ok"])
    if body.keys() == {"id", "event"}:
        return StreamEvent(id=frame_id, value=body["event"])
    error = body.get("error")
    if (
        body.keys() == {"id", "error"}
        and isinstance(error, dict)
        and type(error.get("code")) is str
        and type(error.get("message")) is str
    ):
        return Failure(id=frame_id, code=str(error["code"]), message=str(error["message"]))
    raise DecodeError(f"a reply has keys {_names(body)}; expected ok, event or error")


def change_event(lsn: int, change: Change, collection: str | None = None) -> dict[str, Value]:
    """A committed change as ``watch`` reports it, keeping only ops on ``collection`` if given."""
    ops: list[Value] = [
        op_map(op) for op in change.ops if collection is None or op.collection == collection
    ]
    return {
        "lsn": lsn,
        "origin": node_id_text(change.origin),
        "seq": change.seq,
        "hlc": change.hlc,
        "ops": ops,
    }


def op_map(op: Op) -> dict[str, Value]:
    """An op as the control protocol writes it."""
    match op:
        case Delete():
            return {"op": "delete", "collection": op.collection, "key": op.key}
        case Put():
            fields = dict(op.fields)
            return {"op": "put", "collection": op.collection, "key": op.key, "fields": fields}
        case _:
            assert_never(op)


def parse_op(value: Value) -> Op:
    """The op of an `op_map`; raise `DecodeError` for any other shape (names and values are
    checked when the op is committed)."""
    if isinstance(value, dict):
        kind, collection, key = value.get("op"), value.get("collection"), value.get("key")
        if isinstance(collection, str) and isinstance(key, str):
            fields = value.get("fields")
            if kind == "put" and value.keys() == _PUT_KEYS and isinstance(fields, dict):
                return Put(collection=collection, key=key, fields=fields)
            if kind == "delete" and value.keys() == _DELETE_KEYS:
                return Delete(collection=collection, key=key)
    raise DecodeError(
        'an op is {"op": "put", "collection", "key", "fields"} or '
        '{"op": "delete", "collection", "key"}'
    )


_PUT_KEYS = {"op", "collection", "key", "fields"}
_DELETE_KEYS = {"op", "collection", "key"}
