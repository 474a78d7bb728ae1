"""The codec: the one place where msgpack bytes become blazemesh values and messages.

- `protocol.codec.changes`: changes and batches (docs/protocol.md, section 6)
- `protocol.codec.messages`: sync messages (section 8)
- `protocol.codec.identity`: the handshake's identity payload (section 7.2)
- `protocol.codec.storage`: records as the store keeps them (this node's own data)
- `protocol.codec.bounds`: the bounds every decoder applies

Everything decoded from a peer is bounded and checked: malformed input raises
`DecodeError`, input that decodes but breaks a data-model rule raises
`InvalidRemoteDataError`, and nothing else escapes.
"""

from blazemesh.protocol.codec.bounds import unpack
from blazemesh.protocol.codec.changes import (
    MAX_BATCH_BYTES,
    MAX_TABLE_NAMES,
    MAX_TABLE_ORIGINS,
    ChangeDecoder,
    ChangeEncoder,
    decode_batch,
    decode_change,
    encode_batch,
    encode_change,
)
from blazemesh.protocol.codec.identity import (
    PROTOCOL_VERSION,
    IdentityPayload,
    decode_identity,
    encode_identity,
)
from blazemesh.protocol.codec.storage import (
    CODEC_VERSION,
    decode_document,
    decode_meta,
    encode_document,
    encode_meta,
)

__all__ = [
    "CODEC_VERSION",
    "MAX_BATCH_BYTES",
    "MAX_TABLE_NAMES",
    "MAX_TABLE_ORIGINS",
    "PROTOCOL_VERSION",
    "ChangeDecoder",
    "ChangeEncoder",
    "IdentityPayload",
    "decode_batch",
    "decode_change",
    "decode_document",
    "decode_identity",
    "decode_meta",
    "encode_batch",
    "encode_change",
    "encode_document",
    "encode_identity",
    "encode_meta",
    "unpack",
]
