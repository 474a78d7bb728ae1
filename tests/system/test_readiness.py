"""Commands and a starting agent (issue 19, section 2): a command waits for an agent that
holds the data directory and does not serve yet; the agent holds requests until it is
ready and tells `wait-ready`, `health` and systemd (sd_notify) when it is; the shipped
systemd unit is valid.
"""

from __future__ import annotations

import configparser
import contextlib
import functools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from blazemesh.agent.api import client as api_client
from blazemesh.agent.api.client import AgentClient, AgentNotReadyError, open_session
from blazemesh.agent.assemble import run_node
from blazemesh.agent.cli.main import build_parser
from blazemesh.agent.links.network import MemoryNetwork
from blazemesh.agent.sdnotify import Notifier
from blazemesh.agent.service import READY_PEERS_WAIT_S
from blazemesh.agent.storage.paths import CONTROL_SOCKET, lock_data_dir
from blazemesh.agent.storage.replica import Replica, open_replica
from blazemesh.agent.trust.membership import new_mesh, save_mesh
from tests.system.agents import BLAZEMESH, STOP_TIMEOUT_S, Agent, blazemesh, ok
from tests.system.test_agents import free_port

pytestmark = pytest.mark.system

UNIT = Path(__file__).resolve().parents[2] / "docs" / "blazemesh.service"
TIMEOUT_S = 10.0  # for what takes milliseconds to a couple of seconds
RACES = 20  # runs of `put` right after `agent &`: before the fix, one in five or so failed
HOST = "127.0.0.1"


@contextlib.asynccontextmanager
async def held(data_dir: Path) -> AsyncIterator[Replica]:
    """What a starting agent does first: hold the data directory, serving nothing yet."""
    async with open_replica(data_dir, create=True) as replica:
        save_mesh(data_dir, new_mesh("lab"))
        yield replica


async def serve(
    replica: Replica,
    data_dir: Path,
    ready: trio.Event | None = None,
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    """Serve the control socket, as the agent does once its node is up."""
    run = functools.partial(
        run_node,
        replica,
        mesh=new_mesh("lab"),
        network=MemoryNetwork(),
        control_socket=data_dir / CONTROL_SOCKET,
        ready=ready,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        task_status.started()


async def test_a_command_waits_for_an_agent_that_holds_the_directory_and_does_not_serve_yet(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long enough for the test to see the command waiting between two looks.
    monkeypatch.setattr(api_client, "AGENT_POLL_S", 1.0)
    answered: list[bool] = []
    done = trio.Event()

    async def command() -> None:
        async with open_session(data_dir) as session:
            answered.append((await session.call("info", {}))["agent"])
        done.set()

    with trio.fail_after(TIMEOUT_S):
        async with held(data_dir) as replica, trio.open_nursery() as nursery:
            nursery.start_soon(command)
            # The command finds the directory held and no socket, and waits.
            await trio.testing.wait_all_tasks_blocked(cushion=0.3)
            assert not done.is_set()
            await nursery.start(serve, replica, data_dir)
            await done.wait()
            nursery.cancel_scope.cancel()
    assert answered == [True]


async def test_a_command_gives_up_on_a_holder_that_never_serves_and_names_it(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_client, "AGENT_START_WAIT_S", 0.3)
    with trio.fail_after(TIMEOUT_S):
        async with held(data_dir):
            with pytest.raises(AgentNotReadyError) as raised:
                async with open_session(data_dir):
                    pass
    message = str(raised.value)
    assert f"is in use by another blazemesh process (pid {os.getpid()})" in message
    assert "has not served its control socket in 0.3 s" in message
    assert "blazemesh wait-ready" in message


async def test_requests_wait_until_the_agent_is_ready_and_health_does_not(data_dir: Path) -> None:
    ready = trio.Event()
    got: list[object] = []
    done = trio.Event()
    with trio.fail_after(TIMEOUT_S):
        async with held(data_dir) as replica, trio.open_nursery() as nursery:
            await nursery.start(serve, replica, data_dir, ready)
            health_client = await AgentClient.connect(data_dir)
            request_client = await AgentClient.connect(data_dir)
            assert health_client is not None
            assert request_client is not None

            async def get() -> None:
                got.append(await request_client.call("get", {"collection": "c", "key": "k"}))
                done.set()

            nursery.start_soon(get)
            health = await health_client.call("health", {})
            assert health["ready"] is False
            assert health["static_peers"] == []
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            assert not done.is_set()  # held until the agent is ready
            ready.set()
            assert (await health_client.call("health", {"wait": True}))["ready"] is True
            await done.wait()
            assert got == [None]
            await health_client.aclose()
            await request_client.aclose()
            nursery.cancel_scope.cancel()


def test_put_right_after_agent_start_goes_through(tmp_path: Path) -> None:
    # The reproduction: `agent &` then `put` at once, which found the directory
    # held by the agent before it served, and failed.
    for run in range(RACES):
        with tempfile.TemporaryDirectory(prefix="bm-") as top:
            data_dir = Path(top) / "a"
            ok("init", "--data-dir", str(data_dir), "--mesh", "race")
            listen = f"{HOST}:{free_port(HOST)}"
            agent = Agent(data_dir, ["--listen", listen, "--discovery", "none"])
            with agent.log.open("ab") as log:
                agent.process = subprocess.Popen(
                    [BLAZEMESH, "agent", "--data-dir", str(data_dir), *agent.args],
                    stdout=log,
                    stderr=log,
                )
            try:
                put = blazemesh("put", "--data-dir", str(data_dir), "c", "k", f"run={run}")
                assert put.returncode == 0, put.stderr
                assert ok("get", "--data-dir", str(data_dir), "c", "k") == f'{{"run":{run}}}\n'
            finally:
                assert agent.stop() == 0, agent.log.read_text()


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket to play systemd's end of ``NOTIFY_SOCKET``."""
    with tempfile.TemporaryDirectory(prefix="bm-") as top:
        path = str(Path(top) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(TIMEOUT_S + READY_PEERS_WAIT_S)
            yield sock, path


def states(message: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.decode().splitlines())


def test_the_agent_tells_systemd_and_wait_ready_when_it_is_ready_and_when_it_stops(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "a"
    ok("init", "--data-dir", str(data_dir), "--mesh", "notify")
    dead = f"{HOST}:{free_port(HOST)}"  # a static peer that never answers
    listen = f"{HOST}:{free_port(HOST)}"
    with notify_socket() as (sock, path), (tmp_path / "a.log").open("wb") as log:
        argv = ["agent", "--data-dir", str(data_dir), "--listen", listen, "--peer", dead]
        process = subprocess.Popen(
            [BLAZEMESH, *argv, "--discovery", "none"],
            stdout=log,
            stderr=log,
            env={**os.environ, "NOTIFY_SOCKET": path},
        )
        try:
            ready = states(sock.recv(4096))
            assert ready["READY"] == "1"
            assert ready["STATUS"].startswith(
                f"ready: listening on {listen}; not yet in sync with {dead} (cannot connect: "
            )
            # Ready: the commands are answered at once, through the agent.
            assert '"agent":true' in ok("info", "--data-dir", str(data_dir), "--json")
            out = ok("wait-ready", "--data-dir", str(data_dir), "--timeout", "5")
            assert f"ready: listening on {listen}, 0 links up" in out
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(STOP_TIMEOUT_S)
        assert states(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "stopping"}
    assert code == 0


def test_wait_ready_says_what_it_found_when_no_agent_is_ready(data_dir: Path) -> None:
    ok("init", "--data-dir", str(data_dir))
    late = blazemesh("wait-ready", "--data-dir", str(data_dir), "--timeout", "0.3")
    assert late.returncode == 1
    assert late.stderr == (
        f"blazemesh: error: no agent runs on {data_dir} (waited 0.3 s): start one with "
        f"`blazemesh agent --data-dir {data_dir}`\n"
    )
    with lock_data_dir(data_dir):  # this process plays an agent stuck while starting
        stuck = blazemesh("wait-ready", "--data-dir", str(data_dir), "--timeout", "0.3")
    assert stuck.returncode == 1
    assert f"in use by another blazemesh process (pid {os.getpid()})" in stuck.stderr
    assert len(stuck.stderr.splitlines()) == 1
    bad = blazemesh("wait-ready", "--data-dir", str(data_dir), "--timeout", "0")
    assert (bad.returncode, bad.stderr) == (
        1,
        "blazemesh: error: --timeout must be a number of seconds above 0, got 0.0\n",
    )
    missing = blazemesh("wait-ready", "--data-dir", str(data_dir / "nothing"), "--timeout", "9")
    assert missing.returncode == 1
    assert "no data directory" in missing.stderr


def test_sd_notify_reaches_abstract_sockets_and_ignores_what_is_not_a_socket() -> None:
    name = f"blazemesh-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(TIMEOUT_S)
        assert Notifier({"NOTIFY_SOCKET": f"@{name}"}).notify(ready="1", status="up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    assert not Notifier({}).notify(ready="1")
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).notify(ready="1")
    assert not Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"}).notify(ready="1")


def test_the_systemd_unit_runs_the_agent_as_a_notifying_service() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["User"] == "blazemesh"
    assert int(service["LimitNOFILE"]) >= 65536
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "blazemesh"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "agent"
    assert args.data_dir == Path("/var/lib") / service["StateDirectory"]
    assert service["StateDirectoryMode"] == "0700"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_finds_nothing_wrong_with_the_unit(tmp_path: Path) -> None:
    # Pointed at this installation's command, which systemd checks is executable.
    text = UNIT.read_text().replace("/opt/blazemesh/bin/blazemesh", BLAZEMESH)
    (tmp_path / "blazemesh.service").write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "blazemesh.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.stdout + result.stderr).strip() == ""
