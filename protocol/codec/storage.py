"""Record storage: the document (what apps read) and the merge metadata, kept apart so
that reads decode only the document. Both are this node's own data (docs/design.md)."""

from __future__ import annotations

import msgpack

from blazemesh.protocol.crdt import RecordState, Stamp
from blazemesh.protocol.model import Value

CODEC_VERSION = 1  # the storage encodings' version, kept in the store's metadata


def encode_document(document: dict[str, Value]) -> bytes:
    data: bytes = msgpack.packb(document, use_bin_type=True)
    return data


def decode_document(data: bytes) -> dict[str, Value]:
    """A stored document; `ValueError` (or msgpack's own errors) if the bytes are not one."""
    document = msgpack.unpackb(data, raw=False)
    if not isinstance(document, dict):
        raise ValueError(f"a document is a map, not {type(document).__name__}")
    return document


def encode_meta(state: RecordState) -> bytes:
    """The stamps of a record: ``[live_hlc, live_origin, tomb_hlc, tomb_origin, (name,
    stamp) * n]``, where a field's stamp is nil when it equals ``live`` (the usual case:
    fields written by the record's latest put) and ``[hlc, origin]`` otherwise."""
    live = state.live
    body: list[object] = [live[0], live[1], state.tomb[0], state.tomb[1]]
    for name, (_, stamp) in state.fields.items():
        body.append(name)
        body.append(None if stamp == live else stamp)
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def decode_meta(meta: bytes, document: dict[str, Value] | None) -> RecordState:
    """Rebuild a record's state from its stored metadata and document."""
    flat = msgpack.unpackb(meta, raw=False)
    live: Stamp = (flat[0], flat[1])
    values = document or {}
    fields: dict[str, tuple[Value, Stamp]] = {}
    for i in range(4, len(flat), 2):
        name, stamp = flat[i], flat[i + 1]
        fields[name] = (values[name], live if stamp is None else (stamp[0], stamp[1]))
    return RecordState(live=live, tomb=(flat[2], flat[3]), fields=fields)
