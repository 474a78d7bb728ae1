"""Two running nodes with one identity, told apart by their run ids (docs/protocol.md 8.5).

Theory of operation. A node draws a random run id each time it starts and states it in
its HELLO (`RUN_META_KEY`). A restarted node shows a new run id and never an old one
again; two instances of one node (a data directory copied while it ran, devices set up
from one disk image) show two, for as long as both run. For each peer node id the
tracker keeps, per run id it saw:

- ``first_hello``: when a hello of the run first arrived: the run was alive before then;
- ``last_opened``: when this side began the latest link that then carried a hello of the
  run, if the link proves the run answered it (over the secure channel, the peer's
  handshake answers a message this side sent after that moment): the run was alive after
  then.

Run r was alive before run q when ``first_hello(r) < last_opened(q)``. The runs of one
node restarting come one after the other, so that holds one way round at most; both
ways round, the two runs were alive at once: two instances (`Clone`). So two instances
are caught when one comes back on a new link after the other's hello (as they do,
displacing each other's link by 8.2 rule 9), never for a restart or a redial of the same
run, nor for a dead run's hello read late (its link began before the other's hello, so
it proves nothing about after).

A caught node is refused for `CLONE_COOLDOWN_S` on every link, then judged afresh: the
runs seen before are forgotten, so an instance left alone after a fix is not caught
again on old evidence. Memory is bounded: `MAX_RUNS_PER_NODE` runs per node,
`MAX_TRACKED_NODES` nodes, the least recently seen forgotten first (which can only delay
a detection, never cause one).

The node told by a peer that it is one of two instances (REFUSED "clone") keeps a
`Told`: one episode lasts while peers keep saying so, and ends `CLONE_COOLDOWN_S` after
the last of them did.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from blazemesh.protocol.model import Value

RUN_META_KEY = "run"  # the HELLO meta key holding the sender's run id (docs/protocol.md 8.1)
RUN_ID_BYTES = 8  # random per start: two of a node's runs share one with odds 2^-64
CLONE_REASON = "clone"  # REFUSED's reason for a node refused as one of two instances
CLONE_COOLDOWN_S = 300.0  # a caught node is refused this long: the instances redial (every
# few seconds) into refusals rather than into links, one error line per node per 5 min
# while the cause lasts, and a node left alone after a fix links again within 5 min
MAX_RUNS_PER_NODE = 4  # two instances alternating, and restarts between: older runs are
# forgotten (a restart never shows one again)
MAX_TRACKED_NODES = 4_096  # peers whose runs are kept: more than a LAN mesh links to


def run_of(meta: Mapping[str, Value]) -> bytes | None:
    """The run id a HELLO's ``meta`` states, or None: a peer of an earlier version states
    none, and a value that is not `RUN_ID_BYTES` bytes is ignored as an unknown key is."""
    run = meta.get(RUN_META_KEY)
    return run if type(run) is bytes and len(run) == RUN_ID_BYTES else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Clone:
    """``node_id`` runs as two instances (or more): refused from ``detected_at`` until
    ``until``. ``places`` says where each run was last seen (the `RunTracker.hello`
    ``place`` of its latest link)."""

    node_id: bytes
    detected_at: float
    until: float
    places: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Told:
    """Peers say this node is one of two instances: ``peer`` (at ``place``) said so last,
    at ``last_at``; the episode began at ``first_at``."""

    peer: bytes
    place: str
    first_at: float
    last_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    """Keep the link (by 8.2 rule 9 against another link to the node, if any)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse:
    """Refuse the link: send REFUSED `CLONE_REASON` and close it. ``caught``: this hello
    proved the clone just now (say so once, and refuse the node's other links too);
    otherwise it was already refused."""

    clone: Clone
    caught: bool


Verdict = Accept | Refuse


@dataclass(slots=True)
class _Run:
    first_hello: float
    last_opened: float  # -inf until a link proves the run alive after it began
    place: str


@dataclass(slots=True)
class _Runs:
    runs: OrderedDict[bytes, _Run] = field(default_factory=OrderedDict)  # least recent first


class RunTracker:
    """What this node saw of its peers' runs, and whom it refuses as clones for now."""

    def __init__(self) -> None:
        self._nodes: OrderedDict[bytes, _Runs] = OrderedDict()  # least recently seen first
        self._refused: dict[bytes, Clone] = {}
        self._told: Told | None = None

    def hello(
        self, node_id: bytes, run: bytes | None, *, opened: float | None, now: float, place: str
    ) -> Verdict:
        """A link's peer ``node_id`` said hello stating ``run`` (`run_of`) at ``now``.
        ``opened``: when this side began the link, if the link proves that the peer
        answered this side after then (it does over the secure channel), else None.
        ``place`` names where the link leads, for `Clone.places`."""
        clone = self.refusing(node_id, now)
        if clone is not None:
            return Refuse(clone=clone, caught=False)
        if run is None:
            return Accept()
        runs = self._runs(node_id).runs
        seen = runs.pop(run, None) or _Run(first_hello=now, last_opened=-math.inf, place=place)
        seen.place = place
        if opened is not None:
            seen.last_opened = max(seen.last_opened, opened)
        runs[run] = seen
        while len(runs) > MAX_RUNS_PER_NODE:
            runs.popitem(last=False)
        if not any(_overlap(seen, other) for key, other in runs.items() if key != run):
            return Accept()
        clone = Clone(
            node_id=node_id,
            detected_at=now,
            until=now + CLONE_COOLDOWN_S,
            places=tuple(dict.fromkeys(r.place for r in reversed(runs.values()))),
        )
        del self._nodes[node_id]  # judged afresh once the cool-down ends
        self._refused[node_id] = clone
        # Few: each a key holder's doing, kept for a cool-down; past the bound the oldest
        # refusal ends early.
        while len(self._refused) > MAX_TRACKED_NODES:
            del self._refused[next(iter(self._refused))]
        return Refuse(clone=clone, caught=True)

    def refusing(self, node_id: bytes, now: float) -> Clone | None:
        """The clone ``node_id`` is refused as at ``now``, if it is."""
        clone = self._refused.get(node_id)
        if clone is not None and now >= clone.until:
            del self._refused[node_id]
            return None
        return clone

    def clones(self, now: float) -> list[Clone]:
        """Every node refused as a clone at ``now``, by node id."""
        for node_id in list(self._refused):
            self.refusing(node_id, now)
        return sorted(self._refused.values(), key=lambda clone: clone.node_id)

    def told(self, peer: bytes, *, now: float, place: str) -> bool:
        """``peer`` (at ``place``) refused this node as one of two instances at ``now``;
        return whether that begins an episode (worth saying once)."""
        current = self.told_now(now)
        if current is None:
            self._told = Told(peer=peer, place=place, first_at=now, last_at=now)
            return True
        self._told = replace(current, peer=peer, place=place, last_at=now)
        return False

    def told_now(self, now: float) -> Told | None:
        """The episode of refusals this node is in at ``now``, if any."""
        told = self._told
        if told is not None and now - told.last_at >= CLONE_COOLDOWN_S:
            self._told = told = None
        return told

    def _runs(self, node_id: bytes) -> _Runs:
        nodes = self._nodes
        runs = nodes.pop(node_id, None) or _Runs()
        nodes[node_id] = runs
        while len(nodes) > MAX_TRACKED_NODES:
            nodes.popitem(last=False)
        return runs


def _overlap(a: _Run, b: _Run) -> bool:
    """Whether runs ``a`` and ``b`` were each seen alive before the other: both ran at once."""
    return a.first_hello < b.last_opened and b.first_hello < a.last_opened
