"""Write records through a running agent, printing each key once its write is acknowledged.

Usage: control_writer.py DATA_DIR PREFIX COUNT. Stops early, quietly, when the agent goes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from agent.client import AgentClient
from agent.errors import AgentError


async def main(data_dir: Path, prefix: str, count: int) -> None:
    client = await AgentClient.connect(data_dir, client="control_writer")
    assert client is not None, "no agent"
    try:
        for i in range(count):
            key = f"{prefix}-{i}"
            await client.call("put", {"collection": "w", "key": key, "fields": {"i": i}})
            print(key, flush=True)  # noqa: T201
    except AgentError:
        return
    finally:
        await client.aclose()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
