"""One link's tasks against a scripted peer over a memory stream."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing

from agent.link import Link
from agent.store import Outcome
from protocol.codec import PROTOCOL_VERSION
from protocol.codec.messages import Ack, Hello, MessageDecoder, MessageEncoder
from protocol.hlc import pack
from protocol.model import Change, Put
from protocol.sync import SyncLink
from protocol.vv import VersionVector

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


async def test_batches_queued_together_commit_together_with_one_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    replica = RecordingReplica()
    link = Link(
        stream=ours,
        sync=SyncLink(
            node_id=B, have=VersionVector(), now=trio.current_time(), wall_ms=lambda: 1_000
        ),
        replica=replica,  # type: ignore[arg-type]
        fetch=lambda ranges: [],
        on_hello=lambda link: None,
        on_applied=lambda link, changes, outcomes: None,
        address=("peer", 1),
        initiated=False,
    )
    encoder, decoder = MessageEncoder(), MessageDecoder()
    script = [
        encoder.encode(
            Hello(version=PROTOCOL_VERSION, node_id=A, vv=VersionVector(), clock_ms=1_000)
        )
    ]
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
