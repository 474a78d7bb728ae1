"""Real nodes on the simulated network: they converge through every fault the scenarios
offer, the checks catch what is wrong, and a run replays exactly from its seed."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from blazemesh.agent.discovery import adverts as discovery
from blazemesh.cli import main
from blazemesh.protocol import crdt
from blazemesh.simulations.cli import write_outputs
from blazemesh.simulations.harness import simulate
from blazemesh.simulations.network import LinkProfile
from blazemesh.simulations.plots import write_plots
from blazemesh.simulations.report import Report
from blazemesh.simulations.scenario import Fault, Scenario, from_mapping, load

LOSSY = LinkProfile(latency_s=0.02, jitter_s=0.01, loss=0.05)


def run(scenario: Scenario, *, keep_trace: bool = False) -> Report:
    """One simulation in a trio run of its own, on a fresh virtual clock."""
    return trio.run(
        lambda: simulate(scenario, keep_trace=keep_trace),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )


def assert_converged(report: Report) -> None:
    assert report.failures == []
    assert report.converged_at_s is not None


@pytest.mark.parametrize("topology", ["mesh", "star"])
async def test_nodes_converge_through_loss(
    autojump_clock: trio.testing.MockClock, topology: str
) -> None:
    report = await simulate(Scenario(nodes=6, topology=topology, writes=30, link=LOSSY))
    assert_converged(report)
    spread = report.spread_s
    assert spread["to 100%, max"] >= spread["to 50%, median"] > 0
    traffic = report.traffic()
    assert traffic["bytes_max"] >= traffic["bytes_mean"] > 0
    assert all(node["received_changes"] >= 25 for node in report.nodes)
    assert all(node["data_bytes"] > 0 for node in report.nodes)
    assert report.redundancy is not None
    assert report.redundancy >= 0
    if topology == "star":
        assert report.hub is not None
        assert len(report.links) == 5  # every spoke to the hub
        assert all(report.hub in link for link in report.links)
    else:
        assert len(report.links) == 15  # every pair
    assert report.curve[-1][1] == 1.0  # the curve: delay since the write, share held
    assert report.curve[-1][0] == pytest.approx(spread["to 100%, max"])
    assert [d for d, _ in report.curve] == sorted(d for d, _ in report.curve)


@pytest.mark.parametrize("max_links", [None, 2, 3])
async def test_every_origin_has_one_tree_from_its_first_change(
    autojump_clock: trio.testing.MockClock, max_links: int | None
) -> None:
    """Nodes feed by the ring: each change arrives once at each node, an origin's first
    included (every write here is its origin's first or second)."""
    report = await simulate(Scenario(nodes=30, writes=45, max_links=max_links))
    assert_converged(report)
    # Flooding would deliver each change about 28 (full), 3 or 5 (bounded) times over;
    # pruning the links that bring duplicates would still flood each first change.
    assert report.redundancy == 0


async def test_a_mesh_larger_than_discovery_s_default_bound_plans_from_whole_views(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 17, item 13, at a small scale: 1,100 nodes against a bound of 1,024 adverts
    flooded the log with a warning per node and gave 4.5-4.8 links per node, not 3."""
    monkeypatch.setattr(discovery, "DEFAULT_MAX_PEERS", 10)
    report = await simulate(Scenario(nodes=30, writes=30, max_links=3))
    assert_converged(report)
    assert [
        r.getMessage() for r in caplog.records if r.name == "blazemesh.agent.discovery.adverts"
    ] == []
    assert len(report.links) <= 3 * 30  # each node dials at most 3, as its whole view says


async def test_a_partition_heals_and_no_write_or_delete_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    halves = ((0, 1, 2), (3, 4, 5))
    scenario = Scenario(
        nodes=6,
        writes=80,
        write_every_s=0.1,
        hot_keys=5,
        deletes=0.3,
        link=LOSSY,
        # Long enough that the silent links die and the nodes redial across, in vain.
        faults=(
            Fault(at_s=1.0, action="partition", groups=halves),
            Fault(at_s=20.0, action="heal"),
        ),
    )
    report = await simulate(scenario, keep_trace=True)
    assert_converged(report)
    assert report.converged_at_s is not None
    assert report.converged_at_s > 20.0
    assert report.trace is not None
    assert any("fault partition" in line for line in report.trace)


async def test_the_checks_catch_a_merge_that_ignores_the_clock(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def last_applied_wins(
        self: crdt.RecordState, fields: dict[str, crdt.Value], stamp: crdt.Stamp
    ) -> bool:
        self.live = max(self.live, stamp)
        self.fields = {**self.fields, **{n: (v, stamp) for n, v in fields.items()}}
        return True

    monkeypatch.setattr(crdt.RecordState, "put", last_applied_wins)
    report = await simulate(Scenario(nodes=6, writes=60, hot_keys=2, link=LOSSY, seed=7))
    assert report.failures
    first = report.failures[0]
    assert first.startswith("seed 7: ")
    assert "node n" in first
    assert "differs from" in first or "wrong value" in first


async def test_a_node_cut_off_for_good_is_named_as_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scenario = Scenario(
        nodes=4,
        writes=40,
        link=LOSSY,
        converge_within_s=30,
        faults=(Fault(at_s=0.1, action="cut", nodes=(3,)),),
    )
    report = await simulate(scenario)
    assert report.converged_at_s is None
    assert report.failures[0].startswith("seed 0: did not converge within 30 s: node n3 lacks")


async def test_crashed_nodes_restart_on_their_storage_and_catch_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scenario = Scenario(
        nodes=5,
        writes=60,
        write_every_s=0.05,
        hot_keys=8,
        deletes=0.2,
        link=LOSSY,
        faults=(
            Fault(at_s=0.5, action="crash", nodes=(1, 2)),
            Fault(at_s=2.0, action="restart", nodes=(1, 2)),
        ),
    )
    report = await simulate(scenario)
    assert_converged(report)
    assert all(node["up"] for node in report.nodes)


async def test_nodes_that_join_late_or_leave_and_return_catch_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scenario = Scenario(
        nodes=6,
        writes=60,
        write_every_s=0.05,
        link=LOSSY,
        absent=(5,),
        faults=(
            Fault(at_s=0.5, action="leave", nodes=(0,)),
            Fault(at_s=2.0, action="join", nodes=(0, 5)),
        ),
    )
    report = await simulate(scenario)
    assert_converged(report)
    late = report.nodes[5]
    assert late["received_changes"] >= 60  # it wrote nothing: it holds what it was sent


async def test_a_reconnect_storm_and_skewed_clocks_still_converge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scenario = Scenario(
        nodes=6,
        writes=60,
        write_every_s=0.05,
        hot_keys=6,
        skew_ms=5_000,
        link=LOSSY,
        faults=(Fault(at_s=0.5, action="storm"), Fault(at_s=1.0, action="storm")),
    )
    report = await simulate(scenario)
    assert_converged(report)
    assert sum(node["connections"] for node in report.nodes) > 2 * 15  # they reconnected


async def star_of_six(*faults: Fault, link: LinkProfile | None = None) -> Report:
    """A star of 6 nodes, 60 writes, through ``faults``, traced; it must converge."""
    scenario = Scenario(nodes=6, topology="star", writes=60, write_every_s=0.05, faults=faults)
    if link is not None:
        scenario = replace(scenario, link=link)
    report = await simulate(scenario, keep_trace=True)
    assert_converged(report)
    return report


def fault_line(report: Report, action: str) -> str:
    """The trace line of the first fault ``action`` (it names the nodes it hit)."""
    assert report.trace is not None
    return next(line for line in report.trace if f"fault {action}" in line)


async def test_the_hub_of_a_star_crashes_and_the_spokes_elect_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    report = await star_of_six(Fault(at_s=1.0, action="crash", nodes=("hub",)), link=LOSSY)
    crashed = fault_line(report, "crash")
    down = [node["name"] for node in report.nodes if not node["up"]]
    assert len(down) == 1
    assert f"'{down[0]}'" in crashed
    assert report.hub is not None
    assert report.hub != down[0]


async def test_restarting_the_hub_brings_back_the_hub_that_crashed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    report = await star_of_six(
        Fault(at_s=1.0, action="crash", nodes=("hub",)),
        Fault(at_s=2.0, action="restart", nodes=("hub",)),
    )
    crashed, restarted = fault_line(report, "crash"), fault_line(report, "restart")
    assert crashed.split("crash ")[1] == restarted.split("restart ")[1]
    assert all(node["up"] for node in report.nodes)


def test_the_same_seed_replays_the_same_trace_and_another_seed_does_not() -> None:
    scenario = Scenario(nodes=5, writes=30, hot_keys=4, link=LOSSY, seed=11)
    first, again = run(scenario, keep_trace=True), run(scenario, keep_trace=True)
    assert first.trace == again.trace
    assert first.trace_digest == again.trace_digest
    assert run(replace(scenario, seed=12)).trace_digest != first.trace_digest


def test_a_run_leaves_the_garbage_collector_as_it_found_it() -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    assert_converged(run(Scenario(nodes=3, writes=5)))
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)


def test_a_run_leaves_a_frozen_generation_it_did_not_make_as_it_was() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert_converged(run(Scenario(nodes=3, writes=5)))
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


async def test_phases_are_named_as_they_end(autojump_clock: trio.testing.MockClock) -> None:
    phases: list[str] = []
    assert_converged(await simulate(Scenario(nodes=3, writes=5), phase=phases.append))
    assert phases == ["settled", "converged", "reported"]


def test_a_run_replays_in_another_process_with_another_hash_seed() -> None:
    argv = ["sim", "run", "--nodes", "5", "--writes", "20", "--loss", "0.05", "--seed", "3"]
    code = f"from blazemesh.cli import main; main({[*argv, '--json']!r})"
    digests = set()
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            timeout=300,
        )
        digests.add(json.loads(done.stdout)["trace_digest"])
    assert len(digests) == 1


def test_the_command_runs_flags_and_writes_every_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sim", "run", "--nodes", "5", "--writes", "10", "--loss", "0.05"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--partition", "0.02", "0.5", "--out", str(tmp_path)])
    assert exit_info.value.code == 0
    summary = capsys.readouterr().out
    assert "converged after" in summary
    assert (tmp_path / "summary.txt").read_text() == summary
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failures"] == []
    assert report["converged_at_s"] > 0
    assert [f["action"] for f in report["scenario"]["faults"]] == ["partition", "heal"]
    trace = (tmp_path / "trace.txt").read_text().splitlines()
    assert trace[0].endswith(" settled")  # the mesh formed, then the writes began
    assert report["trace_digest"] in summary
    for name in ("convergence.png", "bytes_per_node.png", "topology.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_outputs_gives_every_file_for_a_report(tmp_path: Path) -> None:
    report = run(Scenario(nodes=3, writes=5), keep_trace=True)
    written = write_outputs(report, tmp_path / "out")
    assert sorted(p.name for p in written) == [
        "bytes_per_node.png",
        "convergence.png",
        "report.json",
        "summary.txt",
        "topology.png",
        "trace.txt",
    ]
    lines = (tmp_path / "out" / "trace.txt").read_text().splitlines()
    assert lines == report.trace


def test_plots_name_what_a_report_lacks(tmp_path: Path) -> None:
    data = run(Scenario(nodes=3, writes=5)).to_json()
    del data["curve"]
    with pytest.raises(ValueError, match="curve"):
        write_plots(data, tmp_path)


def test_a_scenario_file_loads_with_its_faults(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        'title = "t"\nnodes = 8\ntopology = "star"\nwrites = 20\nhot_keys = 3\n'
        "deletes = 0.25\nabsent = [7]\n"
        "[link]\nlatency_ms = 5\nloss = 0.01\n"
        '[[fault]]\nat_s = 1\naction = "crash"\nnodes = ["hub"]\n'
        '[[fault]]\nat_s = 2\naction = "join"\nnodes = [7]\n'
    )
    scenario = load(path, seed=4)
    assert scenario.nodes == 8
    assert scenario.topology == "star"
    assert scenario.seed == 4
    assert scenario.link.latency_s == 0.005
    assert scenario.link.loss == 0.01
    assert scenario.absent == (7,)
    assert scenario.faults == (
        Fault(at_s=1.0, action="crash", nodes=("hub",)),
        Fault(at_s=2.0, action="join", nodes=(7,)),
    )
    assert scenario.describe() == "t, seed 4"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodez": 3}, "unknown scenario keys: nodez"),
        ({"link": {"latency": 3}}, r"unknown \[link\] keys: latency"),
        ({"fault": [{"at_s": 1, "action": "explode"}]}, "'explode' is not one of"),
        ({"fault": [{"at_s": 1, "action": "crash"}]}, "needs `nodes`"),
        ({"fault": [{"at_s": 1, "action": "crash", "nodes": [12]}]}, "outside 0..9"),
        ({"fault": [{"at_s": -1, "action": "heal"}]}, "must not be negative"),
        ({"fault": [{"at_s": 1, "action": "partition", "groups": [[1]]}]}, "two `groups`"),
        ({"nodes": 1}, "nodes must be 2 to"),
        ({"nodes": "many"}, "wrong type|nodes must be"),
        ({"topology": "ring"}, "not mesh or star"),
        ({"deletes": 0.5}, "needs hot_keys"),
        ({"absent": list(range(10))}, "at least one node"),
        ({"link": {"loss": 1.5}}, r"loss must be in \[0, 1\)"),
    ],
)
def test_bad_scenarios_are_refused_with_the_reason(data: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        from_mapping(data)


def test_the_command_refuses_a_bad_scenario_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("nodes = [unclosed\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["sim", "run", str(path)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot read scenario" in err


def test_sim_list_names_every_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sim", "list"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("mesh-50", "star-50-hub-fails", "partition-heal", "churn", "reconnect-storm"):
        assert name in out
