from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blazemesh.protocol.codec import encode_change
from blazemesh.protocol.codec.messages import (
    MAX_VV_TOTAL_RUNS,
    MessageDecoder,
    MessageEncoder,
    Ping,
    Summary,
)
from blazemesh.protocol.errors import LocalProtocolError
from blazemesh.protocol.fingerprints import change_digest
from blazemesh.protocol.hlc import pack
from blazemesh.protocol.model import Change, Put
from blazemesh.protocol.ring import WHOLE_RING, place
from blazemesh.protocol.sync import (
    Incoming,
    LinkDown,
    PeerHello,
    PeerRefused,
    Refusals,
    SyncConfig,
    SyncError,
    SyncLink,
)
from blazemesh.protocol.vv import VersionVector
from tests.protocol.holdings import FingerprintIndex


class FakeNode:
    """A node reduced to what sync needs: a version vector and the changes it holds."""

    def __init__(self, name: str) -> None:
        self.id = name.encode().ljust(16, b"\0")
        self.vv = VersionVector()
        self.changes: dict[tuple[bytes, int], list[Change]] = {}  # every version held
        self.holdings = FingerprintIndex()
        self.seq = 0
        self.wall_ms = 1_000  # this node's wall clock, as its links read it

    def write(self, n: int = 1, *, pad: int = 0) -> None:
        for _ in range(n):
            self.seq += 1
            fields = {"n": self.seq, "pad": "x" * pad} if pad else {"n": self.seq}
            op = Put(collection="c", key=f"{self.id[:1]!r}{self.seq}", fields=fields)
            self.apply([Change(origin=self.id, seq=self.seq, hlc=pack(1000, self.seq), ops=(op,))])

    def apply(self, changes: list[Change]) -> None:
        """Hold each change, or each version of a dot held that is not (as a store does)."""
        for change in changes:
            self.vv.add(change.origin, change.seq)
            if self.holdings.add(change.origin, change.seq, change_digest(encode_change(change))):
                self.changes.setdefault(change.dot, []).append(change)

    def fetch(self, ranges: list[tuple[bytes, tuple[int, int]]]) -> list[Change]:
        held = self.changes
        return [c for o, (a, b) in ranges for s in range(a, b + 1) for c in held.get((o, s), [])]

    def link(self, peer: FakeNode | None = None, **config: float) -> SyncLink:
        return SyncLink(
            node_id=self.id,
            have=self.vv,
            holdings=self.holdings,
            now=0.0,
            wall_ms=lambda: self.wall_ms,
            config=SyncConfig(**config) if config else None,  # type: ignore[arg-type]
            expect_peer=None if peer is None else peer.id,
        )


def deliver(src: SyncLink, dst: SyncLink, dst_node: FakeNode, now: float = 0.0) -> list[object]:
    """Move src's bytes to dst; apply incoming changes; return dst's events."""
    data = src.data_to_send()
    if data:
        dst.receive_data(data, now)
    events: list[object] = []
    while (event := dst.next_event()) is not None:
        events.append(event)
        if isinstance(event, Incoming):
            dst_node.apply(list(event.changes))
            dst.applied(event.batch)
    return events


def push(link: SyncLink, node: FakeNode) -> None:
    while ranges := link.plan():
        link.send_changes(node.fetch(ranges))


def settle(pairs: list[tuple[FakeNode, SyncLink, FakeNode, SyncLink]], rounds: int = 20) -> None:
    """Rounds of sending and delivering both ways, each ended by the links' timers (which
    send the ACKs a lone batch waits for), as the agent's tick does."""
    for _ in range(rounds):
        for a, la, b, lb in pairs:
            push(la, a)
            push(lb, b)
            deliver(la, lb, b)
            deliver(lb, la, a)
            assert la.tick(0.0) is None
            assert lb.tick(0.0) is None


def test_hello_opens_both_sides() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    la, lb = a.link(b), b.link(a)
    assert deliver(la, lb, b) == [PeerHello(node_id=a.id, meta={})]
    assert deliver(lb, la, a) == [PeerHello(node_id=b.id, meta={})]
    assert la.open
    assert lb.open


def test_a_second_hello_on_one_link_is_the_peers_error() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    lb = b.link(a)
    lb.receive_data(a.link().data_to_send() * 2, 0.0)
    assert isinstance(lb.next_event(), PeerHello)
    with pytest.raises(SyncError, match="a second hello on one link"):
        lb.next_event()


def test_catch_up_then_stream_then_in_sync() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    a.write(2500)  # more than one plan's worth
    la, lb = a.link(b), b.link(a)
    settle([(a, la, b, lb)])
    assert b.vv == a.vv
    a.write(3)
    b.write(2)
    settle([(a, la, b, lb)])
    assert a.vv == b.vv
    assert la.status().in_sync
    assert lb.status().in_sync
    assert la.status().changes_sent == 2503


def test_window_bounds_bytes_in_flight_until_acked() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    a.write(300)
    la, lb = a.link(b, window_bytes=2000, batch_changes=10), b.link(a)
    deliver(la, lb, b)
    deliver(lb, la, a)
    sent = 0
    while ranges := la.plan():
        la.send_changes(a.fetch(ranges))
        sent += 1
    assert 1 <= sent < 30  # stopped by the window, not by running out
    status = la.status()
    assert status.in_flight_bytes >= 2000
    assert status.behind_out == 300 - 0  # nothing acknowledged yet
    deliver(la, lb, b)
    deliver(lb, la, a)  # the ack frees the window
    assert la.status().in_flight_bytes == 0
    assert la.plan()


def test_small_batches_wait_for_an_ack_while_two_are_unacknowledged() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    la, lb = a.link(b, batch_changes=10), b.link(a)
    settle([(a, la, b, lb)])
    for _ in range(2):  # an idle link: each write goes at once
        a.write()
        assert la.plan()
        la.send_changes(a.fetch([(a.id, (a.seq, a.seq))]))
    sent = la.data_to_send()
    a.write(3)
    assert not la.ready()  # nothing worth waking a writer for
    assert la.plan() == []  # two small batches await their ACK: these three wait
    a.write(10)
    full = la.plan()
    assert full == [(a.id, (3, 12))]  # a full batch is never held back
    la.send_changes(a.fetch(full))
    a.write(1)
    assert la.plan() == []
    lb.receive_data(sent, 0.0)
    deliver(la, lb, b)
    deliver(lb, la, a)  # one cumulative ACK for all three batches
    assert la.ready()
    assert la.plan() == [(a.id, (13, 16))]  # everything that waited, in one batch
    la.send_changes(a.fetch([(a.id, (13, 16))]))
    deliver(la, lb, b)
    assert not la.ready()  # the peer has been sent everything
    assert not lb.ready()  # a lone batch: its ACK waits for the next tick
    assert lb.tick(0.0) is None
    assert lb.ready()  # an ACK to send


def test_a_lone_batch_is_acknowledged_at_the_tick_two_at_once() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    la, lb = a.link(b), b.link(a)
    settle([(a, la, b, lb)])
    a.write()
    push(la, a)
    deliver(la, lb, b)
    assert lb.data_to_send() == b""  # delayed
    a.write()
    push(la, a)  # a second small batch goes without waiting (small_in_flight is 2)
    deliver(la, lb, b)
    deliver(lb, la, a)  # both acknowledged at once
    assert la.status().in_flight_bytes == 0
    a.write()
    push(la, a)
    deliver(la, lb, b)
    b.write()
    push(lb, b)  # a CHANGES message going the other way carries the owed ACK
    deliver(lb, la, a)
    assert la.status().in_flight_bytes == 0
    assert la.status().in_sync


def test_single_writes_never_wait_for_a_delayed_ack() -> None:
    """Nagle's rule and the delayed ACK together: writes one at a time, each sent as soon
    as it is made, with no tick ever run."""
    a, b = FakeNode("a"), FakeNode("b")
    la, lb = a.link(b, batch_changes=10), b.link(a)
    deliver(la, lb, b)
    deliver(lb, la, a)
    for n in range(1, 30):
        a.write()
        assert la.plan() == [(a.id, (n, n))]
        la.send_changes(a.fetch([(a.id, (n, n))]))
        deliver(la, lb, b)
        deliver(lb, la, a)
    assert b.vv == a.vv


def test_a_sender_must_allow_two_small_batches_in_flight() -> None:
    with pytest.raises(LocalProtocolError, match="small_in_flight must be at least 2"):
        SyncConfig(small_in_flight=1)


def test_forwarding_along_a_line() -> None:
    a, b, c = FakeNode("a"), FakeNode("b"), FakeNode("c")
    ab, ba = a.link(b), b.link(a)
    bc, cb = b.link(c), c.link(b)
    a.write(5)
    c.write(4)
    settle([(a, ab, b, ba), (b, bc, c, cb)])
    assert a.vv == b.vv == c.vv
    assert a.vv.count() == 9


def test_no_change_is_sent_twice_on_a_link() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    a.write(50)
    la, lb = a.link(b), b.link(a)
    settle([(a, la, b, lb)])
    b_got = lb.status().changes_received
    a.write(1)
    settle([(a, la, b, lb)])
    assert lb.status().changes_received == b_got + 1


def test_summary_repairs_a_change_the_peer_refused() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    la, lb = a.link(b, dead_after_s=60), b.link(a, dead_after_s=60)
    settle([(a, la, b, lb)])
    a.write(3)
    push(la, a)
    data = la.data_to_send()
    lb.receive_data(data, 0.0)
    event = lb.next_event()
    assert isinstance(event, Incoming)
    refused = event.changes[1]
    b.apply([c for c in event.changes if c is not refused])  # the middle one is refused
    lb.refused([refused.dot], "clock")
    lb.applied(event.batch)
    assert lb.tick(0.0) is None  # the ACK of a lone batch
    assert deliver(lb, la, a) == [PeerRefused(reason="clock", changes=1, clock_offset_ms=0)]
    assert refused.dot not in b.vv
    assert lb.status().refused_in == Refusals(changes=1, reason="clock", last_at=0.0)
    assert la.status().refused_out == Refusals(changes=1, reason="clock", last_at=0.0)
    assert la.status().behind_out == 0  # a believes b has everything
    assert lb.tick(6.0) is None  # b is behind on a refused change: not a stall
    deliver(lb, la, a, now=6.0)  # b's SUMMARY reaches a
    push(la, a)
    deliver(la, lb, b)
    assert refused.dot in b.vv


def test_a_pruned_origin_is_not_pushed_until_grafted() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    la, lb = a.link(b, dead_after_s=60), b.link(a, dead_after_s=60)
    settle([(a, la, b, lb)])
    lb.prune([a.id])
    lb.prune([a.id])  # once is enough: nothing more is sent
    deliver(lb, la, a)
    assert not lb.pushed_here(a.id)
    a.write(3)
    assert not la.ready()
    assert la.plan() == []
    assert la.status().behind_out == 0  # b gets those another way: not a's lag
    lb.graft()
    assert lb.pushed_here(a.id)
    deliver(lb, la, a)
    settle([(a, la, b, lb)])
    assert b.vv == a.vv


@pytest.mark.parametrize("lazy_by", ["prune", "arcs"])
def test_a_side_behind_on_a_lazy_origin_grafts_it_back_by_itself(lazy_by: str) -> None:
    a, b = FakeNode("a"), FakeNode("b")
    la = a.link(b, dead_after_s=60, summary_every_s=5, graft_after_s=1)
    lb = b.link(a, dead_after_s=60, summary_every_s=5, graft_after_s=1)
    settle([(a, la, b, lb)])
    not_a = [(place(a.id) + 1, place(a.id) + 2)]
    if lazy_by == "prune":
        lb.prune([a.id])
    else:
        lb.ask_for(not_a)
    deliver(lb, la, a)
    a.write(2)
    push(la, a)
    deliver(la, lb, b)
    assert b.vv.base(a.id) == 0  # not pushed
    assert la.tick(5.0) is None  # a's SUMMARY: b learns what a holds
    deliver(la, lb, b, now=5.0)
    assert lb.tick(5.5) is None
    assert not lb.pushed_here(a.id)  # not yet: the changes may be on their way another way
    assert lb.tick(6.0) is None
    assert lb.pushed_here(a.id)  # grafted: it comes from a after all
    deliver(lb, la, a, now=6.0)
    push(la, a)
    deliver(la, lb, b, now=6.0)
    assert b.vv == a.vv
    lb.ask_for(not_a)  # new arcs end the graft
    assert not lb.pushed_here(a.id)


def test_arcs_choose_the_origins_pushed_and_cancel_prunes() -> None:
    a, b, c = FakeNode("a"), FakeNode("b"), FakeNode("c")
    c.write(2)
    a.apply([change for versions in c.changes.values() for change in versions])
    a.write(3)
    la, lb = a.link(b, dead_after_s=60), b.link(a, dead_after_s=60)
    lb.ask_for([(place(c.id), place(c.id))])  # only c's changes, from a
    settle([(a, la, b, lb)])
    assert b.vv.base(c.id) == 2
    assert b.vv.base(a.id) == 0
    assert la.status().behind_out == 0  # b gets a's changes another way: not a's lag
    assert not lb.pushed_here(a.id)
    assert lb.pushed_here(c.id)
    lb.prune([c.id])
    assert not lb.pushed_here(c.id)
    lb.ask_for([(place(c.id), place(c.id))])  # the same arcs: the prune is cancelled
    assert lb.pushed_here(c.id)
    assert lb.data_to_send() != b""  # PRUNE, then ARCS
    lb.ask_for([(place(c.id), place(c.id))])
    assert lb.data_to_send() == b""  # nothing changed: nothing sent
    lb.ask_for(WHOLE_RING)
    settle([(a, la, b, lb)])
    assert b.vv == a.vv


def test_prune_and_graft_before_the_hello_or_of_nothing_send_nothing() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    la = a.link(b)
    hello = la.data_to_send()
    la.prune([b.id])  # the link is not open yet
    la.graft([b.id])
    assert la.data_to_send() == b""
    assert hello


def test_dead_link_is_detected() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    la, lb = a.link(b), b.link(a)
    settle([(a, la, b, lb)])
    assert la.tick(4.9) is None
    down = la.tick(5.0)
    assert isinstance(down, LinkDown)
    assert "nothing received" in down.reason


def test_keepalives_keep_a_quiet_link_alive_and_measure_rtt() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    la, lb = a.link(b), b.link(a)
    settle([(a, la, b, lb)])
    now = 0.0
    for _ in range(40):
        now += 0.5
        assert la.tick(now) is None
        assert lb.tick(now) is None
        deliver(la, lb, b, now)
        deliver(lb, la, a, now + 0.01)
    assert la.status().rtt_s == pytest.approx(0.01)


def test_each_side_learns_the_peers_clock_from_hello_and_pong() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    b.wall_ms = a.wall_ms + 86_400_000  # b's clock runs a day ahead
    la, lb = a.link(b), b.link(a)
    deliver(la, lb, b)
    deliver(lb, la, a)
    assert la.status().clock_offset_ms == 86_400_000
    assert lb.status().clock_offset_ms == -86_400_000
    b.wall_ms -= 86_400_000  # b's clock is set right; a hears of it at the next PONG
    assert la.tick(1.0) is None  # a PING
    deliver(la, lb, b, 1.0)
    a.wall_ms += 20  # 20 ms pass while the PONG comes back
    deliver(lb, la, a, 1.02)
    assert la.status().clock_offset_ms == -10  # b read its clock half a round trip ago


def test_stall_when_the_peer_never_acknowledges() -> None:
    """b receives a's changes but its applier hangs: pings flow, acks never come."""
    a, b = FakeNode("a"), FakeNode("b")
    a.write(5)
    la, lb = a.link(b), b.link(a)
    deliver(la, lb, b)
    deliver(lb, la, a)
    push(la, a)
    now, down = 0.0, None
    while down is None and now < 30:
        now += 0.5
        lb.tick(now)
        data = la.data_to_send()
        if data:
            lb.receive_data(data, now)
        while lb.next_event() is not None:
            pass  # received, never applied: no ack
        deliver(lb, la, a, now)
        down = la.tick(now)
    assert isinstance(down, LinkDown)
    assert "acknowledged nothing" in down.reason
    assert now == pytest.approx(15.0, abs=0.6)


def test_stall_when_the_peer_is_ahead_but_sends_nothing() -> None:
    """a told b it holds 5 changes, then sends only keepalives (its sender is stuck)."""
    a, b = FakeNode("a"), FakeNode("b")
    a.write(5)
    la, lb = a.link(b), b.link(a)
    deliver(la, lb, b)
    deliver(lb, la, a)
    now, down = 0.0, None
    while down is None and now < 30:
        now += 0.5
        la.tick(now)
        deliver(la, lb, b, now)
        down = lb.tick(now)
        deliver(lb, la, a, now)
    assert isinstance(down, LinkDown)
    assert "holds 5 changes this node lacks" in down.reason
    assert now == pytest.approx(15.0, abs=0.6)


def test_protocol_violations() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    enc = MessageEncoder()
    link = b.link(a)
    link.receive_data(enc.encode(Summary(vv=VersionVector(), fingerprints={})), 0.0)
    with pytest.raises(SyncError, match="expected a hello"):
        link.next_event()
    link = b.link(FakeNode("z"))
    link.receive_data(a.link().data_to_send(), 0.0)
    with pytest.raises(SyncError, match="another node"):
        link.next_event()
    link = a.link()
    link.receive_data(a.link().data_to_send(), 0.0)
    with pytest.raises(SyncError, match="back to this node"):
        link.next_event()


def test_batches_out_of_order_are_refused() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    a.write(1)
    lb = b.link(a)
    lb.receive_data(a.link().data_to_send(), 0.0)
    assert isinstance(lb.next_event(), PeerHello)
    ((_, skipping_one),) = MessageEncoder().encode_changes(
        2, [c for v in a.changes.values() for c in v]
    )
    lb.receive_data(skipping_one, 0.0)
    with pytest.raises(SyncError, match="batch 2 arrived after 0"):
        lb.next_event()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), nodes=st.integers(2, 5))
def test_random_graphs_writes_and_chunking_converge(seed: int, nodes: int) -> None:
    rng = random.Random(seed)
    fakes = [FakeNode(f"n{i}") for i in range(nodes)]
    # A random spanning tree plus a few more edges: connected, sometimes with cycles.
    edges = {(rng.randrange(i), i) for i in range(1, nodes)}
    edges |= {tuple(sorted(rng.sample(range(nodes), 2))) for _ in range(rng.randint(0, 3))}
    links = {(i, j): fakes[i].link(fakes[j], batch_changes=rng.randint(1, 20)) for i, j in edges}
    links |= {(j, i): fakes[j].link(fakes[i]) for i, j in edges}
    for _ in range(60):
        node = rng.choice(fakes)
        node.write(rng.randint(0, 3))
        i, j = rng.choice(sorted(links))
        push(links[i, j], fakes[i])
        data = links[i, j].data_to_send()
        dst = links[j, i]
        step = rng.randint(1, 200)
        for start in range(0, len(data), step):
            dst.receive_data(data[start : start + step], 0.0)
            while (event := dst.next_event()) is not None:
                if isinstance(event, Incoming):
                    fakes[j].apply(list(event.changes))
                    dst.applied(event.batch)
    for _ in range(3 * nodes):
        for (i, j), link in sorted(links.items()):
            push(link, fakes[i])
            deliver(link, links[j, i], fakes[j])
    assert all(f.vv == fakes[0].vv for f in fakes)
    assert fakes[0].vv.count() == sum(f.seq for f in fakes)


def test_an_honest_sender_passes_its_window_by_one_change_at_most() -> None:
    """One plan names up to `batch_changes` changes, however big they are: the sender
    takes what its window holds and leaves the rest for after the ACKs. (It used to send
    the whole plan: 1,000-op transactions put ten times the window in flight, and the
    receiver dropped the link for ignoring flow control.)"""
    a, b = FakeNode("a"), FakeNode("b")
    a.write(200, pad=2_000)
    window, change_bytes = 8_000, 2_100
    la = a.link(b, window_bytes=window)
    lb = b.link(a, receive_limit_bytes=window + change_bytes)
    most = 0
    for _ in range(200):
        push(la, a)
        most = max(most, la.status().in_flight_bytes)
        deliver(la, lb, b)  # would raise SyncError("ignores flow control")
        deliver(lb, la, a)
        assert lb.tick(0.0) is None
    assert b.vv == a.vv
    assert window <= most <= window + change_bytes


def test_a_peer_that_ignores_flow_control_is_refused() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    a.write(400)
    la = a.link(b, window_bytes=1 << 30, batch_changes=50)  # a misbehaving sender
    lb = b.link(a, receive_limit_bytes=3_000)  # the 400 changes are about 7.6 KB
    deliver(la, lb, b)
    deliver(lb, la, a)
    while ranges := la.plan():
        la.send_changes(a.fetch(ranges))
    lb.receive_data(la.data_to_send(), 0.0)

    def receive_without_applying() -> None:
        while lb.next_event() is not None:
            pass

    with pytest.raises(SyncError, match="ignores flow control"):
        receive_without_applying()


def test_applying_frees_the_receive_budget() -> None:
    a, b = FakeNode("a"), FakeNode("b")
    a.write(400)
    la = a.link(b, window_bytes=1 << 30, batch_changes=50)
    lb = b.link(a, receive_limit_bytes=3_000)
    for _ in range(20):
        push(la, a)
        deliver(la, lb, b)  # applies each batch as it arrives
        deliver(lb, la, a)
    assert b.vv == a.vv


def test_a_peer_that_scatters_changes_past_any_vector_is_dropped() -> None:
    """What a link remembers of its peer grows with what the peer sends: changes of one
    origin each apart from the next would grow it without bound, so past what a version
    vector may hold on the wire the link ends."""
    a, b = FakeNode("a"), FakeNode("b")
    la, lb = a.link(b), b.link(a)
    deliver(la, lb, b)
    deliver(lb, la, a)
    encoder = MessageEncoder()
    origin = b"z" * 16
    op = Put(collection="c", key="k", fields={})
    scattered = [
        Change(origin=origin, seq=2 * i, hlc=pack(1_000, 0), ops=(op,))
        for i in range(1, MAX_VV_TOTAL_RUNS + 2)
    ]
    messages = encoder.encode_changes(1, scattered)

    def receive_and_apply() -> None:
        for _, data in messages:
            lb.receive_data(data, 0.0)
            while (event := lb.next_event()) is not None:
                assert isinstance(event, Incoming)
                lb.applied(event.batch)

    with pytest.raises(SyncError, match="scattered"):
        receive_and_apply()


def test_a_peer_that_never_reads_cannot_grow_the_output() -> None:
    """Replies wait one of a kind: 10,000 PINGs, SUMMARY periods and refusals while the
    writer is blocked leave one PONG (the last token), one SUMMARY and one REFUSED."""
    a, b = FakeNode("a"), FakeNode("b")
    la, lb = a.link(b, dead_after_s=1e9, keepalive_s=1e8), b.link(a)
    settle([(a, la, b, lb)])
    encoder = MessageEncoder()
    pings = b"".join(encoder.encode(Ping(token=t)) for t in range(1, 10_001))
    for now in range(1, 60):  # a minute of ticks: a SUMMARY due every 5 s
        la.receive_data(pings, float(now))
        assert la.next_event() is None
        la.refused([(b.id, now)], "clock")
        assert la.tick(float(now)) is None
    decoder = MessageDecoder()
    decoder.feed(la.data_to_send())
    kinds = [type(message).__name__ for message in decoder]
    assert sorted(kinds) == ["Pong", "Refused", "Summary"]
    decoder = MessageDecoder()
    decoder.feed(la.data_to_send() or b"")
    assert list(decoder) == []
