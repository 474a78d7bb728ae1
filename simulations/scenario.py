"""What a simulation runs: the nodes, their topology, the writes and the faults, in
virtual time; from flags, from a TOML file, or built in (docs/simulation.md).

A scenario file::

    title = "star of 50, the hub fails"
    nodes = 50
    topology = "star"          # or "mesh"; max_links = 8 bounds a mesh
    hub_candidates = 2         # star: nodes 0 and 1 may be the hub
    writes = 500               # round-robin over the live nodes, one change each
    write_every_s = 0.01
    hot_keys = 20              # writes overwrite 20 keys: concurrent conflicts
    deletes = 0.1              # this share of the writes delete instead
    skew_ms = 200              # each node's wall clock is off by up to this much
    converge_within_s = 600

    [link]                     # every path; see simulations.network.LinkProfile
    latency_ms = 5
    jitter_ms = 2
    loss = 0.01

    [[fault]]
    at_s = 1.0                 # virtual seconds after the first write
    action = "crash"           # see ACTIONS
    nodes = ["hub"]            # node numbers, or "hub": the node most spokes use (a
                               # restart or join: the hub a fault took down last)
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from blazemesh.simulations.network import LinkProfile

ACTIONS = {
    "partition": "split the nodes into `groups` (lists of node numbers); connections across break",
    "heal": "end every partition",
    "cut": "take `nodes` off the network silently (a cable pulled): peers notice by timeouts",
    "restore": "put cut `nodes` back on the network",
    "crash": "kill `nodes`' processes: the kernel resets their connections; storage survives",
    "restart": "start crashed or stopped `nodes` again on their storage",
    "leave": "stop `nodes` cleanly (advert withdrawn, links closed)",
    "join": "start `nodes` (listed in `absent`, or stopped before) and let them catch up",
    "storm": "break every connection of the network at once: a reconnect storm",
}
MAX_NODES = 5_000  # one trio run holds every node; beyond this, memory decides
# Far past the 60 s a peer's clock may lead before it is refused (protocol.hlc); clocks
# must stay within the 48 bits of milliseconds a stamp holds.
MAX_SKEW_MS = 86_400_000  # a day
MAX_WRITES = 10_000_000  # each is held by every node and traced: memory decides long before


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One fault, at ``at_s`` virtual seconds after the first write."""

    at_s: float
    action: str
    nodes: tuple[int | str, ...] = ()  # node numbers; "hub": see `harness._resolve`
    groups: tuple[tuple[int, ...], ...] = ()  # partition only

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"fault action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if self.at_s < 0:
            raise ValueError(f"a fault's at_s must not be negative, got {self.at_s}")
        wants_nodes = self.action in ("cut", "restore", "crash", "restart", "leave", "join")
        if wants_nodes and not self.nodes:
            raise ValueError(f"fault {self.action!r} needs `nodes`")
        if self.action == "partition" and len(self.groups) < 2:
            raise ValueError("fault 'partition' needs at least two `groups`")
        for node in self.nodes:
            if not (node == "hub" or (type(node) is int and node >= 0)):
                raise ValueError(f"a fault's nodes are node numbers or 'hub', got {node!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """What to simulate. Times are virtual seconds."""

    title: str = ""
    nodes: int = 10
    topology: str = "mesh"
    max_links: int | None = None  # mesh: links dialled per node (protocol.topology)
    hub_candidates: int = 2  # star: nodes 0..hub_candidates-1 are hub-eligible
    writes: int = 100
    write_every_s: float = 0.01
    hot_keys: int | None = None  # writes overwrite this many keys; None: a key each
    deletes: float = 0.0  # share of writes that delete a key instead (needs hot_keys)
    skew_ms: float = 0.0  # each node's wall clock off by a fixed uniform [-skew, skew]
    link: LinkProfile = field(default_factory=LinkProfile)
    faults: tuple[Fault, ...] = ()
    absent: tuple[int, ...] = ()  # nodes not started at first (a fault joins them)
    secure: bool = False  # True: the real Noise channel too (slower)
    seed: int = 0
    converge_within_s: float = 600.0  # after the last write and the last fault

    def __post_init__(self) -> None:
        if not 2 <= self.nodes <= MAX_NODES:
            raise ValueError(f"nodes must be 2 to {MAX_NODES}, got {self.nodes}")
        if self.topology not in ("mesh", "star"):
            raise ValueError(f"topology {self.topology!r} is not mesh or star")
        if not 1 <= self.hub_candidates <= self.nodes:
            raise ValueError(f"hub_candidates must be 1 to {self.nodes}, got {self.hub_candidates}")
        if self.max_links is not None and self.max_links < 1:
            raise ValueError(f"max_links must be at least 1, got {self.max_links}")
        if self.max_links is not None and self.topology == "star":
            raise ValueError(
                "max_links bounds the links of a mesh; in a star each spoke links to its hub "
                "alone: drop max_links, or choose mesh"
            )
        if not 1 <= self.writes <= MAX_WRITES:
            raise ValueError(f"writes must be 1 to {MAX_WRITES:,}, got {self.writes}")
        if self.write_every_s < 0 or self.converge_within_s <= 0:
            raise ValueError("write_every_s must be >= 0 and converge_within_s > 0")
        if not 0 <= self.deletes < 1 or (self.deletes and self.hot_keys is None):
            raise ValueError("deletes is a share in [0, 1) and needs hot_keys")
        if self.hot_keys is not None and self.hot_keys < 1:
            raise ValueError(f"hot_keys must be at least 1, got {self.hot_keys}")
        if not 0 <= self.skew_ms <= MAX_SKEW_MS:
            raise ValueError(f"skew_ms must be 0 to {MAX_SKEW_MS:,}, got {self.skew_ms:g}")
        numbered = [n for f in self.faults for n in f.nodes if n != "hub"]
        numbered += [n for f in self.faults for g in f.groups for n in g] + list(self.absent)
        if any(not 0 <= int(n) < self.nodes for n in numbered):
            raise ValueError(f"a fault or `absent` names a node outside 0..{self.nodes - 1}")
        if len(self.absent) >= self.nodes:
            raise ValueError("at least one node must be present at the start")

    def describe(self) -> str:
        if self.title:
            return f"{self.title}, seed {self.seed}"
        shape = self.topology if self.max_links is None else f"mesh, {self.max_links} links"
        loss = f", {self.link.loss:.0%} loss" if self.link.loss else ""
        return f"{shape} of {self.nodes} nodes{loss}, seed {self.seed}"


def from_mapping(data: Mapping[str, Any], **overrides: Any) -> Scenario:
    """A `Scenario` from a TOML file's table; ``ValueError`` names what is wrong."""
    known = {f.name for f in fields(Scenario)} - {"link", "faults"}
    unknown = set(data) - known - {"link", "fault"}
    if unknown:
        raise ValueError(f"unknown scenario keys: {', '.join(sorted(unknown))}")
    link = dict(data.get("link", {}))
    link_keys = {"latency_ms", "jitter_ms", "bandwidth_bps", "loss", "rto_ms"}
    if set(link) - link_keys:
        raise ValueError(f"unknown [link] keys: {', '.join(sorted(set(link) - link_keys))}")
    profile = LinkProfile(
        latency_s=link.get("latency_ms", 1.0) / 1000,
        jitter_s=link.get("jitter_ms", 0.0) / 1000,
        bandwidth_bps=link.get("bandwidth_bps"),
        loss=link.get("loss", 0.0),
        rto_s=link.get("rto_ms", 200.0) / 1000,
    )
    faults = []
    for entry in data.get("fault", []):
        extra = set(entry) - {"at_s", "action", "nodes", "groups"}
        if extra:
            raise ValueError(f"unknown [[fault]] keys: {', '.join(sorted(extra))}")
        faults.append(
            Fault(
                at_s=float(entry.get("at_s", 0.0)),
                action=str(entry.get("action")),
                nodes=tuple(entry.get("nodes", ())),
                groups=tuple(tuple(g) for g in entry.get("groups", ())),
            )
        )
    plain = {k: v for k, v in data.items() if k in known}
    if "absent" in plain:
        plain["absent"] = tuple(plain["absent"])
    try:
        scenario = Scenario(**plain, link=profile, faults=tuple(faults))
    except TypeError as exc:
        raise ValueError(f"a scenario value has the wrong type: {exc}") from None
    return replace(scenario, **overrides)


def load(path: Path, **overrides: Any) -> Scenario:
    """Read a scenario file (TOML); ``ValueError`` if it is not a valid scenario."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read scenario {path}: {exc}") from None
    return from_mapping(data, **overrides)


def _halves(n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(range(n // 2)), tuple(range(n // 2, n))


LOSSY = LinkProfile(latency_s=0.005, jitter_s=0.002, loss=0.01)
BUILTIN: dict[str, Scenario] = {
    "mesh-50": Scenario(title="mesh of 50", nodes=50, writes=500, link=LOSSY),
    "star-50-hub-fails": Scenario(
        title="star of 50, the hub crashes and comes back",
        nodes=50,
        topology="star",
        writes=500,
        link=LOSSY,
        faults=(
            Fault(at_s=1.0, action="crash", nodes=("hub",)),
            Fault(at_s=3.0, action="restart", nodes=("hub",)),
        ),
    ),
    "partition-heal": Scenario(
        title="mesh of 20 split in halves, then healed",
        nodes=20,
        writes=400,
        hot_keys=40,
        deletes=0.1,
        link=LOSSY,
        faults=(
            Fault(at_s=1.0, action="partition", groups=_halves(20)),
            Fault(at_s=3.0, action="heal"),
        ),
    ),
    "churn": Scenario(
        title="mesh of 30 with nodes leaving, crashing, joining",
        nodes=30,
        writes=600,
        hot_keys=60,
        deletes=0.1,
        skew_ms=500,
        link=LOSSY,
        absent=(25, 26, 27, 28, 29),
        faults=(
            Fault(at_s=0.5, action="leave", nodes=(1, 2, 3)),
            Fault(at_s=1.0, action="join", nodes=(25, 26)),
            Fault(at_s=1.5, action="crash", nodes=(4, 5)),
            Fault(at_s=2.5, action="join", nodes=(1, 2, 27, 28, 29)),
            Fault(at_s=3.0, action="restart", nodes=(3, 4, 5)),
        ),
    ),
    "reconnect-storm": Scenario(
        title="mesh of 40, every connection dropped at once, twice",
        nodes=40,
        writes=400,
        link=LOSSY,
        faults=(Fault(at_s=1.0, action="storm"), Fault(at_s=2.0, action="storm")),
    ),
}
