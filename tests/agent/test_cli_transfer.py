"""``blazemesh export`` and ``import`` (issue 19, section 5), with no agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agent.test_cli import run


def test_export_then_import_is_the_same_records(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run(capsys, "init", "--data-dir", a, "--mesh", "m")
    run(capsys, "init", "--data-dir", b)
    many = "".join(  # past a query page and an import batch
        json.dumps({"collection": "many", "key": f"k{i:05}", "fields": {"n": i}}) + "\n"
        for i in range(1_203)
    )
    (tmp_path / "many.jsonl").write_text(many)
    assert run(capsys, "import", "--data-dir", a, str(tmp_path / "many.jsonl"))[0] == 0
    fields = ['t=ünïcode "quoted"\n', 'b={"$bytes": "AAEC/w=="}', 'f={"$float": "-Infinity"}']
    run(capsys, "put", "--data-dir", a, "odd", "k", *fields, 'nest={"a": [1, {"b": null}]}')
    run(capsys, "put", "--data-dir", a, "gone", "k", "n=1")
    run(capsys, "delete", "--data-dir", a, "gone", "k")
    run(capsys, "topology", "set", "mesh", "--data-dir", a)
    code, exported, err = run(capsys, "export", "--data-dir", a)
    assert (code, err) == (0, "")
    lines = [json.loads(line) for line in exported.splitlines()]
    assert len(lines) == 1_204
    assert {line["collection"] for line in lines} == {"many", "odd"}  # _mesh: with --all
    assert lines[-1] == {
        "collection": "odd",
        "key": "k",
        "fields": {
            "t": 'ünïcode "quoted"\n',
            "b": {"$bytes": "AAEC/w=="},
            "f": {"$float": "-Infinity"},
            "nest": {"a": [1, {"b": None}]},
        },
    }
    (tmp_path / "a.jsonl").write_text(exported, encoding="utf-8")
    code, out, _ = run(capsys, "import", "--data-dir", b, str(tmp_path / "a.jsonl"))
    assert (code, out) == (0, f"imported 1204 records from {tmp_path / 'a.jsonl'}\n")
    assert run(capsys, "export", "--data-dir", b)[1] == exported
    assert "_mesh" in run(capsys, "export", "--data-dir", a, "--all")[1]
    assert run(capsys, "export", "--data-dir", a, "odd")[1] == exported.splitlines()[-1] + "\n"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON: Expecting value"),
        ('["c", "k", {}]', 'a line is {"collection": ..., "key": ..., "fields": {...}}'),
        ('{"collection": "c", "key": "k", "fields": {}, "x": 1}', "a line is {"),
        ('{"collection": "c", "key": 1, "fields": {}}', "collection and key are strings"),
        ('{"collection": "c", "key": "k", "fields": {"n": 1e400}}', "too large for a 64-bit"),
        ('{"collection": "", "key": "k", "fields": {"n": 1}}', "collection"),
        (b'{"collection": "c", "key": "\xff", "fields": {}}', "not UTF-8"),
    ],
)
def test_a_bad_line_imports_nothing_and_is_named(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path, line: str | bytes, message: str
) -> None:
    run(capsys, "init")
    good = '{"collection": "c", "key": "first", "fields": {"n": 1}}\n'
    bad = line if isinstance(line, bytes) else line.encode()
    (tmp_path / "in.jsonl").write_bytes(good.encode() + b"\n" + bad + b"\n" + good.encode())
    code, _, err = run(capsys, "import", str(tmp_path / "in.jsonl"))
    assert code == 1
    assert err.startswith(f"blazemesh: error: {tmp_path / 'in.jsonl'}:3: ")
    assert message in err
    assert err.endswith("; nothing was imported\n")
    assert len(err.splitlines()) == 1
    assert run(capsys, "get", "c", "first")[0] == 1
