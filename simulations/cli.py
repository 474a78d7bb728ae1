"""``blazemesh sim``: the simulation harness's commands."""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import trio
from trio.testing import MockClock

from blazemesh.agent.cli.arguments import finite, path
from blazemesh.agent.cli.interrupt import INTERRUPTED
from blazemesh.agent.cli.lines import say
from blazemesh.agent.errors import ConfigError
from blazemesh.simulations.epidemic import MODELS, Rule, summarize
from blazemesh.simulations.epidemic import simulate as simulate_epidemic
from blazemesh.simulations.harness import simulate
from blazemesh.simulations.plots import write_plots
from blazemesh.simulations.report import Report
from blazemesh.simulations.scenario import BUILTIN, Fault, Scenario, load

CHECKS_FAILED = 3  # the exit status of a run whose checks failed (1: a bad scenario)
MAX_SITES = 1_000_000  # epidemic: each cycle loops over every site in Python; minutes here
MAX_RUNS = 100_000  # epidemic: runs are averaged; far more than any spread needs
MAX_K = 1_000  # epidemic: a site spreads for about k cycles; the paper's tables stop at 5


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], *, help: str) -> None:
    """Add ``sim`` and its commands to the ``blazemesh`` parser (`blazemesh.cli`)."""
    p = sub.add_parser("sim", help=help)
    commands = p.add_subparsers(dest="sim_command", required=True, metavar="COMMAND")
    r = commands.add_parser(
        "run",
        help="real nodes on a simulated network, in virtual time",
        description="Run a scenario: a TOML file, a built-in name (`blazemesh sim list`), "
        "or flags alone. Flags given beside a scenario override its values.",
    )
    r.add_argument("scenario", nargs="?", help="a .toml file or a built-in scenario's name")
    r.add_argument("--nodes", type=int)
    r.add_argument("--topology", choices=["mesh", "star"])
    r.add_argument("--max-links", type=int, help="mesh: links each node dials (bounded mesh)")
    r.add_argument("--hub-candidates", type=int, metavar="N", help="star: nodes 0..N-1 may be hub")
    r.add_argument("--writes", type=int)
    r.add_argument("--write-every-ms", type=finite)
    r.add_argument("--hot-keys", type=int, help="writes overwrite this many keys (conflicts)")
    r.add_argument("--deletes", type=finite, help="share of writes that delete (needs --hot-keys)")
    r.add_argument("--skew-ms", type=finite, help="each node's clock is off by up to this")
    r.add_argument("--latency-ms", type=finite)
    r.add_argument("--jitter-ms", type=finite)
    r.add_argument("--loss", type=finite, help="probability a chunk needs a retransmission")
    r.add_argument("--bandwidth", type=finite, metavar="BYTES_PER_S")
    r.add_argument("--partition", nargs=2, type=finite, metavar=("FROM_S", "TO_S"),
                   help="split the nodes in halves for this span")  # fmt: skip
    r.add_argument("--storm", type=finite, metavar="AT_S", help="drop every connection then")
    r.add_argument("--secure", action="store_true", help="keep the Noise channel (slower)")
    r.add_argument("--seed", type=int)
    r.add_argument("--out", type=path, metavar="DIR",
                   help="write report.json, summary.txt, trace.txt and plots there")  # fmt: skip
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.set_defaults(run=cmd_run)
    ls = commands.add_parser("list", help="the built-in scenarios")
    ls.set_defaults(run=cmd_list)
    e = commands.add_parser(
        "epidemic", help="Demers et al.'s anti-entropy and rumor mongering on n sites"
    )
    e.add_argument("--model", choices=MODELS, required=True)
    how = e.add_mutually_exclusive_group()
    how.add_argument(
        "--feedback", dest="feedback", action="store_true", default=None,
        help="rumor: lose interest only after contacting a site that knew (default)",
    )  # fmt: skip
    how.add_argument(
        "--blind", dest="feedback", action="store_false", help="rumor: on every contact"
    )
    when = e.add_mutually_exclusive_group()
    when.add_argument("--counter", type=int, metavar="K",
                      help="rumor: after K such cycles in a row (default: K=1)")  # fmt: skip
    when.add_argument("--coin", type=int, metavar="K",
                      help="rumor: with probability 1/K at each such cycle")  # fmt: skip
    e.add_argument("--sites", type=int, default=1000)
    e.add_argument("--runs", type=int, default=50)
    e.add_argument("--seed", type=int, default=0, help="runs are seeded seed, seed+1, ...")
    e.add_argument("--json", action="store_true", help="the four measures and their spread")
    e.set_defaults(run=cmd_epidemic)


def scenario_from(args: argparse.Namespace) -> Scenario:
    """The scenario the arguments name, with the flags given applied over it."""
    base = Scenario() if args.scenario is None else _named(args.scenario)
    plain = {
        "nodes": args.nodes,
        "topology": args.topology,
        "max_links": args.max_links,
        "hub_candidates": args.hub_candidates,
        "writes": args.writes,
        "write_every_s": None if args.write_every_ms is None else args.write_every_ms / 1000,
        "hot_keys": args.hot_keys,
        "deletes": args.deletes,
        "skew_ms": args.skew_ms,
        "secure": args.secure or None,
        "seed": args.seed,
    }
    link = {
        "latency_s": None if args.latency_ms is None else args.latency_ms / 1000,
        "jitter_s": None if args.jitter_ms is None else args.jitter_ms / 1000,
        "loss": args.loss,
        "bandwidth_bps": args.bandwidth,
    }
    if args.hub_candidates is not None and (args.topology or base.topology) != "star":
        raise ValueError("--hub-candidates says which nodes may be a star's hub: choose star")
    if args.bandwidth is not None and args.bandwidth <= 0:
        raise ValueError(f"--bandwidth must be more than 0 bytes a second, got {args.bandwidth}")
    faults = list(base.faults)
    if args.partition is not None:
        begin, end = args.partition
        if end <= begin:
            raise ValueError(
                f"--partition FROM_S TO_S: the partition must end after it begins, "
                f"got {begin:g} to {end:g}"
            )
        nodes = args.nodes or base.nodes
        halves = (tuple(range(nodes // 2)), tuple(range(nodes // 2, nodes)))
        faults += [
            Fault(at_s=begin, action="partition", groups=halves),
            Fault(at_s=end, action="heal"),
        ]
    if args.storm is not None:
        faults.append(Fault(at_s=args.storm, action="storm"))
    return replace(
        base,
        link=replace(base.link, **{k: v for k, v in link.items() if v is not None}),
        faults=tuple(faults),
        **{k: v for k, v in plain.items() if v is not None},
    )


def _named(name: str) -> Scenario:
    """The built-in scenario ``name``, or the scenario file at that path."""
    if name in BUILTIN:
        return BUILTIN[name]
    path = Path(name)
    if not path.exists() and path.suffix != ".toml":
        close = difflib.get_close_matches(name, BUILTIN, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(
            f"no built-in scenario and no file named {name!r}: {hint}"
            f"the built-in ones are {', '.join(BUILTIN)} (`blazemesh sim list`)"
        )
    return load(path)


def _out_dir(out: Path) -> None:
    """Make the directory ``--out`` names, before the run rather than after it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"--out {out} is a file: name a directory") from None
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot make the directory: {exc.strerror}") from None


def cmd_run(args: argparse.Namespace) -> int:
    try:
        scenario = scenario_from(args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.out is not None:
        _out_dir(args.out)
    show = Progress() if sys.stderr.isatty() and not args.json else None
    run = functools.partial(simulate, scenario, keep_trace=args.out is not None, progress=show)
    abandon = signal.signal(signal.SIGINT, _abandon)
    try:
        if show is not None:  # setting up a large mesh takes a while before converging starts
            show.starting(scenario.nodes)
        report = trio.run(run, clock=MockClock(autojump_threshold=0))
    finally:
        signal.signal(signal.SIGINT, abandon)
    if show is not None:
        show.done()
    if args.out is not None:
        for path in write_outputs(report, args.out):
            print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(report.to_json()) if args.json else report.summary())
    return CHECKS_FAILED if report.failures else 0


def write_outputs(report: Report, out: Path) -> list[Path]:
    """report.json, summary.txt, trace.txt and, with matplotlib, the plots, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    data = report.to_json()
    trace = data.pop("trace", None) or []
    for name, text in (
        ("report.json", json.dumps(data, indent=1)),
        ("summary.txt", report.summary() + "\n"),
        ("trace.txt", "".join(line + "\n" for line in trace)),
    ):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    try:
        written += write_plots(data, out)
    except RuntimeError as exc:  # matplotlib is not installed
        say("warning", f"no plots: {exc}")
    return written


class Progress:
    """A one-line progress bar on standard error, redrawn at most ten times a second."""

    def __init__(self) -> None:
        self._drawn = 0.0

    def __call__(self, share: float) -> None:
        now = time.monotonic()
        if now - self._drawn < 0.1:
            return
        self._drawn = now
        bar = "#" * int(share * 40)
        print(f"\r  converging [{bar:<40}] {share:6.1%}", end="", file=sys.stderr, flush=True)

    def starting(self, nodes: int) -> None:
        print(f"\r  starting {nodes} nodes", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)


def _abandon(signum: int, frame: object) -> None:
    """SIGINT (Ctrl-C) during a run: exit at once, from the signal handler. A run holds
    nothing outside this process, and cancelling its tasks in order would take seconds
    (11.6 s for a mesh of 500 nodes dialling), with trio's own handler seconds more to
    reach the scheduler between batches of tasks."""
    print("\r" + " " * 60 + "\r", end="", file=sys.stderr)  # the progress bar, if drawn
    say("error", "interrupted")
    sys.stdout.flush()
    os._exit(INTERRUPTED)


def cmd_list(args: argparse.Namespace) -> int:
    for name, scenario in BUILTIN.items():
        print(f"{name:<20} {scenario.describe()}")
    return 0


def _within(option: str, value: int, least: int, most: int | None) -> None:
    if value < least:
        raise ConfigError(f"{option} must be at least {least}, got {value}")
    if most is not None and value > most:
        raise ConfigError(f"{option} must be at most {most:,}, got {value}")


def cmd_epidemic(args: argparse.Namespace) -> int:
    _within("--runs", args.runs, 1, MAX_RUNS)
    _within("--sites", args.sites, 2, MAX_SITES)
    rumor = args.model.startswith("rumor")
    chosen = [
        option
        for option, value in (("--counter", args.counter), ("--coin", args.coin))
        if value is not None
    ] + (["--feedback or --blind"] if args.feedback is not None else [])
    if chosen and not rumor:
        raise ConfigError(
            f"{' and '.join(chosen)}: say when a rumor-mongering site loses interest; "
            f"{args.model} has no rumor"
        )
    for option, value in (("--counter", args.counter), ("--coin", args.coin)):
        if value is not None:
            _within(option, value, 1, MAX_K)
    try:
        k = args.coin if args.coin is not None else (args.counter or 1)
        feedback = True if args.feedback is None else args.feedback
        rule = Rule(feedback=feedback, counter=args.coin is None, k=k)
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
