"""The ``blazemesh`` command line.

Every command takes ``--data-dir`` (default: `agent.storage.paths.default_data_dir`). A user
mistake prints one line on stderr and exits 1; a usage error exits 2 (argparse).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import trio

from blazemesh import __version__
from blazemesh.agent.api.client import AgentClient, Session, open_session
from blazemesh.agent.cli import backup, jsonio, membership, node, ready
from blazemesh.agent.errors import AgentError, ConfigError
from blazemesh.agent.storage.paths import DB_FILE, check_data_dir, default_data_dir
from blazemesh.agent.storage.store import Durability
from blazemesh.protocol.codec.control import change_event
from blazemesh.protocol.errors import ProtocolError
from blazemesh.protocol.hlc import millis
from blazemesh.protocol.ids import node_id_short, parse_node_id
from blazemesh.protocol.model import Value

WATCH_POLL_S = 0.2  # without an agent, how often `watch` asks SQLite whether the log grew
WATCH_PAGE = 500  # log entries printed per read


Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def main(argv: Sequence[str] | None = None, *, register_more: Register | None = None) -> NoReturn:
    """Run the command ``argv``; ``register_more`` adds commands kept elsewhere
    (`blazemesh.cli`: the simulator's)."""
    parser = build_parser(register_more)
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


def build_parser(register_more: Register | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blazemesh", description="Peer-to-peer sync agent: a local replica that syncs."
    )
    parser.add_argument("--version", action="version", version=f"blazemesh {__version__}")
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

    membership.register(sub, common, _data_dir)
    node.register(sub, common, writes, _data_dir)
    backup.register(sub, common, _data_dir)
    if register_more is not None:
        register_more(sub)

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

    p = sub.add_parser(
        "repair-clock",
        parents=[common],
        help="after this device's clock ran ahead and was set right: re-stamp its changes "
        "(agent stopped)",
    )
    p.set_defaults(run=cmd_repair_clock)

    p = sub.add_parser("info", parents=[common], help="node id, data directory, counts")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--digest", action="store_true", help="also hash every record (equal on replicas in sync)"
    )
    p.set_defaults(run=cmd_info)

    ready.register(sub, common, _data_dir)
    return parser


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()


def _session(
    args: argparse.Namespace,
    body: Callable[[Session], Awaitable[int]],
    durability: Durability = Durability.NORMAL,
) -> int:
    """Run ``body`` on the data directory's agent if one runs, else on the replica here."""

    async def run() -> int:
        async with open_session(_data_dir(args), durability=durability) as session:
            return await body(session)

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


def _committed(result: dict[str, Any]) -> None:
    print(f"committed {node_id_short(parse_node_id(str(result['origin'])))}:{result['seq']}")


def cmd_put(args: argparse.Namespace) -> int:
    request = {"collection": args.collection, "key": args.key, "fields": _fields(args)}

    async def body(session: Session) -> int:
        _committed(await session.call("put", request))
        return 0

    return _session(args, body, durability=_durability(args))


def cmd_delete(args: argparse.Namespace) -> int:
    async def body(session: Session) -> int:
        _committed(await session.call("delete", {"collection": args.collection, "key": args.key}))
        return 0

    return _session(args, body, durability=_durability(args))


def cmd_get(args: argparse.Namespace) -> int:
    async def body(session: Session) -> int:
        document = await session.call("get", {"collection": args.collection, "key": args.key})
        if document is None:
            print(f"blazemesh: {args.collection}/{args.key} not found", file=sys.stderr)
            return 1
        print(jsonio.dumps(document))
        return 0

    return _session(args, body)


def cmd_query(args: argparse.Namespace) -> int:
    request: dict[str, Value] = {
        "collection": args.collection,
        "where": dict(jsonio.parse_assignment(a) for a in args.where),
        "prefix": args.prefix,
        "after": args.after,
        "limit": args.limit,
    }

    async def body(session: Session) -> int:
        left = args.limit
        while True:
            page = await session.call("query", request)
            for record in page["records"]:
                print(jsonio.dumps(record))
            if page["next"] is None:
                return 0
            if left is not None:
                left -= len(page["records"])
                request["limit"] = left
            request["after"] = page["next"]

    return _session(args, body)


def cmd_info(args: argparse.Namespace) -> int:
    async def body(session: Session) -> int:
        summary = await session.call("info", {"digest": args.digest})
        if args.json:
            print(jsonio.dumps(summary))
            return 0
        print(f"node       {summary['node_id']} ({summary['short_id']})")
        print(f"data dir   {summary['data_dir']}")
        if summary["mesh"] is None:
            print("mesh       none: `blazemesh init --mesh NAME` or `blazemesh join CODE`")
        else:
            listed = summary["allowlist"]
            admits = "every holder of the secret" if listed is None else f"{listed} listed nodes"
            print(f"mesh       {summary['mesh']!r}, admitting {admits}")
        if summary["agent"]:
            listen = ", ".join(summary["listen"])
            print(f"agent      running, listening on {listen}, {summary['links']} links up")
            _print_identity_clashes(summary)
        else:
            print("agent      not running")
        print(f"changes    {summary['changes_held']} held, log position {summary['last_lsn']}")
        refused = summary["clock"]["writes_refused"]
        print(f"clock      {'ok' if refused is None else 'writes refused: ' + refused}")
        for name, counts in summary["collections"].items():
            print(
                f"collection {name}: {counts['records']} records, {counts['tombstones']} tombstones"
            )
        if "digest" in summary:
            print(f"digest     {summary['digest']}")
        return 0

    return _session(args, body)


def _print_identity_clashes(summary: dict[str, Any]) -> None:
    """`info`'s lines for two running nodes with one identity, if there are any."""
    in_use = summary["identity_in_use"]
    if in_use is not None:
        print(
            f"identity   IN USE ON ANOTHER RUNNING DEVICE: {in_use['peer']} refuses this node "
            f"(for {in_use['since_s']:.0f}s); stop one of the two and give it its own identity "
            '(docs/operations.md, "Two devices with one identity")'
        )
    if summary["clones"]:
        print(
            f"clones     refusing {', '.join(summary['clones'])}: each runs on two devices at once"
        )


def cmd_repair_clock(args: argparse.Namespace) -> int:
    async def body(session: Session) -> int:
        result = await session.call("clock.repair", {})
        if not result["restamped"]:
            print("nothing to re-stamp: no change of this node is stamped in the future")
            return 0
        stamp = datetime.datetime.fromtimestamp(
            millis(result["clock"]) / 1000, datetime.UTC
        ).isoformat(timespec="milliseconds")
        print(
            f"re-stamped {result['restamped']} changes made while the clock ran ahead; "
            f"the replica's clock now stands at {stamp}"
        )
        return 0

    return _session(args, body)


def cmd_watch(args: argparse.Namespace) -> int:
    return trio.run(_watch, _data_dir(args), args.collection, args.since, args.follow)


async def _watch(data_dir: Path, collection: str | None, since: int | None, follow: bool) -> int:
    request: dict[str, Value] = {"collection": collection, "since": since, "follow": follow}
    client = await AgentClient.connect(data_dir, client="blazemesh-cli")
    if client is None and follow:
        return await _follow_log(data_dir, collection, since)
    async with contextlib.AsyncExitStack() as stack:
        session: Session
        if client is None:
            session = await stack.enter_async_context(open_session(data_dir))
        else:
            stack.push_async_callback(client.aclose)
            session = client
        async for event in session.stream("watch", request):
            _print_event(event)
    return 0


async def _follow_log(data_dir: Path, collection: str | None, since: int | None) -> int:
    """Without an agent: print log entries as they commit, by whichever process writes."""
    from blazemesh.agent.storage.sqlite import LogReader
    from blazemesh.protocol.codec import decode_change

    check_data_dir(data_dir)
    reader = await trio.to_thread.run_sync(LogReader, data_dir / DB_FILE)
    try:
        lsn = reader.last_lsn() if since is None else since
        reader.changed()
        while True:
            rows = reader.since(lsn, WATCH_PAGE)
            for lsn, blob in rows:
                event = change_event(lsn, decode_change(blob), collection)
                if event["ops"]:
                    _print_event(event)
            if rows:
                continue
            # SQLite offers no cross-process notification, so without an agent this polls
            # (one PRAGMA); with an agent running, watch is pushed through its socket.
            while not reader.changed():  # noqa: ASYNC110
                await trio.sleep(WATCH_POLL_S)
    finally:
        reader.close()


def _print_event(event: dict[str, Any]) -> None:
    """One JSON line per op of a `watch` event."""
    for op in event["ops"]:
        line = {"lsn": event["lsn"], "origin": event["origin"], "seq": event["seq"], **op}
        print(jsonio.dumps(line), flush=True)
