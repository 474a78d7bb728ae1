"""Hypothesis drives a mesh of 3 to 5 real nodes through writes, partitions, heals, crashes,
restarts and disk snapshots put back in place; after the final heal every replica must hold
the same changes (the same dots, and under them the same contents) and the same state, and
every write whose call returned (but those a snapshot put back took from the only node that
held them).

The nodes run in one trio loop on the autojump clock, in a thread of its own for the whole
example; each rule calls into it with `trio.from_thread.run`.
"""

from __future__ import annotations

import functools
import random
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from blazemesh.agent.assemble import run_node
from blazemesh.agent.links.network import Address, Handler, MemoryNetwork
from blazemesh.agent.links.node import NodeConfig
from blazemesh.agent.storage.paths import DB_FILE
from blazemesh.agent.storage.replica import Replica, open_replica
from blazemesh.agent.trust.membership import Mesh, new_mesh
from tests.agent.cluster import TEST_SYNC

T = TypeVar("T")


class TrioThread:
    """A trio loop on the autojump clock, running in a background thread."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        try:
            trio.run(self._main, clock=trio.testing.MockClock(autojump_threshold=0))
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join()
        if self._error is not None:
            raise self._error


class PartitionNetwork:
    """A memory network where the link between two nodes can be cut and restored."""

    def __init__(self) -> None:
        self._inner = MemoryNetwork()
        self.blocked: set[frozenset[int]] = set()
        self._streams: dict[frozenset[int], list[trio.abc.Stream]] = {}

    def view(self, me: int) -> _View:
        return _View(self, me)

    def cut(self, a: int, b: int) -> None:
        pair = frozenset((a, b))
        self.blocked.add(pair)
        for stream in self._streams.pop(pair, []):
            self._abort(stream)

    @staticmethod
    def _abort(stream: trio.abc.Stream) -> None:
        # Memory streams close synchronously underneath: both ends see a broken stream.
        stream.send_stream.close()  # type: ignore[attr-defined]
        stream.receive_stream.close()  # type: ignore[attr-defined]


class _View:
    def __init__(self, network: PartitionNetwork, me: int) -> None:
        self._network = network
        self._me = me

    async def serve(
        self, address: Address, handler: Handler, *, task_status: trio.TaskStatus[Address]
    ) -> None:
        await self._network._inner.serve(address, handler, task_status=task_status)

    async def connect(self, address: Address) -> trio.abc.Stream:
        peer = int(address[0].removeprefix("node"))
        pair = frozenset((self._me, peer))
        if pair in self._network.blocked:
            await trio.lowlevel.checkpoint()
            raise ConnectionRefusedError("partitioned")
        stream = await self._network._inner.connect(address)
        self._network._streams.setdefault(pair, []).append(stream)
        return stream


class MeshMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = TrioThread()
        self.tmp = Path(tempfile.mkdtemp(prefix="bm-stateful-"))
        self.network = PartitionNetwork()
        self.mesh: Mesh = new_mesh("stateful")
        self.scopes: dict[int, trio.CancelScope] = {}
        self.stopped: dict[int, trio.Event] = {}
        self.replicas: dict[int, Replica] = {}
        self.acknowledged: set[tuple[bytes, int]] = set()
        self.since_snapshot: dict[int, list[tuple[bytes, int]]] = {}  # a node's writes since
        # its snapshot: a snapshot put back may take them from the only node that held them
        self.n = 0

    @initialize(n=st.integers(3, 5))
    def start(self, n: int) -> None:
        self.n = n
        for i in range(n):
            self.loop.call(self._start_node, i)

    async def _start_node(self, i: int) -> None:
        started = trio.Event()

        self.stopped[i] = trio.Event()

        async def run() -> None:
            with trio.CancelScope() as scope:
                self.scopes[i] = scope
                async with open_replica(self.tmp / f"n{i}", create=True, threads=False) as r:
                    self.replicas[i] = r
                    run = functools.partial(
                        run_node,
                        r,
                        mesh=self.mesh,
                        network=self.network.view(i),
                        config=NodeConfig(
                            listen=[(f"node{i}", 7000)],
                            peers=[(f"node{j}", 7000) for j in range(i + 1, self.n)],
                            sync=TEST_SYNC,
                        ),
                        rng=random.Random(i),
                    )
                    async with trio.open_nursery() as nursery:
                        await nursery.start(run)
                        started.set()
                        await trio.sleep_forever()
            self.replicas.pop(i, None)
            self.stopped[i].set()

        self.loop.nursery.start_soon(run)
        await started.wait()

    def _running(self) -> list[int]:
        return sorted(self.replicas)

    @precondition(lambda self: self.replicas)
    @rule(data=st.data(), key=st.integers(0, 7), value=st.integers(0, 1000))
    def write(self, data: st.DataObject, key: int, value: int) -> None:
        i = data.draw(st.sampled_from(self._running()))
        change = self.loop.call(self.replicas[i].put, "c", f"k{key}", {"v": value, "by": i})
        self._acknowledged(i, change.dot)

    def _acknowledged(self, i: int, dot: tuple[bytes, int]) -> None:
        self.acknowledged.add(dot)
        if i in self.since_snapshot:
            self.since_snapshot[i].append(dot)

    @precondition(lambda self: self.replicas)
    @rule(data=st.data(), key=st.integers(0, 7))
    def delete(self, data: st.DataObject, key: int) -> None:
        i = data.draw(st.sampled_from(self._running()))
        change = self.loop.call(self.replicas[i].delete, "c", f"k{key}")
        self._acknowledged(i, change.dot)

    @rule(data=st.data())
    def partition(self, data: st.DataObject) -> None:
        a, b = data.draw(st.lists(st.integers(0, self.n - 1), min_size=2, max_size=2, unique=True))
        self.loop.call(self._cut, a, b)

    async def _cut(self, a: int, b: int) -> None:
        self.network.cut(a, b)
        await trio.lowlevel.checkpoint()

    @precondition(lambda self: self.network.blocked)
    @rule(data=st.data())
    def heal(self, data: st.DataObject) -> None:
        pair = data.draw(st.sampled_from(sorted(self.network.blocked, key=sorted)))
        self.network.blocked.discard(pair)

    @precondition(lambda self: len(self.replicas) > 1)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self._running()))
        self.loop.call(self._stop_node, i)

    async def _stop_node(self, i: int) -> None:
        self.scopes.pop(i).cancel()
        await self.stopped[i].wait()

    @precondition(lambda self: len(self.replicas) < self.n)
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from([j for j in range(self.n) if j not in self.replicas]))
        self.loop.call(self._start_node, i)

    @precondition(lambda self: self.replicas)
    @rule(data=st.data())
    def snapshot(self, data: st.DataObject) -> None:
        """Stop a node, copy its data directory aside (a disk snapshot), start it again."""
        i = data.draw(st.sampled_from(self._running()))
        self.loop.call(self._stop_node, i)
        shutil.rmtree(self.tmp / f"snap{i}", ignore_errors=True)
        shutil.copytree(self.tmp / f"n{i}", self.tmp / f"snap{i}")
        self.since_snapshot[i] = []
        self.loop.call(self._start_node, i)

    @precondition(lambda self: self.since_snapshot)
    @rule(data=st.data())
    def put_back(self, data: st.DataObject) -> None:
        """Put a node's snapshot back in place (the same files, their old bytes): nothing
        tells it at open that it lost what it wrote since; it writes on, and may reuse
        seqs its peers hold under other contents."""
        i = data.draw(st.sampled_from(sorted(self.since_snapshot)))
        if i in self.replicas:
            self.loop.call(self._stop_node, i)
        node_dir, snap = self.tmp / f"n{i}", self.tmp / f"snap{i}"
        for name in (DB_FILE, DB_FILE + ".id"):
            shutil.copyfile(snap / name, node_dir / name)
        for name in (DB_FILE + "-wal", DB_FILE + "-shm"):
            (node_dir / name).unlink(missing_ok=True)
        # Its writes since the snapshot are lost if no peer took them before: not owed.
        self.acknowledged.difference_update(self.since_snapshot[i])
        self.loop.call(self._start_node, i)
        for key in (data.draw(st.integers(0, 7)), data.draw(st.integers(0, 7))):
            # At once, before any link is up: the seqs a peer may hold under other contents.
            change = self.loop.call(self.replicas[i].put, "c", f"k{key}", {"back": i})
            self._acknowledged(i, change.dot)

    @rule(seconds=st.sampled_from([0.1, 1.0, 10.0]))
    def wait(self, seconds: float) -> None:
        self.loop.call(trio.sleep, seconds)

    def teardown(self) -> None:
        try:
            if self.n:
                self.network.blocked.clear()
                for i in range(self.n):
                    if i not in self.replicas:
                        self.loop.call(self._start_node, i)
                self.loop.call(self._until_converged)
                vvs = [self.replicas[i].vv for i in range(self.n)]
                assert all(vv == vvs[0] for vv in vvs), "replicas hold different changes"
                digests = {self.loop.call(self._digest, i) for i in range(self.n)}
                assert len(digests) == 1, "replicas differ"
                for dot in self.acknowledged:
                    assert dot in vvs[0], f"acknowledged write {dot} is missing"
        finally:
            self.loop.close()

    async def _digest(self, i: int) -> str:
        await trio.lowlevel.checkpoint()
        return self.replicas[i].digest()

    async def _until_converged(self) -> None:
        done = trio.Event()

        def check(_: object) -> None:
            vvs = [self.replicas[i].vv for i in range(self.n)]
            stores = [self.replicas[i].store for i in range(self.n)]
            if all(vv == vvs[0] for vv in vvs) and all(
                len({store.fingerprint(o) for store in stores}) == 1 for o in vvs[0].origins()
            ):
                done.set()

        removers = [self.replicas[i].on_commit(check) for i in range(self.n)]
        try:
            check(None)
            with trio.fail_after(300):
                await done.wait()
        finally:
            for remove in removers:
                remove()


MeshMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=30, deadline=None, print_blob=True
)
test_mesh_machine = MeshMachine.TestCase
