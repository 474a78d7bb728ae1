"""``blazemesh agent``: run a node on a data directory until SIGINT or SIGTERM.

The agent owns the data directory: it opens the replica, listens for peers, dials the
static ones, and serves the local control socket (`agent.api.control`) through which the other
commands reach it. A bad configuration (no identity, no mesh, a port in use) stops it
before anything starts, with one line saying what to do.

The agent is ready once its node listens, its control socket is up and each static peer
is linked and in sync, or `READY_PEERS_WAIT_S` has passed: until then the control socket
holds every request but ``health`` (`agent.api.control`), so a command run while the
agent starts sees what its static peers held. Then it logs ``ready: ...`` and tells a
service manager (``READY=1``, `agent.sdnotify`); ``STOPPING=1`` when it begins to stop.
"""

from __future__ import annotations

import errno
import functools
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import ifaddr
import trio

from blazemesh.agent.api import control
from blazemesh.agent.api.client import not_in_sync
from blazemesh.agent.api.operations import static_peers
from blazemesh.agent.assemble import Discovering, Services, run_node
from blazemesh.agent.discovery.adverts import DEFAULT_MAX_PEERS, ZeroconfDiscovery
from blazemesh.agent.errors import ConfigError
from blazemesh.agent.links.limits import connection_limits, raise_file_limit
from blazemesh.agent.links.network import DEFAULT_PORT, Address, TcpNetwork, format_address
from blazemesh.agent.links.node import Node, NodeConfig
from blazemesh.agent.sdnotify import Notifier
from blazemesh.agent.storage.paths import CONTROL_SOCKET
from blazemesh.agent.storage.replica import open_replica
from blazemesh.agent.storage.store import Durability
from blazemesh.agent.trust.identity import load_identity
from blazemesh.agent.trust.membership import load_mesh
from blazemesh.protocol.topology import TopologyConfig

log = logging.getLogger(__name__)

DEFAULT_LISTEN: Address = ("0.0.0.0", DEFAULT_PORT)
# A command that found no agent holds the directory for a moment; an agent (re)started
# by a supervisor in that moment waits for it rather than failing.
LOCK_WAIT_S = 5.0
# The agent is ready once every static peer is linked and in sync, or after this long:
# a peer starting alongside is reached within a few redials (backoff from 0.2 s), and
# one that is down holds up the commands run meanwhile no longer than this.
READY_PEERS_WAIT_S = 2.0
# The node has no event for "in sync": while it starts the agent looks this often, a
# small part of what a command takes to start.
READY_CHECK_S = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    data_dir: Path
    listen: list[Address] = field(default_factory=lambda: [DEFAULT_LISTEN])
    peers: list[Address] = field(default_factory=list)
    durability: Durability = Durability.NORMAL
    mdns: bool = True
    interfaces: list[str] = field(default_factory=list)  # empty: every non-loopback IPv4 one
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    hub_eligible: bool = False
    max_peers: int = DEFAULT_MAX_PEERS  # adverts discovery follows at once (agent.discovery)


def host_ipv4_addresses() -> list[str]:
    """This host's IPv4 addresses, loopback ones included, sorted."""
    return sorted(
        {ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)}
    )


def lan_addresses(addresses: list[str]) -> list[str]:
    """Those of ``addresses`` that are not loopback: where a real deployment advertises."""
    return [a for a in addresses if not a.startswith("127.")]


def default_interfaces() -> list[str]:
    """This host's non-loopback IPv4 addresses: where a real deployment advertises."""
    found = lan_addresses(host_ipv4_addresses())
    if not found:
        raise ConfigError(
            "no network interface with an IPv4 address for mDNS: "
            "pass --interface ADDR, or --discovery none with --peer"
        )
    return found


async def run_agent(
    config: AgentConfig, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until cancelled or signalled; raise `ConfigError` for a bad configuration.

    SIGINT and SIGTERM are taken from the start: one that comes while the agent starts
    stops it cleanly as soon as it is up, instead of killing it half way."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        await _run_agent(config, signals, task_status)


async def _run_agent(
    config: AgentConfig, signals: AsyncIterator[int], task_status: trio.TaskStatus[Node]
) -> None:
    data_dir = config.data_dir
    if not data_dir.is_dir():
        raise ConfigError(
            f"no data directory at {data_dir}: run `blazemesh init --data-dir {data_dir}`"
        )
    identity = load_identity(data_dir)
    load_mesh(data_dir)  # fail before waiting for the lock
    was, files = raise_file_limit()
    limits = connection_limits(files, control_clients=control.MAX_CLIENTS)
    notifier = Notifier()
    async with open_replica(
        data_dir, durability=config.durability, lock_wait_s=LOCK_WAIT_S
    ) as replica:
        # Read again under the lock: a membership command that changed it meanwhile found
        # no agent to tell, and this one must not run on what it read before.
        mesh = load_mesh(data_dir)
        log.info(
            "node %s (%s) in mesh %r, data in %s",
            identity.text,
            identity.short,
            mesh.name,
            data_dir,
        )
        log.info(
            "open-file limit %d%s: at most %d connections in their handshake, %d links",
            files,
            "" if was == files else f" (raised from {was})",
            limits.handshakes,
            limits.links,
        )
        started = False
        ready = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                discovering = None
                if config.mdns:
                    interfaces = config.interfaces or default_interfaces()
                    discovering = Discovering(
                        discovery=ZeroconfDiscovery(interfaces, max_peers=config.max_peers),
                        interfaces=interfaces,
                        topology=config.topology,
                        hub_eligible=config.hub_eligible,
                    )
                run = functools.partial(
                    run_node,
                    replica,
                    mesh=mesh,
                    network=TcpNetwork(),
                    config=NodeConfig(
                        listen=config.listen,
                        peers=config.peers,
                        max_handshakes=limits.handshakes,
                        max_links=limits.links,
                    ),
                    discovering=discovering,
                    control_socket=data_dir / CONTROL_SOCKET,
                    ready=ready,
                )
                services: Services = await nursery.start(run)
                started = True
                for peer in config.peers:
                    log.info("static peer %s", format_address(peer))
                nursery.start_soon(_become_ready, services.node, ready, notifier)
                task_status.started(services.node)
                async for signum in signals:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    break
                notifier.notify(stopping="1", status="stopping")
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            error = None if started else _startup_error(group, config.listen)
            if error is None:
                raise
            raise error from None
    log.info("stopped; links closed, database closed")


async def _become_ready(node: Node, ready: trio.Event, notifier: Notifier) -> None:
    """Set ``ready`` once the static peers are caught up with (or `READY_PEERS_WAIT_S`
    has passed), log it and tell the service manager (`agent.sdnotify`)."""
    with trio.move_on_after(READY_PEERS_WAIT_S):
        while not all(peer.in_sync for peer in static_peers(node)):  # noqa: ASYNC110
            await trio.sleep(READY_CHECK_S)
    ready.set()
    status = f"ready: listening on {', '.join(format_address(a) for a in node.bound)}"
    behind = not_in_sync([peer.record() for peer in static_peers(node)])
    if behind:
        status += f"; not yet in sync with {behind}"
    log.info("%s", status)
    notifier.notify(ready="1", status=status)


def _startup_error(
    group: BaseExceptionGroup[BaseException], listen: list[Address]
) -> ConfigError | None:
    """The one-line reason the agent could not start, if that is what ``group`` says."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if len(leaves) != 1:
        return None
    (exc,) = leaves
    if isinstance(exc, ConfigError):
        return exc
    if not isinstance(exc, OSError):
        return None
    where = ", ".join(format_address(a) for a in listen)
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"cannot listen on {where}: the port is in use (another agent?); "
            "choose another with --listen HOST:PORT"
        )
    return ConfigError(f"cannot listen on {where}: {exc.strerror or exc}")
