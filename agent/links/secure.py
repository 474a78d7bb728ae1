"""Secure channels: a Noise XXpsk3 session (`protocol.session`) over any trio stream.

`handshake` turns a connected stream (TCP now, the simulator's streams later) into a
`SecureStream`, itself a `trio.abc.Stream`, or raises `ChannelError`: the peer proved
nothing within `HANDSHAKE_TIMEOUT_S`, sent garbage, holds another mesh secret, is not on
the allowlist, or the connection broke. The stream is closed in every failure case, so a
peer that connects and then stalls holds nothing past the timeout.

`LinkScopes` gives every live link a cancel scope registered under its peer; revoking a
node from the allowlist cancels them, which ends the links at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import NoReturn, assert_never

import trio

from blazemesh.agent.errors import AgentError
from blazemesh.agent.links.network import check_max_bytes
from blazemesh.agent.trust.identity import Identity
from blazemesh.agent.trust.membership import Mesh
from blazemesh.protocol.errors import RemoteProtocolError
from blazemesh.protocol.ids import node_id_short
from blazemesh.protocol.session import (
    Closed,
    Data,
    Established,
    IncompatibleVersionError,
    NotAllowedError,
    PeerClosedError,
    RefusedError,
    SecureSession,
    WrongSecretError,
)

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 5.0  # a peer must prove itself within this, or it is cut off
MESSAGE_RECEIVE_BYTES = 65_537  # one maximal Noise message with its length header
CLOSE_TIMEOUT_S = 1.0  # a peer that does not take the CLOSE record by then is just cut off


class ChannelError(AgentError, trio.BrokenResourceError):
    """Raised when a secure channel cannot be set up or breaks.

    ``reason`` is a short machine-readable cause: ``timeout``; ``secret`` (the peer does not
    hold the mesh secret); ``refused`` (the peer hung up on our proof: it holds another
    secret or does not admit us); ``not-allowed`` (our allowlist refuses it); ``version``;
    ``protocol`` (malformed or forged traffic); ``closed`` (the peer went away); ``broken``
    (the connection failed, or an earlier send on it was interrupted); ``evicted`` (an
    accepted connection gave its handshake slot to a newer one, `agent.links.limits`).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_REASONS: list[tuple[type[RemoteProtocolError], str]] = [
    (NotAllowedError, "not-allowed"),
    (IncompatibleVersionError, "version"),
    (WrongSecretError, "secret"),
    (RefusedError, "refused"),
    (PeerClosedError, "closed"),
]


def _reason(exc: RemoteProtocolError) -> str:
    return next((reason for kind, reason in _REASONS if isinstance(exc, kind)), "protocol")


async def handshake(
    stream: trio.abc.Stream,
    *,
    initiator: bool,
    identity: Identity,
    mesh: Mesh,
    random_bytes: Callable[[int], bytes] = os.urandom,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> SecureStream:
    """Authenticate both ends of ``stream`` and return the encrypted stream.

    On any failure ``stream`` is closed and `ChannelError` raised.
    """
    session = SecureSession(
        initiator=initiator,
        public_key=identity.public_key,
        sign=identity.sign,
        keypair=identity.noise_keypair,
        psk=mesh.secret,
        random_bytes=random_bytes,
        allows=mesh.allows,
    )
    received: list[bytes] = []
    try:
        with trio.fail_after(timeout_s):
            peer = await _run_handshake(stream, session, received)
    except BaseException as exc:
        await trio.aclose_forcefully(stream)
        _reraise(exc, "the handshake")
    return SecureStream(stream, session, peer, received)


async def _run_handshake(
    stream: trio.abc.Stream, session: SecureSession, received: list[bytes]
) -> Established:
    peer: Established | None = None
    while True:
        out = session.data_to_send()
        if out:
            await stream.send_all(out)
        if peer is not None:
            return peer
        data = await stream.receive_some(MESSAGE_RECEIVE_BYTES)
        session.receive_data(data)
        while (event := session.next_event()) is not None:
            match event:
                case Established():
                    peer = event
                case Data():
                    received.append(event.data)  # arrived with the last handshake message
                case Closed():
                    raise ChannelError("the peer closed during the handshake", reason="closed")
                case _:
                    assert_never(event)


def _reraise(exc: BaseException, during: str) -> NoReturn:
    """Raise ``exc`` as a `ChannelError` if it is a channel failure, else as itself."""
    if isinstance(exc, trio.TooSlowError):
        raise ChannelError(f"{during} timed out", reason="timeout") from exc
    if isinstance(exc, RemoteProtocolError):
        raise ChannelError(f"{during} failed: {exc}", reason=_reason(exc)) from exc
    if isinstance(exc, ChannelError) or not isinstance(
        exc, trio.BrokenResourceError | trio.ClosedResourceError | OSError
    ):
        raise exc
    raise ChannelError(f"the connection broke during {during}: {exc}", reason="broken") from exc


class SecureStream(trio.abc.Stream):
    """An established secure channel to ``peer``: a byte stream, encrypted and authenticated.

    One task may send and one may receive at a time, as for any trio stream. A send that
    is interrupted (cancelled, timed out, failed) once its records are encrypted may have
    written none, some or all of their bytes: the peer can no longer read a record sent
    after them (its nonce or its framing would be off), so the stream sends nothing more,
    and `aclose` closes the connection without a CLOSE record. The peer then sees the
    connection end without a close, which is what happened, instead of a record that
    fails authentication, which reads as an attack. (trio's SSLStream does the same.)

    Errors are trio's (`trio.testing.check_two_way_stream` passes): a channel that fails
    raises `ChannelError`, a `trio.BrokenResourceError`; a call after `aclose`, or a
    receive that `aclose` interrupts, raises `trio.ClosedResourceError`.
    """

    def __init__(
        self,
        transport: trio.abc.Stream,
        session: SecureSession,
        peer: Established,
        received: list[bytes],
    ) -> None:
        self._transport = transport
        self._session = session
        self.peer = peer
        self._pending = bytearray(b"".join(received))
        self._eof = False
        self._closed = False  # `aclose` was called
        self._send_broken = False  # an interrupted send left the wire mid-record
        self._send_busy = False
        self._receive_busy = False

    @property
    def peer_id(self) -> bytes:
        return self.peer.node_id

    def __repr__(self) -> str:
        return f"<SecureStream to {node_id_short(self.peer_id)}>"

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_busy:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._check_open()
        self._send_busy = True
        try:
            if self._send_broken:
                raise ChannelError(
                    f"the channel to {node_id_short(self.peer_id)} broke: an earlier send "
                    "was interrupted",
                    reason="broken",
                )
            if not self._session.established:
                raise ChannelError(
                    f"the channel to {node_id_short(self.peer_id)} is closed", reason="closed"
                )
            # A send cancelled before it starts leaves the session as it was.
            await trio.lowlevel.checkpoint_if_cancelled()
            self._session.send(bytes(data))
            await self._write(self._session.data_to_send())
        except BaseException as exc:
            self._failed(exc, "sending")
        finally:
            self._send_busy = False

    async def _write(self, records: bytes) -> None:
        """Write encrypted ``records`` whole, or mark the stream broken."""
        try:
            await self._transport.send_all(records)
        except BaseException:
            self._send_broken = True
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"{self!r} is closed")

    def _failed(self, exc: BaseException, during: str) -> NoReturn:
        if self._closed and not isinstance(exc, trio.Cancelled):
            # `aclose`, from another task, closed the transport under this call.
            raise trio.ClosedResourceError(f"{self!r} was closed") from exc
        _reraise(exc, during)

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await self._transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        max_bytes = check_max_bytes(max_bytes)
        if self._receive_busy:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._check_open()
        self._receive_busy = True
        try:
            while not self._pending and not self._eof:
                await self._fill()
            if max_bytes is None or max_bytes >= len(self._pending):
                out = bytes(self._pending)
                self._pending.clear()
            else:
                out = bytes(self._pending[:max_bytes])
                del self._pending[:max_bytes]
            if not out:
                await trio.lowlevel.checkpoint()
            return out
        except BaseException as exc:
            self._failed(exc, "receiving")
        finally:
            self._receive_busy = False

    async def _fill(self) -> None:
        self._session.receive_data(await self._transport.receive_some(MESSAGE_RECEIVE_BYTES))
        while (event := self._session.next_event()) is not None:
            match event:
                case Data():
                    self._pending += event.data
                case Closed():
                    if not event.clean:
                        raise ChannelError(
                            f"the connection to {node_id_short(self.peer_id)} ended without a "
                            "close (the peer stopped, or dropped the link in the middle of a "
                            "send)",
                            reason="closed",
                        )
                    self._eof = True
                case Established():
                    raise AssertionError("a session is established once, by its handshake")
                case _:
                    assert_never(event)

    async def aclose(self) -> None:
        """Send a clean close if the session is still open and no send was interrupted,
        then close the connection."""
        self._closed = True
        try:
            if self._session.established and not self._send_broken and not self._send_busy:
                self._session.close()
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await self._write(self._session.data_to_send())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer is gone already; closing is all that is left
        finally:
            await self._transport.aclose()


class LinkScopes:
    """Cancel scopes of live links, by peer: a node the mesh stops admitting (revoked, or
    a new secret it may not hold) loses its links at once."""

    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh
        self._secret = mesh.secret
        self._scopes: dict[bytes, set[trio.CancelScope]] = {}
        self._stop = mesh.on_change(self._mesh_changed)

    @contextlib.contextmanager
    def link(self, node_id: bytes) -> Iterator[trio.CancelScope]:
        """Run a link's work inside the block: it is cancelled if ``node_id`` loses access."""
        scope = trio.CancelScope()
        scopes = self._scopes.setdefault(node_id, set())
        scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            scopes.discard(scope)
            if not scopes:
                del self._scopes[node_id]

    def _mesh_changed(self) -> None:
        rotated, self._secret = self._secret != self._mesh.secret, self._mesh.secret
        for node_id, scopes in self._scopes.items():
            if rotated or not self._mesh.allows(node_id):
                why = "the mesh secret changed" if rotated else "no longer trusted"
                log.info("dropping link to %s: %s", node_id_short(node_id), why)
                for scope in scopes:
                    scope.cancel()

    def close(self) -> None:
        self._stop()
