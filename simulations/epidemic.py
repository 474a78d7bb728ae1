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
  partner answers). A spreader loses interest with ``feedback`` only when the recipient
  already knew (else ``blind``: on every contact), by ``counter`` (after k such contacts)
  or ``coin`` (with probability 1/k each time). It ends when nobody spreads; the sites
  never reached are the residue.

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
    """When a rumor-mongering site loses interest."""

    feedback: bool = True  # only after contacting a site that already knew
    counter: bool = True  # after k such contacts; False: with probability 1/k each
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
    strikes = [0] * n  # contacts counted towards losing interest
    messages, cycle, holders = 0, 0, 1
    curve = []

    def contact(spreader: int, knew: bool) -> None:
        """``spreader`` sent the update to a site that ``knew`` it or not."""
        if rule.feedback and not knew:
            return
        if rule.counter:
            strikes[spreader] += 1
            if strikes[spreader] >= rule.k:
                infective.discard(spreader)
        elif rng.random() < 1 / rule.k:
            infective.discard(spreader)

    while infective:
        cycle += 1
        if cycle > MAX_CYCLES:
            raise RuntimeError("rumor mongering did not finish")
        spreading = sorted(infective)  # sorted: the run depends only on the seed
        active = set(spreading)
        fresh = []
        if mode == "push":
            for site in spreading:
                partner = _partner(site, n, rng)
                messages += 1
                knew = got_at[partner] >= 0
                if not knew:
                    got_at[partner] = cycle
                    fresh.append(partner)
                contact(site, knew)
        else:
            for site in range(n):
                partner = _partner(site, n, rng)
                if partner not in active:
                    continue
                messages += 1
                knew = got_at[site] >= 0
                if not knew:
                    got_at[site] = cycle
                    fresh.append(site)
                contact(partner, knew)
        holders += len(fresh)
        infective.update(fresh)
        curve.append((n - holders) / n)
    return messages, curve


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


def rumor_residue(k: int) -> float:
    """Residue of push rumor mongering with feedback and coin k: the root in (0, 1) of
    s = exp(-(k + 1) * (1 - s)) (section 1.4)."""
    s = 0.5
    for _ in range(200):  # a contraction near the root: fixed-point iteration converges
        s = math.exp(-(k + 1) * (1 - s))
    return s
