"""Reference epidemic models: Demers et al., "Epidemic Algorithms for Replicated Database
Maintenance" (PODC 1987), sections 1.3 and 1.4.

One update starts at one of ``n`` sites; time advances in synchronous cycles, and in each
cycle every site that acts chooses one partner uniformly among the other sites. A site
infected in cycle t acts from cycle t + 1. The baselines the agent's own protocol is
compared against (docs/simulation.md):

- anti-entropy, a simple epidemic: every cycle each site contacts a partner and they
  resolve their difference by ``push`` (the holder sends), ``pull`` (the one lacking asks)
  or ``push-pull``; it ends when every site has the update.
- rumor mongering, a complex epidemic: only infective sites spread (``push``: an infective
  site sends to its partner; ``pull``: every site asks its partner, and an infective
  partner answers). It ends when nobody spreads; the sites never reached are the residue.

How a spreader loses interest (section 1.4, "Blind vs. Feedback" and "Counter vs. Coin").
Interest is judged once per cycle, after the cycle's contacts, which happen at once:

- with ``feedback``, a cycle is unnecessary for a spreader when it had contacts and every
  one of them was with a site that already held the update when the cycle began. Two
  sites pushing to one susceptible site in the same cycle both made a necessary contact,
  and a pull-side spreader asked by several sites in one cycle has an unnecessary cycle
  only if all of them knew. A cycle with a necessary contact renews interest; a cycle
  in which nobody asked a pull-side spreader tells it nothing. ``blind``: every cycle
  counts, whatever the contacts.
- with a ``counter``, a spreader stops after k counted cycles in a row: a necessary
  contact starts the count again. In the paper a site loses interest "only after k
  unnecessary contacts", and its bound on the traffic rests on the count restarting: "each
  unnecessary message was sent by a site that, within the last k cycles, sent a
  necessary message, or newly discovered the update" (quoted from the authors' draft of
  section 1.4: xeroxparcarchive.computerhistory.org/_cd6_/ralpine/chspaper/as1r4.tex!1).
  A blind counter thus keeps a site infective for exactly k cycles. With a ``coin``, a
  spreader stops with probability 1/k at each counted cycle.

This reading reproduces the paper's simulations, which an earlier one (each unnecessary
contact counted, never reset, and judged one contact at a time) missed by far more than
sampling noise: Table 1 (push, feedback, counter; k = 1..5) and Table 3 (pull, feedback,
counter; k = 1..3) in residue, traffic and t_last, and Table 2 (push, blind, coin).
Judging a cycle's contacts together is also why k = 1, where counter and coin are the
same rule, leaves 0.176 of the sites here and in Table 1, below the 0.203 of the
paper's equation s = e^(-(k+1)(1-s)), which models contacts one at a time.

Measures, as in the paper: residue s (fraction of sites that never got the update),
traffic m (messages carrying the update, per site), t_ave (mean cycle at which a site got
it, over the sites that did) and t_last (the cycle the last one got it). Messages counted:
push sends the update on every contact, since the sender cannot know; pull sends it only
to a partner that asks for it, so a pull costs a message only when the asking site lacks
the update (anti-entropy) or the answering one is infective (rumor mongering).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

MODELS = (
    "anti-entropy-push",
    "anti-entropy-pull",
    "anti-entropy-push-pull",
    "rumor-push",
    "rumor-pull",
)
MAX_CYCLES = 100_000  # far beyond any run that terminates; a guard, not a parameter


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """When a rumor-mongering site loses interest (see the module's docstring)."""

    feedback: bool = True  # count only cycles whose contacts all found the update known
    counter: bool = True  # stop after k counted cycles in a row; False: with probability 1/k
    k: int = 1

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One run's measures, and the fraction of sites still susceptible after each cycle."""

    residue: float
    traffic: float
    t_ave: float
    t_last: int
    susceptible: tuple[float, ...]


def simulate(model: str, n: int, rng: random.Random, rule: Rule | None = None) -> Outcome:
    """One run of ``model`` on ``n`` sites."""
    if model not in MODELS:
        raise ValueError(f"model {model!r} is not one of {', '.join(MODELS)}")
    if n < 2:
        raise ValueError(f"an epidemic needs at least 2 sites, got {n}")
    got_at = [-1] * n  # cycle at which each site got the update (-1: susceptible)
    first = rng.randrange(n)
    got_at[first] = 0
    if model.startswith("anti-entropy"):
        messages, curve = _anti_entropy(model.removeprefix("anti-entropy-"), got_at, rng)
    else:
        messages, curve = _rumor(model.removeprefix("rumor-"), got_at, rng, rule or Rule())
    reached = [t for t in got_at if t >= 0]
    return Outcome(
        residue=(n - len(reached)) / n,
        traffic=messages / n,
        t_ave=sum(reached) / len(reached),
        t_last=max(reached),
        susceptible=tuple(curve),
    )


def _partner(site: int, n: int, rng: random.Random) -> int:
    other = rng.randrange(n - 1)
    return other + 1 if other >= site else other


def _anti_entropy(mode: str, got_at: list[int], rng: random.Random) -> tuple[int, list[float]]:
    n = len(got_at)
    messages, cycle, holders = 0, 0, 1
    curve = []
    while holders < n:
        cycle += 1
        if cycle > MAX_CYCLES:
            raise RuntimeError("anti-entropy did not finish")
        before = got_at[:]  # what each site held when the cycle began
        for site in range(n):
            partner = _partner(site, n, rng)
            has, other_has = before[site] >= 0, before[partner] >= 0
            if mode in ("push", "push-pull") and has:
                messages += 1
                if got_at[partner] < 0:
                    got_at[partner] = cycle
                    holders += 1
            if mode in ("pull", "push-pull") and not has and other_has:
                messages += 1
                if got_at[site] < 0:
                    got_at[site] = cycle
                    holders += 1
        curve.append((n - holders) / n)
    return messages, curve


def _rumor(mode: str, got_at: list[int], rng: random.Random, rule: Rule) -> tuple[int, list[float]]:
    n = len(got_at)
    infective = {got_at.index(0)}
    counted = [0] * n  # counter: counted cycles in a row, per site
    messages, cycle, holders = 0, 0, 1
    curve = []
    contact = _push_cycle if mode == "push" else _pull_cycle
    while infective:
        cycle += 1
        if cycle > MAX_CYCLES:
            raise RuntimeError("rumor mongering did not finish")
        spreading = sorted(infective)  # sorted: the run depends only on the seed
        done = contact(spreading, got_at, cycle, rng)
        messages += done.messages
        for site in spreading:
            if rule.feedback and site in done.necessary:
                counted[site] = 0
            elif not rule.feedback or site in done.contacted:
                _count(site, counted, infective, rule, rng)
        holders += len(done.fresh)
        infective.update(done.fresh)
        curve.append((n - holders) / n)
    return messages, curve


@dataclass(frozen=True, slots=True, kw_only=True)
class _Cycle:
    """What one cycle's contacts did."""

    messages: int
    contacted: set[int]  # the spreaders that had a contact
    necessary: set[int]  # ... one with a site lacking the update as the cycle began
    fresh: list[int]  # the sites that got the update


def _push_cycle(spreading: list[int], got_at: list[int], cycle: int, rng: random.Random) -> _Cycle:
    necessary, fresh = set(), []
    for site in spreading:
        partner = _partner(site, len(got_at), rng)
        if not 0 <= got_at[partner] < cycle:  # it lacked the update as the cycle began
            necessary.add(site)
        if got_at[partner] < 0:
            got_at[partner] = cycle
            fresh.append(partner)
    return _Cycle(
        messages=len(spreading), contacted=set(spreading), necessary=necessary, fresh=fresh
    )


def _pull_cycle(spreading: list[int], got_at: list[int], cycle: int, rng: random.Random) -> _Cycle:
    active = set(spreading)
    messages, contacted, necessary, fresh = 0, set(), set(), []
    for site in range(len(got_at)):
        partner = _partner(site, len(got_at), rng)
        if partner not in active:
            continue
        messages += 1
        contacted.add(partner)
        if got_at[site] < 0:  # only its own asking brings a site the update
            got_at[site] = cycle
            fresh.append(site)
            necessary.add(partner)
    return _Cycle(messages=messages, contacted=contacted, necessary=necessary, fresh=fresh)


def _count(
    site: int, counted: list[int], infective: set[int], rule: Rule, rng: random.Random
) -> None:
    """One counted cycle for ``site``: it may lose interest."""
    if rule.counter:
        counted[site] += 1
        if counted[site] >= rule.k:
            infective.discard(site)
    elif rng.random() < 1 / rule.k:
        infective.discard(site)


@dataclass(frozen=True, slots=True, kw_only=True)
class Spread:
    mean: float
    stdev: float
    min: float
    max: float


def summarize(outcomes: list[Outcome]) -> dict[str, Spread]:
    """The four measures over runs: mean, standard deviation, extremes."""
    out = {}
    for name in ("residue", "traffic", "t_ave", "t_last"):
        values = [float(getattr(o, name)) for o in outcomes]
        stdev = statistics.stdev(values) if len(values) > 1 else 0.0
        out[name] = Spread(
            mean=statistics.fmean(values), stdev=stdev, min=min(values), max=max(values)
        )
    return out


def push_anti_entropy_curve(n: int, cycles: int) -> list[float]:
    """The paper's recurrence for push anti-entropy: the fraction still susceptible after
    each cycle, p(i+1) = p(i) * (1 - 1/n) ** (n * (1 - p(i)))."""
    p, out = 1 - 1 / n, []
    for _ in range(cycles):
        p *= (1 - 1 / n) ** (n * (1 - p))
        out.append(p)
    return out


def rumor_residue(rule: Rule) -> float:
    """The residue the paper's analysis gives for push rumor mongering on many sites under
    ``rule``: the root in (0, 1] of s = exp(-c * (1 - s)).

    Feedback and coin: c = k + 1, from section 1.4's differential equations, which model
    contacts one at a time (in synchronous cycles the residue is lower: see the module's
    docstring). Blind: c = k, from the paper's s = e^-m for push, each reached site sending
    k messages (exactly k with a counter, k on average with a coin). Feedback with a
    counter has no closed form there: ValueError.
    """
    if rule.feedback and rule.counter:
        raise ValueError("the paper gives no closed form for feedback with a counter")
    c = rule.k + 1 if rule.feedback else rule.k
    if c <= 1:
        return 1.0  # each site passes the rumor on at most once on average: it dies out
    s = 0.5
    for _ in range(200):  # a contraction near the root: fixed-point iteration converges
        s = math.exp(-c * (1 - s))
    return s
