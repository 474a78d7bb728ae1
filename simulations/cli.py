"""``blazemesh sim``: the simulation harness's commands."""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict

from agent.errors import ConfigError
from simulations.epidemic import MODELS, Rule, simulate, summarize


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sim`` and its commands to the ``blazemesh`` parser."""
    p = sub.add_parser("sim", help="simulations: reference epidemic models")
    commands = p.add_subparsers(dest="sim_command", required=True, metavar="COMMAND")
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


def cmd_epidemic(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise ConfigError("--runs must be at least 1")
    try:
        k = args.coin if args.coin is not None else (args.counter or 1)
        rule = Rule(feedback=args.feedback, counter=args.coin is None, k=k)
        outcomes = [
            simulate(args.model, args.sites, random.Random(args.seed + i), rule)
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
