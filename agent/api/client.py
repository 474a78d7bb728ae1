"""Reaching a node's data: through its running agent, or in-process when none runs.

`open_session` is what the CLI uses: it connects to the agent's control socket if an
agent serves the data directory, and otherwise opens the replica itself, behind the same
two methods. `AgentClient` is a small sequential client of the control socket for Python
programs on the device (docs/api.md, "The control socket").
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

from blazemesh.agent.errors import AgentError
from blazemesh.agent.links.network import RECEIVE_BYTES
from blazemesh.agent.storage.paths import CONTROL_SOCKET
from blazemesh.agent.storage.store import Durability
from blazemesh.protocol.codec.control import (
    CONTROL_VERSION,
    Failure,
    ReplyDecoder,
    Request,
    Result,
    StreamEvent,
    encode_frame,
)
from blazemesh.protocol.errors import RemoteProtocolError
from blazemesh.protocol.model import Value

if TYPE_CHECKING:
    from blazemesh.agent.api.operations import Operations

_NO_AGENT = (errno.ENOENT, errno.ECONNREFUSED)


class AgentCallError(AgentError):
    """Raised when the agent answers a request with an error; ``code`` says which kind."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Session(Protocol):
    """What a command needs: calls and streams of the local API (`agent.api.operations`).

    Results are msgpack values whose shape each operation documents, hence ``Any``.
    """

    async def call(self, op: str, args: Mapping[str, Value]) -> Any: ...

    def stream(self, op: str, args: Mapping[str, Value]) -> AsyncIterator[Any]: ...


class AgentClient:
    """One connection to a running agent. Requests run one at a time, in order."""

    def __init__(self, stream: trio.SocketStream, hello: Mapping[str, Value]) -> None:
        self._stream = stream
        self._decoder = ReplyDecoder()
        self._next_id = 1
        self._lock = trio.Lock()
        self.hello = hello

    @classmethod
    async def connect(cls, data_dir: Path, *, client: str = "python") -> AgentClient | None:
        """Connect and say hello; None if no agent serves ``data_dir``."""
        try:
            stream = await trio.open_unix_socket(os.fspath(data_dir / CONTROL_SOCKET))
        except OSError as exc:
            if exc.errno in _NO_AGENT:
                return None
            raise AgentError(f"cannot reach the agent of {data_dir}: {exc.strerror}") from None
        self = cls(stream, {})
        try:
            hello = await self.call("hello", {"version": CONTROL_VERSION, "client": client})
        except BaseException:
            await stream.aclose()
            raise
        assert isinstance(hello, dict)
        self.hello = hello
        return self

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def call(self, op: str, args: Mapping[str, Value]) -> Any:
        """Send one request and return its result; raise `AgentCallError` for its error."""
        async with self._lock:
            request_id = await self._send(op, args)
            reply = await self._reply()
            return _result(request_id, reply)

    async def stream(self, op: str, args: Mapping[str, Value]) -> AsyncGenerator[Any, None]:
        """Open a stream and yield its events; the connection serves nothing else meanwhile."""
        async with self._lock:
            request_id = await self._send(op, args)
            while True:
                reply = await self._reply()
                if isinstance(reply, StreamEvent) and reply.id == request_id:
                    yield reply.value
                else:
                    _result(request_id, reply)
                    return

    async def _send(self, op: str, args: Mapping[str, Value]) -> int:
        request_id, self._next_id = self._next_id, self._next_id + 1
        try:
            frame = encode_frame(Request(id=request_id, op=op, args=dict(args)))
        except (ValueError, TypeError, OverflowError) as exc:
            # msgpack's refusals (an integer past 64 bits, a lone surrogate, a value too
            # deep or too large for one frame): a mistake in the request, nothing sent.
            raise AgentError(f"cannot send {op!r} to the agent: {exc}") from None
        try:
            await self._stream.send_all(frame)
        except trio.BrokenResourceError as exc:
            raise AgentError(f"lost the connection to the agent: {exc}") from None
        return request_id

    async def _reply(self) -> Result | Failure | StreamEvent:
        try:
            while True:
                for reply in self._decoder:
                    return reply
                data = await self._stream.receive_some(RECEIVE_BYTES)
                if not data:
                    raise AgentError(
                        "the agent closed the connection: it stopped, or it closed this "
                        "idle connection to serve other clients"
                    )
                self._decoder.feed(data)
        except trio.BrokenResourceError as exc:
            raise AgentError(f"lost the connection to the agent: {exc}") from None
        except RemoteProtocolError as exc:
            raise AgentError(f"the agent sent a malformed reply: {exc}") from None


def _result(request_id: int, reply: Result | Failure | StreamEvent) -> Value:
    if isinstance(reply, Failure):
        raise AgentCallError(reply.code, reply.message)
    if isinstance(reply, StreamEvent) or reply.id != request_id:
        raise AgentError(f"the agent answered request {reply.id}, not {request_id}")
    return reply.value


class LocalSession:
    """The API in this process, on a replica it opened (no agent runs)."""

    def __init__(self, ops: Operations) -> None:
        self._ops = ops

    async def call(self, op: str, args: Mapping[str, Value]) -> Any:
        return await self._ops.call(op, args)

    def stream(self, op: str, args: Mapping[str, Value]) -> AsyncIterator[Any]:
        return self._ops.stream(op, args)


@contextlib.asynccontextmanager
async def open_session(
    data_dir: Path, *, durability: Durability = Durability.NORMAL
) -> AsyncIterator[Session]:
    """The running agent of ``data_dir`` if there is one, else the replica opened here.

    ``durability`` applies only to a replica opened here; an agent writes with its own.
    """
    client = await AgentClient.connect(data_dir, client="blazemesh-cli")
    if client is not None:
        try:
            yield client
        finally:
            await client.aclose()
        return
    # Loaded only now: a command that reaches the agent never needs the replica and the
    # node's operations, and starts in half the time without them (docs/performance.md).
    from blazemesh.agent.api.operations import Operations
    from blazemesh.agent.storage.replica import open_replica

    async with open_replica(data_dir, durability=durability) as replica:
        yield LocalSession(Operations(replica))
