"""The simulation harness at scale (issue 6's figures).

- agent nodes: a bounded mesh of 1,000 real agent nodes (`simulations.harness`: the
  node, its replica, its sync and peering code; encryption off), 100 writes spread
  round-robin over the nodes, simulated to full convergence: wall seconds, in a child
  process of its own so that its peak memory can be told apart. Memory per node is that
  child's peak resident size less its size before the first node started, divided by
  the nodes, their stores included (`MemoryStore`s); what the stores hold encoded is
  given apart. Baseline, same run: the reference model
  (push-pull anti-entropy, Demers et al.) on the same number of sites, which carries no
  agent code at all.
- reference models: one rumor (push, feedback, counter k = 3) on 10,000 sites, 50 runs:
  wall seconds. Baseline, same run: push-pull anti-entropy, 50 runs on the same sites.

``python -m benchmarks sim``; ``python -m benchmarks.sim NODES MAX_LINKS`` runs one
agent-node simulation and prints its figures as JSON (the child), with its wall time by
phase and the garbage collector's share: docs/simulation.md's "where the time goes".
"""

from __future__ import annotations

import functools
import gc
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

import trio
from trio.testing import MockClock

from benchmarks.common import Figure
from blazemesh.simulations.epidemic import Rule
from blazemesh.simulations.epidemic import simulate as simulate_epidemic
from blazemesh.simulations.harness import simulate
from blazemesh.simulations.scenario import Scenario

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
    yield Figure(
        suite=SUITE,
        name=f"{NODES} agent nodes: memory per node, stores included",
        value=agents["bytes_per_node"] / 2**20,
        unit="MiB",
        target="<= 2 MiB",
    )
    yield Figure(
        suite=SUITE,
        name=f"{NODES} agent nodes: changes and records stored per node, encoded",
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
    """One agent-node simulation; its figures as JSON on standard output: wall time in
    all and by phase, the collector's time and findings, memory, redundancy, and the
    task steps trio ran while the changes spread."""
    scenario = Scenario(nodes=nodes, max_links=max_links, writes=WRITES, write_every_s=0.01)
    before = _resident_bytes()
    marks = [("start", time.perf_counter())]
    collector = _CollectorTime()
    gc.callbacks.append(collector)
    steps = _StepCounter()

    def phase(name: str) -> None:
        marks.append((name, time.perf_counter()))
        steps.counting = name == "settled"

    report = trio.run(
        functools.partial(simulate, phase=phase),
        scenario,
        clock=MockClock(autojump_threshold=0),
        instruments=[steps],
    )
    marks.append(("torn down", time.perf_counter()))
    gc.callbacks.remove(collector)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if report.failures:
        raise SystemExit("; ".join(report.failures))
    figures = {
        "wall_s": marks[-1][1] - marks[0][1],
        "phases_s": {name: at - marks[i][1] for i, (name, at) in enumerate(marks[1:])},
        "collector_s": collector.seconds,
        "collected_objects": collector.collected,
        "converged_at_s": report.converged_at_s,
        "bytes_per_node": (peak - before) / nodes,
        "data_bytes_per_node": report.data_bytes_mean,
        "redundancy": report.redundancy,
        "messages_sent": sum(n["messages_sent"] for n in report.nodes),
        "task_steps_spreading": steps.steps,
        "deliveries": WRITES * (nodes - 1),
    }
    print(json.dumps(figures))


class _CollectorTime:
    """A `gc.callbacks` entry that adds up the time collections take and what they free."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collected = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collected += info["collected"]


class _StepCounter(trio.abc.Instrument):
    """Counts the task steps trio runs while ``counting``."""

    def __init__(self) -> None:
        self.counting = False
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counting:
            self.steps += 1


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


if __name__ == "__main__":
    child(int(sys.argv[1]), int(sys.argv[2]))
