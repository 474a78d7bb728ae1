"""The control socket: a running agent's local API, on a Unix socket in its data directory.

The socket is ``DATA_DIR/agent.sock``, mode 0600 inside the 0700 data directory, so only
the user who runs the agent can reach it. Frames and the request/reply rules are in
`protocol.codec.control`; the operations are `agent.api.operations.Operations`; docs/api.md, "The
control socket", is the reference. A client must say ``hello`` first. Requests on one
connection run concurrently (up to `MAX_REQUESTS_PER_CONNECTION`) and their replies may
come in any order; a client that sends a malformed frame gets one ``malformed`` error
and is disconnected. Nothing a client sends can stop the agent: whatever ends a session
(the client hangs up, in any of its tasks, or a bug) ends that session alone.

At most `MAX_CLIENTS` sessions run at once. A new client beyond that displaces the one
idle longest (no request running), so idle connections never keep the CLI out; if every
session has a request running, the new client is told ``busy``.

The socket is served as soon as the node is up, but until the agent is ready
(`Operations.ready`: its static peers caught up with, `agent.service`) it answers
``hello``, ``health`` and ``cancel`` alone and holds every other request: a client that
connects to a starting agent is served once it is ready, never before.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import trio

from blazemesh.agent.api.operations import Operations, RequestError, arg
from blazemesh.agent.errors import AgentError, ConfigError
from blazemesh.agent.links.network import RECEIVE_BYTES, Acceptor
from blazemesh.protocol.codec.control import (
    CONTROL_VERSION,
    Failure,
    Reply,
    Request,
    RequestDecoder,
    Result,
    StreamEvent,
    encode_frame,
)
from blazemesh.protocol.errors import LocalProtocolError, RemoteProtocolError
from blazemesh.protocol.ids import node_id_text
from blazemesh.protocol.model import Value

log = logging.getLogger(__name__)

MAX_CLIENTS = 64  # sessions served at once; a new client displaces the longest-idle one
# New clients told "busy" at once, when every session has a request running: each waits
# at most HELLO_TIMEOUT_S for its hello; past this many the accept loop waits for them.
MAX_REFUSING = 8
MAX_REQUESTS_PER_CONNECTION = 32  # requests running per connection; the reader waits beyond
HELLO_TIMEOUT_S = 10.0  # a client that says nothing is closed after this long
# A reply the client takes none of for this long ends its session: it reads nothing (a
# `watch` reader stalled this long, a client gone quiet) and would hold it for good.
SEND_TIMEOUT_S = 30.0
MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes on Linux, including the final NUL
# Answered while the agent starts; every other request waits until it is ready
# (`Operations.ready`), so that a command never sees a node that has not caught up yet.
ANSWERED_WHILE_STARTING = frozenset({"health"})


class _ClientGoneError(Exception):
    """Raised inside a session when its client's connection broke: it ends that session."""


async def serve(
    path: Path, ops: Operations, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``ops`` on the control socket at ``path`` until cancelled; remove it on the
    way out."""
    sock = await _bind(path)
    clients = _Clients()
    refusing = trio.Semaphore(MAX_REFUSING)
    try:
        async with trio.SocketListener(sock) as listener, trio.open_nursery() as nursery:
            log.info("control socket at %s", path)
            task_status.started()
            acceptor = Acceptor(listener, "control socket")
            while True:
                connection = _Connection(await acceptor.accept(), ops)
                done: Callable[[], None]
                if clients.admit(connection):
                    done = functools.partial(clients.leave, connection)
                else:
                    connection.refuse()
                    await refusing.acquire()
                    done = refusing.release
                nursery.start_soon(_client, connection, done)
    finally:
        with trio.CancelScope(shield=True):
            await trio.Path(path).unlink(missing_ok=True)


async def _bind(path: Path) -> trio.socket.SocketType:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"the data directory path is too long for a Unix socket ({path}): "
            f"keep it under {MAX_SOCKET_PATH_BYTES - 10} bytes"
        )
    # A socket file left by an agent that died is stale: the data-directory lock, held by
    # this process, says no other agent is running.
    await trio.Path(path).unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
        await trio.Path(path).chmod(0o600)
        sock.listen(MAX_CLIENTS)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot create the control socket {path}: {exc.strerror}") from None
    return sock


async def _client(connection: _Connection, done: Callable[[], None]) -> None:
    """Run one client's session; whatever ends it, ends only it."""
    try:
        await connection.run()
    except* _ClientGoneError:
        log.debug("a control client went away before its session ended")
    except* Exception as group:  # a bug must not cost the other clients their agent
        log.error("a control client's session failed", exc_info=group)
    finally:
        done()


class _Clients:
    """The sessions being served; when all `MAX_CLIENTS` are taken, a new client takes
    the place of the one that has been idle longest (no request running: a `watch` that
    runs is not idle)."""

    def __init__(self) -> None:
        self._live: set[_Connection] = set()

    def admit(self, connection: _Connection) -> bool:
        """Count ``connection`` in, making room if need be; False if every session is busy."""
        if len(self._live) >= MAX_CLIENTS:
            idle = [c for c in self._live if c.idle]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c.last_active)
            log.debug("%d control clients: closing the one idle longest", MAX_CLIENTS)
            oldest.close()
            self._live.discard(oldest)
        self._live.add(connection)
        return True

    def leave(self, connection: _Connection) -> None:
        self._live.discard(connection)


class _Connection:
    def __init__(self, stream: trio.SocketStream, ops: Operations) -> None:
        self._stream = stream
        self._ops = ops
        self._send_lock = trio.Lock()
        self._slots = trio.Semaphore(MAX_REQUESTS_PER_CONNECTION)
        self._streams: dict[int, trio.CancelScope] = {}
        self._scope = trio.CancelScope()
        self._refused = False
        self._cut = False  # a reply was cut short: nothing more may follow it (see `_send`)
        self._running = 0  # requests started and not yet answered, streams included
        self.last_active = trio.current_time()  # of the last frame received or reply sent

    @property
    def idle(self) -> bool:
        return not self._running

    def close(self) -> None:
        """End this session: whatever it runs is cancelled and the connection closed."""
        self._scope.cancel()

    def refuse(self) -> None:
        """Answer this client's hello with ``busy``, then close."""
        self._refused = True

    async def run(self) -> None:
        with self._scope:
            async with self._stream:
                await self._serve()

    async def _serve(self) -> None:
        decoder = RequestDecoder()
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(HELLO_TIMEOUT_S):
                    hello = await self._first(decoder)
                if hello is None or not await self._hello(hello):
                    return
                for request in decoder:  # frames that came along with the hello
                    await self._start(nursery, request)
                while data := await self._receive():
                    decoder.feed(data)
                    for request in decoder:
                        await self._start(nursery, request)
            except RemoteProtocolError as exc:
                log.warning("control client sent a malformed frame (%s): disconnecting it", exc)
                await self._send(Failure(id=0, code="malformed", message=str(exc)))
            except trio.TooSlowError:
                log.info(
                    "control client said nothing for %.0f s: disconnecting it", HELLO_TIMEOUT_S
                )
            finally:
                nursery.cancel_scope.cancel()  # the client is gone: stop what it started

    async def _first(self, decoder: RequestDecoder) -> Request | None:
        while True:
            for request in decoder:
                return request
            data = await self._receive()
            if not data:
                return None
            decoder.feed(data)

    async def _receive(self) -> bytes:
        try:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        except trio.BrokenResourceError as exc:
            raise _ClientGoneError(str(exc)) from exc
        self.last_active = trio.current_time()
        return bytes(data)

    async def _hello(self, request: Request) -> bool:
        refusal = self._refusal(request)
        if refusal is not None:
            code, message = refusal
            await self._send(Failure(id=request.id, code=code, message=message))
            return False
        replica = self._ops.replica
        value: Value = {
            "version": CONTROL_VERSION,
            "node_id": node_id_text(replica.node_id),
            "ops": [*sorted(self._ops.calls)],
            "streams": [*sorted(self._ops.streams)],
        }
        await self._send(Result(id=request.id, value=value))
        return True

    def _refusal(self, first: Request) -> tuple[str, str] | None:
        """Why a client whose first request is ``first`` is not served: (code, message)."""
        if self._refused:
            log.info(
                "all %d control clients have a request running: telling a new one to retry",
                MAX_CLIENTS,
            )
            return "busy", f"the agent is busy serving {MAX_CLIENTS} clients: try again later"
        if first.op != "hello":
            return "hello-required", "say hello first"
        version = first.args.get("version")
        if version != CONTROL_VERSION:
            return (
                "version",
                f"this agent speaks control version {CONTROL_VERSION}, not {version!r}",
            )
        return None

    async def _start(self, nursery: trio.Nursery, request: Request) -> None:
        await self._slots.acquire()
        self._running += 1
        nursery.start_soon(self._handle, request)

    async def _handle(self, request: Request) -> None:
        try:
            await self._send(await self._reply(request))
        finally:
            self._running -= 1
            self._slots.release()

    async def _reply(self, request: Request) -> Reply:
        try:
            if request.op == "cancel":
                target = arg(request.args, "id", int)
                scope = self._streams.get(target)
                if scope is not None:
                    scope.cancel()
                reply: Reply = Result(id=request.id, value=scope is not None)
            else:
                if request.op not in ANSWERED_WHILE_STARTING:
                    await self._ops.ready.wait()
                if request.op in self._ops.streams:
                    reply = await self._run_stream(request)
                else:
                    value = await self._ops.call(request.op, request.args)
                    reply = Result(id=request.id, value=value)
        except _ClientGoneError:
            raise  # a stream's client went away: that ends the session, not just the request
        except Exception as exc:  # every failure of one request is that request's reply
            reply = _failure(request, exc)
        return reply

    async def _run_stream(self, request: Request) -> Reply:
        if request.id in self._streams:
            raise RequestError(f"request id {request.id} is already in use by a stream")
        with trio.CancelScope() as scope:
            self._streams[request.id] = scope
            try:
                events = self._ops.stream(request.op, request.args)
                async with contextlib.aclosing(events):
                    async for event in events:
                        await self._send(StreamEvent(id=request.id, value=event))
            finally:
                del self._streams[request.id]
        return Result(id=request.id, value="cancelled" if scope.cancelled_caught else "ended")

    async def _send(self, reply: Reply) -> None:
        try:
            data = encode_frame(reply)
        except ValueError as exc:  # a result larger than a frame
            data = encode_frame(Failure(id=reply.id, code="too-large", message=str(exc)))
        async with self._send_lock:
            if self._cut:
                raise _ClientGoneError("a reply to this client was cut short")
            try:
                with trio.fail_after(SEND_TIMEOUT_S):
                    await self._stream.send_all(data)
            except trio.BrokenResourceError as exc:
                raise _ClientGoneError(str(exc)) from exc
            except trio.TooSlowError:
                self._cut = True
                log.info("control client read nothing for %.0f s: closing it", SEND_TIMEOUT_S)
                raise _ClientGoneError("the client reads nothing") from None
            except BaseException:
                # Cancelled (a `cancel` of its stream, say) with part of the frame sent:
                # another frame after it would garble the client's framing.
                self._cut = True
                raise
        self.last_active = trio.current_time()


def _failure(request: Request, exc: Exception) -> Failure:
    if isinstance(exc, AgentError):
        code = exc.code
    elif isinstance(exc, LocalProtocolError | RemoteProtocolError):
        code = "invalid"
    else:
        log.error("control request %r failed", request.op, exc_info=exc)
        return Failure(id=request.id, code="internal", message=f"internal error: {exc!r}")
    return Failure(id=request.id, code=code, message=str(exc))
