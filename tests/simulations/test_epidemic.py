"""The reference epidemic models against the closed forms and tables of Demers et al."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from blazemesh.cli import main
from blazemesh.simulations.epidemic import (
    MODELS,
    Rule,
    push_anti_entropy_curve,
    rumor_residue,
    simulate,
    summarize,
)

SITES = 1000
RUNS = 30


def runs(model: str, rule: Rule | None = None, n: int = SITES, count: int = RUNS) -> list:  # type: ignore[type-arg]
    return [simulate(model, n, random.Random(f"{model}-{rule}-{i}"), rule) for i in range(count)]


def test_push_anti_entropy_follows_the_recurrence() -> None:
    outcomes = runs("anti-entropy-push")
    for cycle, expected in enumerate(push_anti_entropy_curve(SITES, 14)):
        simulated = statistics.fmean(
            o.susceptible[cycle] if cycle < len(o.susceptible) else 0.0 for o in outcomes
        )
        assert simulated == pytest.approx(expected, abs=0.02), cycle
    assert all(o.residue == 0 for o in outcomes)  # a simple epidemic reaches everyone
    # log2(n) + ln(n) cycles, the paper's estimate for push
    assert statistics.fmean(o.t_last for o in outcomes) == pytest.approx(
        math.log2(SITES) + math.log(SITES), abs=2.5
    )


def test_pull_anti_entropy_squares_the_susceptible_fraction_each_cycle() -> None:
    for outcome in runs("anti-entropy-pull", count=10):
        for before, after in zip(outcome.susceptible, outcome.susceptible[1:], strict=False):
            if before < 0.5 and before * SITES > 100:  # enough sites left for the law of averages
                assert after == pytest.approx(before**2, abs=0.03)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_push_rumor_with_feedback_and_coin_leaves_the_predicted_residue(k: int) -> None:
    outcomes = runs("rumor-push", Rule(feedback=True, counter=False, k=k))
    s = statistics.fmean(o.residue for o in outcomes)
    assert s == pytest.approx(rumor_residue(k), rel=0.2)
    m = statistics.fmean(o.traffic for o in outcomes)
    assert s == pytest.approx(math.exp(-m), rel=0.25)  # push's s = e^-m


@pytest.mark.parametrize(
    ("k", "s", "m"),
    [(1, 0.96, 0.04), (2, 0.20, 1.6), (3, 0.060, 2.8), (4, 0.021, 3.9)],
)
def test_push_rumor_blind_coin_matches_table_2(k: int, s: float, m: float) -> None:
    summary = summarize(runs("rumor-push", Rule(feedback=False, counter=False, k=k)))
    assert summary["residue"].mean == pytest.approx(s, rel=0.25, abs=0.01)
    assert summary["traffic"].mean == pytest.approx(m, rel=0.25, abs=0.02)


def test_pull_rumor_beats_push_for_the_same_traffic() -> None:
    push = summarize(runs("rumor-push", Rule(k=2)))
    pull = summarize(runs("rumor-pull", Rule(k=2)))
    assert pull["residue"].mean < push["residue"].mean


def test_the_same_seed_gives_the_same_run() -> None:
    for model in MODELS:
        a = simulate(model, 300, random.Random(5), Rule(k=2))
        b = simulate(model, 300, random.Random(5), Rule(k=2))
        assert a == b


@pytest.mark.parametrize(
    ("model", "n", "k"), [("gossip", 10, 1), ("rumor-push", 1, 1), ("rumor-push", 10, 0)]
)
def test_bad_parameters_are_refused(model: str, n: int, k: int) -> None:
    with pytest.raises(ValueError, match=r"is not one of|at least"):
        simulate(model, n, random.Random(0), Rule(k=k))


def test_the_command_prints_the_four_measures_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "epidemic", "--model", "rumor-push", "--counter", "2", "--sites", "200"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--runs", "5", "--json"])
    assert exit_info.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"residue", "traffic", "t_ave", "t_last"}
    assert set(result["residue"]) == {"mean", "stdev", "min", "max"}
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--runs", "0"])
    assert exit_info.value.code == 1
    assert "--runs must be at least 1" in capsys.readouterr().err
