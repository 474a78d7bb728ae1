"""The agent's commands: ``blazemesh agent`` runs it, ``blazemesh peers`` shows its links.

What a command needs beyond the parser and the control socket's client (the node, the
simulator of a demo, the texts of `peers`) it imports when it runs: every command starts
without the rest (docs/performance.md, "Start-up").
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
from pathlib import Path
from typing import Any

import trio

from blazemesh.agent.api.client import open_session
from blazemesh.agent.cli import jsonio
from blazemesh.agent.cli.arguments import DataDir, Subcommands
from blazemesh.agent.cli.ids import resolve_node_ids
from blazemesh.agent.cli.lines import hide_log_warnings
from blazemesh.agent.discovery.adverts import DEFAULT_MAX_PEERS
from blazemesh.agent.errors import ConfigError
from blazemesh.agent.links.network import DEFAULT_PORT, Address, parse_address
from blazemesh.protocol.errors import LocalProtocolError
from blazemesh.protocol.ids import node_id_text

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
CLOCK_NOTE_MS = 1_000  # `peers` mentions a peer's clock when it is this far off


def register(
    sub: Subcommands,
    common: argparse.ArgumentParser,
    writes: argparse.ArgumentParser,
    data_dir: DataDir,
) -> None:
    """Add ``agent``, ``peers`` and ``discover`` to the ``blazemesh`` parser."""
    p = sub.add_parser(
        "agent",
        parents=[common, writes],
        help="run this node: sync with peers, serve the other commands",
    )
    p.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help=f"where peers reach this node; repeatable (default: 0.0.0.0:{DEFAULT_PORT})",
    )
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a peer to keep a link to; repeatable",
    )
    p.add_argument(
        "--discovery",
        choices=["mdns", "none"],
        default=None,
        help="find peers on the LAN by mDNS, or only use --peer (default: mDNS if this host "
        "has a network interface besides loopback, else none, with a warning)",
    )
    p.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="ADDR",
        help="an IPv4 address of this host to advertise and browse on; repeatable "
        "(default: every non-loopback one)",
    )
    p.add_argument(
        "--topology", choices=["mesh", "star"], default="mesh", help="how members are linked"
    )
    p.add_argument("--hub", metavar="NODE_ID", help="star: this node is the hub (no election)")
    p.add_argument(
        "--hub-eligible",
        action="store_true",
        help="star: this node may be elected hub (hub-eligible nodes also link to each other)",
    )
    p.add_argument(
        "--max-links",
        type=int,
        default=None,
        metavar="N",
        help="in a mesh, dial at most N members (default: all); the graph stays connected",
    )
    p.add_argument(
        "--max-peers",
        type=int,
        default=DEFAULT_MAX_PEERS,
        metavar="N",
        help="mDNS: follow at most N adverts at once, of any mesh; raise it if the LAN has "
        f"more blazemesh nodes (default: {DEFAULT_MAX_PEERS:,})",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.set_defaults(run=lambda args: cmd_agent(data_dir(args), args))

    p = sub.add_parser("peers", parents=[common], help="the running agent's links to its peers")
    p.add_argument("--json", action="store_true", help="one JSON object per link")
    p.set_defaults(run=lambda args: cmd_peers(data_dir(args), args))

    p = sub.add_parser("demo", help="run a mesh of agents on this machine and watch it converge")
    p.add_argument("--nodes", type=int, default=3, help="how many agents (default 3)")
    p.add_argument("--topology", choices=["mesh", "star"], default="mesh")
    p.add_argument("--max-links", type=int, default=None, metavar="N")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("topology", parents=[common], help="the live graph, or set the topology")
    p.add_argument("--format", choices=["text", "dot", "json"], default="text")
    p.set_defaults(run=lambda args: cmd_topology(data_dir(args), args))
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    t = actions.add_parser("set", parents=[common], help="set the topology of the whole mesh")
    t.add_argument("mode", choices=["mesh", "star"])
    t.add_argument("--max-links", type=int, default=None, metavar="N")
    t.add_argument("--hub", metavar="NODE_ID", default=None)
    t.set_defaults(run=lambda args: cmd_topology_set(data_dir(args), args))

    p = sub.add_parser(
        "discover", parents=[common], help="what mDNS sees now, and why each is (not) linked"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per advert")
    p.set_defaults(run=lambda args: cmd_discover(data_dir(args), args))


def _addresses(texts: list[str], option: str) -> list[Address]:
    try:
        return [_address(text) for text in texts]
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None


def _address(text: str) -> Address:
    """`parse_address`, in words for people: a port that is not a number (int() would
    say "invalid literal for int() with base 10"), a host name the resolver refuses
    (text that is not UTF-8, a label past 63 characters)."""
    try:
        host, port = parse_address(text, DEFAULT_PORT)
    except ValueError as exc:
        if str(exc).startswith("invalid literal"):
            raise ValueError(f"the port of {text!r} is not a number") from None
        raise
    try:
        host.encode("idna")
    except UnicodeError:
        raise ValueError(f"{host[:80]!r} is not a host name or an IP address") from None
    return host, port


def _max_peers(n: int) -> int:
    from blazemesh.agent.discovery.adverts import check_max_peers

    try:
        return check_max_peers(n)
    except LocalProtocolError:
        raise ConfigError(f"--max-peers must be at least 1, got {n}") from None


def check_topology(mode: str, max_links: int | None, hub: str | None) -> None:
    """Refuse options the topology ``mode`` would ignore, or a bound of no links."""
    if max_links is not None and max_links < 1:
        raise ConfigError(f"--max-links must be at least 1, got {max_links}")
    if max_links is not None and mode == "star":
        raise ConfigError(
            "--max-links bounds the links of a mesh; in a star each spoke links to its hub "
            "alone: drop --max-links, or choose mesh"
        )
    if hub is not None and mode != "star":
        raise ConfigError(f"--hub names the hub of a star, and this is a {mode}: choose star")


def mdns_interfaces(asked: str | None, given: list[str], host: list[str]) -> list[str] | None:
    """The addresses mDNS runs on, or None for no mDNS.

    ``asked`` is ``--discovery`` (None if not given), ``given`` the ``--interface``
    addresses, ``host`` this host's IPv4 addresses. Without ``--interface``, mDNS runs on
    every address but loopback; if there is none (an offline laptop, a bare container)
    it is off with a warning, unless ``--discovery mdns`` asked for it: then the agent
    refuses to start (docs/operations.md, "Discovery and topologies").
    """
    from blazemesh.agent.service import lan_addresses

    if asked == "none":
        if given:
            raise ConfigError("--interface says where mDNS runs, and --discovery none turns it off")
        return None
    for address in given:
        if not _local_ipv4(address):
            raise ConfigError(
                f"--interface {address} is not an IPv4 address of this host "
                f"(its addresses: {', '.join(host) or 'none'})"
            )
    interfaces = given or lan_addresses(host)
    if interfaces:
        return interfaces
    if asked == "mdns":
        raise ConfigError(
            "--discovery mdns: this host has no network interface with an IPv4 address "
            "besides loopback: pass --interface ADDR, or --discovery none with --peer"
        )
    log.warning(
        "this host has no network interface with an IPv4 address besides loopback: "
        "discovery by mDNS is off; this agent links to its --peer addresses and to peers "
        "that dial it"
    )
    return None


def _local_ipv4(address: str) -> bool:
    """Whether ``address`` is an IPv4 address of this host: one a socket can bind
    (127.0.0.0/8 entire, which interface lists show as 127.0.0.1 alone)."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    if ip.is_unspecified or ip.is_multicast:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:  # EADDRNOTAVAIL: another host's
            return False
    return True


def cmd_agent(data_dir: Path, args: argparse.Namespace) -> int:
    from blazemesh.agent.service import (
        DEFAULT_LISTEN,
        AgentConfig,
        host_ipv4_addresses,
        run_agent,
    )
    from blazemesh.agent.storage.store import Durability
    from blazemesh.protocol.topology import TopologyConfig

    hide_log_warnings()  # the agent's log lines carry a time and a level instead
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    check_topology(args.topology, args.max_links, args.hub)
    listen = _addresses(args.listen, "--listen") if args.listen else [DEFAULT_LISTEN]
    peers = _addresses(args.peer, "--peer")
    hub = None if args.hub is None else resolve_node_ids(data_dir, [args.hub], "--hub")[0]
    max_peers = _max_peers(args.max_peers)
    interfaces = mdns_interfaces(args.discovery, args.interface, host_ipv4_addresses())
    config = AgentConfig(
        data_dir=data_dir,
        listen=listen,
        peers=peers,
        durability=Durability(args.durability),
        mdns=interfaces is not None,
        interfaces=interfaces or [],
        topology=TopologyConfig(mode=args.topology, max_links=args.max_links, hub=hub),
        hub_eligible=args.hub_eligible,
        max_peers=max_peers,
    )
    trio.run(run_agent, config)
    return 0


def _ask(data_dir: Path, op: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        async with open_session(data_dir) as session:
            result: list[dict[str, Any]] = await session.call(op, {})
        return result

    return trio.run(run)


def cmd_topology_set(data_dir: Path, args: argparse.Namespace) -> int:
    check_topology(args.mode, args.max_links, args.hub)
    hub = None if args.hub is None else resolve_node_ids(data_dir, [args.hub], "--hub")[0]
    request = {
        "mode": args.mode,
        "max_links": args.max_links,
        "hub": None if hub is None else node_id_text(hub),
    }

    async def run() -> Any:
        async with open_session(data_dir) as session:
            return await session.call("topology.set", request)

    trio.run(run)
    print(f"topology set to {args.mode} for the whole mesh; every node follows once synced")
    return 0


def cmd_topology(data_dir: Path, args: argparse.Namespace) -> int:
    async def run() -> dict[str, Any]:
        async with open_session(data_dir) as session:
            graph: dict[str, Any] = await session.call("topology", {})
        return graph

    graph = trio.run(run)
    if args.format == "json":
        print(jsonio.dumps(graph))
        return 0
    short = {n["node_id"]: n["short_id"] for n in graph["nodes"]}
    if args.format == "dot":
        print("graph blazemesh {")
        for n in graph["nodes"]:
            shape = "doublecircle" if n["node_id"] == graph["hub"] else "circle"
            style = ", style=bold" if n["me"] else ""
            print(f'  "{n["short_id"]}" [shape={shape}{style}];')
        for link in graph["links"]:
            label = f"{link['state']}, behind {link['behind_in']}/{link['behind_out']}"
            print(f'  "{short[link["from"]]}" -- "{short[link["to"]]}" [label="{label}"];')
        print("}")
        return 0
    limit = "" if graph["max_links"] is None else f", at most {graph['max_links']} dialled links"
    hub = "" if graph["hub"] is None else f", hub {short.get(graph['hub'], graph['hub'])}"
    print(f"topology {graph['mode']}{limit}{hub}")
    for n in graph["nodes"]:
        marks = [m for m, on in (("this node", n["me"]), ("hub-eligible", n["hub_eligible"])) if on]
        linked = "linked" if n["linked"] else ("" if n["me"] else "not linked")
        print(f"  node {n['short_id']}  {linked}  {', '.join(marks)}".rstrip())
    for link in graph["links"]:
        rtt = "-" if link["rtt_ms"] is None else f"{link['rtt_ms']:.1f}ms"
        print(
            f"  link {short[link['from']]} -- {short[link['to']]}  {link['direction']}, "
            f"{link['state']}, rtt {rtt}, behind {link['behind_in']}/{link['behind_out']}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from blazemesh.agent.cli.demo import Demo
    from blazemesh.agent.cli.interrupt import INTERRUPTED, until_interrupted

    check_topology(args.topology, args.max_links, None)
    extra = ["--topology", args.topology, "--log-level", "warning"]

    if args.max_links is not None:
        extra += ["--max-links", str(args.max_links)]
    hubs = 2 if args.topology == "star" else 0  # node0 and node1 may be the hub
    demo = Demo(args.nodes, extra, hub_eligible=hubs)
    code = trio.run(until_interrupted, demo.run, lambda: demo.say("interrupted"))
    return INTERRUPTED if code is None else code


def _rows(data_dir: Path, op: str, args: argparse.Namespace, empty: str) -> list[dict[str, Any]]:
    """The rows of ``op`` to print as text; with ``--json`` they are printed here as JSON
    lines and none are returned; ``empty`` is said when there are none."""
    rows = _ask(data_dir, op)
    if args.json:
        for row in rows:
            print(jsonio.dumps(row))
        return []
    if not rows:
        print(empty)
    return rows


def cmd_discover(data_dir: Path, args: argparse.Namespace) -> int:
    for advert in _rows(data_dir, "discover", args, "mDNS sees no other blazemesh node"):
        where = ", ".join(advert["addresses"])
        print(f"{advert['short_id']:<10} {where:<24} v{advert['version']:<3} {advert['status']}")
    return 0


def cmd_peers(data_dir: Path, args: argparse.Namespace) -> int:
    links = _rows(data_dir, "peers", args, "no links up and no peers to dial")
    if not links:
        return 0
    print(
        f"{'PEER':<24} {'ADDRESS':<22} {'STATE':<10} {'CONTENTS':<9} {'RTT':>8} {'LAST':>6}  "
        "BEHIND in/out  CHANGES sent/recv  BYTES sent/recv"
    )
    for link in links:
        who = f"{link['short_id'] or '?'} ({link['direction'] or 'no link'})".ljust(25)
        where = f"{link['address']:<22} {link['state']:<10} "
        if link["state"] == "cloned":
            print(who + where + _clone_note(link))
            continue
        if "last_error" in link:  # an address being dialled, with no link up
            retry = link["retry_in_s"]
            when = "" if retry is None else f"retry in {retry:.1f}s, "
            error = link["last_error"] or "no attempt finished yet"
            print(f"{who}{where}{when}attempt {link['attempts']}: {error}")
            continue
        rtt = "-" if link["rtt_ms"] is None else f"{link['rtt_ms']:.1f}ms"
        print(
            who
            + where
            + f"{link['contents']:<9} {rtt:>8} {link['last_contact_s']:>5.1f}s"
            + f"  {link['behind_in']}/{link['behind_out']}".ljust(15)
            + f"{link['changes_sent']}/{link['changes_received']}".ljust(19)
            + f"{_size(link['bytes_sent'])}/{_size(link['bytes_received'])}"
        )
        for note in _notes(link):
            print(f"  {note}")
    return 0


def _clone_note(link: dict[str, Any]) -> str:
    """What a ``cloned`` row of `peers` means (`agent.api.operations`)."""
    if link["cloned"] == "it":
        return (
            f"refused for another {link['refused_for_s']:.0f}s: two running devices hold its "
            "identity; on one of them, give the copy its own"
        )
    return (
        f"refuses this node (for {link['since_s']:.0f}s): another running device holds this "
        "node's identity; on one of the two, give the copy its own "
        '(docs/operations.md, "Two devices with one identity")'
    )


def _notes(link: dict[str, Any]) -> list[str]:
    """What else a link says: refusals either way, and a clock that disagrees."""
    from blazemesh.agent.links.link import REFUSAL_TEXT
    from blazemesh.agent.storage.replica import duration_text

    notes = []
    if link["differ"]:
        notes.append(
            f"it holds other contents than this node under the same seqs of {link['differ']} "
            "origin(s): a node whose data was restored from a copy or cloned issued seqs "
            "twice; the two exchange the versions they lack (the log names the origins)"
        )
    offset = link["clock_offset_ms"]
    if offset is not None and abs(offset) >= CLOCK_NOTE_MS:
        side = "ahead of" if offset > 0 else "behind"
        notes.append(f"its clock is {duration_text(abs(offset))} {side} this node's")
    if link["refused_out"] is not None:
        r = link["refused_out"]
        why = REFUSAL_TEXT.get(r["reason"], r["reason"])
        notes.append(
            f"it refused {r['changes']} of this node's changes ({r['reason']}: {why}), "
            f"the last {r['last_s']:.1f} s ago"
        )
    if link["refused_in"] is not None:
        r = link["refused_in"]
        notes.append(
            f"this node refused {r['changes']} of its changes ({r['reason']}), "
            f"the last {r['last_s']:.1f} s ago"
        )
    return notes


def _size(n: int) -> str:
    if n < 1024:
        return f"{n}B"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f}{unit}"
