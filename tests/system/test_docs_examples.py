"""The examples in docs/ that need real agents run as written (a free port for the one
they name, since other tests run agents on this machine too)."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.agents import BLAZEMESH, Agent, new_mesh, ok, running
from tests.system.test_agents import free_port

pytestmark = pytest.mark.system

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOCUMENTED_PORT = "7420"
DOCUMENTED_DIR = "./shop-node"  # relative to where the example runs
WATCH_TRIES = 20  # puts until the example's watch, which starts after its own put, sees one
LINE_TIMEOUT_S = 5.0  # for the example to print a line once its agent has something to say
HEALTH_TRIES = 100  # runs of the health check until a link comes up or goes (a second or so)


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


def health(script: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run the health check of docs/operations.md on ``data_dir``, with blazemesh on PATH."""
    path = f"{Path(BLAZEMESH).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["sh", str(script), str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": path},
    )


def health_until(script: Path, data_dir: Path, code: int, out: str) -> None:
    """Run the health check until it exits ``code`` with ``out`` in its output (bounded)."""
    for _ in range(HEALTH_TRIES):
        result = health(script, data_dir)
        if result.returncode == code and out in result.stdout + result.stderr:
            return
    raise AssertionError(f"never exit {code} with {out!r}; last: {result}")


def test_the_health_check_script_tells_a_healthy_node_from_a_sick_one(tmp_path: Path) -> None:
    page = (DOCS / "operations.md").read_text(encoding="utf-8")
    script = tmp_path / "blazemesh-health"
    script.write_text(blocks(page, "## Health checks", "sh"), encoding="utf-8")
    a, b = tmp_path / "a", tmp_path / "b"
    new_mesh([a, b])
    result = health(script, a)
    assert (result.returncode, result.stderr) == (1, "no agent is running\n")
    listen = f"127.0.0.1:{free_port('127.0.0.1')}"
    first = Agent(a, ["--listen", listen, "--discovery", "none"])
    second = Agent(b, ["--listen", "127.0.0.1:0", "--discovery", "none", "--peer", listen])
    with running([first]):
        assert health(script, a).stdout == "0 links up, 0 in trouble\n"
        with running([second]):
            health_until(script, b, 0, "1 links up, 0 in trouble")
            first.stop()
            health_until(script, b, 1, f"{listen} retrying")


def test_a_data_directory_moved_with_tar_as_documented_keeps_its_node(tmp_path: Path) -> None:
    """docs/operations.md, "Moving a node to new hardware": `tar -cpf` on the old device,
    `tar -xpf` on the new one, and the node, its modes and its records come along."""
    page = (DOCS / "operations.md").read_text(encoding="utf-8")
    block = blocks(page, "## Moving a node to new hardware", "sh")
    pack, unpack = [line for line in block.splitlines() if line.strip()]
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    ok("init", "--data-dir", str(old / "blazemesh"))
    ok("put", "--data-dir", str(old / "blazemesh"), "orders", "o-1", "paid=true")
    for command, home in ((pack, old), (unpack, new)):
        argv = shlex.split(command.replace("~/.local/share", str(home)), comments=True)
        subprocess.run(argv, check=True, cwd=tmp_path)  # the archive lands in tmp_path
    moved = new / "blazemesh"
    assert {oct(path.stat().st_mode & 0o777) for path in moved.iterdir()} == {"0o600"}
    assert oct(moved.stat().st_mode & 0o777) == "0o700"
    before = json.loads(ok("info", "--data-dir", str(old / "blazemesh"), "--json"))
    after = json.loads(ok("info", "--data-dir", str(moved), "--json"))
    assert after["node_id"] == before["node_id"]
    assert json.loads(ok("get", "--data-dir", str(moved), "orders", "o-1")) == {"paid": True}
