"""Every command, given bad arguments, answers in one line, never with a traceback
(issue 19, section 4: "find the rest of the class").

The cases come from the parser itself (`generated_cases`): for every command, sub-commands
included, each option and positional in turn gets the values that are wrong for its kind
(not a number, negative, zero, past 64 bits, not finite, not one of the choices, empty, not
UTF-8, a file where a directory goes, ...), beside valid values for the rest. Then come the
hand-written cases of the issue (`HAND_WRITTEN`). Each runs as the real ``blazemesh``
command: once with no agent on its data directory, and once with an agent running there.

A command may accept a value (not every large number is wrong); what it may not do is
answer with a traceback, or with more than one line when it fails (exit 1), or fail
without saying why. A command that runs on past `ACCEPTED_RUN_S` took its arguments and
runs (an agent, a demo): it is stopped, and that is no failure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blazemesh.agent.cli import arguments
from blazemesh.agent.cli.main import build_parser
from blazemesh.simulations import cli as sim_cli
from tests.system.agents import BLAZEMESH, Agent, new_mesh, ok, running

pytestmark = pytest.mark.system

ACCEPTED_RUN_S = 15.0  # past this, a command took its arguments and runs: stopped, not failed
WORKERS = 3  # commands run at once; each worker has a data directory of its own
BAD_UTF8 = b"\xff\xfe"  # in argv, Python gives a command lone surrogates for these
HUGE = "99999999999999999999"  # past 64 bits
DEEP = "[" * 10_000 + "]" * 10_000

Arg = str | bytes
AGENT_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|DEBUG|WARNING) ")
# The workers' data directories are copies, and a `restore` case may put a backup back:
# the first open of such a directory says so, once (operations.md, "Backups and
# restores"), whatever the command; that line is no answer to its arguments.
COPY_OPENED = "is not the database this node last opened"


@dataclass(frozen=True)
class Case:
    label: str
    argv: tuple[Arg, ...]
    uses_data_dir: bool


def bad_values(action: argparse.Action, files: Path) -> list[Arg]:
    """Values wrong for what ``action`` takes."""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return ["bogus", ""]
    kind = action.type
    if kind is int:
        return ["abc", "-1", "0", HUGE, "1.5"]
    if kind in (float, arguments.finite):
        return ["abc", "-1", "0", "nan", "inf", "1e400", "1e300"]
    if kind in (Path, arguments.path):
        return [str(files / "a-file"), str(files / "a-file" / "below"), ""]
    values: list[Arg] = ["", BAD_UTF8, "x" * 5_000, "-"]
    if action.option_strings == [] and action.nargs == "*":  # FIELD=VALUE lists
        values += ["novalue", "=1", "_f=1", b"f=" + BAD_UTF8, f"f={HUGE}", f"f={DEEP}", "f=1e400"]
    if action.dest in ("listen", "peer", "interface"):
        values += ["127.0.0.1:abc", "127.0.0.1:99999", "[::1", ":7420", "8.8.8.8", "0.0.0.0"]
    if action.dest in ("hub", "node_ids"):
        values += ["abcd-efgh", "a" * 26, "Ä" * 26]
    return values


# Valid values for the positionals, by their dest; anything else gets "x".
VALID_POSITIONALS: dict[str, list[str]] = {
    "collection": ["c"],
    "key": ["k"],
    "fields": ["n=1"],
    "where": [],
    "mode": ["mesh"],
    "scenario": [],
}
# What each command needs beside its positionals to do little, quickly.
BASE_OPTIONS: dict[str, list[str]] = {
    "agent": ["--discovery", "none", "--listen", "127.0.0.1:0"],
    "watch": ["--no-follow"],
    "demo": ["--nodes", "2"],
    "sim run": ["--nodes", "2", "--writes", "1"],
    "sim epidemic": ["--model", "rumor-push", "--sites", "10", "--runs", "1"],
}


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command that runs: ``(words, its parser)``, sub-commands included."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if path and (not subs or parser.get_default("run") is not None):
        yield path, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from commands(child, (*path, name))


def generated_cases(files: Path, join_code: str, node_id: str) -> list[Case]:
    parser = build_parser(lambda sub: sim_cli.register(sub, help="simulate"))
    valid = {**VALID_POSITIONALS, "code": [join_code], "node_ids": [node_id]}
    cases = []
    for words, command in commands(parser):
        name = " ".join(words)
        actions = [
            a
            for a in command._actions
            if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        ]
        positionals = [a for a in actions if not a.option_strings]
        base_options = BASE_OPTIONS.get(name, [])
        uses_data_dir = any(a.dest == "data_dir" for a in actions)

        def argv(
            bad: argparse.Action | None = None,
            value: Arg = "",
            words: tuple[str, ...] = words,
            positionals: list[argparse.Action] = positionals,
            base_options: list[str] = base_options,
        ) -> tuple[Arg, ...]:
            out: list[Arg] = [*words, *base_options]
            for p in positionals:
                out += [value] if p is bad else valid.get(p.dest, ["x"])
            if bad is not None and bad.option_strings:
                nargs = bad.nargs if isinstance(bad.nargs, int) else 1
                out += [bad.option_strings[0], *[value] * nargs]
            return tuple(out)

        cases.append(Case(f"{name} (valid)", argv(), uses_data_dir))
        cases.append(Case(f"{name} --no-such-option", (*argv(), "--no-such-option"), uses_data_dir))
        for action in actions:
            if action.nargs == 0:  # a flag: no value to get wrong
                continue
            for value in bad_values(action, files):
                shown = value if isinstance(value, str) else repr(value)
                label = f"{name} {action.option_strings[:1] or [action.dest]} {shown[:40]!r}"
                cases.append(Case(label, argv(action, value), uses_data_dir))
    return cases


HAND_WRITTEN: list[tuple[Arg, ...]] = [
    ("put", "c", "k", "big=123456789012345678901234567890"),
    ("put", "c", "k", f"z={1 << 64}"),
    ("put", "c", "k", f"d={DEEP}"),
    ("put", "c", "k", b"u=" + BAD_UTF8),
    ("put", "c", "k", "--json", '{"c": Infinity}'),
    ("put", "c", "k", "--json", '{"c": 1e400}'),
    ("put", "c", "k", "--json", f'{{"c": {DEEP}}}'),
    ("put", "c", "k", "--json", "[1]"),
    ("put", "c", "k", 'b={"$bytes": "!!"}'),
    ("put", "c", "k", 'f={"$float": "Infinite"}'),
    ("query", "c", "n=123456789012345678901234567890"),
    ("query", "c", b"n=" + BAD_UTF8),
    ("query", "c", "--after", BAD_UTF8),
    ("query", "c", "--limit", "-1"),
    ("get", "c", "k" * 5_000),
    ("delete", "_mesh", "topology"),
    ("topology", "set", "star", "--max-links", "3"),
    ("topology", "set", "mesh", "--hub", "abcd-efgh"),
    ("watch", "--since", "-5", "--no-follow"),
    ("watch", "--since", HUGE, "--no-follow"),
    ("join", "bm1-not-a-code"),
    ("trust", "remove", "abcd-efgh"),
    ("agent", "--discovery", "none", "--interface", "8.8.8.8"),
    ("agent", "--discovery", "none", "--peer", "127.0.0.1:abc"),
    ("agent", "--topology", "star", "--max-links", "3"),
    ("agent", "--hub", "abcd-efgh"),
]
WITHOUT_DATA_DIR: list[tuple[Arg, ...]] = [
    ("demo", "--max-links", "0"),
    ("demo", "--topology", "star", "--max-links", "2"),
    ("sim", "epidemic", "--model", "rumor-push", "--counter", "0"),
    ("sim", "epidemic", "--model", "anti-entropy-push", "--counter", "2"),
    ("sim", "run", "--partition", "5", "1"),
    ("sim", "run", "--topology", "star", "--max-links", "3"),
    ("sim", "run", "mesh50"),
    ("sim", "run", "--nodes", "2", "--writes", "1", "--skew-ms", "1e300"),
    ("sim", "run", "--nodes", "2", "--writes", "1", "--write-every-ms", "1e300"),
]


@dataclass
class Outcome:
    code: int | None  # None: still running at `ACCEPTED_RUN_S`, and stopped
    out: str
    err: str


def run_case(argv: tuple[Arg, ...], scratch: Path) -> Outcome:
    """Run ``blazemesh ARGV`` in the directory ``scratch``, which is also its default
    data directory: a value that names the current directory (``--out .``), or a
    command given no ``--data-dir``, writes there and nowhere else."""
    with subprocess.Popen(
        [BLAZEMESH, *argv],
        cwd=scratch,
        env={**os.environ, "BLAZEMESH_HOME": str(scratch / "home")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a group of its own: one that runs on is stopped whole
    ) as process:
        try:
            out, err = process.communicate(timeout=ACCEPTED_RUN_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            out, err = process.communicate(timeout=30)
            return Outcome(None, out.decode(errors="replace"), err.decode(errors="replace"))
    return Outcome(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def problem(outcome: Outcome) -> str | None:
    """What is wrong with how a command answered, or None."""
    text = outcome.out + outcome.err
    if "Traceback" in text or "Exception Group" in text:
        return "a traceback"
    lines = [
        line
        for line in outcome.err.splitlines()
        if line.strip()
        and not AGENT_LOG_LINE.match(line)  # an agent logs as it starts
        and COPY_OPENED not in line
    ]
    if outcome.code is None or outcome.code in (0, 3):  # ran (3: a simulation's checks)
        return None
    if outcome.code == 2:  # a usage error: argparse's usage, then its one line
        return None if lines and ": error: " in lines[-1] else "exit 2 without an error line"
    if outcome.code == 1:
        if len(lines) != 1 or not lines[0].startswith("blazemesh: "):
            return f"exit 1 with {len(lines)} lines on stderr"
        return None
    return f"exit code {outcome.code}"


@pytest.fixture(scope="module")
def setting(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, list[tuple[Path, Path]]]]:
    """A data directory with an agent running on it, and for each of `WORKERS` a data
    directory without one and an empty directory to run commands in."""
    top = tmp_path_factory.mktemp("bad-arguments")
    template = top / "template"
    new_mesh([template])
    ok("put", "--data-dir", str(template), "c", "k", "n=1")
    (top / "files").mkdir()
    (top / "files" / "a-file").write_text("not a directory\n")
    workers = []
    for i in range(WORKERS):
        shutil.copytree(template, top / f"idle{i}")
        (top / f"scratch{i}").mkdir()
        workers.append((top / f"idle{i}", top / f"scratch{i}"))
    served = top / "served"
    shutil.copytree(template, served)
    with running([Agent(served, ["--listen", "127.0.0.1:0", "--discovery", "none"])]):
        yield served, workers


Where = Path | str  # a data directory, or IDLE (a worker's own), or NONE (the command takes none)
IDLE, NONE = "idle", "none"


def run_all(
    cases: list[tuple[str, tuple[Arg, ...], Where]], workers: list[tuple[Path, Path]]
) -> list[str]:
    """Run every case (label, argv, where), `WORKERS` at a time, each worker with its
    (data directory, scratch directory); return what went wrong, one entry per case. A
    case that names ``--data-dir`` itself keeps it."""
    local = threading.local()
    free = list(workers)
    lock = threading.Lock()

    def one(label: str, argv: tuple[Arg, ...], where: Where) -> str | None:
        if not hasattr(local, "dirs"):
            with lock:
                local.dirs = free.pop()
        if where == IDLE:
            where = local.dirs[0]
        if where != NONE and "--data-dir" not in argv:
            argv = (*argv, "--data-dir", str(where))
        outcome = run_case(argv, local.dirs[1])
        what = problem(outcome)
        if what is None:
            return None
        return f"{label}: {what}\n    {(outcome.err or outcome.out).strip()[-600:]}"

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda case: one(*case), cases))
    return [r for r in results if r is not None]


def test_no_command_answers_bad_arguments_with_a_traceback(
    setting: tuple[Path, list[tuple[Path, Path]]],
) -> None:
    served, workers = setting
    files = served.parent / "files"
    code = next(
        word for word in ok("invite", "--data-dir", str(served)).split() if word.startswith("bm1-")
    )
    node_id = json.loads(ok("info", "--data-dir", str(served), "--json"))["node_id"]
    batch: list[tuple[str, tuple[Arg, ...], Where]] = []
    for case in generated_cases(files, code, node_id):
        if case.uses_data_dir:
            batch.append((f"[no agent] {case.label}", case.argv, IDLE))
            batch.append((f"[agent] {case.label}", case.argv, served))
        else:
            batch.append((case.label, case.argv, NONE))
    for argv in HAND_WRITTEN:
        batch.append((f"[no agent] {argv!r:.80}", argv, IDLE))
        batch.append((f"[agent] {argv!r:.80}", argv, served))
    batch += [(f"{argv!r:.80}", argv, NONE) for argv in WITHOUT_DATA_DIR]
    failures = run_all(batch, workers)
    assert not failures, f"{len(failures)} of {len(batch)} cases:\n" + "\n".join(failures)
