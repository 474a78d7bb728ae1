"""``blazemesh backup`` and ``restore``: a consistent copy of a node, and putting it back."""

from __future__ import annotations

import argparse
from pathlib import Path

import trio

from blazemesh.agent.api.client import Session, open_session
from blazemesh.agent.cli.arguments import DataDir, Subcommands, path
from blazemesh.agent.errors import DataDirLockedError


def register(
    sub: Subcommands,
    common: argparse.ArgumentParser,
    data_dir: DataDir,
) -> None:
    """Add ``backup`` and ``restore`` to the ``blazemesh`` parser."""
    p = sub.add_parser(
        "backup",
        parents=[common],
        help="copy this node (database, key, membership) into a new directory, while it runs",
    )
    p.add_argument("to", type=path, metavar="DIR", help="a new (or empty) directory")
    p.set_defaults(run=lambda args: cmd_backup(data_dir(args), args.to))
    p = sub.add_parser(
        "restore",
        parents=[common],
        help="put a backup back as this node's data (agent stopped); it then takes back "
        "from its peers what it wrote after the backup",
    )
    p.add_argument("source", type=path, metavar="DIR", help="a directory `backup` wrote")
    p.set_defaults(run=lambda args: cmd_restore(data_dir(args), args.source))


def cmd_backup(data_dir: Path, to: Path) -> int:
    target = to.expanduser().absolute()  # the agent runs elsewhere: it needs the whole path

    async def run() -> int:
        session: Session
        async with open_session(data_dir) as session:
            result = await session.call("backup", {"to": str(target)})
        print(f"backed up {', '.join(result['files'])} into {result['to']}")
        return 0

    return trio.run(run)


def cmd_restore(data_dir: Path, source: Path) -> int:
    from blazemesh.agent.storage.backup import restore

    try:
        restored = restore(source.expanduser(), data_dir)
    except DataDirLockedError as exc:
        raise DataDirLockedError(
            f"{exc}: stop its agent first (a restore replaces the database under it)"
        ) from None
    print(
        f"restored {', '.join(restored)} into {data_dir}; when its agent starts, it takes back "
        "from its peers the changes this node made after the backup"
    )
    return 0
