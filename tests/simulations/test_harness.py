"""Real nodes on the simulated network: they converge, and the checks catch a bad merge."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from agent.cli import main
from protocol import crdt
from simulations.harness import Scenario, simulate
from simulations.network import LinkProfile

LOSSY = LinkProfile(latency_s=0.02, jitter_s=0.01, loss=0.05)


@pytest.mark.parametrize("topology", ["mesh", "star"])
async def test_nodes_converge_through_loss(
    autojump_clock: trio.testing.MockClock, topology: str
) -> None:
    report = await simulate(Scenario(nodes=6, topology=topology, writes=30, profile=LOSSY))
    assert report.failures == []
    assert report.converged_at_s is not None
    assert report.spread_s["to 100%, max"] >= report.spread_s["to 50%, median"] > 0
    assert report.bytes_per_node["max"] >= report.bytes_per_node["mean"] > 0


async def test_a_partition_heals_and_nothing_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scenario = Scenario(nodes=6, writes=60, write_every_s=0.1, partition_s=(1.0, 4.0), hot_keys=5)
    report = await simulate(scenario)
    assert report.failures == []


async def test_the_checks_catch_a_merge_that_ignores_the_clock(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def last_applied_wins(self: crdt.RecordState, fields: dict, stamp: crdt.Stamp) -> bool:  # type: ignore[type-arg]
        self.live = max(self.live, stamp)
        self.fields = {**self.fields, **{n: (v, stamp) for n, v in fields.items()}}
        return True

    monkeypatch.setattr(crdt.RecordState, "put", last_applied_wins)
    report = await simulate(Scenario(nodes=6, writes=60, hot_keys=2, profile=LOSSY))
    assert any("replicas differ" in failure for failure in report.failures)


def test_the_command_runs_a_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "run", "--nodes", "5", "--writes", "10", "--loss", "0.05", "--json"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failures"] == []
    assert report["converged_at_s"] > 0
