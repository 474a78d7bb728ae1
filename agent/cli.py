"""The ``blazemesh`` command line.

Every command takes ``--data-dir`` (default: `agent.paths.default_data_dir`). A user
mistake prints one line on stderr and exits 1; a usage error exits 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NoReturn

import trio

from agent import cli_mesh, jsonio
from agent.errors import AgentError, ConfigError
from agent.mesh import MESH_FILE, load_mesh
from agent.paths import DB_FILE, default_data_dir
from agent.replica import Replica, open_replica
from agent.store import Durability, LogReader
from protocol.codec import decode_change
from protocol.errors import ProtocolError
from protocol.ids import node_id_short, node_id_text
from protocol.model import Delete, Value

WATCH_POLL_S = 0.2  # without an agent, how often `watch` asks SQLite whether the log grew
WATCH_PAGE = 500  # log entries printed per read


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.run(args)
    except (AgentError, ProtocolError) as exc:
        _fail(str(exc))
    except sqlite3.Error as exc:
        _fail(f"database error: {exc}")
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader went away (`blazemesh ... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


def _fail(message: str) -> NoReturn:
    print(f"blazemesh: error: {message}", file=sys.stderr)
    sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blazemesh", description="Peer-to-peer sync agent: a local replica that syncs."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the node's data directory (default: $BLAZEMESH_HOME or the user data dir)",
    )
    writes = argparse.ArgumentParser(add_help=False)
    writes.add_argument(
        "--durability",
        choices=[d.value for d in Durability],
        default=Durability.NORMAL.value,
        help="normal: survives a process crash; full: also power loss (default: normal)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cli_mesh.register(sub, common, _data_dir)

    p = sub.add_parser("put", parents=[common, writes], help="set fields on a record")
    p.add_argument("collection")
    p.add_argument("key")
    p.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="VALUE is JSON, else text")
    p.add_argument("--json", dest="json_fields", metavar="OBJECT", help="all fields as JSON")
    p.set_defaults(run=cmd_put)

    p = sub.add_parser("get", parents=[common], help="print a record as JSON")
    p.add_argument("collection")
    p.add_argument("key")
    p.set_defaults(run=cmd_get)

    p = sub.add_parser("delete", parents=[common, writes], help="delete a record")
    p.add_argument("collection")
    p.add_argument("key")
    p.set_defaults(run=cmd_delete)

    p = sub.add_parser("query", parents=[common], help="print matching records, one per line")
    p.add_argument("collection")
    p.add_argument("where", nargs="*", metavar="FIELD=VALUE", help="equality filters")
    p.add_argument("--prefix", default="", help="only keys starting with this")
    p.add_argument("--after", default=None, help="only keys after this one (paging)")
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(run=cmd_query)

    p = sub.add_parser("watch", parents=[common], help="print changes as they commit")
    p.add_argument("collection", nargs="?", default=None)
    p.add_argument("--since", type=int, default=None, help="start after this log position")
    p.add_argument("--no-follow", dest="follow", action="store_false", help="exit at the end")
    p.set_defaults(run=cmd_watch)

    p = sub.add_parser("info", parents=[common], help="node id, data directory, counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_info)
    return parser


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()


def _with_replica(
    args: argparse.Namespace,
    body: Callable[[Replica], Awaitable[int]],
    durability: Durability = Durability.NORMAL,
) -> int:
    async def run() -> int:
        async with open_replica(_data_dir(args), durability=durability) as replica:
            return await body(replica)

    return trio.run(run)


def _durability(args: argparse.Namespace) -> Durability:
    return Durability(args.durability)


def _fields(args: argparse.Namespace) -> dict[str, Value]:
    fields: dict[str, Value] = {}
    if args.json_fields is not None:
        try:
            obj = jsonio.loads(args.json_fields)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ConfigError("--json must be a JSON object of fields")
        fields.update(obj)
    fields.update(jsonio.parse_assignment(a) for a in args.fields)
    return fields


def cmd_put(args: argparse.Namespace) -> int:
    fields = _fields(args)

    async def body(replica: Replica) -> int:
        change = await replica.put(args.collection, args.key, fields)
        print(f"committed {node_id_short(change.origin)}:{change.seq}")
        return 0

    return _with_replica(args, body, durability=_durability(args))


def cmd_delete(args: argparse.Namespace) -> int:
    async def body(replica: Replica) -> int:
        change = await replica.delete(args.collection, args.key)
        print(f"committed {node_id_short(change.origin)}:{change.seq}")
        return 0

    return _with_replica(args, body, durability=_durability(args))


def cmd_get(args: argparse.Namespace) -> int:
    async def body(replica: Replica) -> int:
        document = await replica.get(args.collection, args.key)
        if document is None:
            print(f"blazemesh: {args.collection}/{args.key} not found", file=sys.stderr)
            return 1
        print(jsonio.dumps(document))
        return 0

    return _with_replica(args, body)


def cmd_query(args: argparse.Namespace) -> int:
    where = dict(jsonio.parse_assignment(a) for a in args.where)

    async def body(replica: Replica) -> int:
        records = await replica.query(
            args.collection, where=where, prefix=args.prefix, after=args.after, limit=args.limit
        )
        for record in records:
            print(jsonio.dumps({"key": record.key, "fields": record.fields}))
        return 0

    return _with_replica(args, body)


def cmd_info(args: argparse.Namespace) -> int:
    async def body(replica: Replica) -> int:
        info = replica.info()
        mesh = load_mesh(info.data_dir) if (info.data_dir / MESH_FILE).exists() else None
        summary = {
            "node_id": node_id_text(info.node_id),
            "short_id": node_id_short(info.node_id),
            "data_dir": str(info.data_dir),
            "mesh": None if mesh is None else mesh.name,
            "allowlist": None if mesh is None or mesh.allowlist is None else len(mesh.allowlist),
            "changes_held": info.changes_held,
            "last_lsn": info.last_lsn,
            "collections": {
                name: {"records": live, "tombstones": dead}
                for name, (live, dead) in sorted(info.collections.items())
            },
        }
        if args.json:
            print(jsonio.dumps(summary))
            return 0
        print(f"node       {summary['node_id']} ({summary['short_id']})")
        print(f"data dir   {summary['data_dir']}")
        if mesh is None:
            print("mesh       none: `blazemesh init --mesh NAME` or `blazemesh join CODE`")
        else:
            admits = (
                "every holder of the secret"
                if mesh.allowlist is None
                else (f"{len(mesh.allowlist)} listed nodes")
            )
            print(f"mesh       {mesh.name!r}, admitting {admits}")
        print(f"changes    {info.changes_held} held, log position {info.last_lsn}")
        for name, (live, dead) in sorted(info.collections.items()):
            print(f"collection {name}: {live} records, {dead} tombstones")
        return 0

    return _with_replica(args, body)


def cmd_watch(args: argparse.Namespace) -> int:
    path = _data_dir(args) / DB_FILE
    return trio.run(_follow_log, path, args.collection, args.since, args.follow)


async def _follow_log(path: Path, collection: str | None, since: int | None, follow: bool) -> int:
    """Print log entries as JSON lines, following the log of whichever process writes it."""
    reader = await trio.to_thread.run_sync(LogReader, path)
    try:
        lsn = reader.last_lsn() if since is None else since
        reader.changed()
        while True:
            rows = reader.since(lsn, WATCH_PAGE)
            for lsn, blob in rows:
                _print_change(lsn, blob, collection)
            if rows:
                continue
            if not follow:
                return 0
            # SQLite offers no cross-process notification, so without an agent this polls
            # (one PRAGMA); with an agent running, watch is pushed through its socket.
            while not reader.changed():  # noqa: ASYNC110
                await trio.sleep(WATCH_POLL_S)
    finally:
        reader.close()


def _print_change(lsn: int, blob: bytes, collection: str | None) -> None:
    change = decode_change(blob)
    for op in change.ops:
        if collection is not None and op.collection != collection:
            continue
        line: dict[str, object] = {
            "lsn": lsn,
            "origin": node_id_text(change.origin),
            "seq": change.seq,
            "op": "delete" if isinstance(op, Delete) else "put",
            "collection": op.collection,
            "key": op.key,
        }
        if not isinstance(op, Delete):
            line["fields"] = dict(op.fields)
        print(jsonio.dumps(line), flush=True)
