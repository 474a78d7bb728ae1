"""A LAN of test hosts in network namespaces, built and removed by the test itself.

Each host is a namespace with one veth interface on a bridge that lives in a namespace
of its own; nothing touches the machine's real interfaces and no namespace has a route
out (the same layout as ../shared/testbed/lan-up.sh). Needs root and iproute2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

NET = "10.211.0"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"bmprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"ip netns add is not permitted here: {exc.stderr.decode().strip()}"
    ip("netns", "delete", probe)
    return None


class Lan:
    def __init__(self, prefix: str, hosts: int) -> None:
        self.prefix = prefix
        self.bridge = f"{prefix}-br"
        self.hosts = [f"{prefix}-n{i}" for i in range(1, hosts + 1)]
        self.addresses = [f"{NET}.{10 + i}" for i in range(1, hosts + 1)]

    def exec(self, i: int) -> list[str]:
        """The command prefix that runs a program on host ``i``."""
        return ["ip", "netns", "exec", self.hosts[i]]

    def cut(self, i: int) -> None:
        """Take host ``i``'s link down: it drops off the LAN, nothing tells anyone."""
        ip("-n", self.bridge, "link", "set", f"vn{i + 1}", "down")

    def restore(self, i: int) -> None:
        ip("-n", self.bridge, "link", "set", f"vn{i + 1}", "up")


@contextmanager
def lan(hosts: int) -> Iterator[Lan]:
    net = Lan(f"bmt{os.getpid() % 100_000}", hosts)
    created: list[str] = []
    try:
        ip("netns", "add", net.bridge)
        created.append(net.bridge)
        ip("-n", net.bridge, "link", "set", "lo", "up")
        ip(
            "-n",
            net.bridge,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        )
        ip("-n", net.bridge, "link", "set", "br0", "up")
        for i, (host, address) in enumerate(zip(net.hosts, net.addresses, strict=True)):
            ip("netns", "add", host)
            created.append(host)
            ip("-n", host, "link", "set", "lo", "up")
            ip(
                "link",
                "add",
                "mesh0",
                "netns",
                host,
                "type",
                "veth",
                "peer",
                "name",
                f"vn{i + 1}",
                "netns",
                net.bridge,
            )
            ip("-n", net.bridge, "link", "set", f"vn{i + 1}", "master", "br0")
            ip("-n", net.bridge, "link", "set", f"vn{i + 1}", "up")
            ip("-n", host, "addr", "add", f"{address}/24", "dev", "mesh0")
            ip("-n", host, "link", "set", "mesh0", "multicast", "on", "up")
        yield net
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
