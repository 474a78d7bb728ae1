"""``blazemesh sim``: arguments that cannot work, or would be ignored, are refused in one
line before anything runs (issue 19, section 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from blazemesh.cli import main
from blazemesh.simulations import cli as sim_cli


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``blazemesh ARGV``: its exit code and its last line on stderr, which must
    be the only one unless argparse printed its usage above it (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    code = exit_info.value.code
    assert isinstance(code, int)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if code == 1:
        assert len(lines) == 1, err
    return code, lines[-1]


@pytest.fixture(autouse=True)
def no_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case here must be refused before a simulation starts."""

    def run_nothing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a simulation started")

    monkeypatch.setattr(sim_cli, "simulate", run_nothing)
    monkeypatch.setattr(sim_cli, "simulate_epidemic", run_nothing)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--counter", "0"], "--counter must be at least 1, got 0"),
        (["--coin", "-2"], "--coin must be at least 1, got -2"),
        (["--sites", "99999999999999999999"], "--sites must be at most 1,000,000"),
        (["--runs", "10000000"], "--runs must be at most 100,000"),
    ],
)
def test_epidemic_bounds(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, line = refused(capsys, "sim", "epidemic", "--model", "rumor-push", *argv)
    assert code == 1
    assert message in line


@pytest.mark.parametrize(
    "option", [["--counter", "2"], ["--coin", "2"], ["--blind"], ["--feedback"]]
)
def test_epidemic_rumor_options_are_refused_for_anti_entropy(
    capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    code, line = refused(capsys, "sim", "epidemic", "--model", "anti-entropy-pull", *option)
    assert code == 1
    assert "anti-entropy-pull has no rumor" in line


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--partition", "5", "1"], 1, "the partition must end after it begins, got 5 to 1"),
        (["--topology", "star", "--max-links", "3"], 1, "max_links bounds the links of a mesh"),
        (["star-50-hub-fails", "--max-links", "3"], 1, "max_links bounds the links of a mesh"),
        (["--hub-candidates", "3"], 1, "--hub-candidates says which nodes may be a star's hub"),
        (["--bandwidth", "0"], 1, "--bandwidth must be more than 0"),
        (["--writes", "99999999999"], 1, "writes must be 1 to 10,000,000"),
        (["--latency-ms", "nan"], 2, "argument --latency-ms: not a finite number: 'nan'"),
        (["--loss", "inf"], 2, "argument --loss: not a finite number: 'inf'"),
        (["mesh50"], 1, "no built-in scenario and no file named 'mesh50': did you mean mesh-50?"),
        (["nothing-like-it"], 1, "the built-in ones are mesh-50, star-50-hub-fails"),
    ],
)
def test_run_arguments(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    got, line = refused(capsys, "sim", "run", *argv)
    assert got == code
    assert message in line


def test_an_out_that_cannot_be_a_directory_is_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "file").touch()
    code, line = refused(capsys, "sim", "run", "--out", str(tmp_path / "file"))
    assert (code, line) == (
        1,
        f"blazemesh: error: --out {tmp_path / 'file'} is a file: name a directory",
    )
    code, line = refused(capsys, "sim", "run", "--out", str(tmp_path / "file" / "out"))
    assert code == 1
    assert "cannot make the directory" in line
