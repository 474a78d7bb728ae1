"""The secure session: who the peer is, proven, and a byte stream encrypted for this session.

Theory of operation (docs/protocol.md, section 7). Two nodes run
``Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b`` with the mesh secret as the PSK:

    initiator                                   responder
    msg 1   e                              ->
    msg 2                                  <-   e, ee, s, es   + identity(responder)
    msg 3   s, se, psk + identity(initiator) ->
                                           <-   READY record (transport)

Each identity payload states the protocol version, the node's Ed25519 public key and an
Ed25519 signature over the handshake hash as it stood before that message. The receiver
checks that the Noise static key is the X25519 form of that Ed25519 key, that the
signature verifies (binding the identity to this session's ephemeral keys, so it cannot be
replayed or relayed into another session), that the version matches and that the
allowlist admits the node. The responder learns that the initiator holds the mesh secret
from message 3; the initiator learns the same of the responder from the READY record,
which the responder sends only after checking message 3. A wrong secret therefore fails
the handshake on both sides instead of leaving a link that silently carries nothing.

After the handshake every Noise message carries one record: a type byte, then data.
`DATA` records form a byte stream, `CLOSE` ends it cleanly (so a truncated stream is
told apart from a closed one). Each direction rekeys (Noise §11.3) after every
`REKEY_EVERY_MESSAGES` messages, counted identically on both sides, so no signal is
needed. On the wire, every Noise message is preceded by its length in two bytes, big
endian (Noise §13).

Sans-IO, as h11: feed bytes with `receive_data`, take events with `next_event`, send what
`data_to_send` returns. Peer misbehaviour raises `HandshakeError` or `DecryptError`
(both `RemoteProtocolError`); misuse raises `LocalProtocolError`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from nacl.bindings import (
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey

from blazemesh.protocol.codec import (
    PROTOCOL_VERSION,
    IdentityPayload,
    decode_identity,
    encode_identity,
)
from blazemesh.protocol.errors import HandshakeError, LocalProtocolError, RemoteProtocolError
from blazemesh.protocol.ids import node_id_from_public_key, node_id_short
from blazemesh.protocol.noise import (
    MAX_MESSAGE_BYTES,
    MAX_PLAINTEXT_BYTES,
    DecryptError,
    KeyPair,
    NoiseHandshake,
    NoiseTransport,
)

NOISE_PROTOCOL = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"blazemesh/1"  # both sides mix it in: a peer speaking anything else fails at once
SIGNATURE_CONTEXT = b"blazemesh handshake v1\x00"  # signed before the handshake hash
LENGTH_BYTES = 2  # the frame header: a Noise message's length, big endian
REKEY_EVERY_MESSAGES = 1 << 16  # per direction; far below any nonce or key-wear limit
MAX_RECORD_DATA = MAX_PLAINTEXT_BYTES - 1  # one byte of each record is its type


class NotAllowedError(HandshakeError):
    """Raised when the peer proved who it is, but this node's allowlist does not admit it."""


class IncompatibleVersionError(HandshakeError):
    """Raised when the peer speaks a protocol version this node does not."""


class WrongSecretError(HandshakeError):
    """Raised (by the responder) when the initiator's final message fails under the mesh secret."""


class RefusedError(HandshakeError):
    """Raised (by the initiator) when the responder hangs up instead of confirming: it does not
    share the mesh secret, or does not admit this node."""


class PeerClosedError(HandshakeError):
    """Raised when the connection ends before the handshake does."""


class Record(enum.IntEnum):
    DATA = 0
    CLOSE = 1
    READY = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Established:
    """The handshake is done: ``node_id`` proved it holds ``public_key`` and the mesh secret."""

    node_id: bytes
    public_key: bytes
    version: int
    handshake_hash: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Data:
    """Bytes of the peer's stream, in order."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed:
    """The peer's stream ended: ``clean`` if it sent CLOSE, not if the connection just ended."""

    clean: bool


SessionEvent = Established | Data | Closed


class _State(enum.Enum):
    HANDSHAKE = "handshake"
    AWAIT_READY = "await-ready"  # the initiator, after message 3
    OPEN = "open"
    CLOSED = "closed"  # the peer closed, or this session failed
    FAILED = "failed"


def static_keypair(ed25519_seed: bytes) -> KeyPair:
    """The X25519 Noise static key pair of an Ed25519 key (RFC 7748 birational map)."""
    _, secret = crypto_sign_seed_keypair(ed25519_seed)
    return KeyPair.from_private(crypto_sign_ed25519_sk_to_curve25519(secret))


class SecureSession:
    """One side of one connection between two nodes of a mesh."""

    def __init__(
        self,
        *,
        initiator: bool,
        public_key: bytes,
        sign: Callable[[bytes], bytes],
        keypair: KeyPair,
        psk: bytes,
        random_bytes: Callable[[int], bytes],
        allows: Callable[[bytes], bool] = lambda node_id: True,
        version: int = PROTOCOL_VERSION,
        rekey_every: int = REKEY_EVERY_MESSAGES,
    ) -> None:
        if rekey_every < 1:
            raise LocalProtocolError(f"rekey_every must be >= 1, got {rekey_every}")
        self._rekey_every = rekey_every
        self._initiator = initiator
        self._public_key = public_key
        self._sign = sign
        self._allows = allows
        self._version = version
        self._handshake = NoiseHandshake(
            protocol_name=NOISE_PROTOCOL,
            initiator=initiator,
            prologue=PROLOGUE,
            static_keypair=keypair,
            psks=(psk,),
            random_bytes=random_bytes,
        )
        self._transport: NoiseTransport | None = None
        self._state = _State.HANDSHAKE
        self._inbox = bytearray()
        self._inbox_pos = 0  # where the next unread frame starts in _inbox
        self._outbox = bytearray()
        self._eof = False
        self._sent = 0
        self._received = 0
        self._identity_seen: tuple[bytes, bytes, int] | None = None
        self._identity_sent = False
        self.peer: Established | None = None
        if initiator:
            self._frame(self._handshake.write_message(b""))

    # -- public ----------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        return self._state is _State.OPEN

    def data_to_send(self) -> bytes:
        """Everything this session has produced for the wire since the last call."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes from the wire; ``b""`` means the connection ended."""
        if self._eof:
            raise LocalProtocolError("receive_data after the end of the connection")
        if data:
            self._inbox += data
        else:
            self._eof = True

    def next_event(self) -> SessionEvent | None:
        """The next event the received bytes make, or None until more bytes arrive."""
        while True:
            if self._state in (_State.CLOSED, _State.FAILED):
                return None
            message = self._next_message()
            if message is None:
                return self._end_of_input()
            try:
                event = self._handle(message)
            except RemoteProtocolError:
                self._state = _State.FAILED
                raise
            if event is not None:
                return event

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the peer, as DATA records of at most `MAX_RECORD_DATA` bytes."""
        if self._state is not _State.OPEN:
            raise LocalProtocolError(f"cannot send data while the session is {self._state.value}")
        view = memoryview(data)
        for start in range(0, len(view), MAX_RECORD_DATA):
            self._record(Record.DATA, view[start : start + MAX_RECORD_DATA])

    def close(self) -> None:
        """Queue a CLOSE record: the peer will see a clean end of the stream."""
        if self._state is _State.OPEN:
            self._record(Record.CLOSE, b"")
            self._state = _State.CLOSED

    # -- inbound ---------------------------------------------------------------------------

    def _next_message(self) -> bytes | None:
        # Frames are read at an offset and the buffer compacted once it is used up, so a
        # read holding hundreds of small frames costs one pass, not one shift per frame.
        inbox, pos = self._inbox, self._inbox_pos
        if len(inbox) - pos >= LENGTH_BYTES:
            end = pos + LENGTH_BYTES + int.from_bytes(inbox[pos : pos + LENGTH_BYTES], "big")
            if len(inbox) >= end:
                message = bytes(inbox[pos + LENGTH_BYTES : end])
                if end == len(inbox):
                    inbox.clear()
                    end = 0
                self._inbox_pos = end
                return message
        if pos:
            del inbox[:pos]
            self._inbox_pos = 0
        return None

    def _end_of_input(self) -> SessionEvent | None:
        if not self._eof:
            return None
        state = self._state
        self._state = _State.CLOSED
        if state is _State.OPEN:
            return Closed(clean=False)
        self._state = _State.FAILED
        if len(self._inbox) > self._inbox_pos:
            raise PeerClosedError("the connection ended in the middle of a handshake message")
        if state is _State.AWAIT_READY:
            raise RefusedError(
                "the peer ended the handshake instead of confirming it: it holds another mesh "
                "secret, does not admit this node, or went away"
            )
        raise PeerClosedError("the peer ended the connection during the handshake")

    def _handle(self, message: bytes) -> SessionEvent | None:
        if self._state is _State.HANDSHAKE:
            return self._handshake_step(message)
        assert self._transport is not None
        plaintext = self._transport.decrypt(message)
        self._received += 1
        if self._received % self._rekey_every == 0:
            self._transport.rekey_receive()
        if not plaintext:
            raise DecryptError("an empty record has no type")
        kind, body = plaintext[0], plaintext[1:]
        if self._state is _State.AWAIT_READY:
            if kind != Record.READY:
                raise HandshakeError("the responder sent data before confirming the handshake")
            self._state = _State.OPEN
            assert self.peer is not None
            return self.peer
        if kind == Record.DATA:
            return Data(data=body) if body else None
        if kind == Record.CLOSE:
            self._state = _State.CLOSED
            return Closed(clean=True)
        raise DecryptError(f"record type {kind} is not one this version knows")

    def _handshake_step(self, message: bytes) -> SessionEvent | None:
        handshake = self._handshake
        signed_hash = handshake.handshake_hash
        knew_static = handshake.remote_static_public is not None
        try:
            payload = handshake.read_message(message)
        except HandshakeError as exc:
            if not self._initiator and self._identity_sent:  # message 3: the first under the PSK
                raise WrongSecretError(
                    "the peer does not hold this mesh's secret (wrong mesh secret, or the "
                    f"message was tampered with): {exc}"
                ) from None
            raise
        if handshake.remote_static_public is not None and not knew_static:
            # The message that revealed the peer's static key carries its identity.
            self._identity_seen = self._verify(payload, signed_hash)
        elif payload:
            raise HandshakeError("a handshake message carried an unexpected payload")
        if not handshake.complete:
            self._frame(handshake.write_message(self._identity()))
            self._identity_sent = True
        if not handshake.complete:
            return None
        self._transport = handshake.split()
        assert self._identity_seen is not None  # XX reveals both static keys
        node_id, public_key, version = self._identity_seen
        self.peer = Established(
            node_id=node_id,
            public_key=public_key,
            version=version,
            handshake_hash=handshake.handshake_hash,
        )
        if self._initiator:
            self._state = _State.AWAIT_READY
            return None
        self._state = _State.OPEN
        self._record(Record.READY, b"")
        return self.peer

    def _identity(self) -> bytes:
        signature = self._sign(SIGNATURE_CONTEXT + self._handshake.handshake_hash)
        return encode_identity(
            IdentityPayload(version=self._version, public_key=self._public_key, signature=signature)
        )

    def _verify(self, payload: bytes, signed_hash: bytes) -> tuple[bytes, bytes, int]:
        """Check the peer's identity payload; return its node id, public key and version."""
        identity = decode_identity(payload)
        try:
            expected_static = crypto_sign_ed25519_pk_to_curve25519(identity.public_key)
            VerifyKey(identity.public_key).verify(
                SIGNATURE_CONTEXT + signed_hash, identity.signature
            )
        except (BadSignatureError, CryptoError, ValueError, TypeError) as exc:
            raise HandshakeError(f"the peer's identity signature does not verify: {exc}") from None
        if self._handshake.remote_static_public != expected_static:
            raise HandshakeError("the peer's Noise key is not the one of its stated identity")
        node_id = node_id_from_public_key(identity.public_key)
        if identity.version != self._version:
            raise IncompatibleVersionError(
                f"peer {node_id_short(node_id)} speaks protocol version {identity.version}; "
                f"this node speaks {self._version}"
            )
        if not self._allows(node_id):
            raise NotAllowedError(f"peer {node_id_short(node_id)} is not on this node's allowlist")
        return node_id, identity.public_key, identity.version

    # -- outbound --------------------------------------------------------------------------

    def _record(self, kind: Record, body: bytes | memoryview) -> None:
        assert self._transport is not None
        self._frame(self._transport.encrypt(bytes([kind]) + body))
        self._sent += 1
        if self._sent % self._rekey_every == 0:
            self._transport.rekey_send()

    def _frame(self, message: bytes) -> None:
        assert len(message) <= MAX_MESSAGE_BYTES
        self._outbox += len(message).to_bytes(LENGTH_BYTES, "big")
        self._outbox += message
