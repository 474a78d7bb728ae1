"""A writer killed with SIGKILL at random moments loses no write whose call had returned."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from blazemesh.agent.storage.paths import DB_FILE
from blazemesh.agent.storage.replica import open_replica

pytestmark = pytest.mark.system

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS_PER_SETTING = 12


async def held_indexes(data_dir: Path) -> tuple[set[int], set[int]]:
    async with open_replica(data_dir) as replica:
        records = await replica.query("crash")
    a = {r.fields["i"] for r in records if r.key.endswith("a")}
    b = {r.fields["i"] for r in records if r.key.endswith("b")}
    return a, b  # type: ignore[return-value]


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_sigkill_never_loses_an_acknowledged_write(tmp_path: Path, durability: str) -> None:
    rng = random.Random(f"crash-{durability}")
    acknowledged: set[int] = set()
    first = 0
    for _ in range(KILLS_PER_SETTING):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(tmp_path), durability, str(first)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        try:
            for _ in range(rng.randint(1, 150)):
                line = proc.stdout.readline()
                assert line, f"writer exited early with {proc.wait()}"
                acknowledged.add(int(line))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL

        db = sqlite3.connect(tmp_path / DB_FILE)
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        db.close()
        held_a, held_b = trio.run(held_indexes, tmp_path)
        assert held_a == held_b, "a transaction was half applied"
        assert acknowledged <= held_a, f"lost {sorted(acknowledged - held_a)[:10]}"
        first = max(held_a) + 1
