"""A stream that delays, splits and cuts what it carries, from a seeded RNG."""

from __future__ import annotations

import random

import trio


class Faults:
    """Shared fault budget and RNG for every stream of a test network."""

    def __init__(self, seed: object, *, cuts: int, p_cut: float, p_delay: float) -> None:
        self.rng = random.Random(seed)
        self.cuts_left = cuts
        self.p_cut = p_cut
        self.p_delay = p_delay
        self.cuts = 0

    def wrap(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        return FaultyStream(stream, self)


class FaultyStream(trio.abc.Stream):
    """Delays sends, splits them in two, or sends part of one and then breaks the connection."""

    def __init__(self, inner: trio.abc.Stream, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        faults, rng = self._faults, self._faults.rng
        if faults.cuts_left and rng.random() < faults.p_cut:
            faults.cuts_left -= 1
            faults.cuts += 1
            await self._inner.send_all(bytes(data[: rng.randrange(len(data) + 1)]))
            await self._inner.aclose()
            raise trio.BrokenResourceError("fault injected: connection cut mid-message")
        if rng.random() < faults.p_delay:
            await trio.sleep(rng.uniform(0, 0.2))
        if len(data) > 1 and rng.random() < 0.3:
            split = rng.randrange(1, len(data))
            await self._inner.send_all(data[:split])
            await trio.sleep(rng.uniform(0, 0.05))
            data = data[split:]
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._inner.aclose()
