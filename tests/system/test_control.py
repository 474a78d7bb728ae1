"""The control socket of an agent running in this process, over a real Unix socket."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import socket
import stat
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from blazemesh.agent.api import control
from blazemesh.agent.api import operations as api
from blazemesh.agent.api.client import AgentCallError, AgentClient, open_session
from blazemesh.agent.assemble import Services, run_node
from blazemesh.agent.cli.main import main
from blazemesh.agent.errors import AgentError
from blazemesh.agent.links.network import MemoryNetwork
from blazemesh.agent.links.node import Node
from blazemesh.agent.storage.paths import CONTROL_SOCKET
from blazemesh.agent.storage.replica import open_replica
from blazemesh.agent.trust.membership import new_mesh, save_mesh
from blazemesh.protocol.codec.control import (
    CONTROL_VERSION,
    MAX_CONTROL_FRAME_BYTES,
    Failure,
    Reply,
    ReplyDecoder,
    Request,
    Result,
    StreamEvent,
    encode_frame,
)
from blazemesh.protocol.ids import node_id_text
from blazemesh.protocol.model import Value

pytestmark = pytest.mark.system


@dataclass
class Agent:
    data_dir: Path
    node: Node

    @property
    def socket(self) -> Path:
        return self.data_dir / CONTROL_SOCKET


@contextlib.asynccontextmanager
async def running_agent(data_dir: Path) -> AsyncIterator[Agent]:
    async with open_replica(data_dir, create=True) as replica, trio.open_nursery() as nursery:
        mesh = new_mesh("lab")
        save_mesh(data_dir, mesh)
        run = functools.partial(
            run_node,
            replica,
            mesh=mesh,
            network=MemoryNetwork(),
            control_socket=data_dir / CONTROL_SOCKET,
        )
        services: Services = await nursery.start(run)
        yield Agent(data_dir, services.node)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def agent(data_dir: Path) -> AsyncIterator[Agent]:
    async with running_agent(data_dir) as a:
        yield a


@contextlib.asynccontextmanager
async def client(agent: Agent) -> AsyncIterator[AgentClient]:
    c = await AgentClient.connect(agent.data_dir)
    assert c is not None
    try:
        yield c
    finally:
        await c.aclose()


class Raw:
    """A client that sends whatever bytes it is told to."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = ReplyDecoder()

    async def send(self, frame: Request) -> None:
        await self.stream.send_all(encode_frame(frame))

    async def reply(self) -> Reply | None:
        """The next frame, or None once the agent has closed the connection."""
        while True:
            for frame in self.decoder:
                return frame
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return None
            self.decoder.feed(data)

    async def hello(self) -> None:
        await self.send(Request(id=0, op="hello", args={"version": CONTROL_VERSION}))
        reply = await self.reply()
        assert isinstance(reply, Result)


@contextlib.asynccontextmanager
async def raw(agent: Agent) -> AsyncIterator[Raw]:
    stream = await trio.open_unix_socket(os.fspath(agent.socket))
    async with stream:
        yield Raw(stream)


# -- the operations ----------------------------------------------------------------------


async def test_records_through_the_socket(agent: Agent) -> None:
    async with client(agent) as c:
        assert c.hello["node_id"] == agent.node.identity.text
        assert "put" in c.hello["ops"]
        assert c.hello["streams"] == ["watch"]
        put = await c.call("put", {"collection": "bugs", "key": "b1", "fields": {"n": 1}})
        assert put["seq"] == 1
        assert put["origin"] == agent.node.identity.text
        tx = {
            "ops": [
                {"op": "put", "collection": "bugs", "key": "b2", "fields": {"n": 2, "raw": b"\0"}},
                {"op": "delete", "collection": "bugs", "key": "b1"},
            ]
        }
        assert (await c.call("commit", tx))["seq"] == 2
        assert await c.call("get", {"collection": "bugs", "key": "b1"}) is None
        assert await c.call("get", {"collection": "bugs", "key": "b2"}) == {"n": 2, "raw": b"\0"}
        assert (await c.call("delete", {"collection": "bugs", "key": "b2"}))["seq"] == 3
        info = await c.call("info", {"digest": True})
    assert info["agent"] is True
    assert info["changes_held"] == 3
    assert info["digest"] == agent.node.replica.digest()


async def test_queries_come_in_pages(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "QUERY_PAGE_MAX", 3)
    async with client(agent) as c:
        for i in range(8):
            await c.call("put", {"collection": "c", "key": f"k{i}", "fields": {"even": i % 2 == 0}})

        async def query_all(**args: Value) -> list[str]:
            keys: list[str] = []
            request: dict[str, Value] = {"collection": "c", **args}
            while True:
                page = await c.call("query", request)
                assert len(page["records"]) <= 3
                keys += [r["key"] for r in page["records"]]
                if page["next"] is None:
                    return keys
                request["after"] = page["next"]
                if isinstance(request.get("limit"), int):
                    request["limit"] -= len(page["records"])  # type: ignore[operator]

        assert await query_all() == [f"k{i}" for i in range(8)]
        assert await query_all(where={"even": True}) == ["k0", "k2", "k4", "k6"]
        assert await query_all(limit=5) == ["k0", "k1", "k2", "k3", "k4"]
        assert await query_all(limit=3) == ["k0", "k1", "k2"]


async def test_the_same_operations_run_in_process_when_no_agent_runs(data_dir: Path) -> None:
    async with running_agent(data_dir):
        pass
    async with open_session(data_dir) as session:
        assert not isinstance(session, AgentClient)
        await session.call("put", {"collection": "c", "key": "k", "fields": {"x": 1}})
        info = await session.call("info", {})
        assert info["agent"] is False
        with pytest.raises(api.NoAgentError, match="no agent is running"):
            await session.call("peers", {})
        events = [e async for e in session.stream("watch", {"since": 0, "follow": False})]
    assert [e["seq"] for e in events] == [1]


async def test_errors_are_replies_with_codes(agent: Agent) -> None:
    cases: list[tuple[str, dict[str, Value], str, str]] = [
        ("frobnicate", {}, "unknown-op", "no operation 'frobnicate'"),
        ("get", {"collection": "c"}, "bad-request", "missing argument 'key'"),
        ("get", {"collection": 1, "key": "k"}, "bad-request", "must be str"),
        ("put", {"collection": "c", "key": "k", "fields": {"x": math.nan}}, "invalid", "NaN"),
        ("put", {"collection": "_sys", "key": "k", "fields": {}}, "invalid", "reserved"),
        ("commit", {"ops": [{"op": "upsert"}]}, "bad-request", "an op is"),
        ("query", {"collection": "c", "limit": -1}, "bad-request", "limit"),
        ("get", {"collection": "c", "key": "x" * 5000}, "invalid", "key"),
    ]
    async with client(agent) as c:
        for op, args, code, message in cases:
            with pytest.raises(AgentCallError, match=message) as info:
                await c.call(op, args)
            assert info.value.code == code, (op, args)
        assert await c.call("get", {"collection": "c", "key": "k"}) is None  # still serving
    assert agent.node.replica.info().changes_held == 0


async def test_peers_lists_links(agent: Agent) -> None:
    async with client(agent) as c:
        assert await c.call("peers", {}) == []


async def test_mesh_reload_applies_an_edited_membership_file(agent: Agent) -> None:
    edited = new_mesh("lab-renamed")
    edited.trust([b"\x01" * 16])
    save_mesh(agent.data_dir, edited)
    async with client(agent) as c:
        assert await c.call("mesh.reload", {}) == {"mesh": "lab-renamed", "allowlist": 1}
    assert agent.node.mesh.secret == edited.secret
    assert agent.node.mesh.allowlist == {b"\x01" * 16}


# -- watch -------------------------------------------------------------------------------


async def test_watch_catches_up_then_follows(agent: Agent) -> None:
    replica = agent.node.replica
    await replica.put("a", "k1", {"x": 1})
    await replica.put("b", "k2", {"x": 2})
    async with client(agent) as c:
        events = c.stream("watch", {"since": 0, "collection": "a"})
        first = await events.__anext__()
        assert (first["lsn"], first["ops"][0]["key"]) == (1, "k1")
        await replica.put("b", "k3", {"x": 3})
        await replica.put("a", "k4", {"x": 4})
        second = await events.__anext__()
        assert (second["lsn"], second["ops"][0]["key"]) == (4, "k4")
        await events.aclose()


async def test_a_lagging_watch_skips_nothing(
    agent: Agent, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "WATCH_BUFFER", 4)
    async with open_replica(data_dir.parent / "other", create=True) as other:
        for i in range(60):
            await other.put("c", f"k{i}", {"i": i})
        remote = [change for _, change in other.changes_since(0, limit=100)]
    replica = agent.node.replica
    await replica.put("c", "first", {})
    async with raw(agent) as r:
        await r.hello()
        await r.send(Request(id=1, op="watch", args={"since": 1}))
        await replica.put("c", "before", {})
        await replica.apply_remote(remote)  # 60 changes in one commit: the buffer of 4 overflows
        await replica.put("c", "after", {})
        seen: list[int] = []
        with trio.fail_after(30):
            while len(seen) < 62:
                reply = await r.reply()
                assert isinstance(reply, StreamEvent)
                assert isinstance(reply.value, dict)
                seen.append(reply.value["lsn"])  # type: ignore[arg-type]
    assert seen == list(range(2, 64))


async def test_cancelling_a_watch_ends_it_with_a_final_reply(agent: Agent) -> None:
    async with raw(agent) as r:
        await r.hello()
        await r.send(Request(id=5, op="watch", args={"since": 0}))
        await agent.node.replica.put("c", "k", {})
        assert isinstance(await r.reply(), StreamEvent)  # the stream is live
        await r.send(Request(id=6, op="cancel", args={"id": 5}))
        replies = {await r.reply(), await r.reply()}
        assert replies == {Result(id=5, value="cancelled"), Result(id=6, value=True)}
        await r.send(Request(id=7, op="cancel", args={"id": 5}))
        assert await r.reply() == Result(id=7, value=False)


# -- hostile and clumsy clients ----------------------------------------------------------


async def test_the_socket_is_private_and_removed_at_shutdown(data_dir: Path) -> None:
    await trio.Path(data_dir).mkdir(parents=True, mode=0o700)
    await trio.Path(data_dir / CONTROL_SOCKET).write_text("left by an agent that died")
    async with running_agent(data_dir) as agent:
        mode = agent.socket.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
    assert not agent.socket.exists()
    async with open_session(data_dir) as session:  # no agent: the CLI opens the replica
        assert not isinstance(session, AgentClient)


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (Request(id=1, op="info", args={}), "hello-required"),
        (Request(id=1, op="hello", args={"version": 99}), "version"),
    ],
)
async def test_hello_comes_first_and_must_match(agent: Agent, first: Request, code: str) -> None:
    async with raw(agent) as r:
        await r.send(first)
        reply = await r.reply()
        assert isinstance(reply, Failure)
        assert reply.code == code
        assert await r.reply() is None  # and the agent hung up


GARBAGE = [
    b"\xff" * 64,
    struct.pack(">I", 3) + b"\xc1\xc1\xc1",  # msgpack's never-used byte
    struct.pack(">I", 1) + b"\x01",  # a frame that is not a map
    struct.pack(">I", MAX_CONTROL_FRAME_BYTES + 1),  # oversized, refused from its header
    encode_frame(Result(id=1, value=None)),  # a reply where a request belongs
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_a_malformed_frame_costs_only_that_connection(
    agent: Agent, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with raw(agent) as bystander, raw(agent) as r:
        await bystander.hello()
        await r.hello()
        await r.stream.send_all(garbage)
        reply = await r.reply()
        assert isinstance(reply, Failure)
        assert reply.code == "malformed"
        assert await r.reply() is None
        await bystander.send(Request(id=2, op="get", args={"collection": "c", "key": "k"}))
        assert await bystander.reply() == Result(id=2, value=None)
    assert "malformed frame" in caplog.text


async def test_random_requests_each_get_one_reply_and_harm_nothing(agent: Agent) -> None:
    rng = random.Random(7)
    junk: list[Any] = [None, True, -1, 2**40, 1.5, "", "x" * 300, b"\0", [], {}, {"a": [1]}]
    names = ["info", "get", "put", "delete", "commit", "query", "peers", "hello", "cancel", "zap"]
    keys = ["collection", "key", "fields", "ops", "where", "prefix", "after", "limit", "id", "x"]
    async with raw(agent) as r:
        await r.hello()
        for i in range(1, 301):
            args = {k: rng.choice([*junk, "c", "k", {"f": 1}]) for k in rng.sample(keys, 3)}
            await r.send(Request(id=i, op=rng.choice(names), args=args))
            reply = await r.reply()
            assert isinstance(reply, Result | Failure)
            assert reply.id == i
            if isinstance(reply, Failure):
                assert reply.code != "internal", reply.message
    async with client(agent) as c:
        assert (await c.call("info", {}))["agent"] is True


async def test_cli_commands_go_through_the_running_agent(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    async def cli(*argv: str) -> tuple[int, str]:
        def run() -> int:
            with pytest.raises(SystemExit) as exit_info:
                main([*argv, "--data-dir", str(agent.data_dir)])
            code = exit_info.value.code
            assert isinstance(code, int)
            return code

        code = await trio.to_thread.run_sync(run)
        return code, capsys.readouterr().out

    # The agent holds the data directory's lock: these only work through its socket.
    assert (await cli("put", "bugs", "b1", "title=x"))[0] == 0
    assert await cli("get", "bugs", "b1") == (0, '{"title":"x"}\n')
    code, out = await cli("watch", "--since", "0", "--no-follow")
    assert (code, json.loads(out)["key"]) == (0, "b1")
    code, out = await cli("info", "--json")
    assert (code, json.loads(out)["agent"]) == (0, True)
    assert await cli("peers", "--json") == (0, "")
    assert (await cli("trust", "add", node_id_text(b"\x02" * 16)))[0] == 0
    assert agent.node.mesh.allowlist == {b"\x02" * 16}  # applied by the agent at once


async def test_topology_commands(agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    async def cli(*argv: str) -> str:
        def run() -> None:
            with pytest.raises(SystemExit) as exit_info:
                main([*argv, "--data-dir", str(agent.data_dir)])
            assert exit_info.value.code == 0

        await trio.to_thread.run_sync(run)
        return capsys.readouterr().out

    me = agent.node.identity.short
    assert json.loads(await cli("topology", "--format", "json"))["mode"] == "mesh"
    dot = await cli("topology", "--format", "dot")
    assert dot.startswith("graph blazemesh {")
    assert f'"{me}" [shape=circle, style=bold];' in dot
    assert "topology mesh" in await cli("topology")
    assert "for the whole mesh" in await cli(
        "topology", "set", "star", "--hub", agent.node.identity.text
    )
    setting = await agent.node.replica.get("_mesh", "topology")
    assert setting == {"mode": "star", "max_links": None, "hub": agent.node.identity.text}


# -- clients that hang up, and clients that hold a slot and do nothing -----------------


@contextlib.contextmanager
def logged(text: str) -> Iterator[trio.Event]:
    """An event set once a log record of `agent.api.control` holds ``text``: what the test
    waits on to know the agent has dealt with a client (records come from the trio
    thread, so the handler may set a trio event)."""
    seen = trio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                seen.set()

    logger = logging.getLogger(control.__name__)
    handler = Watch(logging.DEBUG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def hang_up_after(path: Path, *frames: Request) -> None:
    """Connect, send ``frames`` and close, all without yielding to the loop: the agent
    reads the requests only once the client has gone, so every reply finds it gone."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(os.fspath(path))
        s.sendall(b"".join(encode_frame(f) for f in frames))


BIG: dict[str, Value] = {f"f{i}": b"\0" * (900 << 10) for i in range(3)}  # beyond any buffer
HELLO = Request(id=0, op="hello", args={"version": CONTROL_VERSION})


async def still_serving(agent: Agent) -> None:
    async with client(agent) as c:
        assert (await c.call("info", {}))["agent"] is True


async def test_a_client_that_says_hello_and_leaves_costs_only_itself(agent: Agent) -> None:
    for _ in range(5):
        with logged("went away") as gone:
            hang_up_after(agent.socket, HELLO)
            with trio.fail_after(10):
                await gone.wait()
        await still_serving(agent)


async def test_a_client_that_leaves_before_a_large_reply_costs_only_itself(agent: Agent) -> None:
    await agent.node.replica.put("c", "big", BIG)
    get = Request(id=1, op="get", args={"collection": "c", "key": "big"})
    for _ in range(5):
        with logged("went away") as gone:
            async with raw(agent) as r:
                await r.hello()
                await r.send(get)
                await r.stream.receive_some(1)  # the reply has begun: more than fits in buffers
            with trio.fail_after(10):
                await gone.wait()
        await still_serving(agent)


async def test_a_client_that_leaves_a_watch_costs_only_itself(agent: Agent) -> None:
    await agent.node.replica.put("c", "big", BIG)
    for _ in range(5):
        with logged("went away") as gone:
            async with raw(agent) as r:
                await r.hello()
                await r.send(Request(id=1, op="watch", args={"since": 0}))
                await r.stream.receive_some(1)  # the first event has begun
            with trio.fail_after(10):
                await gone.wait()
        await still_serving(agent)


async def test_idle_clients_make_room_for_a_new_one(agent: Agent) -> None:
    async with contextlib.AsyncExitStack() as stack:
        idle = []
        for i in range(control.MAX_CLIENTS + 8):
            r = await stack.enter_async_context(raw(agent))
            if i < control.MAX_CLIENTS:
                await r.hello()  # a session: no hello timeout will close it
            idle.append(r)
        with trio.fail_after(5):  # it must not wait for some client to leave
            await still_serving(agent)
        # The longest idle were closed to make room, and told nothing: they just see EOF.
        assert await idle[0].reply() is None


async def test_a_new_client_is_told_when_every_session_is_busy(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "MAX_CLIENTS", 3)
    async with contextlib.AsyncExitStack() as stack:
        await agent.node.replica.put("c", "k", {})
        watchers = []
        for _ in range(3):
            r = await stack.enter_async_context(raw(agent))
            await r.hello()
            await r.send(Request(id=1, op="watch", args={"since": 0}))  # runs until cancelled
            assert isinstance(await r.reply(), StreamEvent)  # it runs
            watchers.append(r)
        with trio.fail_after(5), pytest.raises(AgentCallError, match="busy") as refused:
            await still_serving(agent)
        assert refused.value.code == "busy"
        await watchers[0].send(Request(id=2, op="cancel", args={"id": 1}))
        assert {await watchers[0].reply(), await watchers[0].reply()} == {
            Result(id=1, value="cancelled"),
            Result(id=2, value=True),
        }
        await still_serving(agent)  # in place of the watcher that now idles


async def test_a_bug_in_one_session_costs_only_that_session(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def unencodable(self: api.Operations, args: object) -> object:
        return {"a set", "msgpack cannot write"}

    monkeypatch.setattr(api.Operations, "peers", unencodable)
    async with running_agent(data_dir) as agent, client(agent) as c:
        with pytest.raises(AgentError, match="closed the connection"):
            await c.call("peers", {})
        await still_serving(agent)
    assert "a control client's session failed" in caplog.text


async def test_a_client_that_reads_nothing_loses_its_session(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that asks and never reads would hold its session (and, 64 of them, every
    session) for good: a reply it takes none of for `SEND_TIMEOUT_S` ends it."""
    monkeypatch.setattr(control, "SEND_TIMEOUT_S", 0.5)
    await agent.node.replica.put("c", "big", BIG)
    get = Request(id=1, op="get", args={"collection": "c", "key": "big"})
    with logged("read nothing") as dropped:
        async with raw(agent) as r:
            await r.hello()
            await r.send(get)  # 2.7 MB: more than the socket buffers hold
            with trio.fail_after(10):
                await dropped.wait()
    await still_serving(agent)


async def test_a_stream_cancelled_in_the_middle_of_a_frame_never_garbles_the_next(
    agent: Agent,
) -> None:
    """Cancelling a `watch` while one of its events is half sent: the agent may not send
    the final reply after half a frame (the client could not find where frames begin);
    it ends the session instead. Whatever the client reads is whole frames."""
    for i in range(3):
        await agent.node.replica.put("c", f"big{i}", BIG)
    for _ in range(5):
        async with raw(agent) as r:
            await r.hello()
            await r.send(Request(id=1, op="watch", args={"since": 0}))
            # An event has begun, more than the buffers hold: the agent is in its send.
            r.decoder.feed(await r.stream.receive_some(1))
            await r.send(Request(id=2, op="cancel", args={"id": 1}))
            frames = []
            with trio.fail_after(10):
                while (frame := await r.reply()) is not None:  # a garbled frame raises
                    frames.append(frame)
            assert all(f.id in (1, 2) for f in frames)
        await still_serving(agent)
