"""Memory of real agents under large changes (issue 17, item 7).

Two ``blazemesh agent`` processes (`agent.cli.launcher`) on loopback addresses, B linked to A
by a static ``--peer``, no mDNS. A takes 300 puts of 1 MiB through its control socket;
once B holds them all, the resident set size of each process (``VmRSS`` in
``/proc/PID/status``) is read, and again after the agents idle a few seconds. Baseline,
same run: each process's RSS once both are up and linked, before the writes. Before the
caches were bounded in bytes an agent kept every one of these changes in memory (54 MB
at start, 355 MB after).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import trio

from benchmarks.common import Figure
from benchmarks.lan import seen
from blazemesh.agent.cli.launcher import LocalAgent, local_agents

SUITE = "memory"
PUTS = 300
VALUE_BYTES = (1 << 20) - 64  # one value at the 1 MiB limit, its encoding's header included
FIRST_HOST = 170  # 127.0.0.170 and up
WAIT_TIMEOUT_S = 300.0
IDLE_S = 5.0  # after the writes: what the agents keep, not what they held on the way
MB = 1e6


def run() -> Iterator[Figure]:
    start, *after = trio.run(large_puts)
    for i, role in enumerate(("the writer", "its peer")):
        for when, rss in zip(("once synced", f"{IDLE_S:.0f} s later"), after, strict=True):
            yield Figure(
                suite=SUITE,
                name=f"agent RSS after {PUTS} puts of 1 MiB, {role}, {when}",
                value=rss[i] / MB,
                unit="MB",
                baseline="the same process before the writes",
                baseline_value=start[i] / MB,
            )


def rss_bytes(agent: LocalAgent) -> int:
    """The resident set size of ``agent``'s process (Linux: /proc)."""
    assert agent.process is not None
    status = Path(f"/proc/{agent.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def large_puts() -> tuple[list[int], list[int], list[int]]:
    """RSS of both agents (writer, peer) before the puts, once B holds them, and idle."""
    quiet = ["--log-level", "warning", "--discovery", "none"]
    async with local_agents(
        2, first_host=FIRST_HOST, args=lambda i: quiet, prefix="blazemesh-bench-"
    ) as agents:
        a, b = agents
        b.args = [*quiet, "--peer", f"{a.host}:{a.port}"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.start)
            nursery.start_soon(b.start)
        assert a.client is not None
        with trio.fail_after(WAIT_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(seen, b, "linked", "done")
                await a.client.call("put", {"collection": "done", "key": "linked", "fields": {}})
        start = [rss_bytes(a), rss_bytes(b)]
        with trio.fail_after(WAIT_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(seen, b, "all", "done")
                for i in range(PUTS):
                    value = bytes([i % 256]) * VALUE_BYTES
                    await a.client.call(
                        "put", {"collection": "bench", "key": f"k{i}", "fields": {"v": value}}
                    )
                await a.client.call("put", {"collection": "done", "key": "all", "fields": {}})
        synced = [rss_bytes(a), rss_bytes(b)]
        await trio.sleep(IDLE_S)
        return start, synced, [rss_bytes(a), rss_bytes(b)]
