"""The secure channel against noiseprotocol and plain TCP (issue 3's figures)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator

import trio
import trio.testing

from benchmarks.common import Figure, rate
from blazemesh.agent.links.secure import handshake
from blazemesh.agent.trust.identity import Identity
from blazemesh.agent.trust.membership import Mesh, new_mesh
from blazemesh.protocol.noise import KeyPair, NoiseHandshake
from blazemesh.protocol.session import NOISE_PROTOCOL, PROLOGUE, SecureSession

SUITE = "secure"
HANDSHAKES = 300
STREAM_HANDSHAKES = 100
SIZES = {100: 20_000, 1024: 15_000, 16 * 1024: 3_000}  # message bytes -> messages sent


def run() -> Iterator[Figure]:
    yield from handshake_cpu()
    yield from handshake_wall()
    for size, count in SIZES.items():
        yield from throughput(size, count)


# -- handshake CPU: sans-IO, both sides in this process -----------------------------------


def ours_raw_once(psk: bytes, keys: tuple[KeyPair, KeyPair]) -> None:
    i = NoiseHandshake(
        protocol_name=NOISE_PROTOCOL,
        initiator=True,
        prologue=PROLOGUE,
        static_keypair=keys[0],
        psks=(psk,),
        random_bytes=os.urandom,
    )
    r = NoiseHandshake(
        protocol_name=NOISE_PROTOCOL,
        initiator=False,
        prologue=PROLOGUE,
        static_keypair=keys[1],
        psks=(psk,),
        random_bytes=os.urandom,
    )
    r.read_message(i.write_message(b""))
    i.read_message(r.write_message(b""))
    r.read_message(i.write_message(b""))
    i.split()
    r.split()


def theirs_once(psk: bytes, keys: tuple[bytes, bytes]) -> None:
    from noise.connection import Keypair, NoiseConnection

    sides = []
    for initiator, key in ((True, keys[0]), (False, keys[1])):
        conn = NoiseConnection.from_name(NOISE_PROTOCOL.encode())
        if initiator:
            conn.set_as_initiator()
        else:
            conn.set_as_responder()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, key)
        conn.set_prologue(PROLOGUE)
        conn.set_psks(psk=psk)
        conn.start_handshake()
        sides.append(conn)
    i, r = sides
    r.read_message(i.write_message(b""))
    i.read_message(r.write_message(b""))
    r.read_message(i.write_message(b""))


def cpu_per_side_ms(fn: Callable[[], None], count: int) -> float:
    start = time.process_time()
    for _ in range(count):
        fn()
    return (time.process_time() - start) / count / 2 * 1000


def handshake_cpu() -> Iterator[Figure]:
    psk = os.urandom(32)
    private = os.urandom(32), os.urandom(32)
    keys = KeyPair.from_private(private[0]), KeyPair.from_private(private[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = cpu_per_side_ms(lambda: theirs_once(psk, private), HANDSHAKES)
    ours = cpu_per_side_ms(lambda: ours_raw_once(psk, keys), HANDSHAKES)
    yield Figure(
        suite=SUITE,
        name="Noise XXpsk3 handshake, CPU per side (protocol.noise)",
        value=ours,
        unit="ms",
        baseline="noiseprotocol 0.3.1, same pattern",
        baseline_value=theirs,
        target="<= 1 ms and not slower than noiseprotocol",
    )
    alice, bob, mesh = Identity.generate(), Identity.generate(), new_mesh("bench")
    yield Figure(
        suite=SUITE,
        name="session handshake with identity signatures, CPU per side (protocol.session)",
        value=cpu_per_side_ms(lambda: session_once(alice, bob, mesh.secret), HANDSHAKES),
        unit="ms",
        baseline="noiseprotocol 0.3.1, bare handshake",
        baseline_value=theirs,
        target="<= 1 ms",
    )


def session_once(a: Identity, b: Identity, psk: bytes) -> None:
    """A whole `SecureSession` handshake, both sides, bytes handed over in memory."""
    i, r = (
        SecureSession(
            initiator=initiator,
            public_key=me.public_key,
            sign=me.sign,
            keypair=me.noise_keypair,
            psk=psk,
            random_bytes=os.urandom,
        )
        for initiator, me in ((True, a), (False, b))
    )
    while not (i.established and r.established):
        for src, dst in ((i, r), (r, i)):
            data = src.data_to_send()
            if data:
                dst.receive_data(data)
                while dst.next_event() is not None:
                    pass


async def memory_handshake(a: Identity, b: Identity, mesh: Mesh) -> None:
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: handshake(right, initiator=False, identity=b, mesh=mesh))
        await handshake(left, initiator=True, identity=a, mesh=mesh)


# -- handshake wall time: over memory streams and loopback TCP ----------------------------


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream, trio.SocketListener]:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    return client, server, listener


async def tcp_handshakes(a: Identity, b: Identity, mesh: Mesh, count: int) -> float:
    total = 0.0
    for _ in range(count):
        client, server, listener = await tcp_pair()
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(handshake, server, initiator=False, identity=b, mesh=mesh)
            )
            await handshake(client, initiator=True, identity=a, mesh=mesh)
        total += time.perf_counter() - start
        await client.aclose()
        await server.aclose()
        await listener.aclose()
    return total / count * 1000


def handshake_wall() -> Iterator[Figure]:
    alice, bob, mesh = Identity.generate(), Identity.generate(), new_mesh("bench")

    async def memory(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            await memory_handshake(alice, bob, mesh)
        return (time.perf_counter() - start) / count * 1000

    psk = os.urandom(32)
    private = os.urandom(32), os.urandom(32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        start = time.perf_counter()
        for _ in range(HANDSHAKES):
            theirs_once(psk, private)
        theirs = (time.perf_counter() - start) / HANDSHAKES * 1000
    yield Figure(
        suite=SUITE,
        name="full handshake, both roles, trio memory streams, wall time",
        value=trio.run(memory, STREAM_HANDSHAKES),
        unit="ms",
        baseline="noiseprotocol, both roles in memory, no I/O",
        baseline_value=theirs,
    )
    yield Figure(
        suite=SUITE,
        name="full handshake, both roles, loopback TCP, wall time",
        value=trio.run(tcp_handshakes, alice, bob, mesh, STREAM_HANDSHAKES),
        unit="ms",
        baseline="noiseprotocol, both roles in memory, no I/O",
        baseline_value=theirs,
    )


# -- transport throughput: sender here, receiver in another process ----------------------


async def receiver(mode: str, expect: int, secret: bytes) -> None:
    """The receiving process: accept one connection, read ``expect`` bytes, ack with one."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listener.socket.getsockname()[1], flush=True)
    stream: trio.abc.Stream = await listener.accept()
    if mode == "secure":
        mesh = Mesh(name="bench", secret=secret)
        stream = await handshake(stream, initiator=False, identity=Identity.generate(), mesh=mesh)
    got = 0
    while got < expect:
        got += len(await stream.receive_some(65536))
    await stream.send_all(b"k")
    await stream.aclose()
    await listener.aclose()


async def send_to_process(mode: str, size: int, count: int) -> float:
    """Seconds for ``count`` messages of ``size`` bytes to reach a receiver process."""
    secret = os.urandom(32)
    framed = mode == "plain"
    message = (size.to_bytes(2, "big") if framed else b"") + os.urandom(size)
    expect = len(message) * count
    argv = [sys.executable, "-m", "benchmarks.secure", mode, str(expect), secret.hex()]
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int((await proc.stdout.receive_some(64)).decode())
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        if mode == "secure":
            mesh = Mesh(name="bench", secret=secret)
            stream = await handshake(
                stream, initiator=True, identity=Identity.generate(), mesh=mesh
            )
        start = time.perf_counter()
        for _ in range(count):
            await stream.send_all(message)
        assert await stream.receive_some(1) == b"k"
        seconds = time.perf_counter() - start
        await stream.aclose()
    finally:
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return seconds


def throughput(size: int, count: int) -> Iterator[Figure]:
    plain = trio.run(send_to_process, "plain", size, count)
    secure = trio.run(send_to_process, "secure", size, count)
    label = f"{size // 1024} KB" if size >= 1024 else f"{size} B"
    yield Figure(
        suite=SUITE,
        name=f"transport, {label} messages, loopback TCP between processes",
        value=rate(count, secure),
        unit="msg/s",
        baseline="plain trio TCP, same 2-byte framing",
        baseline_value=rate(count, plain),
        target=">= 0.5 at 16 KB" if size == 16 * 1024 else "",
    )
    yield Figure(
        suite=SUITE,
        name=f"transport, {label} messages, payload",
        value=rate(count * size, secure) / 1e6,
        unit="MB/s",
        baseline="plain trio TCP, same 2-byte framing",
        baseline_value=rate(count * size, plain) / 1e6,
    )


if __name__ == "__main__":
    trio.run(receiver, sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]))
