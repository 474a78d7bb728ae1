"""The Noise Protocol Framework (revision 34), sans-IO, for DH 25519 / ChaChaPoly / BLAKE2b|SHA256.

Theory of operation. A `NoiseHandshake` is the spec's HandshakeState (Noise §5.3): the two
sides build one each, with the same protocol name, prologue and PSKs, and take turns:
``write_message(payload) -> bytes`` on one side, ``read_message(bytes) -> payload`` on the
other, until ``complete``. Then ``split()`` hands over a `NoiseTransport` that encrypts and
decrypts transport messages (Noise §5.2 Split, §11.3 Rekey). Nothing here does I/O or draws
randomness: ephemeral keys come from an injected ``random_bytes`` callable, or are given
outright (test vectors only).

Patterns are a table in the spec's own notation (Noise §7: one-way, fundamental and deferred
patterns); the ``pskN`` modifiers (Noise §9) are applied to it when a name is parsed, so any
``Noise_<pattern>[pskN[+pskM...]]_25519_ChaChaPoly_<BLAKE2b|SHA256>`` works.

Errors, as in h11: calling a method out of turn or with bad arguments raises
`LocalProtocolError`. Anything a peer can send during the handshake raises `HandshakeError`
(bad MAC from a wrong PSK, prologue or key, tampering, truncation, oversize, a low-order
public key), after which the handshake refuses further use. Transport messages that fail
authentication (tampered, truncated, replayed, oversized) raise `DecryptError`. No other
exception escapes, whatever bytes arrive.

Primitives: X25519 and ChaCha20-Poly1305 (IETF) from libsodium through ``nacl.bindings``;
HASH and HMAC from ``hashlib`` and ``hmac``, which cost far less per call than the
equivalent PyNaCl wrappers for the small inputs Noise hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError

from blazemesh.protocol.errors import HandshakeError, LocalProtocolError, RemoteProtocolError

MAX_MESSAGE_BYTES = 65535  # Noise §3: every Noise message, handshake or transport, on the wire
TAG_BYTES = 16  # Noise §12.3: the Poly1305 tag that ChaChaPoly appends to each ciphertext
MAX_PLAINTEXT_BYTES = MAX_MESSAGE_BYTES - TAG_BYTES  # the largest transport payload
DH_BYTES = 32  # Noise §12.1: X25519 public keys, private keys and shared secrets
KEY_BYTES = 32  # Noise §4.2: cipher keys
PSK_BYTES = 32  # Noise §9.1: pre-shared keys
MAX_NONCE = 2**64 - 1  # Noise §5.1: reserved for REKEY; using it for a message is an error
MAX_PROTOCOL_NAME_BYTES = 255  # Noise §8

BytesLike = bytes | bytearray | memoryview  # what the data paths accept (trio gives bytearrays)

_ZERO_KEY = bytes(KEY_BYTES)
_ZERO_DH = bytes(DH_BYTES)
_pack_nonce = struct.Struct("<4xQ").pack  # Noise §12.3: 32 zero bits, then n little-endian

# The u-coordinates of the points of small order on Curve25519 and its twist (0, 1, p-1, the
# two of order 8) and the non-canonical encodings p and p+1, with bit 255 cleared: X25519
# ignores that bit (RFC 7748 §5). A DH with any of them yields all zeros, which an attacker
# would know as well as we do, so they are refused on receipt (the same list as libsodium).
_SMALL_ORDER_POINTS = frozenset(
    bytes.fromhex(u)
    for u in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


class DecryptError(RemoteProtocolError):
    """Raised when a transport message fails authentication: tampered, truncated, replayed,
    reordered, longer than `MAX_MESSAGE_BYTES`, or sent after the nonces ran out."""


# --- Patterns (Noise §7), in the spec's notation: pre-messages, "...", then the messages.

_PATTERNS: dict[str, str] = {
    # one-way (Noise §7.4)
    "N": "<- s; ...; -> e, es",
    "K": "-> s; <- s; ...; -> e, es, ss",
    "X": "<- s; ...; -> e, es, s, ss",
    # interactive, fundamental (Noise §7.5)
    "NN": "-> e; <- e, ee",
    "NK": "<- s; ...; -> e, es; <- e, ee",
    "NX": "-> e; <- e, ee, s, es",
    "XN": "-> e; <- e, ee; -> s, se",
    "XK": "<- s; ...; -> e, es; <- e, ee; -> s, se",
    "XX": "-> e; <- e, ee, s, es; -> s, se",
    "KN": "-> s; ...; -> e; <- e, ee, se",
    "KK": "-> s; <- s; ...; -> e, es, ss; <- e, ee, se",
    "KX": "-> s; ...; -> e; <- e, ee, se, s, es",
    "IN": "-> e, s; <- e, ee, se",
    "IK": "<- s; ...; -> e, es, s, ss; <- e, ee, se",
    "IX": "-> e, s; <- e, ee, se, s, es",
    # interactive, deferred (Noise §7.6)
    "NK1": "<- s; ...; -> e; <- e, ee, es",
    "NX1": "-> e; <- e, ee, s; -> es",
    "X1N": "-> e; <- e, ee; -> s; <- se",
    "X1K": "<- s; ...; -> e, es; <- e, ee; -> s; <- se",
    "XK1": "<- s; ...; -> e; <- e, ee, es; -> s, se",
    "X1K1": "<- s; ...; -> e; <- e, ee, es; -> s; <- se",
    "X1X": "-> e; <- e, ee, s, es; -> s; <- se",
    "XX1": "-> e; <- e, ee, s; -> es, s, se",
    "X1X1": "-> e; <- e, ee, s; -> es, s; <- se",
    "K1N": "-> s; ...; -> e; <- e, ee; -> se",
    "K1K": "-> s; <- s; ...; -> e, es; <- e, ee; -> se",
    "KK1": "-> s; <- s; ...; -> e; <- e, ee, se, es",
    "K1K1": "-> s; <- s; ...; -> e; <- e, ee, es; -> se",
    "K1X": "-> s; ...; -> e; <- e, ee, s, es; -> se",
    "KX1": "-> s; ...; -> e; <- e, ee, se, s; -> es",
    "K1X1": "-> s; ...; -> e; <- e, ee, s; -> se, es",
    "I1N": "-> e, s; <- e, ee; -> se",
    "I1K": "<- s; ...; -> e, es, s; <- e, ee; -> se",
    "IK1": "<- s; ...; -> e, s; <- e, ee, se, es",
    "I1K1": "<- s; ...; -> e, s; <- e, ee, es; -> se",
    "I1X": "-> e, s; <- e, ee, s, es; -> se",
    "IX1": "-> e, s; <- e, ee, se, s; -> es",
    "I1X1": "-> e, s; <- e, ee, s; -> se, es",
}

_NAME_RE = re.compile(
    r"Noise_([A-Z][A-Z0-9]*)([a-z][a-z0-9+]*)?_([A-Za-z0-9+/]+)_([A-Za-z0-9+/]+)_([A-Za-z0-9+/]+)"
)
_PSK_RE = re.compile(r"psk(0|[1-9][0-9]*)")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolName:
    """The parts of a Noise protocol name (Noise §8); ``str()`` gives the name back.

    >>> str(ProtocolName(pattern="XX", modifiers=("psk3",)))
    'Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b'
    """

    pattern: str
    modifiers: tuple[str, ...] = ()
    dh: str = "25519"
    cipher: str = "ChaChaPoly"
    hash: str = "BLAKE2b"

    def __str__(self) -> str:
        modifiers = "+".join(self.modifiers)
        return f"Noise_{self.pattern}{modifiers}_{self.dh}_{self.cipher}_{self.hash}"

    @classmethod
    def parse(cls, name: str) -> ProtocolName:
        """Split a name such as ``Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b`` into its parts.

        Raises `LocalProtocolError` when the name is malformed; whether this module supports
        it is checked by `NoiseHandshake`.
        """
        match = _NAME_RE.fullmatch(name)
        if match is None:
            raise LocalProtocolError(f"malformed Noise protocol name {name!r} (Noise §8)")
        pattern, modifiers, dh, cipher, hash_name = match.groups()
        return cls(
            pattern=pattern,
            modifiers=tuple(modifiers.split("+")) if modifiers else (),
            dh=dh,
            cipher=cipher,
            hash=hash_name,
        )


@dataclass(frozen=True, slots=True)
class _Hash:
    """HASH, HMAC-HASH and HASHLEN of one hash function (Noise §4.3, §12.5, §12.8)."""

    length: int
    hash: Callable[[bytes], bytes]
    hmac: Callable[[bytes, bytes], bytes]


def _blake2b(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac_blake2b(key: bytes, data: bytes) -> bytes:
    # Passing the constructor, not the name "blake2b", takes hmac's faster pure-Python path.
    return hmac.digest(key, data, hashlib.blake2b)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, hashlib.sha256)


_HASHES = {
    "BLAKE2b": _Hash(64, _blake2b, _hmac_blake2b),
    "SHA256": _Hash(32, _sha256, _hmac_sha256),
}


@dataclass(frozen=True, slots=True)
class _Role:
    """What one side of a pattern needs and does."""

    static_premessage: bool  # its static public key is known to the peer beforehand
    uses_static: bool
    sends_ephemeral: bool


@dataclass(frozen=True, slots=True)
class _Protocol:
    """A supported protocol name compiled into what the handshake needs."""

    name: bytes
    hash_name: str
    messages: tuple[tuple[str, ...], ...]  # message i is the initiator's when i is even
    overheads: tuple[int, ...]  # bytes of message i besides the payload
    psk_count: int
    psk_mode: bool  # Noise §9.2: an "e" token also calls MixKey(e.public_key)
    one_way: bool  # Noise §7.4: the initiator sends every message
    initiator: _Role
    responder: _Role


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(token.strip() for token in text.split(","))


@lru_cache(maxsize=64)
def _compile(name: str) -> _Protocol:
    parts = ProtocolName.parse(name)
    if len(name.encode("ascii")) > MAX_PROTOCOL_NAME_BYTES:
        raise LocalProtocolError(f"protocol name longer than {MAX_PROTOCOL_NAME_BYTES} bytes")
    if parts.pattern not in _PATTERNS:
        raise LocalProtocolError(f"unsupported Noise pattern {parts.pattern!r} in {name!r}")
    if parts.dh != "25519" or parts.cipher != "ChaChaPoly":
        raise LocalProtocolError(f"only 25519 and ChaChaPoly are supported, not {name!r}")
    if parts.hash not in _HASHES:
        raise LocalProtocolError(f"only BLAKE2b and SHA256 are supported, not {name!r}")
    pre_text, _, message_text = _PATTERNS[parts.pattern].rpartition("...;")
    premessages = [line.strip() for line in pre_text.split(";") if line.strip()]
    messages = [list(_tokens(line.strip()[2:])) for line in message_text.split(";")]
    _apply_psk_modifiers(messages, parts.modifiers, name)
    psk_mode = bool(parts.modifiers)
    one_way = len(parts.pattern) == 1

    def role(initiator: bool) -> _Role:
        arrow = "->" if initiator else "<-"
        sent = {
            token
            for i, message in enumerate(messages)
            if (i % 2 == 0 or one_way) == initiator
            for token in message
        }
        all_tokens = {token for message in messages for token in message}
        premessage = f"{arrow} s" in premessages
        dh_with_static = {"ss", "se" if initiator else "es"}
        return _Role(
            static_premessage=premessage,
            uses_static=premessage or "s" in sent or bool(dh_with_static & all_tokens),
            sends_ephemeral="e" in sent,
        )

    return _Protocol(
        name=name.encode("ascii"),
        hash_name=parts.hash,
        messages=tuple(tuple(m) for m in messages),
        overheads=_overheads(messages, psk_mode=psk_mode),
        psk_count=sum(message.count("psk") for message in messages),
        psk_mode=psk_mode,
        one_way=one_way,
        initiator=role(True),
        responder=role(False),
    )


def is_supported(protocol_name: str) -> bool:
    """True when `NoiseHandshake` accepts ``protocol_name``: any pattern of Noise §7 with
    ``pskN`` modifiers, DH 25519, cipher ChaChaPoly, hash BLAKE2b or SHA256."""
    try:
        _compile(protocol_name)
    except LocalProtocolError:
        return False
    return True


def _apply_psk_modifiers(messages: list[list[str]], modifiers: tuple[str, ...], name: str) -> None:
    """Noise §9.4: psk0 puts a "psk" token first in message 1; pskN puts one last in message N."""
    seen: set[int] = set()
    for modifier in modifiers:
        match = _PSK_RE.fullmatch(modifier)
        if match is None:
            raise LocalProtocolError(f"unsupported pattern modifier {modifier!r} in {name!r}")
        index = int(match.group(1))
        if index > len(messages) or index in seen:
            raise LocalProtocolError(f"modifier {modifier!r} does not fit the pattern of {name!r}")
        seen.add(index)
        if index == 0:
            messages[0].insert(0, "psk")
        else:
            messages[index - 1].append("psk")


def _overheads(messages: list[list[str]], *, psk_mode: bool) -> tuple[int, ...]:
    """The fixed part of each message: keys, plus a tag wherever a cipher key is set by then."""
    has_key = False  # no pre-message sets a key; every DH and psk token does (Noise §5.3)
    sizes = []
    for tokens in messages:
        size = 0
        for token in tokens:
            if token == "e":
                size += DH_BYTES
                has_key = has_key or psk_mode
            elif token == "s":
                size += DH_BYTES + (TAG_BYTES if has_key else 0)
            else:
                has_key = True
        sizes.append(size + (TAG_BYTES if has_key else 0))
    return tuple(sizes)


# --- Primitives


def _x25519(private: bytes, public: bytes) -> bytes:
    """DH(private, public) per Noise §12.1; an all-zero result is refused (HandshakeError)."""
    try:
        shared = crypto_scalarmult(private, public)
    except CryptoError:  # libsodium refuses small-order points and an all-zero result
        raise HandshakeError("X25519 with a low-order public key") from None
    if shared == _ZERO_DH:
        raise HandshakeError("X25519 gave the all-zero shared secret")
    return shared


def _is_small_order(public: bytes) -> bool:
    return public[:31] + bytes((public[31] & 0x7F,)) in _SMALL_ORDER_POINTS


def _to_bytes(data: BytesLike) -> bytes:
    # libsodium's bindings take bytes only.
    return data if type(data) is bytes else bytes(memoryview(data))


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPair:
    """An X25519 key pair. Build one with `from_private` or `generate`; the constructor
    trusts that ``public`` belongs to ``private`` (deriving it costs one scalar multiplication,
    so a node derives its static key pair once and reuses it)."""

    private: bytes = field(repr=False)
    public: bytes

    def __post_init__(self) -> None:
        for key in (self.private, self.public):
            if type(key) is not bytes or len(key) != DH_BYTES:
                raise LocalProtocolError(f"X25519 keys are {DH_BYTES} bytes objects")

    @classmethod
    def from_private(cls, private: BytesLike) -> KeyPair:
        """The key pair of a 32-byte X25519 private key (clamped by X25519 itself)."""
        private = _to_bytes(private)
        if len(private) != DH_BYTES:
            raise LocalProtocolError(f"an X25519 private key is {DH_BYTES} bytes")
        return cls(private=private, public=crypto_scalarmult_base(private))

    @classmethod
    def generate(cls, random_bytes: Callable[[int], bytes]) -> KeyPair:
        """A fresh key pair from ``random_bytes(32)``, which must be cryptographically secure."""
        private = random_bytes(DH_BYTES)
        if not isinstance(private, bytes | bytearray) or len(private) != DH_BYTES:
            raise LocalProtocolError(f"random_bytes({DH_BYTES}) must return {DH_BYTES} bytes")
        return cls.from_private(private)


# --- CipherState and SymmetricState (Noise §5.1, §5.2)


class CipherState:
    """A key and a nonce counter (Noise §5.1).

    Without a key, encryption and decryption are the identity, as the spec requires during
    the first handshake messages. Nonce ``MAX_NONCE`` (2^64-1) is reserved: once the counter
    reaches it, `encrypt_with_ad` raises `LocalProtocolError` and `decrypt_with_ad` raises
    `DecryptError`. A failed decryption leaves the counter where it was.
    """

    __slots__ = ("_key", "_nonce")

    def __init__(self, key: bytes | None = None) -> None:
        self._key: bytes | None = None
        self._nonce = 0
        self.initialize_key(key)

    def initialize_key(self, key: bytes | None) -> None:
        """Set the key (None: no key) and reset the nonce to 0."""
        if key is not None and (type(key) is not bytes or len(key) != KEY_BYTES):
            raise LocalProtocolError(f"cipher keys are {KEY_BYTES}-byte bytes objects")
        self._key = key
        self._nonce = 0

    def has_key(self) -> bool:
        """True once a key is set."""
        return self._key is not None

    @property
    def nonce(self) -> int:
        """The nonce the next encryption or decryption will use."""
        return self._nonce

    def set_nonce(self, nonce: int) -> None:
        """Set the next nonce: for out-of-order transports (Noise §11.4) and for tests."""
        if not 0 <= nonce <= MAX_NONCE:
            raise LocalProtocolError(f"nonce {nonce} outside 0..2^64-1")
        self._nonce = nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """ENCRYPT(k, n++, ad, plaintext), or the plaintext itself when there is no key."""
        key = self._key
        if key is None:
            return plaintext
        nonce = self._nonce
        if nonce >= MAX_NONCE:
            raise LocalProtocolError("nonces exhausted: this key may not encrypt again")
        ciphertext = crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, ad, _pack_nonce(nonce), key
        )
        self._nonce = nonce + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DECRYPT(k, n++, ad, ciphertext), or the ciphertext itself when there is no key.

        Raises `DecryptError` when authentication fails, and leaves the nonce unchanged.
        """
        key = self._key
        if key is None:
            return ciphertext
        nonce = self._nonce
        if nonce >= MAX_NONCE:
            raise DecryptError("nonces exhausted: the peer may not send under this key")
        if len(ciphertext) < TAG_BYTES:
            raise DecryptError(f"ciphertext of {len(ciphertext)} bytes is shorter than its tag")
        try:
            plaintext = crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, _pack_nonce(nonce), key
            )
        except CryptoError:
            raise DecryptError("message failed authentication") from None
        self._nonce = nonce + 1
        return plaintext

    def rekey(self) -> None:
        """k = REKEY(k) (Noise §4.2, §11.3); the nonce is unchanged."""
        if self._key is None:
            raise LocalProtocolError("rekey needs a key")
        self._key = crypto_aead_chacha20poly1305_ietf_encrypt(
            _ZERO_KEY, None, _pack_nonce(MAX_NONCE), self._key
        )[:KEY_BYTES]


class SymmetricState:
    """The chaining key ``ck``, handshake hash ``h`` and handshake cipher (Noise §5.2)."""

    __slots__ = ("_ck", "_h", "_hash", "cipher")

    def __init__(self, protocol_name: bytes, hash_name: str = "BLAKE2b") -> None:
        """InitializeSymmetric(protocol_name), with HASH = ``hash_name``."""
        hash_ = _HASHES.get(hash_name)
        if hash_ is None:
            raise LocalProtocolError(f"unsupported hash {hash_name!r}")
        self._hash = hash_
        if len(protocol_name) <= hash_.length:
            self._h = protocol_name.ljust(hash_.length, b"\0")
        else:
            self._h = hash_.hash(protocol_name)
        self._ck = self._h
        self.cipher = CipherState()

    @property
    def handshake_hash(self) -> bytes:
        """GetHandshakeHash(): the current ``h``."""
        return self._h

    def mix_hash(self, data: bytes) -> None:
        """h = HASH(h || data)."""
        self._h = self._hash.hash(self._h + data)

    def mix_key(self, input_key_material: bytes) -> None:
        """ck, temp_k = HKDF(ck, input_key_material, 2); InitializeKey(temp_k[:32])."""
        hmac_ = self._hash.hmac
        temp_key = hmac_(self._ck, input_key_material)
        self._ck = hmac_(temp_key, b"\x01")
        self.cipher.initialize_key(hmac_(temp_key, self._ck + b"\x02")[:KEY_BYTES])

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        """ck, temp_h, temp_k = HKDF(ck, input_key_material, 3); MixHash(temp_h); InitializeKey."""
        hmac_ = self._hash.hmac
        temp_key = hmac_(self._ck, input_key_material)
        self._ck = hmac_(temp_key, b"\x01")
        temp_h = hmac_(temp_key, self._ck + b"\x02")
        self.mix_hash(temp_h)
        self.cipher.initialize_key(hmac_(temp_key, temp_h + b"\x03")[:KEY_BYTES])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """EncryptWithAd(h, plaintext), then MixHash(ciphertext)."""
        ciphertext = self.cipher.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """DecryptWithAd(h, ciphertext), then MixHash(ciphertext); raises `DecryptError`."""
        plaintext = self.cipher.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """The initiator-to-responder and responder-to-initiator transport ciphers."""
        hmac_ = self._hash.hmac
        temp_key = hmac_(self._ck, b"")
        key1 = hmac_(temp_key, b"\x01")
        key2 = hmac_(temp_key, key1 + b"\x02")
        return CipherState(key1[:KEY_BYTES]), CipherState(key2[:KEY_BYTES])


# --- Transport


class NoiseTransport:
    """The two transport ciphers of a finished handshake (Noise §5.2 Split).

    Every transport message is one AEAD ciphertext with empty associated data, at most
    `MAX_MESSAGE_BYTES` long, so a payload is at most `MAX_PLAINTEXT_BYTES`. Messages must be
    decrypted in the order they were encrypted. In a one-way pattern the initiator can only
    send and the responder only receive.
    """

    __slots__ = ("_handshake_hash", "_receive", "_remote_static_public", "_send")

    def __init__(
        self,
        *,
        send_cipher: CipherState | None,
        receive_cipher: CipherState | None,
        handshake_hash: bytes,
        remote_static_public: bytes | None,
    ) -> None:
        self._send = send_cipher
        self._receive = receive_cipher
        self._handshake_hash = handshake_hash
        self._remote_static_public = remote_static_public

    @property
    def send_cipher(self) -> CipherState | None:
        """The cipher of outgoing messages (None on the receiving side of a one-way pattern)."""
        return self._send

    @property
    def receive_cipher(self) -> CipherState | None:
        """The cipher of incoming messages (None on the sending side of a one-way pattern)."""
        return self._receive

    @property
    def handshake_hash(self) -> bytes:
        """The handshake's final ``h``, identical on both sides (Noise §11.2)."""
        return self._handshake_hash

    @property
    def remote_static_public(self) -> bytes | None:
        """The peer's static public key, if the pattern has one."""
        return self._remote_static_public

    def encrypt(self, plaintext: BytesLike) -> bytes:
        """The transport message carrying ``plaintext``.

        Raises `LocalProtocolError` when the payload exceeds `MAX_PLAINTEXT_BYTES`, when this
        side cannot send (one-way pattern) or when the nonces are exhausted.
        """
        cipher = self._send
        if cipher is None:
            raise LocalProtocolError("this side of a one-way pattern cannot send")
        plaintext = _to_bytes(plaintext)
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise LocalProtocolError(
                f"payload of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT_BYTES} (Noise §3)"
            )
        return cipher.encrypt_with_ad(b"", plaintext)

    def decrypt(self, ciphertext: BytesLike) -> bytes:
        """The payload of the next transport message from the peer; raises `DecryptError`."""
        cipher = self._receive
        if cipher is None:
            raise LocalProtocolError("this side of a one-way pattern cannot receive")
        ciphertext = _to_bytes(ciphertext)
        if len(ciphertext) > MAX_MESSAGE_BYTES:
            raise DecryptError(
                f"message of {len(ciphertext)} bytes exceeds {MAX_MESSAGE_BYTES} (Noise §3)"
            )
        return cipher.decrypt_with_ad(b"", ciphertext)

    def rekey_send(self) -> None:
        """Rekey the sending cipher (Noise §11.3); the peer must call `rekey_receive` in step."""
        if self._send is None:
            raise LocalProtocolError("this side of a one-way pattern cannot send")
        self._send.rekey()

    def rekey_receive(self) -> None:
        """Rekey the receiving cipher, in step with the peer's `rekey_send`."""
        if self._receive is None:
            raise LocalProtocolError("this side of a one-way pattern cannot receive")
        self._receive.rekey()


# --- HandshakeState (Noise §5.3)


class NoiseHandshake:
    """One side of a Noise handshake: the spec's HandshakeState (Noise §5.3).

    ``protocol_name`` picks the pattern and functions, e.g.
    ``"Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"``. ``static_keypair`` is required exactly when
    the pattern uses this side's static key; ``remote_static_public`` exactly when the pattern
    pre-shares the peer's (``<- s`` / ``-> s`` before ``...``). ``psks`` are the 32-byte
    pre-shared keys in the order their tokens occur. The ephemeral key comes from
    ``random_bytes(32)`` (a CSPRNG, such as ``os.urandom``), or, for test vectors only, from
    ``ephemeral_private``; it is drawn here, so the constructor costs one X25519.

    Raises `LocalProtocolError` for an unsupported name or keys that do not fit the pattern.
    """

    __slots__ = (
        "_e",
        "_failed",
        "_index",
        "_initiator",
        "_protocol",
        "_psk_index",
        "_psks",
        "_re",
        "_rs",
        "_s",
        "_split",
        "_symmetric",
    )

    def __init__(
        self,
        *,
        protocol_name: str | ProtocolName,
        initiator: bool,
        prologue: BytesLike = b"",
        static_keypair: KeyPair | None = None,
        remote_static_public: BytesLike | None = None,
        psks: Sequence[BytesLike] = (),
        random_bytes: Callable[[int], bytes] | None = None,
        ephemeral_private: bytes | None = None,
    ) -> None:
        protocol = _compile(str(protocol_name))
        local, remote = (
            (protocol.initiator, protocol.responder)
            if initiator
            else (protocol.responder, protocol.initiator)
        )
        self._protocol = protocol
        self._initiator = initiator
        self._index = 0
        self._failed = False
        self._split = False
        self._s = _check_static_keypair(static_keypair, local)
        self._rs = _check_remote_static(remote_static_public, remote)
        self._re: bytes | None = None
        self._e = _ephemeral_keypair(random_bytes, ephemeral_private, local)
        self._psks = tuple(_to_bytes(psk) for psk in psks)
        self._psk_index = 0
        if len(self._psks) != protocol.psk_count:
            raise LocalProtocolError(
                f"this pattern takes {protocol.psk_count} psks, got {len(self._psks)}"
            )
        if any(len(psk) != PSK_BYTES for psk in self._psks):
            raise LocalProtocolError(f"each psk is {PSK_BYTES} bytes")

        symmetric = SymmetricState(protocol.name, protocol.hash_name)
        symmetric.mix_hash(_to_bytes(prologue))
        # Noise §5.3: the pre-message keys (only ever "s" in these patterns), initiator's first.
        local_static = None if self._s is None else self._s.public
        pre = (local_static, self._rs) if initiator else (self._rs, local_static)
        for role, key in zip((protocol.initiator, protocol.responder), pre, strict=True):
            if role.static_premessage:
                assert key is not None  # checked above
                symmetric.mix_hash(key)
        self._symmetric = symmetric

    # -- state

    @property
    def initiator(self) -> bool:
        """True on the initiator's side."""
        return self._initiator

    @property
    def complete(self) -> bool:
        """True once every handshake message has been written or read."""
        return self._index == len(self._protocol.messages)

    @property
    def our_turn(self) -> bool:
        """True when the next call must be `write_message`; False when it must be
        `read_message`, or the handshake is complete or failed."""
        if self._failed or self.complete:
            return False
        return (self._protocol.one_way or self._index % 2 == 0) == self._initiator

    @property
    def handshake_hash(self) -> bytes:
        """``h``: final once `complete` (Noise §11.2 channel binding), identical on both sides.

        Before that it is the hash of the transcript so far, which both sides also share
        after the same message.
        """
        return self._symmetric.handshake_hash

    @property
    def remote_static_public(self) -> bytes | None:
        """The peer's static public key, once the pattern has delivered or pre-shared it.

        Noise authenticates that the peer holds its private key; whether this key is one to
        trust is the caller's decision.
        """
        return self._rs

    # -- messages

    def write_message(self, payload: BytesLike = b"") -> bytes:
        """The next handshake message, carrying ``payload`` (encrypted once a key is set).

        Raises `LocalProtocolError` when it is not our turn or the message would exceed
        `MAX_MESSAGE_BYTES`; the state is then unchanged.
        """
        self._check_turn(writing=True)
        payload = _to_bytes(payload)
        protocol = self._protocol
        index = self._index
        overhead = protocol.overheads[index]
        if len(payload) + overhead > MAX_MESSAGE_BYTES:
            raise LocalProtocolError(
                f"payload of {len(payload)} bytes makes a handshake message longer than "
                f"{MAX_MESSAGE_BYTES} bytes (Noise §3); at most {MAX_MESSAGE_BYTES - overhead}"
            )
        symmetric = self._symmetric
        parts = []
        for token in protocol.messages[index]:
            if token == "e":
                assert self._e is not None  # checked by __init__
                public = self._e.public
                parts.append(public)
                symmetric.mix_hash(public)
                if protocol.psk_mode:
                    symmetric.mix_key(public)
            elif token == "s":
                assert self._s is not None  # checked by __init__
                parts.append(symmetric.encrypt_and_hash(self._s.public))
            elif token == "psk":
                symmetric.mix_key_and_hash(self._next_psk())
            else:
                symmetric.mix_key(self._dh(token))
        parts.append(symmetric.encrypt_and_hash(payload))
        self._index = index + 1
        return b"".join(parts)

    def read_message(self, message: BytesLike) -> bytes:
        """Process the peer's next handshake message and return its payload.

        Raises `HandshakeError` for anything wrong with the message, after which this
        handshake is failed and refuses further use; `LocalProtocolError` when it is not
        the peer's turn.
        """
        self._check_turn(writing=False)
        message = _to_bytes(message)
        protocol = self._protocol
        index = self._index
        size = len(message)
        try:
            if size > MAX_MESSAGE_BYTES:
                raise HandshakeError(f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES}")
            if size < protocol.overheads[index]:
                raise HandshakeError(f"message of {size} bytes is truncated")
            payload = self._read_tokens(protocol.messages[index], message)
        except HandshakeError:
            self._failed = True
            raise
        except DecryptError:
            self._failed = True
            raise HandshakeError(
                "handshake message failed authentication: tampered, or the peer used "
                "another PSK, prologue or key"
            ) from None
        self._index = index + 1
        return payload

    def _read_tokens(self, tokens: tuple[str, ...], message: bytes) -> bytes:
        symmetric = self._symmetric
        offset = 0
        for token in tokens:
            if token == "e":
                public = message[offset : offset + DH_BYTES]
                offset += DH_BYTES
                self._re = _check_remote_key(public, "ephemeral")
                symmetric.mix_hash(public)
                if self._protocol.psk_mode:
                    symmetric.mix_key(public)
            elif token == "s":
                end = offset + DH_BYTES + (TAG_BYTES if symmetric.cipher.has_key() else 0)
                public = symmetric.decrypt_and_hash(message[offset:end])
                offset = end
                self._rs = _check_remote_key(public, "static")
            elif token == "psk":
                symmetric.mix_key_and_hash(self._next_psk())
            else:
                symmetric.mix_key(self._dh(token))
        return symmetric.decrypt_and_hash(message[offset:])

    def _check_turn(self, *, writing: bool) -> None:
        if self._failed:
            raise LocalProtocolError("the handshake failed earlier and cannot continue")
        if self.complete:
            raise LocalProtocolError("the handshake is complete: use split()")
        if writing and not self.our_turn:
            raise LocalProtocolError("out of turn: the next handshake message is the peer's")
        if not writing and self.our_turn:
            raise LocalProtocolError("out of turn: the next handshake message is ours to write")

    def _next_psk(self) -> bytes:
        psk = self._psks[self._psk_index]
        self._psk_index += 1
        return psk

    def _dh(self, token: str) -> bytes:
        """The DH of a token from this side's view (Noise §5.3: es/se depend on the role)."""
        if token == "ee":
            local, remote = self._e, self._re
        elif token == "ss":
            local, remote = self._s, self._rs
        elif (token == "es") == self._initiator:
            local, remote = self._e, self._rs
        else:
            local, remote = self._s, self._re
        # The pattern table delivers every key before a token uses it; see the tests.
        assert local is not None
        assert remote is not None
        return _x25519(local.private, remote)

    def split(self) -> NoiseTransport:
        """The transport for a complete handshake (once only: two would reuse nonces)."""
        if not self.complete:
            raise LocalProtocolError("split() before the handshake is complete")
        if self._split:
            raise LocalProtocolError("split() was already called for this handshake")
        self._split = True
        initiator_to_responder, responder_to_initiator = self._symmetric.split()
        send: CipherState | None
        receive: CipherState | None
        if self._initiator:
            send, receive = initiator_to_responder, responder_to_initiator
        else:
            send, receive = responder_to_initiator, initiator_to_responder
        if self._protocol.one_way:  # Noise §5.2: the second cipher is discarded
            send, receive = (send, None) if self._initiator else (None, receive)
        return NoiseTransport(
            send_cipher=send,
            receive_cipher=receive,
            handshake_hash=self.handshake_hash,
            remote_static_public=self._rs,
        )


def _check_static_keypair(keypair: KeyPair | None, role: _Role) -> KeyPair | None:
    if role.uses_static and keypair is None:
        raise LocalProtocolError("this pattern needs static_keypair on this side")
    if not role.uses_static and keypair is not None:
        raise LocalProtocolError("this pattern has no static key on this side: drop static_keypair")
    return keypair


def _check_remote_static(public: BytesLike | None, role: _Role) -> bytes | None:
    if role.static_premessage and public is None:
        raise LocalProtocolError(
            "this pattern pre-shares the peer's key: pass remote_static_public"
        )
    if public is None:
        return None
    if not role.static_premessage:
        raise LocalProtocolError(
            "this pattern sends the peer's static key in the handshake: drop remote_static_public"
            " and compare the handshake's remote_static_public afterwards"
        )
    public = _to_bytes(public)
    if len(public) != DH_BYTES or _is_small_order(public):
        raise LocalProtocolError("remote_static_public is not a usable X25519 public key")
    return public


def _ephemeral_keypair(
    random_bytes: Callable[[int], bytes] | None, ephemeral_private: bytes | None, role: _Role
) -> KeyPair | None:
    if not role.sends_ephemeral:
        if random_bytes is not None or ephemeral_private is not None:
            raise LocalProtocolError("this side of the pattern has no ephemeral key")
        return None
    if ephemeral_private is not None:
        if random_bytes is not None:
            raise LocalProtocolError("pass random_bytes or ephemeral_private, not both")
        return KeyPair.from_private(ephemeral_private)
    if random_bytes is None:
        raise LocalProtocolError("random_bytes is required: a CSPRNG for the ephemeral key")
    return KeyPair.generate(random_bytes)


def _check_remote_key(public: bytes, which: str) -> bytes:
    if len(public) != DH_BYTES:
        raise HandshakeError(f"remote {which} key of {len(public)} bytes")
    if _is_small_order(public):
        raise HandshakeError(f"remote {which} key is a low-order point")
    return public
