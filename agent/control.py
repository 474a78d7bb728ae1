"""The control socket: a running agent's local API, on a Unix socket in its data directory.

The socket is ``DATA_DIR/agent.sock``, mode 0600 inside the 0700 data directory, so only
the user who runs the agent can reach it. Frames and the request/reply rules are in
`protocol.codec.control`; the operations are `agent.api.Operations`; docs/api.md, "The
control socket", is the reference. A client must say ``hello`` first. Requests on one
connection run concurrently (up to `MAX_REQUESTS_PER_CONNECTION`) and their replies may
come in any order; a client that sends a malformed frame gets one ``malformed`` error
and is disconnected. Nothing a client sends can stop the agent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

import trio

from agent.api import NoAgentError, Operations, RequestError, arg
from agent.errors import AgentError, ConfigError
from protocol.codec.control import (
    CONTROL_VERSION,
    Event,
    Failure,
    Reply,
    Request,
    RequestDecoder,
    Result,
    encode_frame,
)
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.ids import node_id_text
from protocol.model import Value

log = logging.getLogger(__name__)

MAX_CLIENTS = 64  # connections served at once; more wait to be accepted
MAX_REQUESTS_PER_CONNECTION = 32  # requests running per connection; the reader waits beyond
HELLO_TIMEOUT_S = 10.0  # a client that says nothing is closed after this long
MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes on Linux, including the final NUL
RECEIVE_BYTES = 1 << 16


async def serve(
    path: Path, ops: Operations, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``ops`` on the control socket at ``path`` until cancelled; remove it on the
    way out."""
    sock = await _bind(path)
    clients = trio.Semaphore(MAX_CLIENTS)
    try:
        async with trio.SocketListener(sock) as listener, trio.open_nursery() as nursery:
            log.info("control socket at %s", path)
            task_status.started()
            while True:
                await clients.acquire()
                stream = await listener.accept()
                nursery.start_soon(_client, stream, ops, clients)
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


async def _client(stream: trio.SocketStream, ops: Operations, slot: trio.Semaphore) -> None:
    try:
        async with stream:
            await _Connection(stream, ops).run()
    except trio.BrokenResourceError:
        log.debug("a control client went away mid-reply")
    finally:
        slot.release()


class _Connection:
    def __init__(self, stream: trio.SocketStream, ops: Operations) -> None:
        self._stream = stream
        self._ops = ops
        self._send_lock = trio.Lock()
        self._slots = trio.Semaphore(MAX_REQUESTS_PER_CONNECTION)
        self._streams: dict[int, trio.CancelScope] = {}

    async def run(self) -> None:
        decoder = RequestDecoder()
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(HELLO_TIMEOUT_S):
                    hello = await self._first(decoder)
                if hello is None or not await self._hello(hello):
                    return
                for request in decoder:  # frames that came along with the hello
                    await self._start(nursery, request)
                while data := await self._stream.receive_some(RECEIVE_BYTES):
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
            data = await self._stream.receive_some(RECEIVE_BYTES)
            if not data:
                return None
            decoder.feed(data)

    async def _hello(self, request: Request) -> bool:
        if request.op != "hello":
            await self._send(
                Failure(id=request.id, code="hello-required", message="say hello first")
            )
            return False
        version = request.args.get("version")
        if version != CONTROL_VERSION:
            await self._send(
                Failure(
                    id=request.id,
                    code="version",
                    message=f"this agent speaks control version {CONTROL_VERSION}, not {version!r}",
                )
            )
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

    async def _start(self, nursery: trio.Nursery, request: Request) -> None:
        await self._slots.acquire()
        nursery.start_soon(self._handle, request)

    async def _handle(self, request: Request) -> None:
        try:
            if request.op == "cancel":
                target = arg(request.args, "id", int)
                scope = self._streams.get(target)
                if scope is not None:
                    scope.cancel()
                reply: Reply = Result(id=request.id, value=scope is not None)
            elif request.op in self._ops.streams:
                reply = await self._run_stream(request)
            else:
                reply = Result(id=request.id, value=await self._ops.call(request.op, request.args))
        except Exception as exc:  # every failure of one request is that request's reply
            reply = _failure(request, exc)
        finally:
            self._slots.release()
        await self._send(reply)

    async def _run_stream(self, request: Request) -> Reply:
        if request.id in self._streams:
            raise RequestError(f"request id {request.id} is already in use by a stream")
        with trio.CancelScope() as scope:
            self._streams[request.id] = scope
            try:
                events = self._ops.stream(request.op, request.args)
                async with contextlib.aclosing(events):
                    async for event in events:
                        await self._send(Event(id=request.id, value=event))
            finally:
                del self._streams[request.id]
        return Result(id=request.id, value="cancelled" if scope.cancelled_caught else "ended")

    async def _send(self, reply: Reply) -> None:
        try:
            data = encode_frame(reply)
        except ValueError as exc:  # a result larger than a frame
            data = encode_frame(Failure(id=reply.id, code="too-large", message=str(exc)))
        async with self._send_lock:
            await self._stream.send_all(data)


def _failure(request: Request, exc: Exception) -> Failure:
    code = "failed"
    if isinstance(exc, RequestError | NoAgentError):
        code = exc.code
    elif isinstance(exc, LocalProtocolError | RemoteProtocolError):
        code = "invalid"
    elif not isinstance(exc, AgentError):
        log.error("control request %r failed", request.op, exc_info=exc)
        return Failure(id=request.id, code="internal", message=f"internal error: {exc!r}")
    return Failure(id=request.id, code=code, message=str(exc))
