"""``blazemesh sim``: the simulation harness's commands."""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict

import trio
from trio.testing import MockClock

from agent.errors import ConfigError
from simulations.epidemic import MODELS, Rule, summarize
from simulations.epidemic import simulate as simulate_epidemic
from simulations.harness import Scenario, simulate
from simulations.network import LinkProfile


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sim`` and its commands to the ``blazemesh`` parser."""
    p = sub.add_parser("sim", help="simulate a mesh in virtual time; reference epidemic models")
    commands = p.add_subparsers(dest="sim_command", required=True, metavar="COMMAND")
    r = commands.add_parser("run", help="real nodes on a simulated network, in virtual time")
    r.add_argument("--nodes", type=int, default=20)
    r.add_argument("--topology", choices=["mesh", "star"], default="mesh")
    r.add_argument("--writes", type=int, default=100)
    r.add_argument("--latency-ms", type=float, default=1.0)
    r.add_argument("--jitter-ms", type=float, default=0.0)
    r.add_argument("--loss", type=float, default=0.0, help="probability a chunk is lost")
    r.add_argument("--partition", nargs=2, type=float, metavar=("FROM_S", "TO_S"))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", action="store_true")
    r.set_defaults(run=cmd_run)
    e = commands.add_parser(
        "epidemic", help="Demers et al.'s anti-entropy and rumor mongering on n sites"
    )
    e.add_argument("--model", choices=MODELS, required=True)
    how = e.add_mutually_exclusive_group()
    how.add_argument(
        "--feedback", dest="feedback", action="store_true", default=True,
        help="rumor: lose interest only after contacting a site that knew (default)",
    )  # fmt: skip
    how.add_argument(
        "--blind", dest="feedback", action="store_false", help="rumor: on every contact"
    )
    when = e.add_mutually_exclusive_group()
    when.add_argument("--counter", type=int, metavar="K", help="rumor: after K such contacts")
    when.add_argument("--coin", type=int, metavar="K", help="rumor: with probability 1/K each")
    e.add_argument("--sites", type=int, default=1000)
    e.add_argument("--runs", type=int, default=50)
    e.add_argument("--seed", type=int, default=0, help="runs are seeded seed, seed+1, ...")
    e.add_argument("--json", action="store_true", help="the four measures and their spread")
    e.set_defaults(run=cmd_epidemic)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        scenario = Scenario(
            nodes=args.nodes,
            topology=args.topology,
            writes=args.writes,
            profile=LinkProfile(
                latency_s=args.latency_ms / 1000, jitter_s=args.jitter_ms / 1000, loss=args.loss
            ),
            partition_s=None if args.partition is None else tuple(args.partition),
            seed=args.seed,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    report = trio.run(simulate, scenario, clock=MockClock(autojump_threshold=0))
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        when = "never" if report.converged_at_s is None else f"{report.converged_at_s:.3f} s"
        print(f"{args.nodes} nodes, {args.topology}, {args.writes} writes: converged {when}")
        for name, value in report.spread_s.items():
            print(f"  spread {name:<16} {value * 1000:10.1f} ms")
        traffic = report.bytes_per_node
        print(f"  bytes sent per node: mean {traffic['mean']:.0f}, max {traffic['max']:.0f}")
        for failure in report.failures:
            print(f"  CHECK FAILED: {failure}")
    return 1 if report.failures else 0


def cmd_epidemic(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise ConfigError("--runs must be at least 1")
    try:
        k = args.coin if args.coin is not None else (args.counter or 1)
        rule = Rule(feedback=args.feedback, counter=args.coin is None, k=k)
        outcomes = [
            simulate_epidemic(args.model, args.sites, random.Random(args.seed + i), rule)
            for i in range(args.runs)
        ]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    summary = summarize(outcomes)
    if args.json:
        print(json.dumps({name: asdict(spread) for name, spread in summary.items()}))
        return 0
    rumor = args.model.startswith("rumor")
    how = (
        f", {'feedback' if rule.feedback else 'blind'}, {'counter' if rule.counter else 'coin'}"
        f" k={rule.k}"
        if rumor
        else ""
    )
    print(f"{args.model}{how}: {args.sites} sites, {args.runs} runs (mean ± stdev)")
    for name, label in (
        ("residue", "residue s"),
        ("traffic", "traffic m"),
        ("t_ave", "t_ave"),
        ("t_last", "t_last"),
    ):
        spread = summary[name]
        print(f"  {label:<10} {spread.mean:10.4f} ± {spread.stdev:.4f}")
    return 0
