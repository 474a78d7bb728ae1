"""The reference epidemic models against the closed forms and tables of Demers et al."""

from __future__ import annotations

import functools
import json
import math
import random
import statistics
from decimal import Decimal

import pytest

from blazemesh.cli import main
from blazemesh.simulations.epidemic import (
    MODELS,
    Outcome,
    Rule,
    push_anti_entropy_curve,
    rumor_residue,
    simulate,
    summarize,
)

SITES = 1000
RUNS = 30


def runs(model: str, rule: Rule | None = None, n: int = SITES, count: int = RUNS) -> list[Outcome]:
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


# Demers et al.'s simulations on 1,000 sites, as printed: k -> residue s, traffic m,
# t_ave, t_last (None: not compared; see `test_push_rumor_t_ave_is_not_the_papers`).
TABLE_1 = {  # push, feedback, counter
    1: ("0.18", "1.7", None, "16.8"),
    2: ("0.037", "3.3", None, "16.9"),
    3: ("0.011", "4.5", None, "17.4"),
    4: ("0.0036", "5.6", None, "17.5"),
    5: ("0.0012", "6.7", None, "17.7"),
}
TABLE_3 = {  # pull, feedback, counter
    1: ("3.1e-2", "2.7", "9.97", "17.6"),
    2: ("5.8e-4", "4.5", "10.07", "15.4"),
    3: ("4.0e-6", "6.1", "10.08", "14.0"),
}
TABLE_RUNS = 100


@functools.cache
def table_runs(model: str, rule: Rule) -> tuple[Outcome, ...]:
    return tuple(
        simulate(model, SITES, random.Random(f"{model}-{rule}-{i}"), rule)
        for i in range(TABLE_RUNS)
    )


def agrees(printed: str, values: list[float], *, share: bool = False) -> bool:
    """Whether the mean of ``values`` agrees with a figure the paper printed: within half
    a unit of its last printed digit plus four standard errors of our mean (for a share
    of sites, never less than the binomial error of sampling that many sites)."""
    figure = float(printed)
    mean = statistics.fmean(values)
    error = statistics.stdev(values) / math.sqrt(len(values))
    if share:
        error = max(error, math.sqrt(max(figure, mean) / (SITES * len(values))))
    exponent = Decimal(printed).as_tuple().exponent
    assert isinstance(exponent, int)
    return abs(mean - figure) <= 0.5 * 10.0**exponent + 4 * error


@pytest.mark.parametrize(("model", "table"), [("rumor-push", TABLE_1), ("rumor-pull", TABLE_3)])
def test_rumor_with_feedback_and_counter_matches_tables_1_and_3(
    model: str, table: dict[int, tuple[str, str, str | None, str]]
) -> None:
    for k, (s, m, t_ave, t_last) in table.items():
        outcomes = table_runs(model, Rule(feedback=True, counter=True, k=k))
        assert agrees(s, [o.residue for o in outcomes], share=True), (k, "residue")
        assert agrees(m, [o.traffic for o in outcomes]), (k, "traffic")
        if t_ave is not None:
            assert agrees(t_ave, [o.t_ave for o in outcomes]), (k, "t_ave")
        assert agrees(t_last, [float(o.t_last) for o in outcomes]), (k, "t_last")


def test_push_rumor_t_ave_is_not_the_papers() -> None:
    """Noticed and left: for push the paper's t_ave (Table 1: 11.0 to 12.8 cycles, rising
    with k) is one to three cycles above ours, while residue, traffic and t_last agree and
    pull's t_ave agrees too; the paper does not say how it measured t_ave."""
    for k in TABLE_1:
        outcomes = table_runs("rumor-push", Rule(feedback=True, counter=True, k=k))
        assert 9.5 < statistics.fmean(o.t_ave for o in outcomes) < 10.5


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_the_counter_counts_cycles_in_a_row_and_bounds_the_traffic(k: int) -> None:
    # Section 1.4: m sites reached, m - 1 necessary messages, and every site sent k
    # unnecessary ones before it stopped: traffic >= (k + 1) m - 1, in every run.
    for o in table_runs("rumor-push", Rule(feedback=True, counter=True, k=k)):
        reached = round((1 - o.residue) * SITES)
        assert round(o.traffic * SITES) >= (k + 1) * reached - 1


@pytest.mark.parametrize("model", ["rumor-push", "rumor-pull"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_blind_counter_keeps_each_site_infective_for_k_cycles(model: str, k: int) -> None:
    for o in runs(model, Rule(feedback=False, counter=True, k=k), count=10):
        # the last site reached spreads for k cycles, then nobody does
        assert len(o.susceptible) == o.t_last + k
        if model == "rumor-push":  # one message a cycle: k per site reached
            assert o.traffic == pytest.approx(k * (1 - o.residue))


def test_with_k_1_counter_and_coin_are_one_rule() -> None:
    for model in ("rumor-push", "rumor-pull"):
        counter = summarize(runs(model, Rule(feedback=True, counter=True, k=1), count=100))
        coin = summarize(runs(model, Rule(feedback=True, counter=False, k=1), count=100))
        for name in ("residue", "traffic", "t_last"):
            error = math.hypot(counter[name].stdev, coin[name].stdev) / math.sqrt(100)
            assert abs(counter[name].mean - coin[name].mean) <= 4 * error, (model, name)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_push_rumor_with_feedback_and_coin_leaves_less_than_the_equation(k: int) -> None:
    """s = e^(-(k+1)(1-s)) models contacts one at a time; in synchronous cycles two pushes
    to one susceptible site are both necessary, fewer spreaders stop, and the residue is
    10-20 % lower (k = 1: 0.176 here and in Table 1, where counter and coin are one rule)."""
    outcomes = runs("rumor-push", Rule(feedback=True, counter=False, k=k))
    s = statistics.fmean(o.residue for o in outcomes)
    assert 0.75 * rumor_residue(Rule(feedback=True, counter=False, k=k)) < s
    assert s < rumor_residue(Rule(feedback=True, counter=False, k=k))


@pytest.mark.parametrize(
    "rule",
    [
        Rule(feedback=f, counter=c, k=k)
        for f in (True, False)
        for c in (True, False)
        for k in (2, 3)
    ],
)
def test_push_rumor_residue_and_traffic_obey_s_equals_e_to_the_minus_m(rule: Rule) -> None:
    outcomes = runs("rumor-push", rule)
    s = statistics.fmean(o.residue for o in outcomes)
    m = statistics.fmean(o.traffic for o in outcomes)
    assert s == pytest.approx(math.exp(-m), rel=0.25)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_push_rumor_blind_leaves_the_predicted_residue(k: int) -> None:
    for counter in (True, False):
        rule = Rule(feedback=False, counter=counter, k=k)
        s = statistics.fmean(o.residue for o in runs("rumor-push", rule))
        assert s == pytest.approx(rumor_residue(rule), rel=0.2), counter


def test_feedback_with_a_counter_has_no_closed_form() -> None:
    with pytest.raises(ValueError, match="no closed form"):
        rumor_residue(Rule(feedback=True, counter=True, k=2))


@pytest.mark.parametrize(
    ("k", "s", "m"),
    [(1, 0.96, 0.04), (2, 0.20, 1.6), (3, 0.060, 2.8), (4, 0.021, 3.9)],
)
def test_push_rumor_blind_coin_matches_table_2(k: int, s: float, m: float) -> None:
    summary = summarize(runs("rumor-push", Rule(feedback=False, counter=False, k=k)))
    assert summary["residue"].mean == pytest.approx(s, rel=0.25, abs=0.01)
    assert summary["traffic"].mean == pytest.approx(m, rel=0.25, abs=0.02)


def test_pull_rumor_beats_push_for_the_same_rule() -> None:
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
