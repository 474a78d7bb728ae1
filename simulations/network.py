"""A simulated network behind the agent's `Network` interface, in trio's (virtual) time.

Hosts are the host part of addresses. Every connection carries bytes in order, like TCP,
and each chunk arrives after the link's latency (plus jitter), its transmission time at
the link's bandwidth, and, with probability ``loss``, a retransmission stall: what a lost
segment costs a reliable stream (one retransmission timeout, doubled for every further
loss of the same chunk). The network can also break connections (one host's, as a
crashed host's kernel resets them, or all of them: a reconnect storm), and it can fall
silent between hosts: a partition into groups, or a host cut off (a cable pulled).
Silence is what TCP sees when packets vanish: connections stay open, bytes sent across
wait (TCP retransmitting them) and arrive once the path is back, unless an end gives up
first, as the agent's dead-link timeout does; a connect across hangs until the dialler's
timeout. All randomness comes from the one ``random.Random`` it is given, so a run
under `trio.testing.MockClock` replays exactly from its seed.

Memory is bounded by the senders: bytes wait in the receiver's queue, and the agent's sync
links never have more than their window in flight.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import trio

from blazemesh.agent.links.network import Address, check_max_bytes, format_address

Handler = Callable[[trio.abc.Stream, Address], Awaitable[None]]
MAX_RETRANSMISSIONS = 8  # a chunk lost this often in a row is delivered anyway
FIRST_FREE_PORT = 49_152  # serving port 0 takes the first free one from here (IANA's dynamic range)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkProfile:
    """How the path between two hosts behaves."""

    latency_s: float = 0.001
    jitter_s: float = 0.0  # uniform extra delay in [0, jitter_s); order is kept
    bandwidth_bps: float | None = None  # bytes per second; None: unlimited
    loss: float = 0.0  # probability that a chunk needs a retransmission
    rto_s: float = 0.2  # the retransmission timeout a loss costs

    def __post_init__(self) -> None:
        if not 0 <= self.loss < 1:
            raise ValueError(f"loss must be in [0, 1), got {self.loss}")
        if min(self.latency_s, self.jitter_s, self.rto_s) < 0:
            raise ValueError("delays must not be negative")


@dataclass(slots=True)
class HostStats:
    """What one host sent and received."""

    bytes_sent: int = 0
    bytes_received: int = 0
    chunks_sent: int = 0
    connections: int = 0
    queue_peak_bytes: int = 0  # the most bytes ever waiting on one connection to this host


class _Pipe:
    """One direction of a connection: chunks in flight, each with its arrival time."""

    def __init__(self, receiver: HostStats) -> None:
        self.chunks: deque[tuple[float, bytes]] = deque()
        self.held: list[bytes] = []  # sent while the path is silent, in order
        self.eof = False
        self.reader_closed = False  # the receiving end was closed: sending there fails
        self.changed = trio.Event()
        self.queued = 0  # bytes sent and not yet read
        self.alarm: float | None = None  # the receiver is woken then (`SimNetwork.alarm`)
        self._receiver = receiver

    def push(self, when: float, data: bytes) -> bool:
        """Queue a chunk that arrives at ``when``; whether it is first in line (the
        receiver then needs an alarm for it: it wakes for the others by itself)."""
        first = not self.chunks
        self.chunks.append((when, data))
        self.queued += len(data)
        if self.queued > self._receiver.queue_peak_bytes:
            self._receiver.queue_peak_bytes = self.queued
        return first

    def close(self) -> None:
        self.eof = True
        self.changed.set()


class SimStream(trio.abc.Stream):
    """One end of a simulated connection.

    It behaves as trio's streams do (`trio.testing.check_two_way_stream` passes): one task
    may send and one receive at a time (`trio.BusyResourceError`); a call after `aclose`
    raises `trio.ClosedResourceError`; sending to an end that was closed raises
    `trio.BrokenResourceError` once the path to it is open (as the peer's reset would),
    and so does any call once the network broke the connection.
    """

    def __init__(
        self, net: SimNetwork, local: str, remote: str, inbox: _Pipe, outbox: _Pipe
    ) -> None:
        self._net = net
        self.local, self.remote = local, remote
        self._inbox, self._outbox = inbox, outbox
        self.closed = False
        self.broken = False
        self._reset = False  # a send found the other end closed
        self._sending = self._receiving = False
        self._last_arrival = 0.0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            self._check_can_send()
        finally:
            self._sending = False
        if not data:
            return
        chunk = bytes(data)
        self._net.count(self.local, self.remote, len(chunk))
        if self._outbox.held or not self._net.reachable(self.local, self.remote):
            self._outbox.held.append(chunk)
        else:
            self._deliver(chunk)

    def _check_can_send(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("this end is closed")
        if self.broken:
            raise trio.BrokenResourceError("the simulated connection broke")
        if self._outbox.reader_closed and self._net.reachable(self.local, self.remote):
            self._reset = True
        if self._reset:
            raise trio.BrokenResourceError("the other end closed the connection")

    def _deliver(self, chunk: bytes) -> None:
        arrival = max(self._last_arrival, self._net.arrival(self.local, self.remote, len(chunk)))
        self._last_arrival = arrival
        if self._outbox.push(arrival, chunk):
            self._net.alarm(arrival, self._outbox)

    def release(self) -> None:
        """The path is back: what was sent into the silence goes out now."""
        held, self._outbox.held = self._outbox.held, []
        for chunk in held:
            self._deliver(chunk)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()  # no flow control: a send never blocks
        if self.closed:
            raise trio.ClosedResourceError("this end is closed")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        max_bytes = check_max_bytes(max_bytes)
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            return await self._receive(max_bytes)
        finally:
            self._receiving = False

    async def _receive(self, max_bytes: int | None) -> bytes:
        waited = False  # a wait is a checkpoint: a second one would only cost a task switch
        while True:
            if self.closed:
                raise trio.ClosedResourceError("this end is closed")
            if self.broken:
                raise trio.BrokenResourceError("the simulated connection broke")
            inbox = self._inbox
            if inbox.chunks:
                if inbox.chunks[0][0] <= trio.current_time():
                    data = self._take(max_bytes)
                    break
                self._net.alarm(inbox.chunks[0][0], inbox)
            elif inbox.eof and not inbox.held:
                data = b""
                break
            await self._wait()
            waited = True
        if not waited:
            await trio.lowlevel.checkpoint()
        return data

    def _take(self, max_bytes: int | None) -> bytes:
        """The chunks that have arrived, joined (as a socket's buffer would), up to
        ``max_bytes``."""
        chunks, now = self._inbox.chunks, trio.current_time()
        limit = max_bytes if max_bytes is not None else 1 << 20
        parts, size = [], 0
        while chunks and chunks[0][0] <= now and size < limit:
            when, data = chunks[0]
            if size + len(data) > limit:
                chunks[0] = (when, data[limit - size :])
                data = data[: limit - size]
            else:
                chunks.popleft()
            parts.append(data)
            size += len(data)
        self._inbox.queued -= size
        return b"".join(parts)

    async def _wait(self) -> None:
        self._inbox.changed = trio.Event()
        await self._inbox.changed.wait()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._inbox.reader_closed = True
            self._inbox.changed.set()  # a receive waiting on this end raises
            self._outbox.close()
            if not self._outbox.held:  # else the network keeps it until the path is back
                self._net.forget(self)
        await trio.lowlevel.checkpoint()

    def break_(self) -> None:
        """The network lost this connection: both ends fail their next call."""
        self.broken = True
        self._inbox.changed.set()


class SimNetwork:
    """The simulated network; `host` gives each node its own `Network` on it."""

    def __init__(self, rng: random.Random, default: LinkProfile | None = None) -> None:
        self._rng = rng
        self.profile = default or LinkProfile()  # how every path behaves
        self._listeners: dict[Address, tuple[Handler, trio.Nursery]] = {}
        self._streams: dict[SimStream, None] = {}  # ordered: breaking them replays exactly
        self._group: dict[str, int] = {}  # host -> partition group; absent: group 0
        self._cut: set[str] = set()
        self.stats: dict[str, HostStats] = {}
        self._alarms: list[tuple[float, int, _Pipe]] = []  # a heap: (when, order, pipe)
        self._alarm_order = itertools.count()
        self._earlier = trio.Event()  # an alarm went in first in line
        self._ringing = False

    def host(self, name: str) -> SimHost:
        """The `Network` of the node on host ``name``."""
        return SimHost(self, name)

    # -- faults --------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the hosts: each group reaches only itself (hosts in no group form one
        more); the network between groups falls silent."""
        self._group = {host: i + 1 for i, group in enumerate(groups) for host in group}
        self._release()

    def heal(self) -> None:
        """End every partition."""
        self._group = {}
        self._release()

    def cut(self, host: str) -> None:
        """Take ``host`` off the network: silence between it and every other host."""
        self._cut.add(host)

    def restore(self, host: str) -> None:
        self._cut.discard(host)
        self._release()

    def break_connections(self, host: str | None = None) -> int:
        """Break every connection (of ``host``, if given), as a reconnect storm or a
        crashed host's kernel does; return how many ends broke."""
        doomed = [s for s in self._streams if host is None or host in (s.local, s.remote)]
        for stream in doomed:
            stream.break_()
            del self._streams[stream]
        return len(doomed)

    def reachable(self, a: str, b: str) -> bool:
        if a in self._cut or b in self._cut:
            return False
        return self._group.get(a, 0) == self._group.get(b, 0)

    def _release(self) -> None:
        for stream in list(self._streams):
            if self.reachable(stream.local, stream.remote):
                stream.release()
                if stream.closed:
                    del self._streams[stream]

    # -- for the streams -----------------------------------------------------------------

    def arrival(self, sender: str, receiver: str, size: int) -> float:
        """When a chunk of ``size`` bytes sent now arrives."""
        profile = self.profile
        delay = profile.latency_s
        if profile.jitter_s:
            delay += self._rng.random() * profile.jitter_s
        if profile.bandwidth_bps:
            delay += size / profile.bandwidth_bps
        rto = profile.rto_s
        for _ in range(MAX_RETRANSMISSIONS):
            if not profile.loss or self._rng.random() >= profile.loss:
                break
            delay += rto
            rto *= 2
        return trio.current_time() + delay

    def count(self, sender: str, receiver: str, size: int) -> None:
        out = self.stats_of(sender)
        out.bytes_sent += size
        out.chunks_sent += 1
        self.stats_of(receiver).bytes_received += size

    def alarm(self, when: float, pipe: _Pipe) -> None:
        """Wake ``pipe``'s receiver at ``when``, when its first chunk arrives.

        One task rings every alarm: receivers wait on their pipe's event, not each on a
        deadline of its own, and every chunk due at one instant (as after one commit
        that went out on many links) costs one timer between them.
        """
        if pipe.alarm is not None and pipe.alarm <= when:
            return
        if when <= trio.current_time():
            pipe.changed.set()
            return
        pipe.alarm = when
        alarms = self._alarms
        if not alarms or when < alarms[0][0]:
            self._earlier.set()
        heapq.heappush(alarms, (when, next(self._alarm_order), pipe))
        if not self._ringing:
            self._ringing = True
            trio.lowlevel.spawn_system_task(self._ring)

    async def _ring(self) -> None:
        alarms = self._alarms
        while True:
            self._earlier = trio.Event()
            if alarms:
                with trio.move_on_at(alarms[0][0]):
                    await self._earlier.wait()
            else:
                await self._earlier.wait()
            now = trio.current_time()
            while alarms and alarms[0][0] <= now:
                when, _, pipe = heapq.heappop(alarms)
                if pipe.alarm == when:
                    pipe.alarm = None
                pipe.changed.set()

    def forget(self, stream: SimStream) -> None:
        self._streams.pop(stream, None)

    def listener(self, address: Address) -> tuple[Handler, trio.Nursery] | None:
        return self._listeners.get(address)

    def free_port(self, host: str) -> int:
        """The first port from `FIRST_FREE_PORT` on which nothing listens on ``host``."""
        return next(p for p in itertools.count(FIRST_FREE_PORT) if (host, p) not in self._listeners)

    def listen(self, address: Address, handler: Handler, nursery: trio.Nursery) -> None:
        """Connections to ``address`` run ``handler`` in ``nursery`` (its node's)."""
        self._listeners[address] = (handler, nursery)

    def unlisten(self, address: Address) -> None:
        del self._listeners[address]

    def stats_of(self, host: str) -> HostStats:
        return self.stats.setdefault(host, HostStats())

    def connected(self, a: SimStream, b: SimStream) -> None:
        self._streams[a] = self._streams[b] = None
        for end in (a, b):
            self.stats_of(end.local).connections += 1


class SimHost:
    """One host's view of the `SimNetwork`: the agent's `Network` interface."""

    def __init__(self, net: SimNetwork, name: str) -> None:
        self.net = net
        self.name = name
        self._next_port = 40_000  # the dialler's side of each connection, for logs

    async def serve(
        self, address: Address, handler: Handler, *, task_status: trio.TaskStatus[Address]
    ) -> None:
        """Accept connections to ``address`` (whose host must be this host's name; port 0
        takes a free one)."""
        if address[0] != self.name:
            raise OSError(f"{self.name} cannot listen on {format_address(address)}")
        if address[1] == 0:
            address = (self.name, self.net.free_port(self.name))
        if self.net.listener(address) is not None:
            raise OSError(f"address {format_address(address)} is already in use")
        async with trio.open_nursery() as nursery:
            self.net.listen(address, handler, nursery)
            try:
                task_status.started(address)
                await trio.sleep_forever()
            finally:
                self.net.unlisten(address)

    async def connect(self, address: Address) -> trio.abc.Stream:
        """A connection to ``address``, after one round trip; refused if nothing listens
        there; across a partition or to a cut host, it waits until cancelled."""
        net, remote = self.net, address[0]
        if not net.reachable(self.name, remote):
            await trio.sleep_forever()  # SYNs into silence: the caller's timeout ends it
        await trio.sleep(2 * net.profile.latency_s)  # SYN, SYN-ACK
        listening = net.listener(address)
        if listening is None or not net.reachable(self.name, remote):
            raise ConnectionRefusedError(f"nothing listens on {format_address(address)}")
        handler, nursery = listening
        there, back = _Pipe(net.stats_of(remote)), _Pipe(net.stats_of(self.name))
        ours = SimStream(net, self.name, remote, inbox=back, outbox=there)
        theirs = SimStream(net, remote, self.name, inbox=there, outbox=back)
        net.connected(ours, theirs)
        self._next_port += 1
        nursery.start_soon(handler, theirs, (self.name, self._next_port))
        return ours
