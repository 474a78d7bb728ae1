"""Three `blazemesh agent` processes on real TCP and Noise, written to through the CLI.

a listens only, b dials a, c dials a and b, each on its own loopback address. Two writer
threads run `blazemesh put` one command at a time: one on b, one on a and c in turn.
While b's writer keeps writing, agent b is SIGKILLed; a write to b during its downtime
goes straight to b's database (the CLI opens it when no agent answers) or fails, and
only writes whose command returned 0 count as acknowledged. b is restarted with the same
arguments while a and c are written on. Then every change reaches every node (followed
with `watch`, pushed by the agents), the digests agree, every acknowledged write reads
back everywhere, the links are up and in sync, and every agent stops cleanly on SIGTERM
(issue 4).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from blazemesh.agent.trust.identity import load_identity
from tests.system.agents import (
    BLAZEMESH,
    STOP_TIMEOUT_S,
    Agent,
    blazemesh,
    new_mesh,
    ok,
    wait_for_line,
)

HOSTS = {"a": "127.0.0.61", "b": "127.0.0.62", "c": "127.0.0.63"}
DIALS = {"a": [], "b": ["a"], "c": ["a", "b"]}
COLLECTION = "w"
PHASE_WRITES = 2  # acknowledged writes to b before the kill, and after the restart
DOWN_WRITES = 1  # writes to b attempted while its agent is down
MAX_WRITES = 200  # a writer stops after this many commands whatever else happens
PUT_TIMEOUT_S = 30.0  # one `blazemesh put`: a command that hangs is a failure, not a wait
PHASE_TIMEOUT_S = 60.0  # for the writers to reach the next step of the scenario
CONVERGE_TIMEOUT_S = 60.0  # for every node to hold every change, all nodes together
IN_SYNC_TIMEOUT_S = 20.0  # for the links to report "in sync" once the data has converged
COMMITTED = re.compile(r"committed (\S+):(\d+)")
T = TypeVar("T")


def free_port(host: str) -> int:
    """A port nothing listens on at ``host`` now (the agent binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


def unavailable() -> str | None:
    """Why the loopback addresses cannot be bound here, or None if they can."""
    try:
        for host in HOSTS.values():
            free_port(host)
    except OSError as exc:
        return f"cannot bind the loopback addresses {', '.join(HOSTS.values())}: {exc}"
    return None


UNAVAILABLE = unavailable()
pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE)),
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Write:
    """One `blazemesh put` and what it returned; ``phase`` is b's state when it started."""

    node: str
    key: str
    phase: str
    returncode: int | None  # None: it did not finish within PUT_TIMEOUT_S
    output: str

    @property
    def dot(self) -> tuple[str, int]:
        """The (origin short id, seq) the command printed as committed."""
        match = COMMITTED.fullmatch(self.output.strip())
        assert match, f"{self.node} {self.key}: acknowledged with {self.output!r}"
        return match[1], int(match[2])


class Writers:
    """Threads writing unique keys through `blazemesh put`, one command at a time each,
    until told to stop: one thread per lane, taking the lane's nodes in turn. The test waits
    on their progress (a condition, no sleeping) and can pause a lane between commands."""

    def __init__(self, dirs: dict[str, Path], lanes: dict[str, list[str]]) -> None:
        self.dirs = dirs
        self.lanes = lanes
        self.progress = threading.Condition()
        self.phase = "up"
        self.stopping = False
        self.writes: dict[str, list[Write]] = {name: [] for name in dirs}
        self._busy: set[str] = set()  # lanes running a command
        self._paused: set[str] = set()
        self._threads = [threading.Thread(target=self._run, args=(lane,)) for lane in lanes]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self.progress:
            self.stopping = True
            self.progress.notify_all()
        for thread in self._threads:
            thread.join(PUT_TIMEOUT_S + 10)
        assert not any(thread.is_alive() for thread in self._threads), "a writer is stuck"

    @contextlib.contextmanager
    def paused(self, lane: str) -> Iterator[None]:
        """Hold ``lane`` between two of its commands for the duration of the block."""
        with self.progress:
            self._paused.add(lane)
            idle = self.progress.wait_for(lambda: lane not in self._busy, PUT_TIMEOUT_S + 10)
        assert idle, f"lane {lane} did not finish its command: {self.summary()}"
        try:
            yield
        finally:
            with self.progress:
                self._paused.discard(lane)
                self.progress.notify_all()

    def set_phase(self, phase: str) -> None:
        with self.progress:
            self.phase = phase

    def count(self, node: str, phase: str | None = None, *, acknowledged: bool = True) -> int:
        """Commands to ``node`` started in ``phase`` (any if None), only the acknowledged
        ones unless told otherwise. Call with ``progress`` held."""
        return sum(
            1
            for w in self.writes[node]
            if (phase is None or w.phase == phase) and (w.returncode == 0 or not acknowledged)
        )

    def wait_until(self, what: str, predicate: Callable[[], bool]) -> None:
        with self.progress:
            if not self.progress.wait_for(predicate, PHASE_TIMEOUT_S):
                raise AssertionError(f"timed out waiting until {what}: {self.summary()}")

    def summary(self) -> str:
        return "; ".join(
            f"{node}: "
            + ", ".join(f"{w.key} {w.phase} rc={w.returncode} {w.output.strip()!r}" for w in ws)
            for node, ws in self.writes.items()
        )

    def acknowledged(self) -> list[Write]:
        return [w for ws in self.writes.values() for w in ws if w.returncode == 0]

    def _run(self, lane: str) -> None:
        nodes = self.lanes[lane]
        for n in range(MAX_WRITES):
            node, i = nodes[n % len(nodes)], n // len(nodes)
            with self.progress:
                self.progress.wait_for(
                    lambda: self.stopping or lane not in self._paused, PHASE_TIMEOUT_S
                )
                if self.stopping or lane in self._paused:
                    return
                self._busy.add(lane)
                phase = self.phase
            key = f"{node}-{i:03d}"
            fields = [f"node={node}", f"i={i}", f"phase={phase}"]
            try:
                result = blazemesh(
                    "put", "--data-dir", str(self.dirs[node]), COLLECTION, key, *fields,
                    timeout=PUT_TIMEOUT_S,
                )  # fmt: skip
                code, output = result.returncode, result.stdout + result.stderr
            except subprocess.TimeoutExpired:
                code, output = None, "timed out"
            with self.progress:
                write = Write(node=node, key=key, phase=phase, returncode=code, output=output)
                self.writes[node].append(write)
                self._busy.discard(lane)
                self.progress.notify_all()


@contextlib.contextmanager
def stopped_cleanly(agents: dict[str, Agent]) -> Iterator[None]:
    """On the way out, SIGTERM every agent still running and check each exits 0 within
    STOP_TIMEOUT_S having logged a clean stop (SIGKILL only for one that does not exit)."""
    try:
        yield
    finally:
        codes: dict[str, int | str] = {}
        for name, agent in agents.items():
            if agent.process is None:
                continue
            try:
                codes[name] = agent.stop()  # SIGTERM by pid; SIGKILL if it does not stop
            except subprocess.TimeoutExpired:
                codes[name] = f"did not stop within {STOP_TIMEOUT_S}s of SIGTERM"
    assert all(code == 0 for code in codes.values()), codes
    for name, agent in agents.items():
        log = agent.log.read_text()
        assert "stopped; links closed, database closed" in log, f"{name}:\n{log}"
        assert "Traceback" not in log, f"{name}:\n{log}"


def hold_everything(
    dirs: dict[str, Path], expected: dict[tuple[str, int], str | None], timeout_s: float
) -> None:
    """Follow every node's `watch` from the start of its log until each has shown every
    expected (origin, seq): the agents push changes as they commit, so nothing polls. A
    change whose key is known must carry it. After ``timeout_s`` (for all nodes together)
    the missing changes are named."""
    watch_argv = ["timeout", str(timeout_s), BLAZEMESH, "watch", "--since", "0"]
    with contextlib.ExitStack() as stack:
        watches = {
            name: stack.enter_context(
                subprocess.Popen(
                    [*watch_argv, "--data-dir", str(data_dir)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            for name, data_dir in dirs.items()
        }
        for watch in watches.values():
            stack.callback(watch.kill)
        for name, watch in watches.items():  # all started at once: one deadline for all
            assert watch.stdout is not None
            assert watch.stderr is not None
            missing = set(expected)
            for line in watch.stdout:
                event = json.loads(line)
                dot = (event["origin"], event["seq"])
                assert expected.get(dot) in (None, event["key"]), (
                    f"{name} holds {dot} as {event['key']}, acknowledged as {expected[dot]}"
                )
                missing.discard(dot)
                if not missing:
                    break
            else:
                raise AssertionError(
                    f"{name} still lacks {len(missing)} changes after {timeout_s}s: "
                    f"{sorted(missing)[:20]} (watch exit {watch.wait()}: {watch.stderr.read()})"
                )


def peers(data_dir: Path) -> list[dict[str, Any]]:
    out = ok("peers", "--json", "--data-dir", str(data_dir))
    return [json.loads(line) for line in out.splitlines()]


def links_in_sync(data_dir: Path, others: list[str], deadline: float) -> None:
    """Wait until the node has a link to each of ``others`` and each is in sync. A link's
    state follows the data by an ACK or a SUMMARY (every 5 s), and nothing pushes link
    states, so this asks `peers` again, bounded in time and count, each ask being a whole
    CLI process: a paced retry, not a busy loop."""
    for _ in range(100):
        links = peers(data_dir)
        if sorted(link["node_id"] for link in links) == others and all(
            link["state"] == "in sync" for link in links
        ):
            return
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"{data_dir.name}'s links: {links}")


def records(data_dir: Path) -> dict[str, dict[str, Any]]:
    out = ok("query", COLLECTION, "--data-dir", str(data_dir))
    return {r["key"]: r["fields"] for r in map(json.loads, out.splitlines())}


def on_each(do: Callable[[Path], T], dirs: dict[str, Path]) -> dict[str, T]:
    """``do`` on every node at once (each is a CLI process: they overlap)."""
    with ThreadPoolExecutor(len(dirs)) as pool:
        return dict(zip(dirs, pool.map(do, dirs.values()), strict=True))


def test_agents_converge_after_sigkill_mid_stream(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in HOSTS}
    new_mesh(list(dirs.values()), name="issue4")
    ids = {name: load_identity(d).text for name, d in dirs.items()}
    shorts = {name: load_identity(d).short for name, d in dirs.items()}
    listen = {name: f"{host}:{free_port(host)}" for name, host in HOSTS.items()}
    agents = {
        name: Agent(
            dirs[name],
            ["--discovery", "none", "--listen", listen[name]]
            + [arg for peer in DIALS[name] for arg in ("--peer", listen[peer])],
        )
        for name in HOSTS
    }
    b = agents["b"]
    # Two lanes, two commands at a time: b's writer, and one taking a and c in turn.
    writers = Writers(dirs, {"b": ["b"], "a+c": ["a", "c"]})

    def others_wrote(phase: str) -> bool:
        """a and c each had a write acknowledged in ``phase`` of b (``progress`` held)."""
        return writers.count("a", phase) >= 1 and writers.count("c", phase) >= 1

    with stopped_cleanly(agents):
        on_each(lambda d: agents[d.name].start(), dirs)  # each returns once its agent serves
        try:
            writers.start()
            writers.wait_until(
                "b's agent, and a and c, acknowledged writes",
                lambda: writers.count("b", "up") >= PHASE_WRITES and others_wrote("up"),
            )
            # Kill b mid-stream: its writer and the other lane go on writing. A command in
            # flight at the kill may fail; the next ones find no agent and open b's database.
            b.kill()
            writers.set_phase("down")
            writers.wait_until(
                "a write to b was attempted while its agent was down, and a and c written",
                lambda: (
                    writers.count("b", "down", acknowledged=False) >= DOWN_WRITES
                    and others_wrote("down")
                ),
            )
            with writers.paused("b"):
                # Between two of b's commands: one holding b's database would make the agent
                # refuse to start (the data directory is locked), by design.
                b.log = tmp_path / "b-restarted.log"  # the restarted agent's own log
                b.start()  # the same arguments; returns once its control socket answers
                writers.set_phase("restarted")
            writers.wait_until(
                "b's restarted agent, and a and c, acknowledged writes",
                lambda: (
                    writers.count("b", "restarted") >= PHASE_WRITES and others_wrote("restarted")
                ),
            )
        finally:
            writers.stop()
        writes = writers.writes
        assert all(w.returncode is not None for ws in writes.values() for w in ws), (
            f"a `blazemesh put` hung: {writers.summary()}"
        )
        # With an agent serving (a and c throughout, b once restarted) every write succeeds.
        served = writes["a"] + writes["c"] + [w for w in writes["b"] if w.phase == "restarted"]
        assert all(w.returncode == 0 for w in served), writers.summary()

        # Each acknowledged write names its node as origin. Each node's last write was
        # acknowledged, and its seq counts every change that node made (seqs run 1, 2, ...
        # per origin): those are the changes every node must come to hold.
        acknowledged = writers.acknowledged()
        expected: dict[tuple[str, int], str | None] = {}
        for name in HOSTS:
            made = writes[name][-1].dot[1]
            # Not fewer changes than acknowledged writes, nor more than commands run.
            assert writers.count(name) <= made <= len(writes[name]), writers.summary()
            expected |= {(ids[name], seq): None for seq in range(1, made + 1)}
        for w in acknowledged:
            short, seq = w.dot
            assert short == shorts[w.node], f"{w.key} committed by {short}, not {w.node}"
            expected[ids[w.node], seq] = w.key

        hold_everything(dirs, expected, CONVERGE_TIMEOUT_S)

        digests = on_each(lambda d: agents[d.name].info()["digest"], dirs)
        assert len(set(digests.values())) == 1, digests
        for name, held in on_each(records, dirs).items():
            for w in acknowledged:
                i = int(w.key.rsplit("-", 1)[1])
                assert held.get(w.key) == {"node": w.node, "i": i, "phase": w.phase}, (
                    f"{name} has {w.key} as {held.get(w.key)}"
                )

        # b's restarted agent links again to a (it dials) and to c (c redials it, after a
        # backoff that grew while b was down).
        for peer in ("a", "c"):
            assert b.process is not None
            wait_for_line(b.log, f"link to {shorts[peer]} (", b.process)
        # Links up: each node has one link to each other node, none being redialled, and
        # in sync.
        deadline = time.monotonic() + IN_SYNC_TIMEOUT_S
        others = {name: sorted(ids[n] for n in HOSTS if n != name) for name in HOSTS}
        on_each(lambda d: links_in_sync(d, others[d.name], deadline), dirs)
