"""Real `blazemesh agent` processes for the system tests: start, talk to, stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blazemesh.agent.storage.paths import CONTROL_SOCKET

BLAZEMESH = str(Path(sys.executable).with_name("blazemesh"))  # the installed command
STOP_TIMEOUT_S = 20


def blazemesh(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BLAZEMESH, *argv], capture_output=True, text=True, timeout=timeout)


def ok(*argv: str) -> str:
    result = blazemesh(*argv)
    assert result.returncode == 0, f"blazemesh {' '.join(argv)}: {result.stderr}"
    return result.stdout


def new_mesh(data_dirs: list[Path], name: str = "test") -> None:
    """Initialise the first directory with a new mesh and join the others to it."""
    out = ok("init", "--data-dir", str(data_dirs[0]), "--mesh", name)
    code = next(word for word in out.split() if word.startswith("bm1-"))
    for data_dir in data_dirs[1:]:
        ok("join", "--data-dir", str(data_dir), code)


@dataclass
class Agent:
    data_dir: Path
    args: list[str]
    prefix: list[str] = field(default_factory=list)  # e.g. ip netns exec HOST
    log: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.log = self.data_dir.with_suffix(".log")

    def start(self) -> None:
        """Start the agent and return once its control socket answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, BLAZEMESH, "agent", "--data-dir", str(self.data_dir), *self.args],
                stdout=log,
                stderr=log,
            )
        # The socket file appears once the agent serves; `info` answers through it. The
        # agent logs "control socket at" before that: wait on the log, bounded.
        wait_for_line(self.log, "control socket at", self.process)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(
            ok("info", "--data-dir", str(self.data_dir), "--json", "--digest")
        )
        return info

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT_S)
        self.process = None

    def stop(self) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_S)
            raise
        finally:
            self.process = None

    @property
    def socket(self) -> Path:
        return self.data_dir / CONTROL_SOCKET


def follow(command: list[str], timeout_s: float, done: Callable[[str], bool]) -> bool:
    """Read ``command``'s output lines (for at most ``timeout_s``) until ``done(line)``;
    return whether that happened. ``command`` runs in a process group of its own, which
    is killed whole: killing `timeout` alone would leave its child running."""
    with subprocess.Popen(
        ["timeout", str(timeout_s), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    ) as reader:
        assert reader.stdout is not None
        try:
            return any(done(line) for line in reader.stdout)
        finally:
            with contextlib.suppress(ProcessLookupError):  # it may have ended by itself
                os.killpg(reader.pid, signal.SIGKILL)


def wait_for_line(
    log: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float = 30, count: int = 1
) -> None:
    """Follow ``log`` until ``count`` lines hold ``text``; fail if the process exits first."""
    seen = 0

    def found(line: str) -> bool:
        nonlocal seen
        if process.poll() is not None:
            raise AssertionError(f"the agent exited ({process.poll()}):\n{log.read_text()}")
        seen += text in line
        return seen >= count

    if not follow(["tail", "-n", "+1", "-F", str(log)], timeout_s, found):
        raise AssertionError(
            f"{seen} of {count} lines with {text!r} in {log} after {timeout_s} s:\n"
            + log.read_text()
        )


@contextmanager
def running(agents: list[Agent]) -> Iterator[list[Agent]]:
    """Start every agent; on the way out stop each that still runs and check it stopped
    cleanly."""
    try:
        for agent in agents:
            agent.start()
        yield agents
    finally:
        codes: dict[str, int | str] = {}
        for agent in agents:
            if agent.process is not None:
                try:
                    codes[agent.data_dir.name] = agent.stop()
                except subprocess.TimeoutExpired:
                    codes[agent.data_dir.name] = "did not stop on SIGTERM"
    assert all(code == 0 for code in codes.values()), codes
    for agent in agents:
        assert "stopped; links closed, database closed" in agent.log.read_text()


def wait_for_keys(agent: Agent, collection: str, keys: set[str], timeout_s: float = 30) -> None:
    """Follow the agent's `watch` until every key has been written on it (pushed, no polling)."""
    missing = set(keys)

    def seen(line: str) -> bool:
        missing.discard(json.loads(line)["key"])
        return not missing

    watch = ["watch", collection, "--since", "0", "--data-dir", str(agent.data_dir)]
    if not follow([BLAZEMESH, *watch], timeout_s, seen):
        raise AssertionError(f"{agent.data_dir.name} never got {sorted(missing)}")
