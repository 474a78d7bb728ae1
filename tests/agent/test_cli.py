from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from blazemesh.agent.cli.main import main
from blazemesh.agent.storage.paths import KEY_FILE
from blazemesh.agent.storage.replica import open_replica, wall_clock_ms


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    assert isinstance(code, int)
    return code, out, err


def test_init_then_put_get_query_delete(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    code, out, _ = run(capsys, "init")
    assert code == 0
    assert "initialised" in out
    assert (home / KEY_FILE).exists()
    assert (
        run(capsys, "put", "bugs", "b1", "title=crash on save", "priority=3", "open=true")[0] == 0
    )
    assert run(capsys, "put", "bugs", "b2", "--json", '{"title": "slow", "open": false}')[0] == 0
    code, out, _ = run(capsys, "get", "bugs", "b1")
    assert json.loads(out) == {"title": "crash on save", "priority": 3, "open": True}
    code, out, _ = run(capsys, "query", "bugs", "open=false")
    assert [json.loads(line)["key"] for line in out.splitlines()] == ["b2"]
    assert run(capsys, "delete", "bugs", "b1")[0] == 0
    code, _, err = run(capsys, "get", "bugs", "b1")
    assert code == 1
    assert "not found" in err


def test_init_twice_keeps_the_identity(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    run(capsys, "init")
    key = (home / KEY_FILE).read_bytes()
    code, out, _ = run(capsys, "init")
    assert code == 0
    assert "already initialised" in out
    assert (home / KEY_FILE).read_bytes() == key


def test_data_dir_flag_beats_the_environment(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    run(capsys, "init", "--data-dir", str(other))
    assert (other / KEY_FILE).exists()
    assert not home.exists()


def test_values_parse_as_json_else_text(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    run(capsys, "init")
    run(capsys, "put", "c", "k", "n=42", "s=hello", "l=[1,2]", 'q="7"', 'b={"$bytes":"AAE="}')
    _, out, _ = run(capsys, "get", "c", "k")
    assert json.loads(out) == {
        "n": 42,
        "s": "hello",
        "l": [1, 2],
        "q": "7",
        "b": {"$bytes": "AAE="},
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["put", "c", "k", "--json", "{bad"], "--json is not valid JSON"),
        (["put", "c", "k", "--json", "[1]"], "JSON object"),
        (["put", "c", "k", "novalue"], "expected field=value"),
        (["put", "_c", "k", "a=1"], "reserved"),
        (["put", "c", "k", 'b={"$bytes":"!!"}'], "invalid base64"),
    ],
)
def test_user_mistakes_are_one_clear_line(
    capsys: pytest.CaptureFixture[str], home: Path, argv: list[str], message: str
) -> None:
    run(capsys, "init")
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_missing_data_dir_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "get", "c", "k", "--data-dir", str(tmp_path / "nope"))
    assert code == 1
    assert "blazemesh init" in err
    assert len(err.strip().splitlines()) == 1


def test_exposed_key_is_a_clear_error(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    run(capsys, "init")
    os.chmod(home / KEY_FILE, 0o644)
    code, _, err = run(capsys, "info")
    assert code == 1
    assert "chmod 600" in err


@pytest.mark.parametrize(
    "argv",
    [["init"], ["info"], ["get", "c", "k"], ["watch"], ["watch", "--no-follow"], ["invite"]],
    ids=" ".join,
)
def test_a_data_dir_others_can_read_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], home: Path, argv: list[str]
) -> None:
    run(capsys, "init", "--mesh", "lab")
    home.chmod(0o755)
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.strip().splitlines() == [
        f"blazemesh: error: {home} is open to other users (mode 0755) and holds the node key, "
        f"the mesh secret and every record: run `chmod 700 {home}`"
    ]


def test_a_data_dir_that_cannot_be_made_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "file").touch()
    code, _, err = run(capsys, "init", "--data-dir", str(tmp_path / "file" / "node"))
    assert code == 1
    assert err.startswith("blazemesh: error: the data directory")
    assert "a parent is a file" in err
    assert len(err.strip().splitlines()) == 1


def test_info_and_watch(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    run(capsys, "init")
    run(capsys, "put", "a", "1", "x=1")
    run(capsys, "put", "b", "1", "x=2")
    run(capsys, "delete", "a", "1")
    _, out, _ = run(capsys, "info", "--json")
    info = json.loads(out)
    assert info["changes_held"] == 3
    assert info["collections"] == {
        "a": {"records": 0, "tombstones": 1},
        "b": {"records": 1, "tombstones": 0},
    }
    _, out, _ = run(capsys, "watch", "a", "--since", "0", "--no-follow")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(e["lsn"], e["op"], e["key"]) for e in lines] == [(1, "put", "1"), (3, "delete", "1")]
    assert lines[0]["fields"] == {"x": 1}


def test_a_replica_whose_clock_ran_ahead_refuses_writes_until_repaired(
    capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    """The device's clock was a day ahead when it wrote, and is right again: `put` says
    so in one line and names the fix; `repair-clock` is the fix."""
    assert run(capsys, "init")[0] == 0

    async def write_from_the_future() -> None:
        day_ahead = lambda: wall_clock_ms() + 86_400_000  # noqa: E731
        async with open_replica(home, wall_ms=day_ahead) as replica:
            await replica.put("c", "k", {"v": 1})

    trio.run(write_from_the_future)
    code, _, err = run(capsys, "put", "c", "k", "v=2")
    assert code == 1
    assert err.count("\n") == 1
    assert "ahead of this device's clock" in err
    assert "blazemesh repair-clock" in err
    code, out, _ = run(capsys, "info")
    assert "clock      writes refused: this replica's clock stands" in out
    code, out, _ = run(capsys, "repair-clock")
    assert code == 0
    assert out.startswith("re-stamped 1 changes made while the clock ran ahead")
    assert run(capsys, "repair-clock")[1].startswith("nothing to re-stamp")
    assert run(capsys, "put", "c", "k", "v=2")[0] == 0
    code, out, _ = run(capsys, "get", "c", "k")
    assert json.loads(out) == {"v": 2}
    assert "clock      ok" in run(capsys, "info")[1]


def test_peers_says_when_a_link_found_other_contents_under_the_same_seqs() -> None:
    from blazemesh.agent.cli.node import _notes

    link = {"differ": 2, "clock_offset_ms": None, "refused_in": None, "refused_out": None}
    (note,) = _notes(link)
    assert "other contents than this node under the same seqs of 2 origin(s)" in note
    assert _notes({**link, "differ": 0}) == []
