"""The exceptions of the protocol package.

Two families, as in h11: `LocalProtocolError` when this side misuses the API (an invalid
write, a message sent out of turn) and `RemoteProtocolError` when a peer misbehaves. Any
bytes a peer can send turn into a `RemoteProtocolError` subtype and nothing else.
"""


class ProtocolError(Exception):
    """Base class of every exception raised by the protocol package."""


class LocalProtocolError(ProtocolError):
    """Raised when the caller misuses an API: the bug or the bad input is on this side."""


class RemoteProtocolError(ProtocolError):
    """Raised when a peer sent something malformed, out of bounds or out of turn."""


class ValidationError(LocalProtocolError):
    """Raised when a local write breaks a data-model rule; the message names the offending part."""


class InvalidRemoteDataError(RemoteProtocolError):
    """Raised when a peer's decoded data breaks a data-model rule (names, values, limits)."""


class DecodeError(RemoteProtocolError):
    """Raised when bytes from a peer are not a well-formed, in-bounds encoding."""


class ClockSkewError(RemoteProtocolError):
    """Raised when a remote HLC stamp is further ahead of local time than the allowed skew."""


class HandshakeError(RemoteProtocolError):
    """Raised when a Noise handshake fails: bad key, bad PSK, tampered or out-of-turn message."""
