"""Reaching a node's data: through its running agent, or in-process when none runs.

`open_session` is what the CLI uses: it connects to the agent's control socket if an
agent serves the data directory, and otherwise opens the replica itself, behind the same
two methods. `AgentClient` is a small sequential client of the control socket for Python
programs on the device (docs/api.md, "The control socket").

An agent holds the data directory before it serves its socket (it opens the replica,
listens, then serves). A command that finds the directory held and no socket answering
waits for the holder to serve or to let go (`reach_agent`, at most `AGENT_START_WAIT_S`),
rather than failing on an agent that is starting; `wait_ready` waits for an agent to
start and be ready (`blazemesh wait-ready`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from blazemesh.agent.errors import AgentError, DataDirLockedError
from blazemesh.agent.links.network import RECEIVE_BYTES
from blazemesh.agent.storage.paths import CONTROL_SOCKET, check_data_dir, lock_data_dir
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
# How long a command waits for the process holding the data directory to serve its
# control socket or let go: an agent starts in well under a second, and is ready at most
# `agent.service.READY_PEERS_WAIT_S` later.
AGENT_START_WAIT_S = 10.0
# Nothing tells another process that a socket appeared or a lock was let go: look this
# often, a small part of what a command takes to start.
AGENT_POLL_S = 0.05
LAST_LOOK_S = 1.0  # `wait_ready`, timed out, asks the agent (if one answers) what holds it

T = TypeVar("T")


class AgentNotReadyError(AgentError):
    """Raised when no agent became ready in time: the message says what was found."""

    code = "not-ready"


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
    """The running agent of ``data_dir`` if there is one (waiting for one that is
    starting, `reach_agent`), else the replica opened here.

    ``durability`` applies only to a replica opened here; an agent writes with its own.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def here() -> LocalSession:
            # Loaded only now: a command that reaches the agent never needs the replica
            # and the node's operations, and starts in half the time without them
            # (docs/performance.md).
            from blazemesh.agent.api.operations import Operations
            from blazemesh.agent.storage.replica import open_replica

            replica = await stack.enter_async_context(open_replica(data_dir, durability=durability))
            return LocalSession(Operations(replica))

        session = await reach_agent(data_dir, here)
        if isinstance(session, AgentClient):
            stack.push_async_callback(session.aclose)
        yield session


async def reach_agent(data_dir: Path, no_agent: Callable[[], Awaitable[T]]) -> AgentClient | T:
    """A client of the agent that serves ``data_dir``, or ``await no_agent()`` if none does.

    ``no_agent`` raises `DataDirLockedError` when another process holds the directory
    (`no_agent_holds` does only that). That process may be an agent that is starting:
    this waits for it to serve or let go, and raises `AgentNotReadyError`, naming it, if
    it has done neither within `AGENT_START_WAIT_S`.
    """
    deadline = trio.current_time() + AGENT_START_WAIT_S
    while True:
        client = await AgentClient.connect(data_dir, client="blazemesh-cli")
        if client is not None:
            return client
        try:
            return await no_agent()
        except DataDirLockedError as exc:
            if trio.current_time() >= deadline:
                raise AgentNotReadyError(_held_too_long(exc, AGENT_START_WAIT_S)) from None
        await trio.sleep(AGENT_POLL_S)


async def no_agent_holds(data_dir: Path) -> None:
    """Return if no process holds ``data_dir``; else raise `DataDirLockedError`."""

    def probe() -> None:
        with lock_data_dir(data_dir):
            pass

    await trio.to_thread.run_sync(probe)


def _held_too_long(exc: DataDirLockedError, waited_s: float) -> str:
    return (
        f"{exc}; it has not served its control socket in {waited_s:g} s: an agent that "
        "is still starting (its log says why; `blazemesh wait-ready --timeout SECONDS` "
        "waits longer), or a command still running"
    )


async def wait_ready(data_dir: Path, *, timeout_s: float) -> dict[str, Any]:
    """The ``health`` of the agent of ``data_dir`` once it is ready, waiting up to
    ``timeout_s`` for one to start and be ready; else `AgentNotReadyError`, saying what
    it found. A missing or unusable data directory is a `ConfigError` at once."""
    await trio.to_thread.run_sync(check_data_dir, data_dir)
    with trio.move_on_after(timeout_s):
        while (health := await _health(data_dir, wait=True)) is None:  # noqa: ASYNC110
            await trio.sleep(AGENT_POLL_S)
        return health
    with trio.move_on_after(LAST_LOOK_S):
        health = await _health(data_dir, wait=False)
    if health is not None and health["ready"]:
        return health
    raise AgentNotReadyError(await _not_ready(data_dir, timeout_s, health))


async def _health(data_dir: Path, *, wait: bool) -> dict[str, Any] | None:
    """The agent's ``health`` (once it is ready, with ``wait``); None if no agent serves."""
    client = await AgentClient.connect(data_dir, client="blazemesh-cli")
    if client is None:
        return None
    try:
        health: dict[str, Any] = await client.call("health", {"wait": wait})
        return health
    finally:
        await client.aclose()


async def _not_ready(data_dir: Path, waited_s: float, health: dict[str, Any] | None) -> str:
    """Why no agent of ``data_dir`` was ready after ``waited_s``, given its last ``health``."""
    if health is not None:
        behind = not_in_sync(health["static_peers"]) or "its static peers"
        return (
            f"the agent of {data_dir} is not ready after {waited_s:g} s: "
            f"not yet in sync with {behind}"
        )
    try:
        await no_agent_holds(data_dir)
    except DataDirLockedError as exc:
        return _held_too_long(exc, waited_s)
    return (
        f"no agent runs on {data_dir} (waited {waited_s:g} s): start one with "
        f"`blazemesh agent --data-dir {data_dir}`"
    )


def not_in_sync(static_peers: list[dict[str, Any]]) -> str:
    """The static peers (as ``health`` gives them) not in sync, each with why; "" if none."""
    return ", ".join(
        f"{peer['address']} ({peer['last_error'] or 'catching up'})"
        for peer in static_peers
        if not peer["in_sync"]
    )
