"""Five agents on test hosts in network namespaces: real mDNS and TCP on a private LAN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.system.agents import Agent, new_mesh, ok, running, wait_for_keys
from tests.system.lan import Lan, lan, unavailable

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

HOSTS = 5


def agents(tmp_path: Path, net: Lan, extra: dict[int, list[str]] | None = None) -> list[Agent]:
    dirs = [tmp_path / f"host{i}" for i in range(HOSTS)]
    new_mesh(dirs)
    return [
        Agent(
            d,
            ["--listen", f"{address}:7420", "--interface", address, *(extra or {}).get(i, [])],
            prefix=net.exec(i),
        )
        for i, (d, address) in enumerate(zip(dirs, net.addresses, strict=True))
    ]


def put(agent: Agent, key: str) -> str:
    ok("put", "--data-dir", str(agent.data_dir), "lan", key, f"at={key}")
    return key


def test_five_hosts_discover_converge_and_heal_after_a_cut(tmp_path: Path) -> None:
    with lan(HOSTS) as net, running(agents(tmp_path, net)) as nodes:
        keys = {put(a, f"first-{i}") for i, a in enumerate(nodes)}
        for a in nodes:
            wait_for_keys(a, "lan", keys)
        net.cut(4)  # host 5 drops off the LAN; both sides keep writing
        keys |= {put(nodes[0], "while-cut-main"), put(nodes[4], "while-cut-alone")}
        net.restore(4)
        for a in nodes:
            wait_for_keys(a, "lan", keys, timeout_s=60)
        assert len({a.info()["digest"] for a in nodes}) == 1


def test_a_star_elects_a_new_hub_when_the_hub_dies(tmp_path: Path) -> None:
    star = ["--topology", "star"]
    extra = {i: [*star, "--hub-eligible"] if i < 2 else star for i in range(HOSTS)}
    with lan(HOSTS) as net, running(agents(tmp_path, net, extra)) as nodes:
        keys = {put(a, f"first-{i}") for i, a in enumerate(nodes)}
        for a in nodes:
            wait_for_keys(a, "lan", keys)
        graph = json.loads(ok("topology", "--data-dir", str(nodes[2].data_dir), "--format", "json"))
        dead = 0 if graph["hub"] == nodes[0].info()["node_id"] else 1
        nodes[dead].kill()
        survivors = [a for i, a in enumerate(nodes) if i != dead]
        keys |= {put(a, f"after-{i}") for i, a in enumerate(survivors)}
        for a in survivors:
            wait_for_keys(a, "lan", keys, timeout_s=30)
        nodes[dead].start()  # it comes back: the star must not flap back to it
        wait_for_keys(nodes[dead], "lan", keys, timeout_s=30)
        new_hub = nodes[1 - dead].info()["node_id"]
        for spoke in nodes[2:]:
            links = [
                json.loads(line)
                for line in ok("peers", "--json", "--data-dir", str(spoke.data_dir)).splitlines()
            ]
            assert [link["node_id"] for link in links if "last_error" not in link] == [new_hub]
