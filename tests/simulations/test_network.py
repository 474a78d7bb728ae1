"""The simulated network: it keeps the network contract (tests/agent/network_contract.py),
and its delays, loss, partitions and cuts, in virtual time."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from blazemesh.simulations.network import LinkProfile, SimNetwork
from tests.agent.cluster import cluster
from tests.agent.network_contract import CONTRACT, Harness


@pytest.mark.parametrize("check", CONTRACT, ids=lambda check: check.__name__)
@pytest.mark.parametrize(
    "profile",
    [LinkProfile(), LinkProfile(latency_s=0.05, jitter_s=0.02, bandwidth_bps=1e6, loss=0.2)],
    ids=["default", "slow and lossy"],
)
async def test_sim_hosts_keep_the_network_contract(
    check: Callable[[Harness], Awaitable[None]],
    profile: LinkProfile,
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(random.Random(7), profile)
    await check(Harness(make=lambda i: net.host(f"h{i}"), host=lambda i: f"h{i}", timeout_s=600))


async def echo_server(net: SimNetwork, nursery: trio.Nursery) -> list[bytes]:
    received: list[bytes] = []

    async def handler(stream: trio.abc.Stream, remote: tuple[str, int]) -> None:
        try:
            while data := await stream.receive_some():
                received.append(data)
        except trio.BrokenResourceError:
            pass  # a partition or cut broke it

    await nursery.start(net.host("b").serve, ("b", 1), handler)
    return received


async def read_all(stream: trio.abc.Stream, size: int) -> bytes:
    out = b""
    while len(out) < size:
        out += await stream.receive_some()
    return out


async def test_bytes_arrive_in_order_after_latency_and_transmission_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(random.Random(1), LinkProfile(latency_s=0.05, bandwidth_bps=1_000_000))
    async with trio.open_nursery() as nursery:
        got: list[bytes] = []
        done = trio.Event()

        async def handler(stream: trio.abc.Stream, remote: tuple[str, int]) -> None:
            got.append(await read_all(stream, 1_000_003))
            done.set()

        await nursery.start(net.host("b").serve, ("b", 1), handler)
        start = trio.current_time()
        stream = await net.host("a").connect(("b", 1))
        assert trio.current_time() - start == pytest.approx(0.1)  # one round trip
        for chunk in (b"x" * 1_000_000, b"abc"):
            await stream.send_all(chunk)
        with trio.fail_after(5):
            await done.wait()
        assert got == [b"x" * 1_000_000 + b"abc"]
        assert trio.current_time() - start == pytest.approx(0.1 + 0.05 + 1.0, abs=0.02)
        assert net.stats["a"].bytes_sent == net.stats["b"].bytes_received == 1_000_003
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("seed", range(5))
async def test_loss_delays_but_never_reorders_or_drops(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    net = SimNetwork(random.Random(seed), LinkProfile(latency_s=0.01, loss=0.3))
    chunks = [bytes([i]) * 10 for i in range(50)]
    async with trio.open_nursery() as nursery:
        received = await echo_server(net, nursery)
        stream = await net.host("a").connect(("b", 1))
        start = trio.current_time()
        for chunk in chunks:
            await stream.send_all(chunk)
        await stream.aclose()
        await trio.sleep(60)
        assert b"".join(received) == b"".join(chunks)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start > 0.2  # some chunks paid a retransmission timeout


async def test_partitions_and_cuts_fall_silent_and_hold_bytes_until_the_path_is_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(random.Random(0))
    async with trio.open_nursery() as nursery:
        received = await echo_server(net, nursery)
        a = net.host("a")
        stream = await a.connect(("b", 1))
        net.partition(["a"], ["b"])
        await stream.send_all(b"across")
        await trio.sleep(30)
        assert received == []
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(30):
                await a.connect(("b", 1))
        net.heal()
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1)
        assert received == [b"across"]
        net.cut("b")
        await stream.send_all(b"into the void")
        await stream.aclose()
        with trio.move_on_after(30) as silent:
            await a.connect(("b", 1))
        assert silent.cancelled_caught
        assert received == [b"across"]
        net.restore("b")
        await trio.sleep(1)
        assert received == [b"across", b"into the void"]
        with pytest.raises(ConnectionRefusedError):
            await a.connect(("b", 2))  # nothing listens there
        nursery.cancel_scope.cancel()


async def test_a_storm_breaks_every_connection_and_a_crash_only_the_hosts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(random.Random(0))
    async with trio.open_nursery() as nursery:
        await echo_server(net, nursery)

        async def idle(stream: trio.abc.Stream, remote: tuple[str, int]) -> None:
            await trio.sleep_forever()

        await nursery.start(net.host("c").serve, ("c", 1), idle)
        to_b = await net.host("a").connect(("b", 1))
        to_c = await net.host("a").connect(("c", 1))
        assert net.break_connections("c") == 2
        with pytest.raises(trio.BrokenResourceError):
            await to_c.send_all(b"x")
        await to_b.send_all(b"still fine")
        assert net.break_connections() == 2
        with pytest.raises(trio.BrokenResourceError):
            await to_b.send_all(b"x")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("profile", [LinkProfile(latency_s=0.02, jitter_s=0.01, loss=0.05)])
async def test_real_nodes_converge_across_loss_and_a_healed_partition(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, profile: LinkProfile
) -> None:
    net = SimNetwork(random.Random(3), profile)
    async with cluster(tmp_path, 3, [(0, 1), (1, 2), (2, 0)], network=net, secure=False) as c:
        for i, replica in enumerate(c.replicas):
            await replica.put("c", f"k{i}", {"i": i})
        await c.until_converged()
        net.partition(["node0"], ["node1", "node2"])
        await c.replicas[0].put("c", "lonely", {})
        await c.replicas[2].put("c", "crowd", {})
        await trio.sleep(10)
        assert await c.replicas[1].get("c", "lonely") is None
        net.heal()
        await c.until_converged()
        assert len(c.digests()) == 1
