"""Where a node is put together and started, whoever runs it: the agent
(`agent.service`), the simulator (`simulations.harness`), the tests' clusters and the
sync benchmark's peers all call `run_node`.

A node is its replica, the `Node` that links it to peers over a `Network`, and the
services around it: `Peering`, which turns what a `Discovery` sees into links, and the
local API on a control socket. A new service (an HTTP API, access control, a second
database) is added here, once, and every way of running a node has it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from blazemesh.agent.api import control
from blazemesh.agent.api.operations import Operations
from blazemesh.agent.discovery.adverts import Discovery
from blazemesh.agent.discovery.peering import Peering
from blazemesh.agent.links.network import Address, Network
from blazemesh.agent.links.node import Node, NodeConfig
from blazemesh.agent.storage.replica import Replica
from blazemesh.agent.trust.membership import Mesh
from blazemesh.protocol.topology import TopologyConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class Discovering:
    """How a node finds the members of its mesh: `Peering` over ``discovery``."""

    discovery: Discovery
    # The host's addresses that a wildcard listener is advertised on (`advertised`).
    interfaces: Sequence[str] = ()
    topology: TopologyConfig | None = None  # this node's own, until the mesh-wide setting
    hub_eligible: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """A running node and the services started around it."""

    node: Node
    peering: Peering | None  # with `Discovering`
    operations: Operations | None  # the local API, with a control socket


def advertised(bound: Sequence[Address], interfaces: Sequence[str]) -> tuple[Address, ...]:
    """The addresses to advertise: wildcard listeners on every discovery interface."""
    out: list[Address] = []
    for host, port in bound:
        hosts = interfaces if host in ("0.0.0.0", "") else [host]
        out += [(h, port) for h in hosts if (h, port) not in out]
    return tuple(out)


async def run_node(
    replica: Replica,
    *,
    mesh: Mesh,
    network: Network,
    config: NodeConfig | None = None,
    discovering: Discovering | None = None,
    control_socket: Path | None = None,
    ready: trio.Event | None = None,
    rng: random.Random | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
    task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Assemble a node on ``replica`` (its identity is the replica's) and run it until
    cancelled, with peering if ``discovering`` is given and the local API on
    ``control_socket`` if that is. Each starts once the one before it is up (the node
    listening, then peering advertising what it bound); `Services` is reported once all
    are. The local API holds its requests until ``ready`` is set, if it is given
    (`Operations`). ``rng`` and ``random_bytes`` are the node's (`Node`).
    """
    node = Node(
        replica=replica,
        identity=replica.identity,
        mesh=mesh,
        network=network,
        config=config,
        rng=rng,
        random_bytes=random_bytes,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        peering = None
        if discovering is not None:
            peering = Peering(
                node,
                discovering.discovery,
                advertise=advertised(node.bound, discovering.interfaces),
                topology=discovering.topology,
                hub_eligible=discovering.hub_eligible,
            )
            await nursery.start(peering.run)
        operations = None
        if control_socket is not None:
            operations = Operations(replica, node=node, peering=peering, ready=ready)
            await nursery.start(control.serve, control_socket, operations)
        task_status.started(Services(node=node, peering=peering, operations=operations))
