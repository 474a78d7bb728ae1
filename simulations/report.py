"""A simulation's report: the checks run at the end, the metrics, and how they print.

The checks (docs/simulation.md, "Checks"): the live replicas are identical; every key
holds exactly what its last acknowledged write (by HLC stamp, then origin: the merge's
own order) says, so an acknowledged write that went missing and a deleted record that
came back both show up, naming the key and the write; no live node is behind. A failed
check names the seed, the first diverging node and the change or key where it differs.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from blazemesh.protocol.ids import node_id_short
from blazemesh.simulations.epidemic import Rule, summarize
from blazemesh.simulations.epidemic import simulate as simulate_epidemic
from blazemesh.simulations.scenario import Scenario

if TYPE_CHECKING:
    from blazemesh.agent.storage.replica import Replica
    from blazemesh.simulations.network import SimNetwork
    from blazemesh.simulations.nodes import SimNode, Trace, Tracker

CURVE_POINTS = 200  # the convergence curve is thinned to about this many points
REFERENCE_RUNS = 10  # runs of each reference model, on as many sites as live nodes
REFERENCE_MODELS = {  # label -> (model, rule): Demers et al.'s, see simulations.epidemic
    "anti-entropy, push-pull": ("anti-entropy-push-pull", None),
    "rumor, push, feedback, counter 3": ("rumor-push", Rule(feedback=True, counter=True, k=3)),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Write:
    """One acknowledged write: ``value`` None for a delete."""

    key: str
    value: int | None
    stamp: tuple[int, bytes]
    dot: tuple[bytes, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """How the run went. `to_json` gives the JSON form `blazemesh sim run` writes."""

    title: str
    scenario: Scenario
    converged_at_s: float | None
    spread_s: dict[str, float]  # median and max over changes of the time to 50/99/100 %
    curve: list[tuple[float, float]]  # (s since a write, share of (change, node) pairs held)
    nodes: list[dict[str, Any]]  # per node: traffic, queue peak, changes received
    links: list[tuple[str, str]]  # the links at the end
    hub: str | None
    redundancy: float | None  # deliveries per change / (n - 1) - 1
    measures: dict[str, float]  # the paper's measures for this run (`_measures`)
    reference: dict[str, dict[str, float]]  # model -> its measures on as many sites
    trace_digest: str
    failures: list[str]
    trace: list[str] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["scenario"] = _plain(out["scenario"])
        out["traffic"] = self.traffic()
        if self.trace is None:
            del out["trace"]
        return out

    def traffic(self) -> dict[str, float]:
        sent = [n["bytes_sent"] for n in self.nodes]
        messages = [n["messages_sent"] for n in self.nodes]
        return {
            "bytes_mean": statistics.fmean(sent),
            "bytes_max": float(max(sent)),
            "messages_mean": statistics.fmean(messages),
            "messages_max": float(max(messages)),
            "queue_peak_bytes_max": float(max(n["queue_peak_bytes"] for n in self.nodes)),
        }

    @property
    def data_bytes_mean(self) -> float:
        """The nodes' database files at the end, in bytes, on average."""
        return statistics.fmean(n["data_bytes"] for n in self.nodes)

    def summary(self) -> str:
        """The text summary `blazemesh sim run` prints."""
        when = "never" if self.converged_at_s is None else f"{self.converged_at_s:.3f} s"
        lines = [f"{self.title}: converged after {when} (virtual), trace {self.trace_digest}"]
        for name, value in self.spread_s.items():
            lines.append(f"  spread {name:<16} {value * 1000:10.1f} ms")
        t = self.traffic()
        lines.append(
            f"  sent per node: {t['bytes_mean']:,.0f} B mean, {t['bytes_max']:,.0f} B max; "
            f"{t['messages_mean']:,.0f} messages mean"
        )
        if self.redundancy is not None:
            lines.append(f"  relative message redundancy: {self.redundancy:.3f}")
        lines.append(f"  largest queue towards a node: {t['queue_peak_bytes_max']:,.0f} B")
        lines.append(f"  stored per node: {self.data_bytes_mean:,.0f} B mean (changes and records)")
        lines.append(
            f"  links at the end: {len(self.links)}" + (f", hub {self.hub}" if self.hub else "")
        )
        lines += self._comparison()
        lines += [f"  CHECK FAILED: {failure}" for failure in self.failures]
        return "\n".join(lines)

    def _comparison(self) -> list[str]:
        if not self.measures:
            return []
        m, hop = self.measures, self.scenario.link.latency_s
        lines = [
            f"  against Demers et al.'s models on {len(self.nodes)} sites "
            f"(means of {REFERENCE_RUNS} runs; t in cycles, ours in ms and in link latencies):",
            f"    {'':<34} {'residue':>8} {'traffic m':>10} {'t_ave':>16} {'t_last':>16}",
            f"    {'this run':<34} {m['residue']:8.3f} {m['traffic']:10.2f} "
            f"{_ms(m['t_ave_s'], hop):>16} {_ms(m['t_last_s'], hop):>16}",
        ]
        for label, r in self.reference.items():
            lines.append(
                f"    {label:<34} {r['residue']:8.3f} {r['traffic']:10.2f} "
                f"{r['t_ave']:16.2f} {r['t_last']:16.2f}"
            )
        return lines


def _ms(seconds: float, hop: float) -> str:
    hops = f" ({seconds / hop:.1f})" if hop else ""
    return f"{seconds * 1000:.1f} ms{hops}"


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def check(
    scenario: Scenario, live: list[tuple[int, Replica]], writes: list[Write]
) -> list[str]:
    """The end-of-run checks over the live replicas; one line per failure."""
    seed = f"seed {scenario.seed}"
    failures = []
    first, reference = live[0]
    digests = [replica.digest() for _, replica in live]
    for (index, replica), digest in zip(live, digests, strict=True):
        if digest != digests[0]:
            where = await _first_difference(reference, replica, writes)
            failures.append(f"{seed}: node n{index} differs from n{first}: {where}")
            break
    last: dict[str, Write] = {}
    for write in writes:
        if write.key not in last or write.stamp > last[write.key].stamp:
            last[write.key] = write
    # Equal digests mean equal records: the first replica of each digest stands for all.
    representatives: dict[str, tuple[int, Replica]] = {}
    for item, digest in zip(live, digests, strict=True):
        representatives.setdefault(digest, item)
    for index, replica in representatives.values():
        for key, write in sorted(last.items()):
            held = await replica.get("sim", key)
            wanted = None if write.value is None else {"i": write.value}
            if held != wanted:
                what = "a deleted record came back" if wanted is None else "wrong value"
                failures.append(
                    f"{seed}: {what} on node n{index}: sim/{key} is {held}, but the last "
                    f"acknowledged write, change {_dot(write.dot)}, made it {wanted}"
                )
                break
    return failures


async def _first_difference(a: Replica, b: Replica, writes: list[Write]) -> str:
    vv_a, vv_b = a.vv, b.vv
    for write in writes:
        if (write.dot in vv_a) != (write.dot in vv_b):
            return f"only one of them holds change {_dot(write.dot)}"
    for key in sorted({w.key for w in writes}):
        held_a, held_b = await a.get("sim", key), await b.get("sim", key)
        if held_a != held_b:
            return f"sim/{key} is {held_a} on one and {held_b} on the other"
    return "the digests differ outside the written keys"


def _dot(dot: tuple[bytes, int]) -> str:
    return f"{node_id_short(dot[0])}:{dot[1]}"


def build_report(
    *,
    scenario: Scenario,
    net: SimNetwork,
    tracker: Tracker,
    nodes: list[SimNode],
    converged_at: float | None,
    failures: list[str],
    trace: Trace,
) -> Report:
    live = [n for n in nodes if n.up]
    if converged_at is None:
        failures = [_behind(scenario, tracker, live), *failures]
    by_id = {n.node.node_id: f"n{n.index}" for n in live if n.node is not None}
    links = sorted(
        {
            tuple(sorted((f"n{n.index}", by_id[peer])))
            for n in live
            if n.node is not None
            for peer in n.node.linked_peers()
            if peer in by_id
        }
    )
    hubs = [n.peering.hub for n in live if n.peering is not None and n.peering.hub is not None]
    hub = by_id.get(statistics.mode(hubs)) if hubs else None
    return Report(
        title=scenario.describe(),
        scenario=scenario,
        converged_at_s=converged_at,
        spread_s=_spread(tracker, len(live)),
        curve=_curve(tracker, len(live)),
        nodes=[_node(net, n) for n in nodes],
        links=[(a, b) for a, b in links],
        hub=hub if scenario.topology == "star" else None,
        redundancy=_redundancy(tracker, nodes, len(live)),
        measures=_measures(tracker, nodes, len(live)),
        reference=_reference(len(live), scenario.seed),
        trace_digest=trace.digest,
        failures=failures,
        trace=trace.lines,
    )


def _behind(scenario: Scenario, tracker: Tracker, live: list[SimNode]) -> str:
    """The live node holding the fewest changes, and the first one it lacks."""
    expected = sorted(tracker.expected)
    lacking = {
        n.index: [dot for dot in expected if n.index not in tracker.held.get(dot, {})] for n in live
    }
    worst = max(sorted(lacking), key=lambda i: len(lacking[i]))
    return (
        f"seed {scenario.seed}: did not converge within {scenario.converge_within_s} s: "
        f"node n{worst} lacks {len(lacking[worst])} changes, first {_dot(lacking[worst][0])}"
    )


def _spread(tracker: Tracker, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for share, name in ((0.5, "50%"), (0.99, "99%"), (1.0, "100%")):
        needed = max(1, -(-int(share * n * 1000) // 1000))
        reach = []
        for dot in tracker.expected:
            times = sorted(tracker.held.get(dot, {}).values())
            if len(times) >= needed:
                reach.append(times[needed - 1] - times[0])
        if reach:
            out[f"to {name}, median"] = statistics.median(reach)
            out[f"to {name}, max"] = max(reach)
    return out


def _curve(tracker: Tracker, n: int) -> list[tuple[float, float]]:
    """The convergence curve: for each delay, the share of (change, live node) pairs in
    which the node held the change within that delay of its write (of its first holder:
    the writer, when it is still up)."""
    delays = []
    for dot in tracker.expected:
        times = sorted(tracker.held.get(dot, {}).values())
        delays += [t - times[0] for t in times]
    if not delays:
        return []
    delays.sort()
    pairs = len(tracker.expected) * n
    step = max(1, len(delays) // CURVE_POINTS)
    picked = list(range(step - 1, len(delays), step))
    if picked[-1] != len(delays) - 1:
        picked.append(len(delays) - 1)
    return [(delays[i], min(1.0, (i + 1) / pairs)) for i in picked]


def _node(net: SimNetwork, node: SimNode) -> dict[str, Any]:
    stats = net.stats_of(f"n{node.index}")
    received, duplicates = node.received_changes()
    return {
        "name": f"n{node.index}",
        "up": node.up,
        "bytes_sent": stats.bytes_sent,
        "messages_sent": stats.chunks_sent,
        "connections": stats.connections,
        "queue_peak_bytes": stats.queue_peak_bytes,
        "received_changes": received,
        "duplicate_changes": duplicates,
        "data_bytes": node.data.held_bytes(),
    }


def _measures(tracker: Tracker, nodes: list[SimNode], n: int) -> dict[str, float]:
    """The paper's measures for this run: residue (share of (change, live node) pairs
    never reached), traffic m (changes received per node per change), t_ave (mean delay
    from a write to a node holding it) and t_last (mean over changes of the delay to the
    last node)."""
    changes = len(tracker.expected)
    if not changes or not n:
        return {}
    delays, lasts = [], []
    for dot in tracker.expected:
        times = sorted(tracker.held.get(dot, {}).values())
        delays += [t - times[0] for t in times]
        lasts.append(times[-1] - times[0])
    return {
        "residue": max(0.0, 1 - len(delays) / (changes * n)),
        "traffic": sum(node.received_changes()[0] for node in nodes) / (changes * n),
        "t_ave_s": statistics.fmean(delays),
        "t_last_s": statistics.fmean(lasts),
    }


def _reference(n: int, seed: int) -> dict[str, dict[str, float]]:
    """Each reference model's measures on ``n`` sites, means over a few seeded runs."""
    if n < 2:
        return {}
    out = {}
    for label, (model, rule) in REFERENCE_MODELS.items():
        outcomes = [
            simulate_epidemic(model, n, random.Random(f"{seed}/{label}/{run}"), rule)
            for run in range(REFERENCE_RUNS)
        ]
        out[label] = {name: spread.mean for name, spread in summarize(outcomes).items()}
    return out


def _redundancy(tracker: Tracker, nodes: list[SimNode], n: int) -> float | None:
    changes = len(tracker.expected)
    if changes == 0 or n < 2:
        return None
    deliveries = sum(node.received_changes()[0] for node in nodes)
    return deliveries / (changes * (n - 1)) - 1
