"""Every user mistake is one line on stderr, never a traceback (issue 19, section 4).

These run the commands in this process, with no agent; tests/system/test_cli_bad_arguments.py
runs the real command with and without one.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from blazemesh.agent.cli import jsonio, node
from blazemesh.agent.errors import ConfigError
from blazemesh.agent.storage.paths import DB_FILE, KEY_FILE
from blazemesh.cli import main
from tests.agent.test_cli import run


def one_line(err: str) -> str:
    """The one line a mistake prints (failing the test if it printed more)."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("blazemesh: error: ")
    return lines[0]


def strict_json(text: str) -> object:
    """Parse as RFC 8259 JSON, which has no Infinity or NaN."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "argv", [["info"], ["invite"], ["get", "c", "k"], ["put", "c", "k", "a=1"]]
)
def test_a_key_file_that_cannot_be_read_is_one_line(
    capsys: pytest.CaptureFixture[str],
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    """A data directory made by another user: its key is not ours to read (as root,
    permissions cannot show it, so the refusal is the kernel's, simulated)."""
    run(capsys, "init", "--mesh", "m")
    real_open = os.open

    def refuse_key(path: object, *args: object, **kwargs: object) -> int:
        if str(path) == str(home / KEY_FILE):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse_key)
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert f"cannot read {home / KEY_FILE}, which holds the node's private key" in one_line(err)


@pytest.mark.parametrize("argv", [["info"], ["invite"], ["put", "c", "k", "a=1"]])
def test_a_key_file_that_is_a_directory_is_one_line(
    capsys: pytest.CaptureFixture[str], home: Path, argv: list[str]
) -> None:
    run(capsys, "init", "--mesh", "m")
    (home / KEY_FILE).unlink()
    (home / KEY_FILE).mkdir(mode=0o700)
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert f"{home / KEY_FILE} is not a file" in one_line(err)


def test_a_key_file_of_binary_junk_is_one_line(
    capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    run(capsys, "init")
    (home / KEY_FILE).write_bytes(b"\xff\xfe\x00junk")
    code, _, err = run(capsys, "info")
    assert code == 1
    assert "is not a blazemesh key file" in one_line(err)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("123456789012345678901234567890", "does not fit in 64 signed bits"),
        (str(1 << 64), "does not fit in 64 signed bits"),
        ("1" * 5000, "does not fit in 64 signed bits"),  # past Python's own 4,300 digits
        ("1e400", "too large for a 64-bit float"),
        ("[" * 10_000 + "]" * 10_000, "nested far deeper than the 32 levels"),
        ('{"$float": "Infinite"}', "$float is one of Infinity, -Infinity, NaN"),
        ('{"$float": "NaN"}', "NaN is not a value"),
        ("\udcff\udcfe", "not valid UTF-8"),  # what Python makes of invalid UTF-8 in argv
    ],
    ids=["int", "2**64", "5000 digits", "1e400", "deep", "bad $float", "NaN", "bad UTF-8"],
)
def test_a_value_no_replica_takes_is_one_line(
    capsys: pytest.CaptureFixture[str], home: Path, value: str, message: str
) -> None:
    run(capsys, "init")
    code, _, err = run(capsys, "put", "c", "k", f"f={value}")
    assert code == 1
    assert message in one_line(err)
    assert run(capsys, "get", "c", "k")[0] == 1  # nothing was written


def test_infinities_are_written_and_printed_as_strict_json(
    capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    """JSON has no Infinity: ``Infinity`` as a value is text, like any non-JSON value;
    an infinite float is ``{"$float": "Infinity"}`` both ways."""
    run(capsys, "init")
    assert run(capsys, "put", "c", "k", "t=Infinity", 'f={"$float":"-Infinity"}')[0] == 0
    _, out, _ = run(capsys, "get", "c", "k")
    assert strict_json(out) == {"t": "Infinity", "f": {"$float": "-Infinity"}}
    code, _, err = run(capsys, "put", "c", "k", "--json", '{"c": Infinity}')
    assert code == 1
    assert "--json is not valid JSON: Infinity is not a JSON number" in one_line(err)


def test_dumps_tags_every_float_json_cannot_hold() -> None:
    value = {"a": [float("inf"), {"b": float("-inf")}], "c": float("nan"), "d": 1.5}
    assert strict_json(jsonio.dumps(value)) == {
        "a": [{"$float": "Infinity"}, {"b": {"$float": "-Infinity"}}],
        "c": {"$float": "NaN"},
        "d": 1.5,
    }
    assert jsonio.loads(jsonio.dumps(float("inf"))) == float("inf")


@pytest.mark.parametrize(
    "argv", [["info"], ["get", "c", "k"], ["put", "c", "k", "a=1"], ["peers"], ["init"]]
)
def test_a_data_dir_that_is_a_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    (tmp_path / "file").touch()
    code, _, err = run(capsys, *argv, "--data-dir", str(tmp_path / "file"))
    assert code == 1
    assert one_line(err).endswith(
        f"the data directory {tmp_path / 'file'} is a file, not a directory"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--peer", "127.0.0.1:abc"], "--peer: the port of '127.0.0.1:abc' is not a number"),
        (["--peer", "x" * 70], "is not a host name or an IP address"),  # a label > 63
        (["--listen", "\udcff\udcfe"], "listen: '\\udcff\\udcfe' is not valid UTF-8"),
        (["--interface", "192.0.2.77"], "--interface 192.0.2.77 is not an IPv4 address of this"),
        (["--interface", "localhost"], "--interface localhost is not an IPv4 address of this"),
        (["--max-links", "0"], "--max-links must be at least 1, got 0"),
        (["--topology", "star", "--max-links", "3"], "--max-links bounds the links of a mesh"),
        (["--hub", "abcd-efgh"], "--hub names the hub of a star, and this is a mesh"),
        (["--discovery", "none", "--interface", "127.0.0.1"], "--discovery none turns it off"),
    ],
)
def test_agent_options_that_cannot_work_are_one_line(
    capsys: pytest.CaptureFixture[str], home: Path, options: list[str], message: str
) -> None:
    run(capsys, "init", "--mesh", "m")
    code, _, err = run(capsys, "agent", "--listen", "127.0.0.1:0", *options)
    assert code == 1
    assert message in one_line(err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--max-links", "0"], "--max-links must be at least 1, got 0"),
        (["demo", "--topology", "star", "--max-links", "2"], "--max-links bounds the links"),
        (["topology", "set", "star", "--max-links", "2"], "--max-links bounds the links"),
        (["topology", "set", "mesh", "--hub", "abcd-efgh"], "--hub names the hub of a star"),
        (["demo", "--nodes", "1"], "--nodes must be between 2 and"),
    ],
)
def test_topology_options_that_would_be_ignored_are_one_line(
    capsys: pytest.CaptureFixture[str], home: Path, argv: list[str], message: str
) -> None:
    run(capsys, "init", "--mesh", "m")
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert message in one_line(err)


def test_mdns_runs_on_the_lan_addresses_or_is_off_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lan = ["127.0.0.1", "192.168.1.20"]
    assert node.mdns_interfaces(None, [], lan) == ["192.168.1.20"]
    assert node.mdns_interfaces("mdns", [], lan) == ["192.168.1.20"]
    assert node.mdns_interfaces(None, ["127.0.0.1"], lan) == ["127.0.0.1"]
    assert node.mdns_interfaces("none", [], lan) is None
    assert caplog.text == ""
    # A host with loopback alone (an offline laptop, a bare container):
    assert node.mdns_interfaces(None, [], ["127.0.0.1"]) is None
    assert "discovery by mDNS is off" in caplog.text
    with pytest.raises(ConfigError, match="--discovery mdns: this host has no network interface"):
        node.mdns_interfaces("mdns", [], ["127.0.0.1"])


def corrupt_column(data_dir: Path, sql: str) -> None:
    db = sqlite3.connect(data_dir / DB_FILE)
    with db:
        db.execute(sql)
    db.close()


@pytest.mark.parametrize(
    "argv", [["get", "c", "k1"], ["query", "c"], ["query", "c", "n=1"]], ids=" ".join
)
def test_a_corrupt_record_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], home: Path, argv: list[str]
) -> None:
    run(capsys, "init")
    run(capsys, "put", "c", "k1", "n=1")
    corrupt_column(home, "UPDATE records SET doc = x'c1ff00' WHERE key = 'k1'")
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert f"record c/k1 in {home / DB_FILE} is corrupt" in one_line(err)


@pytest.mark.parametrize(
    "argv", [["watch", "--since", "0", "--no-follow"], ["watch", "--since", "0"]], ids=" ".join
)
def test_a_corrupt_log_entry_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], home: Path, argv: list[str]
) -> None:
    run(capsys, "init")
    run(capsys, "put", "c", "k1", "n=1")
    corrupt_column(home, "UPDATE log SET change = x'93c1' WHERE lsn = 1")
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert f"log entry 1 in {home / DB_FILE} is corrupt" in one_line(err)


def test_a_database_with_damaged_pages_is_one_line(
    capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    run(capsys, "init")
    for i in range(50):
        run(capsys, "put", "c", f"k{i}", f"text={'x' * 200}")
    path = home / DB_FILE
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.close()
    with path.open("r+b") as f:
        f.seek((pages - 2) * page_size + 20)
        f.write(b"\xff\x00\x13" * 30)
    code, _, err = run(capsys, "query", "c")
    assert code == 1
    assert f"{path} is damaged (" in one_line(err)


def test_warnings_and_errors_start_with_blazemesh(
    capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    """What the library logs while a command runs is a ``blazemesh: warning:`` line, like
    the command's own errors, not a bare line."""
    run(capsys, "init")
    run(capsys, "put", "c", "k", "n=1")
    (home / DB_FILE).chmod(0o644)
    code, _, err = run(capsys, "get", "c", "k")
    assert code == 0
    assert err == (
        f"blazemesh: warning: {home / DB_FILE} was open to other users (mode 0644): made it 0600\n"
    )
    code, _, err = run(capsys, "get", "c", "nothing")
    assert (code, err) == (1, "blazemesh: error: c/nothing not found\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "--data-dir", ""],
        ["backup", ""],
        ["restore", ""],
        ["sim", "run", "--out", ""],
        ["wait-ready", "--timeout", "inf"],
    ],
)
def test_an_empty_path_or_an_infinite_number_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    """``Path("")`` is the current directory: an empty ``--out`` wrote a report there (in
    ``tmp_path`` here, should the refusal fail)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"blazemesh: error: {argv[0]}")  # as every error line does
    assert "an empty path" in last or "not a finite number" in last
