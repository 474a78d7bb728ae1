"""Sync between two node processes over loopback TCP, against plain TCP (issue 4's figures).

Two processes (`benchmarks.sync_peer`) each run a whole node: replica (durability
`normal`, the default), `Node`, Noise channel, real TCP on 127.0.0.2 and 127.0.0.3, ports
chosen by the system. A writes, B observes; this process only drives them, by one JSON line
per command on their stdin and stdout. The ceiling is measured between the same two
processes in the same run: plain trio TCP carrying messages of the size one replicated op
takes on the wire.

- put-to-visible: A puts one record at a time stamped with ``ts`` (CLOCK_MONOTONIC, shared
  by every process); B's observer computes the latency when the record shows up and writes
  a byte on a pipe to A, which only then puts the next one (a closed loop: each write
  meets an idle link, the case an interactive app sees). Ceiling: the round trip of a
  message of the same size, ping-pong, plain TCP.
- throughput: A writes as fast as it can, B reports when the commit that completes A's last
  change returns; ops over that span. Ceiling: a one-way stream of messages of the same
  size, one ``send_all`` each (what an app sending each op as it happens gets).
- catch-up: B stops its node, A takes 100,000 single-op changes, B dials again; seconds
  from B starting the node until its version vector holds all of A's. Ceiling: the same
  number of messages through the plain stream.
- catch-up of big transactions: the same with 1,000 transactions of 1,000 records (a
  million): a sender that let one plan of big changes past its window had its link
  dropped for ignoring flow control, about ten times over (issue 17, item 12), so the
  connections B opened while catching up are counted too (one is right).
- bytes per op: every byte both sockets carried while the phase ran (Noise framing and
  tags, CHANGES, ACKs, PINGs, SUMMARYs), at the socket (TCP/IP headers not included).
  Baseline: the sync messages themselves, before encryption.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from benchmarks.common import Figure, rate
from blazemesh.agent.storage.store import Durability
from blazemesh.agent.trust.identity import create_identity
from blazemesh.agent.trust.membership import new_mesh, save_mesh

SUITE = "sync"
HOST_A, HOST_B = "127.0.0.2", "127.0.0.3"
WARMUP_WRITES = 100  # put-to-visible writes not counted: the link opens, caches warm
LATENCY_WRITES = 2_000
SINGLE_PUTS = 10_000
TX_COUNT, TX_OPS = 300, 100
CATCH_UP_CHANGES = 100_000
BIG_TX_COUNT, BIG_TX_OPS = 1_000, 1_000
PINGS = 2_000
STREAM_MESSAGES = 30_000
CALL_TIMEOUT_S = 300.0  # the longest command (100,000 puts) takes ~20 s here
QUIT_TIMEOUT_S = 10.0


class PeerProcess:
    """A running `benchmarks.sync_peer`: send it commands, read its replies."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self._process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._buffer = b""

    async def send(self, op: str, **args: Any) -> None:
        await self._stdin.send_all(json.dumps({"op": op, **args}).encode() + b"\n")

    async def receive(self) -> dict[str, Any]:
        with trio.fail_after(CALL_TIMEOUT_S):
            while b"\n" not in self._buffer:
                data = await self._stdout.receive_some(1 << 20)
                if not data:
                    raise RuntimeError(f"peer process {self._process.pid} ended unexpectedly")
                self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        await self.send(op, **args)
        return await self.receive()


@contextlib.asynccontextmanager
async def peer_process(data_dir: Path, signal_fd: int) -> AsyncIterator[PeerProcess]:
    argv = [sys.executable, "-m", "benchmarks.sync_peer", str(data_dir), str(signal_fd)]
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(signal_fd,)
    )
    try:
        peer = PeerProcess(process)
        await peer.receive()  # ready
        yield peer
        await peer.send("quit")
        with trio.move_on_after(QUIT_TIMEOUT_S):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


def percentile(samples: list[int], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``samples`` (nanoseconds), in milliseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] / 1e6


@dataclass
class Traffic:
    """Socket and sync-layer bytes of one phase, seen from A (B sees the same)."""

    tcp_sent: int = 0
    tcp_received: int = 0
    sync_bytes: int = 0
    connections: int = 0  # opened by the process whose counts these are

    @classmethod
    def between(cls, before: dict[str, int], after: dict[str, int]) -> Traffic:
        return cls(**{name: after[name] - before[name] for name in before})

    @property
    def tcp(self) -> int:
        return self.tcp_sent + self.tcp_received


@dataclass
class Results:
    latency_ns: list[int] = field(default_factory=list)
    latency_traffic: Traffic = field(default_factory=Traffic)
    message_bytes: int = 0  # A -> B on the wire for one op sent alone
    rtt_ns: list[int] = field(default_factory=list)
    single_rate: float = 0.0
    single_traffic: Traffic = field(default_factory=Traffic)
    tx_rate: float = 0.0
    tx_traffic: Traffic = field(default_factory=Traffic)
    stream_rate: float = 0.0
    catch_up_s: float = 0.0
    catch_up_traffic: Traffic = field(default_factory=Traffic)
    big_catch_up_s: float = 0.0
    big_catch_up_traffic: Traffic = field(default_factory=Traffic)
    big_catch_up_connections: int = 0


class Bench:
    """The two peers and what has been written so far."""

    def __init__(self, a: PeerProcess, b: PeerProcess) -> None:
        self.a, self.b = a, b
        self.origin = ""
        self.address: list[Any] = []
        self.next_key = 0
        self.seq = 0  # A's last change
        self.results = Results()

    async def start(self) -> None:
        started = await self.a.call("start", listen=HOST_A, dial=None)
        self.origin, self.address = started["node_id"], started["bound"][0]
        await self.b.call("start", listen=None, dial=self.address)

    def keys(self, count: int) -> int:
        first, self.next_key = self.next_key, self.next_key + count
        return first

    async def put_to_visible(self) -> None:
        await self.b.call("observe", count=WARMUP_WRITES + LATENCY_WRITES)
        await self.a.call("latency_puts", first=self.keys(WARMUP_WRITES), count=WARMUP_WRITES)
        before = await self.a.call("traffic")
        wrote = await self.a.call(
            "latency_puts", first=self.keys(LATENCY_WRITES), count=LATENCY_WRITES
        )
        self.seq = wrote["seq"]
        after = await self.a.call("traffic")
        samples = (await self.b.call("latencies"))["samples_ns"]
        self.results.latency_ns = samples[WARMUP_WRITES:]
        self.results.latency_traffic = traffic = Traffic.between(before, after)
        self.results.message_bytes = round(traffic.tcp_sent / LATENCY_WRITES)

    async def round_trips(self) -> None:
        port = (await self.b.call("echo", host=HOST_B))["port"]
        size = self.results.message_bytes
        reply = await self.a.call("ping", host=HOST_B, port=port, size=size, count=PINGS)
        self.results.rtt_ns = reply["samples_ns"]

    async def replicate(self, op: str, ops: int, **args: Any) -> tuple[float, Traffic]:
        """Ops per second from A's first write until B holds its last, and the bytes."""
        before = await self.a.call("traffic")
        await self.b.send("reach", origin=self.origin, seq=self.seq + args["count"])
        wrote = await self.a.call(op, first=self.keys(ops), **args)
        self.seq = wrote["seq"]
        reached = await self.b.receive()
        after = await self.a.call("traffic")
        seconds = (reached["at_ns"] - wrote["start_ns"]) / 1e9
        return rate(ops, seconds), Traffic.between(before, after)

    async def throughput(self) -> None:
        r = self.results
        r.single_rate, r.single_traffic = await self.replicate(
            "puts", SINGLE_PUTS, count=SINGLE_PUTS
        )
        r.tx_rate, r.tx_traffic = await self.replicate(
            "transactions", TX_COUNT * TX_OPS, count=TX_COUNT, size=TX_OPS
        )

    async def stream_ceiling(self) -> None:
        size = self.results.message_bytes
        port = (await self.b.call("sink", host=HOST_B, expect=size * STREAM_MESSAGES))["port"]
        reply = await self.a.call(
            "stream", host=HOST_B, port=port, size=size, count=STREAM_MESSAGES
        )
        self.results.stream_rate = rate(STREAM_MESSAGES, reply["seconds"])

    async def catch_up(self) -> None:
        r = self.results
        r.catch_up_s, r.catch_up_traffic, _ = await self._catch_up(
            "puts", count=CATCH_UP_CHANGES, ops=CATCH_UP_CHANGES
        )
        r.big_catch_up_s, r.big_catch_up_traffic, r.big_catch_up_connections = await self._catch_up(
            "transactions", count=BIG_TX_COUNT, size=BIG_TX_OPS, ops=BIG_TX_COUNT * BIG_TX_OPS
        )

    async def _catch_up(self, op: str, ops: int, **args: Any) -> tuple[float, Traffic, int]:
        """B stops; A writes by ``op``; seconds until B holds it all, bytes, connections."""
        await self.b.call("stop")
        before = await self.b.call("traffic")
        wrote = await self.a.call(op, first=self.keys(ops), **args)
        reply = await self.b.call(
            "catch_up", dial=self.address, origin=self.origin, seq=wrote["seq"]
        )
        after = await self.b.call("traffic")
        a_state, b_state = await self.a.call("state"), await self.b.call("state")
        if a_state != b_state:
            raise RuntimeError(f"after catching up the replicas differ: {a_state} != {b_state}")
        seconds = (reply["at_ns"] - reply["start_ns"]) / 1e9
        traffic = Traffic.between(before, after)
        return seconds, traffic, traffic.connections


async def measure() -> Results:
    with tempfile.TemporaryDirectory(prefix="bm-sync-") as tmp:
        dirs = [Path(tmp) / "a", Path(tmp) / "b"]
        identities = []
        for d in dirs:
            d.mkdir(mode=0o700)
            identities.append(create_identity(d))
        mesh = new_mesh("bench")
        mesh.trust(identity.node_id for identity in identities)
        for d in dirs:
            save_mesh(d, mesh)
        signal_read, signal_write = os.pipe()
        try:
            async with (
                peer_process(dirs[0], signal_read) as a,
                peer_process(dirs[1], signal_write) as b,
            ):
                os.close(signal_read)
                os.close(signal_write)
                signal_read = signal_write = -1
                bench = Bench(a, b)
                await bench.start()
                await bench.put_to_visible()
                await bench.round_trips()
                await bench.throughput()
                await bench.stream_ceiling()
                await bench.catch_up()
                return bench.results
        finally:
            for fd in (signal_read, signal_write):
                if fd >= 0:
                    os.close(fd)


def run() -> Iterator[Figure]:
    r = trio.run(measure)
    durability = Durability.NORMAL.value
    size = r.message_bytes
    for q, target in ((0.5, "<= 1 ms"), (0.99, "<= 5 ms")):
        yield Figure(
            suite=SUITE,
            name=f"put on A to visible on B, p{round(q * 100)}, {durability}",
            value=percentile(r.latency_ns, q),
            unit="ms",
            baseline=f"plain TCP round trip of {size} B, p{round(q * 100)}",
            baseline_value=percentile(r.rtt_ns, q),
            target=target,
        )
    for name, value, target in (
        ("single puts", r.single_rate, "none: A's commit per put bounds it"),
        (f"{TX_OPS}-op transactions", r.tx_rate, ">= 20,000 ops/s"),
    ):
        yield Figure(
            suite=SUITE,
            name=f"replication A -> B, {name}, {durability}",
            value=value,
            unit="ops/s",
            baseline=f"plain TCP one-way, {size} B messages, one send_all each",
            baseline_value=r.stream_rate,
            target=target,
        )
    yield Figure(
        suite=SUITE,
        name=f"catch-up of {CATCH_UP_CHANGES:,} changes after reconnecting",
        value=r.catch_up_s,
        unit="s",
        baseline=f"plain TCP one-way, {CATCH_UP_CHANGES:,} messages of {size} B",
        baseline_value=CATCH_UP_CHANGES / r.stream_rate,
        target="<= 10 s",
    )
    big = f"{BIG_TX_COUNT * BIG_TX_OPS:,} records in {BIG_TX_OPS:,}-op transactions"
    yield Figure(
        suite=SUITE,
        name=f"catch-up of {big}",
        value=r.big_catch_up_s,
        unit="s",
        baseline=f"catch-up of {CATCH_UP_CHANGES:,} single-op changes, per record, times "
        f"{BIG_TX_COUNT * BIG_TX_OPS:,}",
        baseline_value=r.catch_up_s / CATCH_UP_CHANGES * BIG_TX_COUNT * BIG_TX_OPS,
        target="",
    )
    yield Figure(
        suite=SUITE,
        name=f"connections opened during the catch-up of {big}",
        value=r.big_catch_up_connections,
        unit="connections",
        baseline="",
        baseline_value=None,
        target="1: the link never drops",
    )
    for name, traffic, ops in (
        ("single puts streamed", r.single_traffic, SINGLE_PUTS),
        (f"{TX_OPS}-op transactions", r.tx_traffic, TX_COUNT * TX_OPS),
        ("one put at a time (+ts field)", r.latency_traffic, LATENCY_WRITES),
        ("catch-up", r.catch_up_traffic, CATCH_UP_CHANGES),
        (f"catch-up of {big}", r.big_catch_up_traffic, BIG_TX_COUNT * BIG_TX_OPS),
    ):
        yield Figure(
            suite=SUITE,
            name=f"bytes on the wire per op, {name}",
            value=traffic.tcp / ops,
            unit="bytes/op",
            baseline="sync messages before encryption",
            baseline_value=traffic.sync_bytes / ops if traffic.sync_bytes else None,
            target="<= 80 bytes" if name == "single puts streamed" else "",
        )
