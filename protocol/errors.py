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


class ChangeRefusedError(RemoteProtocolError):
    """Raised, as the outcome of one remote change, when a rule refuses that change: the
    link carries on, the peer is told why (REFUSED), and offers it again later.
    ``reason`` names the rule on the wire (docs/protocol.md, section 8.3)."""

    reason = "invalid"


class ClockSkewError(ChangeRefusedError):
    """Raised when a remote HLC stamp is further ahead of local time than the allowed skew."""

    reason = "clock"


class OwnOriginError(ChangeRefusedError):
    """Raised for a remote change under this node's own id that this node does not hold:
    only the node itself makes changes under its id."""

    reason = "own-origin"


class GapLimitError(ChangeRefusedError):
    """Raised for a remote change that would leave an origin with more gaps (runs of
    changes held apart from the rest) than a node holds."""

    reason = "gaps"


class OriginLimitError(ChangeRefusedError):
    """Raised for a remote change from a new origin when a node holds changes of as many
    origins as it keeps."""

    reason = "origins"


class VersionLimitError(ChangeRefusedError):
    """Raised for another version of a change held (the same dot, other contents) when a
    node holds as many versions of that dot, or in all, as it keeps."""

    reason = "versions"


class HandshakeError(RemoteProtocolError):
    """Raised when a Noise handshake fails: bad key, bad PSK, tampered or out-of-turn message."""
