from __future__ import annotations

from pathlib import Path

import pytest

from blazemesh.agent.trust.membership import CODE_PREFIX, load_mesh
from tests.agent.test_cli import run


def code_of(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(CODE_PREFIX))


def test_init_with_mesh_invite_and_join(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    code, out, _ = run(capsys, "init", "--mesh", "shop floor", "--data-dir", a)
    assert code == 0
    first_code = code_of(out)
    _, out, _ = run(capsys, "invite", "--data-dir", a)
    assert code_of(out) == first_code
    code, out, _ = run(capsys, "join", first_code, "--data-dir", b)
    assert code == 0
    assert "joined mesh 'shop floor'" in out
    assert load_mesh(Path(b)).secret == load_mesh(Path(a)).secret


def test_mistyped_code_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, out, _ = run(capsys, "init", "--mesh", "m", "--data-dir", str(tmp_path / "a"))
    good = code_of(out)
    bad = good[:-1] + ("a" if good[-1] != "a" else "b")
    code, _, err = run(capsys, "join", bad, "--data-dir", str(tmp_path / "b"))
    assert code == 1
    assert "mistyped" in err
    assert not (tmp_path / "b" / "mesh.json").exists()


def test_join_does_not_silently_leave_a_mesh(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, out_a, _ = run(capsys, "init", "--mesh", "one", "--data-dir", str(tmp_path / "a"))
    b = str(tmp_path / "b")
    run(capsys, "init", "--mesh", "two", "--data-dir", b)
    code, _, err = run(capsys, "join", code_of(out_a), "--data-dir", b)
    assert code == 1
    assert "--force" in err
    assert run(capsys, "join", code_of(out_a), "--force", "--data-dir", b)[0] == 0
    assert load_mesh(Path(b)).name == "one"


def test_trust_add_remove_list_disable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a = str(tmp_path / "a")
    run(capsys, "init", "--mesh", "m", "--data-dir", a)
    _, out, _ = run(capsys, "init", "--data-dir", str(tmp_path / "b"))
    other = out.split("node ")[1].split()[0]
    _, out, _ = run(capsys, "trust", "list", "--data-dir", a)
    assert "off" in out
    code, out, _ = run(capsys, "trust", "add", other, "--data-dir", a)
    assert code == 0
    assert "allowlist mode is on" in out
    _, out, _ = run(capsys, "trust", "list", "--data-dir", a)
    assert other in out
    assert run(capsys, "trust", "remove", other, "--data-dir", a)[0] == 0
    code, _, err = run(capsys, "trust", "remove", other, "--data-dir", a)
    assert code == 1
    assert "not on the allowlist" in err
    assert load_mesh(Path(a)).allowlist == set()  # on, and empty: nobody is admitted
    run(capsys, "trust", "disable", "--data-dir", a)
    assert load_mesh(Path(a)).allowlist is None
    code, _, err = run(capsys, "trust", "add", "not-a-node-id", "--data-dir", a)
    assert code == 1
    assert "base32" in err


def test_rotate_secret_keeps_name_and_allowlist(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = tmp_path / "a"
    run(capsys, "init", "--mesh", "m", "--data-dir", str(a))
    _, out, _ = run(capsys, "init", "--data-dir", str(tmp_path / "b"))
    run(capsys, "trust", "add", out.split("node ")[1].split()[0], "--data-dir", str(a))
    before = load_mesh(a)
    code, out, _ = run(capsys, "rotate-secret", "--data-dir", str(a))
    after = load_mesh(a)
    assert code == 0
    assert after.secret != before.secret
    assert (after.name, after.allowlist) == (before.name, before.allowlist)
    assert code_of(out)


def test_commands_without_a_mesh_say_how_to_get_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run(capsys, "init", "--data-dir", str(tmp_path))
    code, _, err = run(capsys, "invite", "--data-dir", str(tmp_path))
    assert code == 1
    assert "blazemesh join" in err
