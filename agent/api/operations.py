"""The operations of the local API: what the control socket serves and the CLI calls.

One table of operations serves both ways in: a running agent dispatches control-socket
requests to it (`agent.api.control`), and the CLI calls it in-process when no agent runs, so
a command means the same thing either way. Arguments and results are plain msgpack
values (docs/api.md, "The control socket", lists every operation); node ids travel as
their base32 text.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from blazemesh.agent.discovery.peering import Peering
from blazemesh.agent.errors import AgentError, ClockAheadError, ConfigError
from blazemesh.agent.links.network import Address, format_address
from blazemesh.agent.links.node import Node
from blazemesh.agent.storage.observe import Overflow
from blazemesh.agent.storage.replica import Replica
from blazemesh.agent.trust.membership import MESH_FILE, Mesh, load_mesh
from blazemesh.protocol.codec.control import change_event, parse_op
from blazemesh.protocol.errors import DecodeError, LocalProtocolError
from blazemesh.protocol.ids import node_id_short, node_id_text, parse_node_id
from blazemesh.protocol.model import Change, Put, Value
from blazemesh.protocol.sync import LinkStatus, Refusals
from blazemesh.protocol.topology import SETTINGS_COLLECTION, TOPOLOGY_KEY, TopologyConfig

QUERY_PAGE_MAX = 1_000  # records in one query reply; more come by paging with "after"
WATCH_LOG_PAGE = 500  # log entries read at a time when a watch catches up (and at most
# `agent.storage.store.LOG_PAGE_BYTES` of them)
WATCH_BUFFER = 1_024  # changes a watch buffers before it falls back to reading the log,
WATCH_BUFFER_BYTES = 4 << 20  # and their held bytes: reading the log loses nothing
# A peer refuses this node's changes again after each SUMMARY (every 5 s) while the cause
# lasts: one this recent means it still does.
REFUSALS_RECENT_S = 15.0

T = TypeVar("T")
Args = Mapping[str, Value]
Call = Callable[[Args], Awaitable[Value]]
Stream = Callable[[Args], AsyncGenerator[Value, None]]


class RequestError(AgentError):
    """Raised for a request the API cannot run: unknown op, missing or mistyped argument."""

    code = "bad-request"


class UnknownOpError(RequestError):
    """Raised for an operation the API does not have."""

    code = "unknown-op"


class NoAgentError(AgentError):
    """Raised when an operation needs a running agent (its links, its mesh) and none runs."""

    code = "no-agent"


_REQUIRED = object()


def arg(args: Args, name: str, kind: type[T], default: object = _REQUIRED) -> T:
    """``args[name]`` checked to be a ``kind``; ``default`` (which may be None) if absent."""
    value = args.get(name, default)
    if value is _REQUIRED:
        raise RequestError(f"missing argument {name!r}")
    if value is not default and not (
        isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    ):
        raise RequestError(f"argument {name!r} must be {kind.__name__}, not {type(value).__name__}")
    return value  # type: ignore[return-value]


def _refusals(refusals: Refusals | None, now: float) -> Value:
    if refusals is None:
        return None
    return {
        "changes": refusals.changes,
        "reason": refusals.reason,
        "last_s": round(now - refusals.last_at, 3),
    }


def _change(change: Change) -> Value:
    return {"origin": node_id_text(change.origin), "seq": change.seq, "hlc": change.hlc}


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticPeer:
    """A static peer (``--peer``) as the agent's readiness and ``health`` see it."""

    address: Address
    linked: bool
    in_sync: bool
    last_error: str | None  # while not linked: why the last attempt failed

    def record(self) -> dict[str, Value]:
        return {
            "address": format_address(self.address),
            "linked": self.linked,
            "in_sync": self.in_sync,
            "last_error": self.last_error,
        }


def _contents(status: LinkStatus) -> str:
    """What the fingerprints said of the origins both sides hold alike (docs/protocol.md
    8.6): the same contents, other contents, or nothing yet (no SUMMARY compared)."""
    if status.differ:
        return "differ"
    return "verified" if status.verified else "unchecked"


def identity_clashes(node: Node) -> dict[str, Value]:
    """Two running nodes with one identity, as ``info`` and ``health`` show them:
    ``identity_in_use``, whether peers refuse this node as one of two (who said so last,
    where, and how long ago), and ``clones``, the peers this node refuses as such."""
    now = trio.current_time()
    told = node.told_cloned()
    return {
        "identity_in_use": None
        if told is None
        else {
            "peer": node_id_short(told.peer),
            "address": told.place,
            "since_s": round(now - told.first_at, 3),
            "last_s": round(now - told.last_at, 3),
        },
        "clones": [node_id_short(clone.node_id) for clone in node.clones()],
    }


def static_peers(node: Node) -> list[StaticPeer]:
    """Each static peer of ``node``: whether a link to it is up and in sync."""
    dialled = {peer.address: peer for peer in node.peers() if peer.initiated}
    out: list[StaticPeer] = []
    for address in node.config.peers:
        dial = node.dial_state(address)
        link = dialled.get(address)
        if link is not None:
            linked, in_sync = True, link.sync.in_sync
        elif dial is not None and dial.peer is not None and node.linked(dial.peer):
            # the peer's own link to this node won over this node's (`Node._hello`)
            linked, in_sync = True, node.in_sync(dial.peer)
        else:
            linked = in_sync = False
        last_error = None if linked or dial is None else dial.last_error
        out.append(
            StaticPeer(address=address, linked=linked, in_sync=in_sync, last_error=last_error)
        )
    return out


def _clone_rows(node: Node, now: float) -> list[Value]:
    """`Operations.peers`' rows for two running nodes with one identity: each peer this
    node refuses as such (``cloned`` "it"), and the peer that last refused this node as
    such (``cloned`` "this node")."""
    rows: list[Value] = [
        {
            "node_id": node_id_text(clone.node_id),
            "short_id": node_id_short(clone.node_id),
            "address": ", ".join(clone.places),
            "direction": None,
            "state": "cloned",
            "cloned": "it",
            "since_s": round(now - clone.detected_at, 3),
            "refused_for_s": round(clone.until - now, 3),
        }
        for clone in node.clones()
    ]
    told = node.told_cloned()
    if told is not None:
        rows.append(
            {
                "node_id": node_id_text(told.peer),
                "short_id": node_id_short(told.peer),
                "address": told.place,
                "direction": None,
                "state": "cloned",
                "cloned": "this node",
                "since_s": round(now - told.first_at, 3),
                "last_s": round(now - told.last_at, 3),
            }
        )
    return rows


class Operations:
    """The API over one replica, and over the node around it when an agent runs it.

    ``ready``: set once the agent is ready (`agent.service`); until then the control
    socket answers ``health`` alone and holds the other requests. None: ready at once.
    """

    def __init__(
        self,
        replica: Replica,
        *,
        node: Node | None = None,
        peering: Peering | None = None,
        ready: trio.Event | None = None,
    ) -> None:
        if replica.data_dir is None:
            raise ValueError("the local API serves a replica opened on a data directory")
        self.replica = replica
        self.data_dir = replica.data_dir  # mesh.json, which the mesh commands read, is here
        self.node = node
        self.peering = peering
        if ready is None:
            ready = trio.Event()
            ready.set()
        self.ready = ready
        self.calls: dict[str, Call] = {
            "info": self.info,
            "health": self.health,
            "get": self.get,
            "put": self.put,
            "delete": self.delete,
            "commit": self.commit,
            "query": self.query,
            "peers": self.peers,
            "discover": self.discover,
            "topology": self.topology,
            "topology.set": self.set_topology,
            "mesh.reload": self.reload_mesh,
            "clock.repair": self.repair_clock,
            "backup": self.backup,
        }
        self.streams: dict[str, Stream] = {"watch": self.watch}

    async def call(self, op: str, args: Args) -> Value:
        """Run a request-reply operation."""
        call = self.calls.get(op)
        if call is None:
            raise UnknownOpError(self._unknown(op))
        return await call(args)

    def stream(self, op: str, args: Args) -> AsyncGenerator[Value, None]:
        """Open a streaming operation: an iterator of its events."""
        stream = self.streams.get(op)
        if stream is None:
            raise UnknownOpError(self._unknown(op))
        return stream(args)

    def _unknown(self, op: str) -> str:
        known = ", ".join(sorted([*self.calls, *self.streams]))
        return f"no operation {op!r}; the operations are {known}"

    # -- records -----------------------------------------------------------------------

    async def get(self, args: Args) -> Value:
        return await self.replica.get(arg(args, "collection", str), arg(args, "key", str))

    async def put(self, args: Args) -> Value:
        collection, key = arg(args, "collection", str), arg(args, "key", str)
        return _change(await self.replica.put(collection, key, arg(args, "fields", dict)))

    async def delete(self, args: Args) -> Value:
        collection, key = arg(args, "collection", str), arg(args, "key", str)
        return _change(await self.replica.delete(collection, key))

    async def commit(self, args: Args) -> Value:
        try:
            ops = [parse_op(op) for op in arg(args, "ops", list)]
        except DecodeError as exc:
            raise RequestError(str(exc)) from None
        return _change(await self.replica.commit(ops))

    async def query(self, args: Args) -> Value:
        """``{"records": [{"key", "fields"}...], "next": key or None}``: a page of at most
        `QUERY_PAGE_MAX` records; pass ``next`` as ``after`` for the following page."""
        limit = arg(args, "limit", int, None)
        if limit is not None and limit < 0:
            raise RequestError(f"limit must be >= 0, got {limit}")
        page = QUERY_PAGE_MAX if limit is None else min(limit, QUERY_PAGE_MAX)
        records = await self.replica.query(
            arg(args, "collection", str),
            where=arg(args, "where", dict, None),
            prefix=arg(args, "prefix", str, ""),
            after=arg(args, "after", str, None),
            limit=page + 1,
        )
        more = len(records) > page and (limit is None or limit > page)
        return {
            "records": [{"key": r.key, "fields": r.fields} for r in records[:page]],
            "next": records[page - 1].key if more else None,
        }

    async def watch(self, args: Args) -> AsyncGenerator[Value, None]:
        """Every change committed after log position ``since`` (default: now), as
        `change_event`s, then (if ``follow``, the default) each new one as it commits;
        never skips one."""
        collection = arg(args, "collection", str, None)
        since = arg(args, "since", int, None)
        follow = arg(args, "follow", bool, True)
        replica = self.replica
        with replica.observe(
            collection, capacity=WATCH_BUFFER, capacity_bytes=WATCH_BUFFER_BYTES
        ) as observer:
            lsn = replica.info().last_lsn if since is None else since
            while True:
                while page := replica.changes_since(lsn, limit=WATCH_LOG_PAGE):
                    for lsn, change in page:
                        event = change_event(lsn, change, collection)
                        if event["ops"]:
                            yield event
                if not follow:
                    return
                async for item in observer:
                    if isinstance(item, Overflow):
                        break  # fell behind: catch up from the log, then follow again
                    if item.lsn > lsn:
                        lsn = item.lsn
                        yield change_event(lsn, item.change, collection)
                else:
                    return

    # -- the node ----------------------------------------------------------------------

    async def info(self, args: Args) -> Value:
        await trio.lowlevel.checkpoint()
        info = self.replica.info()
        mesh = self._mesh()
        result: dict[str, Value] = {
            "node_id": node_id_text(info.node_id),
            "short_id": node_id_short(info.node_id),
            "data_dir": str(self.data_dir),
            "mesh": None if mesh is None else mesh.name,
            "allowlist": None if mesh is None or mesh.allowlist is None else len(mesh.allowlist),
            "changes_held": info.changes_held,
            "last_lsn": info.last_lsn,
            "collections": {
                name: {"records": live, "tombstones": dead}
                for name, (live, dead) in sorted(info.collections.items())
            },
            "agent": self.node is not None,
        }
        if self.node is not None:
            result["listen"] = [format_address(a) for a in self.node.bound]
            result["links"] = len(self.node.linked_peers())
            result.update(identity_clashes(self.node))
        result["clock"] = self._clock()
        if arg(args, "digest", bool, False):
            result["digest"] = self.replica.digest()
        return result

    async def health(self, args: Args) -> Value:
        """Whether the agent is ready, and what it waits for: answered at once, or with
        ``wait``, once it is ready."""
        node = self._node()
        if arg(args, "wait", bool, False):
            await self.ready.wait()
        else:
            await trio.lowlevel.checkpoint()
        return {
            "ready": self.ready.is_set(),
            "node_id": node_id_text(node.node_id),
            "short_id": node_id_short(node.node_id),
            "listen": [format_address(a) for a in node.bound],
            "links": len(node.linked_peers()),
            "discovery": self.peering is not None,
            "static_peers": [peer.record() for peer in static_peers(node)],
            **identity_clashes(node),
        }

    def _clock(self) -> Value:
        """The replica's clock, and whether local writes are refused for it now."""
        try:
            self.replica.check_clock()
            refused = None
        except ClockAheadError as exc:
            refused = str(exc)
        clock = self.replica.read_clock()
        return {
            "stamp": clock.stamp,
            "ahead_of_device_ms": clock.ahead_ms,
            "writes_refused": refused,
        }

    def _mesh(self) -> Mesh | None:
        if self.node is not None:
            return self.node.mesh
        return load_mesh(self.data_dir) if (self.data_dir / MESH_FILE).exists() else None

    def _node(self) -> Node:
        if self.node is None:
            raise NoAgentError(
                f"no agent is running on {self.data_dir}: start one with `blazemesh agent`"
            )
        return self.node

    async def peers(self, args: Args) -> Value:
        """Every open link, then every address being dialled that has no link up."""
        node = self._node()
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        out: list[Value] = []
        for peer in node.peers():
            s = peer.sync
            refused_now = (
                s.refused_out is not None and now - s.refused_out.last_at < REFUSALS_RECENT_S
            )
            state = "in sync" if s.in_sync else ("syncing" if s.open else "closing")
            if s.open and s.differ:
                state = "repairing"
            out.append(
                {
                    "node_id": node_id_text(peer.node_id),
                    "short_id": node_id_short(peer.node_id),
                    "address": format_address(peer.address),
                    "direction": "dialled" if peer.initiated else "accepted",
                    "state": "refusing" if refused_now else state,
                    "up_s": round(now - peer.up_since, 3),
                    "rtt_ms": None if s.rtt_s is None else round(s.rtt_s * 1000, 3),
                    "last_contact_s": round(now - s.last_contact, 3),
                    "behind_in": s.behind_in,
                    "behind_out": s.behind_out,
                    "contents": _contents(s),
                    "differ": s.differ,
                    "changes_sent": s.changes_sent,
                    "changes_received": s.changes_received,
                    "bytes_sent": s.bytes_sent,
                    "bytes_received": s.bytes_received,
                    "in_flight_bytes": s.in_flight_bytes,
                    "clock_offset_ms": s.clock_offset_ms,
                    "refused_in": _refusals(s.refused_in, now),
                    "refused_out": _refusals(s.refused_out, now),
                }
            )
        for dial in node.dials_down():
            out.append(
                {
                    "node_id": None if dial.peer is None else node_id_text(dial.peer),
                    "short_id": None if dial.peer is None else node_id_short(dial.peer),
                    "address": format_address(dial.address),
                    "direction": "dialled",
                    "state": "retrying" if dial.retry_at is not None else "connecting",
                    "retry_in_s": None
                    if dial.retry_at is None
                    else round(max(0.0, dial.retry_at - now), 3),
                    "attempts": dial.attempts,
                    "last_error": dial.last_error,
                }
            )
        return out + _clone_rows(node, now)

    async def discover(self, args: Args) -> Value:
        """Every advert discovery sees now: who, where, and whether and why not linked."""
        node = self._node()
        await trio.lowlevel.checkpoint()
        if self.peering is None:
            raise RequestError("this agent runs without discovery (--discovery none)")
        now = trio.current_time()
        out: list[Value] = []
        for name, sighting in sorted(self.peering.sightings.items()):
            seen = sighting.seen
            if sighting.refused is not None:
                status = f"not linked: {sighting.refused}"
            elif node.linked(seen.node_id):
                status = "linked"
            else:
                dial = node.dial_state(seen.addresses[0])
                status = (
                    "waiting for it to dial this node"
                    if dial is None
                    else f"not linked: {dial.last_error or 'connecting'}"
                )
            out.append(
                {
                    "name": name,
                    "node_id": node_id_text(seen.node_id),
                    "short_id": node_id_short(seen.node_id),
                    "addresses": [format_address(a) for a in seen.addresses],
                    "version": seen.version,
                    "member": sighting.refused is None,
                    "status": status,
                    "seen_s": round(now - sighting.first_seen, 3),
                }
            )
        return out

    async def topology(self, args: Args) -> Value:
        """The graph as this node sees it: the setting, the nodes, and this node's links."""
        node = self._node()
        await trio.lowlevel.checkpoint()
        peering = self.peering
        setting = peering.topology if peering is not None else TopologyConfig()
        hub = peering.hub if peering is not None and setting.mode == "star" else None
        nodes: dict[bytes, dict[str, Value]] = {
            node.node_id: {"me": True, "hub_eligible": bool(peering and peering.hub_eligible)}
        }
        if peering is not None:
            for sighting in peering.sightings.values():
                if sighting.refused is None:
                    nodes[sighting.seen.node_id] = {
                        "me": False,
                        "hub_eligible": sighting.seen.hub_eligible,
                    }
        links: list[Value] = []
        for peer in node.peers():
            nodes.setdefault(peer.node_id, {"me": False, "hub_eligible": False})
            s = peer.sync
            links.append(
                {
                    "from": node_id_text(node.node_id),
                    "to": node_id_text(peer.node_id),
                    "direction": "dialled" if peer.initiated else "accepted",
                    "state": "in sync" if s.in_sync else "syncing",
                    "rtt_ms": None if s.rtt_s is None else round(s.rtt_s * 1000, 3),
                    "behind_in": s.behind_in,
                    "behind_out": s.behind_out,
                }
            )
        return {
            **setting.record(),
            "hub": None if hub is None else node_id_text(hub),
            "nodes": [
                {
                    "node_id": node_id_text(n),
                    "short_id": node_id_short(n),
                    "linked": node.linked(n),
                    **fields,
                }
                for n, fields in sorted(nodes.items())
            ],
            "links": links,
        }

    async def set_topology(self, args: Args) -> Value:
        """Set the mesh-wide topology: a record every node follows once it has it."""
        hub = arg(args, "hub", str, None)
        try:
            setting = TopologyConfig(
                mode=arg(args, "mode", str),
                max_links=arg(args, "max_links", int, None),
                hub=None if hub is None else parse_node_id(hub),
            )
        except LocalProtocolError as exc:
            raise RequestError(str(exc)) from None
        put = Put(collection=SETTINGS_COLLECTION, key=TOPOLOGY_KEY, fields=setting.record())
        return _change(await self.replica.commit([put], system=True))

    async def backup(self, args: Args) -> Value:
        """Copy the database (one consistent snapshot, while writes go on), the key and the
        membership into ``to``, a new directory; the names of the files written."""
        from blazemesh.agent.storage.backup import backup

        target = Path(arg(args, "to", str))
        if not target.is_absolute():
            raise RequestError(f"a backup goes to an absolute path, not {str(target)!r}")
        written: list[Value] = list(await trio.to_thread.run_sync(backup, self.data_dir, target))
        return {"to": str(target), "files": written}

    async def repair_clock(self, args: Args) -> Value:
        """Re-stamp the changes made while this device's clock ran ahead; without an agent
        (the links must not carry the old ones meanwhile)."""
        if self.node is not None:
            raise RequestError(
                "an agent runs on this data directory: stop it, then run "
                "`blazemesh repair-clock` again"
            )
        restamped = await self.replica.repair_clock()
        return {"restamped": restamped, "clock": self.replica.read_clock().stamp}

    async def reload_mesh(self, args: Args) -> Value:
        """Re-read mesh.json after a membership command changed it; links that are no
        longer allowed end at once."""
        node = self._node()
        try:
            mesh = await trio.to_thread.run_sync(load_mesh, self.data_dir)
        except ConfigError as exc:
            raise RequestError(str(exc)) from None
        node.mesh.update(mesh)
        return {
            "mesh": mesh.name,
            "allowlist": None if mesh.allowlist is None else len(mesh.allowlist),
        }
