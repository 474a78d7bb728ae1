"""The examples in docs/ that need real agents run as written (a free port for the one
they name, since other tests run agents on this machine too)."""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.agents import Agent, ok, running
from tests.system.test_agents import free_port

pytestmark = pytest.mark.system

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOCUMENTED_PORT = "7420"
DOCUMENTED_DIR = "./shop-node"  # relative to where the example runs
WATCH_TRIES = 20  # puts until the example's watch, which starts after its own put, sees one
LINE_TIMEOUT_S = 5.0  # for the example to print a line once its agent has something to say


def blocks(page: str, after: str, language: str) -> str:
    """The first ``language`` code block of ``page`` after the text ``after``."""
    found = re.search(rf"```{language}\n(.*?)```", page[page.index(after) :], re.DOTALL)
    assert found is not None, f"no {language} block after {after!r}"
    return found.group(1)


def next_line(process: subprocess.Popen[str]) -> str | None:
    """The process's next line of output, or None if none comes within LINE_TIMEOUT_S."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], LINE_TIMEOUT_S)
    return process.stdout.readline() if ready else None


def test_the_agent_client_example_runs_as_written(tmp_path: Path) -> None:
    page = (DOCS / "api.md").read_text(encoding="utf-8")
    intro = "From Python, `agent.api.client.AgentClient`"
    data_dir, port = tmp_path / "shop-node", str(free_port("127.0.0.1"))
    init, start = [
        shlex.split(
            line.replace(DOCUMENTED_DIR, str(data_dir))
            .replace(DOCUMENTED_PORT, port)
            .removesuffix("&")
        )
        for line in blocks(page, intro, "sh").splitlines()
    ]
    assert init[:2] == ["blazemesh", "init"]
    ok(*init[1:])
    assert start[:4] == ["blazemesh", "agent", "--data-dir", str(data_dir)]
    agent = Agent(data_dir, start[4:])
    with (
        running([agent]),
        subprocess.Popen(
            [sys.executable, "-c", blocks(page, intro, "python")],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as example,
    ):
        try:
            assert next_line(example) == "committed 1\n"
            for attempt in range(WATCH_TRIES):
                ok("put", "--data-dir", str(data_dir), "orders", f"o-{attempt}", "paid=false")
                line = next_line(example)
                if line is not None:
                    break
            else:
                raise AssertionError("the example's watch printed nothing")
            assert "'collection': 'orders'" in line
        finally:
            os.killpg(example.pid, signal.SIGKILL)
    assert '"paid":true' in ok("get", "--data-dir", str(data_dir), "orders", "o-7")
