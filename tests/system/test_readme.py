"""README.md's "two devices on one machine" steps, run as written, 20 times in a row.

The lines are read from the README itself, so that the test and the text cannot drift:
each runs as a process (a line ending in ``&`` in the background, as the shell would),
with only the data directories and ports swapped for fresh ones and the join code that
``init`` printed put in for ``bm1-...``. Every run must print what the README's comments
say (issue 19: ``put`` right after ``agent &`` failed in about half of the runs, as the
agent held the directory before it served, and ``get`` then printed "not found").
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.system.agents import BLAZEMESH, STOP_TIMEOUT_S
from tests.system.test_agents import free_port

pytestmark = pytest.mark.system

README = Path(__file__).resolve().parents[2] / "README.md"
RUNS = 20
COMMAND_TIMEOUT_S = 30.0  # one command: a command that hangs is a failure, not a wait
HOST = "127.0.0.1"


def two_devices_block() -> list[str]:
    """The lines of the README's shell block that starts with ``init --data-dir /tmp/a``."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = [b for b in blocks if "init --data-dir /tmp/a" in b]
    lines: list[str] = block.strip().splitlines()
    return lines


def expected_output(line: str) -> str | None:
    """What the README's comment says ``line`` prints, if the comment is a JSON value."""
    _, _, comment = line.partition("#")
    comment = comment.strip()
    return comment if comment.startswith("{") else None


@contextmanager
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The processes started with ``&``: stopped with SIGTERM at the end, each checked to
    exit 0 (as `kill %1 %2` would stop them)."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(STOP_TIMEOUT_S) for process in started]
    assert codes == [0] * len(started), codes


def run_once(top: Path) -> None:
    ports = {"7420": str(free_port(HOST)), "7421": str(free_port(HOST))}
    code = None
    with background() as agents:
        for line in two_devices_block():
            words = shlex.split(line, comments=True)
            assert words[0] == "blazemesh", line
            words[0] = BLAZEMESH
            words = [
                re.sub(r"^/tmp/([ab])$", lambda m: str(top / m.group(1)), word) for word in words
            ]
            words = [re.sub(r":(7420|7421)$", lambda m: ":" + ports[m.group(1)], w) for w in words]
            if "bm1-..." in words:
                assert code is not None, "the join code comes from init, before"
                words[words.index("bm1-...")] = code
            if words[-1] == "&":
                # Never mDNS on this machine's interfaces: the README's agents use --peer.
                assert words[words.index("--discovery") + 1] == "none", line
                with (top / f"agent{len(agents)}.log").open("wb") as log:
                    agents.append(subprocess.Popen(words[:-1], stdout=log, stderr=log))
                continue
            result = subprocess.run(
                words, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
            )
            assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"
            code = next((w for w in result.stdout.split() if w.startswith("bm1-")), code)
            expected = expected_output(line)
            if expected is not None:
                assert result.stdout.strip() == expected, line


def test_the_readme_two_devices_steps_work_every_time() -> None:
    for run in range(RUNS):
        # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
        with tempfile.TemporaryDirectory(prefix="bm-readme-") as top:
            try:
                run_once(Path(top))
            except AssertionError as exc:
                logs = "".join(
                    f"\n--- {log.name}\n{log.read_text()}"
                    for log in sorted(Path(top).glob("*.log"))
                )
                raise AssertionError(f"run {run + 1} of {RUNS}: {exc}{logs}") from None
