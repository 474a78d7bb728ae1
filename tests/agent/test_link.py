"""One link's tasks against a scripted peer over a memory stream."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from blazemesh.agent.links import link as link_module
from blazemesh.agent.links.link import Link
from blazemesh.agent.storage.store import Outcome
from blazemesh.protocol.codec import PROTOCOL_VERSION
from blazemesh.protocol.codec.messages import Ack, Hello, MessageDecoder, MessageEncoder
from blazemesh.protocol.hlc import pack
from blazemesh.protocol.model import Change, Put, change_objects, held_bytes
from blazemesh.protocol.sync import SyncLink
from blazemesh.protocol.vv import VersionVector
from tests.protocol.holdings import FingerprintIndex

A, B = b"a" * 16, b"b" * 16


class RecordingReplica:
    """What a link needs of a replica, recording each call to apply changes."""

    max_batch_ops = 2_000

    def __init__(self) -> None:
        self.applied: list[list[Change]] = []

    async def apply_remote(self, changes: Sequence[Change]) -> list[Outcome]:
        self.applied.append(list(changes))
        await trio.lowlevel.checkpoint()
        return [None] * len(changes)


def change(seq: int) -> Change:
    op = Put(collection="c", key=f"k{seq}", fields={"n": seq})
    return Change(origin=A, seq=seq, hlc=pack(1_000, seq), ops=(op,))


def scripted_link(stream: trio.abc.Stream, replica: RecordingReplica) -> Link:
    return Link(
        stream=stream,
        sync=SyncLink(
            node_id=B,
            have=VersionVector(),
            holdings=FingerprintIndex(),
            now=trio.current_time(),
            wall_ms=lambda: 1_000,
        ),
        replica=replica,  # type: ignore[arg-type]
        fetch=lambda ranges: [],
        on_hello=lambda link: None,
        on_applied=lambda link, changes, outcomes: None,
        on_cloned=lambda link: None,
        address=("peer", 1),
        initiated=False,
    )


def hello(encoder: MessageEncoder) -> bytes:
    return encoder.encode(
        Hello(version=PROTOCOL_VERSION, node_id=A, vv=VersionVector(), clock_ms=1_000)
    )


async def test_batches_queued_together_commit_together_with_one_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    replica = RecordingReplica()
    link = scripted_link(ours, replica)
    encoder, decoder = MessageEncoder(), MessageDecoder()
    script = [hello(encoder)]
    for batch in (1, 2, 3):  # one read brings all three: they queue behind each other
        ((_, data),) = encoder.encode_changes(batch, [change(batch)])
        script.append(data)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        await theirs.send_all(b"".join(script))
        acks: list[Ack] = []
        with trio.fail_after(5):
            while not acks:
                decoder.feed(await theirs.receive_some())
                acks += [m for m in decoder if isinstance(m, Ack)]
        link.end("done")
    assert replica.applied == [[change(1), change(2), change(3)]]
    assert acks == [Ack(batch=3)]


class BlockedReplica(RecordingReplica):
    """A replica whose applies wait until the test lets them go; ``all_in`` is set once
    ``expect`` changes are applied."""

    def __init__(self, expect: int) -> None:
        super().__init__()
        self.go = trio.Event()
        self.all_in = trio.Event()
        self._expect = expect

    async def apply_remote(self, changes: Sequence[Change]) -> list[Outcome]:
        await self.go.wait()
        outcomes = await super().apply_remote(changes)
        if sum(map(len, self.applied)) >= self._expect:
            self.all_in.set()
        return outcomes


async def test_the_reader_stops_once_received_changes_hold_their_bound(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small ops decode to many times their wire size: a peer within its window could
    still make a node hold hundreds of MB. Past `INCOMING_HELD_BYTES` the reader waits
    for the applier, and TCP holds the peer back; nothing is lost."""
    monkeypatch.setattr(link_module, "INCOMING_HELD_BYTES", 200_000)
    ours, theirs = trio.testing.lockstep_stream_pair()  # a send waits for the reader
    op = Put(collection="c", key="k", fields={"n": 1})
    big = [Change(origin=A, seq=s, hlc=pack(1_000, 0), ops=(op,) * 500) for s in range(1, 41)]
    replica = BlockedReplica(expect=len(big))
    link = scripted_link(ours, replica)
    encoder = MessageEncoder()
    messages = encoder.encode_changes(1, big, max_bytes=4_000)  # a change each
    assert len(messages) == 40
    most = max(held_bytes(len(data), change_objects(m.changes[0])) for m, data in messages)
    sent = trio.Event()

    async def peer() -> None:
        await theirs.send_all(hello(encoder))
        for _, data in messages:
            await theirs.send_all(data)
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        nursery.start_soon(peer)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()  # the link stopped reading: the peer is held back
        assert 200_000 < link._incoming_held <= 200_000 + most
        await trio.sleep(30)  # virtual: the link is not declared dead while it waits
        assert link.reason is None
        replica.go.set()
        with trio.fail_after(5):
            await sent.wait()
            await replica.all_in.wait()
        link.end("done")
    assert [c for batch in replica.applied for c in batch] == big


def test_every_refusal_reason_this_version_sends_has_its_text() -> None:
    from blazemesh.agent.links.link import REFUSAL_TEXT
    from blazemesh.protocol.codec.messages import REFUSAL_REASONS

    assert set(REFUSAL_TEXT) == set(REFUSAL_REASONS)
