"""What a user reaches for in the first hour (issue 19, section 5), run in this process
with no agent."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import pytest

from blazemesh.agent.trust.membership import decode_invite
from blazemesh.protocol.ids import node_id_text
from tests.agent.test_cli import run


def test_invite_quiet_prints_the_code_alone(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    run(capsys, "init", "--mesh", "m")
    for quiet in ("--quiet", "-q"):
        code, out, err = run(capsys, "invite", quiet)
        assert (code, err) == (0, "")
        assert len(out.splitlines()) == 1  # CODE=$(blazemesh invite --quiet)
        assert decode_invite(out.strip()).mesh == "m"


def test_counts_agree_with_their_number_and_the_internal_collection_is_hidden(
    capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    run(capsys, "init", "--mesh", "m")
    run(capsys, "put", "notes", "a", "n=1")
    assert run(capsys, "topology", "set", "mesh")[0] == 0  # writes _mesh/topology
    _, out, _ = run(capsys, "info")
    assert "collection notes: 1 record, 0 tombstones" in out
    assert "_mesh" not in out
    _, out, _ = run(capsys, "info", "--all")
    assert "collection _mesh: 1 record, 0 tombstones" in out
    _, out, _ = run(capsys, "watch", "--since", "0", "--no-follow")
    assert [json.loads(line)["collection"] for line in out.splitlines()] == ["notes"]
    _, out, _ = run(capsys, "watch", "--since", "0", "--no-follow", "--all")
    assert [json.loads(line)["collection"] for line in out.splitlines()] == ["notes", "_mesh"]
    _, out, _ = run(capsys, "watch", "_mesh", "--since", "0", "--no-follow")
    assert [json.loads(line)["collection"] for line in out.splitlines()] == ["_mesh"]
    _, out, _ = run(capsys, "trust", "add", _own_id(capsys))
    assert "1 node on the allowlist" in out


def _own_id(capsys: pytest.CaptureFixture[str]) -> str:
    node_id: str = json.loads(run(capsys, "info", "--json")[1])["node_id"]
    return node_id


def test_short_node_ids_are_accepted_where_a_node_id_is(
    capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    run(capsys, "init", "--mesh", "m")
    own = _own_id(capsys)
    short = f"{own[:4]}-{own[4:8]}"
    assert run(capsys, "topology", "set", "star", "--hub", short)[0] == 0
    _, out, _ = run(capsys, "get", "_mesh", "topology")
    assert json.loads(out)["hub"] == own
    twins = [node_id_text(b"\x01" * 5 + bytes([i]) * 11) for i in (1, 2)]  # one short form
    assert run(capsys, "trust", "add", short, *twins)[0] == 0
    _, out, _ = run(capsys, "trust", "list")
    assert sorted(line.split()[0] for line in out.splitlines()) == sorted([own, *twins])
    code, _, err = run(capsys, "trust", "remove", twins[0][:8])
    assert code == 1
    assert err == (
        f"blazemesh: error: NODE_ID: the short id {twins[0][:8]} is ambiguous here "
        f"({', '.join(sorted(twins))}): give the full id\n"
    )
    code, _, err = run(capsys, "trust", "add", "zzzz-zzzz")
    assert code == 1
    assert err.startswith("blazemesh: error: NODE_ID: no node known here has the short id zzzz")
    assert len(err.splitlines()) == 1
    code, _, err = run(capsys, "trust", "add", "not-an-id")
    assert code == 1
    assert "a node id is 26 base32 characters" in err


def stdin_of(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_values_come_from_files_and_stdin_up_to_the_value_limit(
    capsys: pytest.CaptureFixture[str],
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An argument list holds about 128 KiB: a value up to the 1 MiB a value may be comes
    from a file (@PATH) or stdin (@-, --json -)."""
    run(capsys, "init")
    big = "x" * 1_000_000
    (tmp_path / "big.txt").write_text(big)
    (tmp_path / "blob").write_bytes(b"\xff\x00binary")
    (tmp_path / "n.json").write_text('{"a": [1, 2]}\n')
    argv = ["put", "c", "k", f"text=@{tmp_path / 'big.txt'}", f"blob=@{tmp_path / 'blob'}"]
    assert run(capsys, *argv, f"n=@{tmp_path / 'n.json'}", "at=@@home")[0] == 0
    _, out, _ = run(capsys, "get", "c", "k")
    assert json.loads(out) == {
        "text": big,
        "blob": {"$bytes": base64.b64encode(b"\xff\x00binary").decode()},
        "n": {"a": [1, 2]},
        "at": "@home",
    }
    stdin_of(monkeypatch, b'{"from": "stdin"}')
    assert run(capsys, "put", "c", "j", "--json", "-")[0] == 0
    stdin_of(monkeypatch, b"piped text\n")
    assert run(capsys, "put", "c", "j", "line=@-")[0] == 0
    assert json.loads(run(capsys, "get", "c", "j")[1]) == {"from": "stdin", "line": "piped text\n"}
    (tmp_path / "fields.json").write_text('{"from": "file"}')
    assert run(capsys, "put", "c", "j", "--json", f"@{tmp_path / 'fields.json'}")[0] == 0
    assert json.loads(run(capsys, "get", "c", "j")[1])["from"] == "file"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["f=@/nonexistent/file"],
            "blazemesh: error: /nonexistent/file: No such file or directory",
        ),
        (["f=@"], "blazemesh: error: field f: @ names no file"),
        (["f=@-", "g=@-"], "blazemesh: error: standard input (-, @-) can give one value"),
        (["g=@-", "--json", "-"], "blazemesh: error: standard input (-, @-) can give one value"),
        (["f=@TOO_BIG"], "holds more than the 4 MiB one change may hold"),
        (["f=@BIG"], "bytes encoded; the limit is 1048576"),
    ],
)
def test_a_value_file_that_cannot_be_used_is_one_line(
    capsys: pytest.CaptureFixture[str],
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    run(capsys, "init")
    stdin_of(monkeypatch, b"1")
    (tmp_path / "too-big").write_bytes(b"x" * ((4 << 20) + 1))
    (tmp_path / "big").write_bytes(b"x" * ((1 << 20) + 1))
    argv = [
        a.replace("@TOO_BIG", f"@{tmp_path / 'too-big'}").replace("@BIG", f"@{tmp_path / 'big'}")
        for a in argv
    ]
    code, _, err = run(capsys, "put", "c", "k", *argv)
    assert code == 1
    assert len(err.splitlines()) == 1
    assert message in err
