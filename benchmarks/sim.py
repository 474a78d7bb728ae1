"""The simulation harness at scale (issue 6's figures).

- agent nodes: a bounded mesh of 1,000 real agent nodes (`simulations.harness`: the
  node, its replica, its sync and peering code; encryption off), 100 writes spread
  round-robin over the nodes, simulated to full convergence: wall seconds, in a child
  process of its own so that its peak memory can be told apart. Memory per node is that
  child's peak resident size less its size before the first node started, divided by
  the nodes; the nodes' database files are counted apart (they live in /dev/shm, that
  is in memory too, when the machine has it). Baseline, same run: the reference model
  (push-pull anti-entropy, Demers et al.) on the same number of sites, which carries no
  agent code at all.
- reference models: one rumor (push, feedback, counter k = 3) on 10,000 sites, 50 runs:
  wall seconds. Baseline, same run: push-pull anti-entropy, 50 runs on the same sites.

``python -m benchmarks sim``; ``python -m benchmarks.sim NODES MAX_LINKS`` runs one
agent-node simulation and prints its figures as JSON (the child).
"""

from __future__ import annotations

import json
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import trio
from trio.testing import MockClock

from benchmarks.common import Figure
from simulations.epidemic import Rule
from simulations.epidemic import simulate as simulate_epidemic
from simulations.harness import memory_dir, simulate
from simulations.scenario import Scenario

SUITE = "sim"
NODES = 1_000
MAX_LINKS = 3
WRITES = 100
SITES = 10_000
RUNS = 50


def run() -> Iterator[Figure]:
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.sim", str(NODES), str(MAX_LINKS)],
        capture_output=True,
        text=True,
        check=True,
    )
    agents = json.loads(child.stdout)
    started = time.perf_counter()
    simulate_epidemic("anti-entropy-push-pull", NODES, random.Random(0), Rule())
    model_s = time.perf_counter() - started
    yield Figure(
        suite=SUITE,
        name=f"{NODES} agent nodes, mesh of {MAX_LINKS} links, {WRITES} writes: wall",
        value=agents["wall_s"],
        unit="s",
        baseline=f"push-pull anti-entropy model, {NODES} sites",
        baseline_value=model_s,
        target="<= 60 s",
    )
    yield Figure(
        suite=SUITE,
        name=f"{NODES} agent nodes: virtual time to full convergence",
        value=agents["converged_at_s"],
        unit="s",
    )
    where = "in memory, /dev/shm" if agents["data_in_memory"] else "on disk"
    yield Figure(
        suite=SUITE,
        name=f"{NODES} agent nodes: process memory per node",
        value=agents["bytes_per_node"] / 2**20,
        unit="MiB",
        target="<= 2 MiB",
    )
    yield Figure(
        suite=SUITE,
        name=f"{NODES} agent nodes: database files per node ({where})",
        value=agents["data_bytes_per_node"] / 2**20,
        unit="MiB",
    )
    yield Figure(
        suite=SUITE,
        name=f"{NODES} agent nodes: relative message redundancy",
        value=agents["redundancy"],
        unit="",
    )
    rumor = _epidemic_wall("rumor-push", Rule(feedback=True, counter=True, k=3))
    yield Figure(
        suite=SUITE,
        name=f"rumor (push, feedback, counter 3), {SITES:,} sites, {RUNS} runs: wall",
        value=rumor,
        unit="s",
        baseline=f"push-pull anti-entropy, {SITES:,} sites, {RUNS} runs",
        baseline_value=_epidemic_wall("anti-entropy-push-pull", Rule()),
        target="<= 60 s",
    )


def _epidemic_wall(model: str, rule: Rule) -> float:
    started = time.perf_counter()
    for seed in range(RUNS):
        simulate_epidemic(model, SITES, random.Random(seed), rule)
    return time.perf_counter() - started


def child(nodes: int, max_links: int) -> None:
    """One agent-node simulation; its figures as JSON on standard output."""
    scenario = Scenario(nodes=nodes, max_links=max_links, writes=WRITES, write_every_s=0.01)
    before = _resident_bytes()
    started = time.perf_counter()
    report = trio.run(simulate, scenario, clock=MockClock(autojump_threshold=0))
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if report.failures:
        raise SystemExit("; ".join(report.failures))
    figures = {
        "wall_s": wall,
        "converged_at_s": report.converged_at_s,
        "bytes_per_node": (peak - before) / nodes,
        "data_bytes_per_node": statistics.fmean(n["data_bytes"] for n in report.nodes),
        "data_in_memory": memory_dir() is not None,
        "redundancy": report.redundancy,
    }
    print(json.dumps(figures))


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


if __name__ == "__main__":
    child(int(sys.argv[1]), int(sys.argv[2]))
