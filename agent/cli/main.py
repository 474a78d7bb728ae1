"""The ``blazemesh`` command line.

Every command takes ``--data-dir`` (default: `agent.storage.paths.default_data_dir`). A user
mistake prints one line on stderr and exits 1; a usage error exits 2 (argparse).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import sqlite3
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

import trio

from blazemesh import __version__
from blazemesh.agent.api.client import AgentClient, Session, open_session
from blazemesh.agent.cli import (
    arguments,
    backup,
    jsonio,
    lines,
    membership,
    node,
    ready,
    transfer,
)
from blazemesh.agent.cli.interrupt import INTERRUPTED
from blazemesh.agent.cli.lines import count
from blazemesh.agent.errors import AgentError, ConfigError
from blazemesh.agent.storage.paths import DB_FILE, check_data_dir, default_data_dir
from blazemesh.agent.storage.store import Durability
from blazemesh.protocol.codec.control import change_event
from blazemesh.protocol.errors import ProtocolError, RemoteProtocolError
from blazemesh.protocol.hlc import millis
from blazemesh.protocol.ids import node_id_short, parse_node_id
from blazemesh.protocol.model import Put, Value, validate_op
from blazemesh.protocol.topology import SETTINGS_COLLECTION

WATCH_POLL_S = 0.2  # without an agent, how often `watch` asks SQLite whether the log grew
WATCH_PAGE = 500  # log entries printed per read
# The collection of mesh-wide settings (the topology): listed only with --all.
INTERNAL = SETTINGS_COLLECTION


Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def main(argv: Sequence[str] | None = None, *, register_more: Register | None = None) -> NoReturn:
    """Run the command ``argv``; ``register_more`` adds commands kept elsewhere
    (`blazemesh.cli`: the simulator's)."""
    parser = build_parser(register_more)
    args = parser.parse_args(argv)
    lines.show_log_warnings()
    try:
        check_text(args)
        code = args.run(args)
    except USER_ERRORS as exc:
        _fail(str(exc))
    except sqlite3.Error as exc:
        _fail(f"database error: {exc}")
    except KeyboardInterrupt:
        code = INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`blazemesh ... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except OSError as exc:  # the machine said no (a file, a permission, a full disk)
        _fail(os_error_text(exc))
    except BaseExceptionGroup as group:  # what concurrent tasks raised together
        message = _group_message(group)
        if message is None:
            raise
        _fail(message)
    sys.exit(code)


# What a user mistake raises: each one prints as one line (`blazemesh: error: ...`).
USER_ERRORS = (AgentError, ProtocolError)


def _fail(message: str) -> NoReturn:
    lines.say("error", message)
    sys.exit(1)


def check_text(args: argparse.Namespace) -> None:
    """Refuse an argument that is not UTF-8 (Python hands a command the bytes it cannot
    decode as lone surrogates, which every encoder refuses later with a traceback).
    Paths are exempt: a file name may be any bytes."""
    for dest, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:
                    raise ConfigError(
                        f"{dest.replace('_', '-')}: {text[:80]!r} is not valid UTF-8"
                    ) from None


def os_error_text(exc: OSError) -> str:
    """An `OSError` as one line: what failed, on which file."""
    what = exc.strerror or str(exc)
    return what if exc.filename is None else f"{exc.filename}: {what}"


def _group_message(group: BaseExceptionGroup[BaseException]) -> str | None:
    """The line to print for tasks that failed together, if every one of them failed by
    a user mistake (`USER_ERRORS`); None if any failed otherwise (a bug: its traceback
    is what helps)."""
    leaves, pending = [], list(group.exceptions)
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif isinstance(exc, USER_ERRORS):
            leaves.append(str(exc))
        else:
            return None
    return "; ".join(dict.fromkeys(leaves)) or None


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors end in a line like every other error."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog.split()[1:]  # "blazemesh trust add": the words after blazemesh
        lines.say("error", f"{' '.join(command)}: {message}" if command else message)
        sys.exit(2)


def build_parser(register_more: Register | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="blazemesh", description="Peer-to-peer sync agent: a local replica that syncs."
    )
    parser.add_argument("--version", action="version", version=f"blazemesh {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=arguments.path,
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
    # Every command's parser is a `_Parser` too (argparse makes them of the top one's class).
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
    )

    membership.register(sub, common, _data_dir)
    node.register(sub, common, writes, _data_dir)
    backup.register(sub, common, _data_dir)
    transfer.register(sub, common, writes, _data_dir)
    if register_more is not None:
        register_more(sub)

    p = sub.add_parser("put", parents=[common, writes], help="set fields on a record")
    p.add_argument("collection")
    p.add_argument("key")
    p.add_argument(
        "fields",
        nargs="*",
        metavar="FIELD=VALUE",
        help="VALUE is JSON, else text; @PATH: the file's contents (@-: stdin); @@: a leading @",
    )
    p.add_argument(
        "--json",
        dest="json_fields",
        metavar="OBJECT",
        help="all fields as a JSON object; - reads it from stdin, @PATH from a file",
    )
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
    p.add_argument("--limit", type=arguments.int64, default=None)
    p.set_defaults(run=cmd_query)

    p = sub.add_parser("watch", parents=[common], help="print changes as they commit")
    p.add_argument("collection", nargs="?", default=None)
    p.add_argument(
        "--since", type=arguments.int64, default=None, help="start after this log position"
    )
    p.add_argument("--no-follow", dest="follow", action="store_false", help="exit at the end")
    p.add_argument("--all", action="store_true", help=f"also the internal {INTERNAL!r} collection")
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
    p.add_argument("--all", action="store_true", help=f"also the internal {INTERNAL!r} collection")
    p.set_defaults(run=cmd_info)

    ready.register(sub, common, _data_dir)
    return parser


def _data_dir(args: argparse.Namespace) -> Path:
    """The data directory the command names; `ConfigError` if that path cannot be one
    (a file, or under a file): every command says so before anything else."""
    path = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    try:
        is_dir = stat.S_ISDIR(path.stat().st_mode)
    except FileNotFoundError:
        return path  # `init` creates it; other commands say to run `init`
    except NotADirectoryError:
        raise ConfigError(f"the data directory {path} cannot exist: a parent is a file") from None
    except OSError as exc:
        raise ConfigError(f"cannot use the data directory {path}: {exc.strerror}") from None
    if not is_dir:
        raise ConfigError(f"the data directory {path} is a file, not a directory")
    return path


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
    stdin_readers = [args.json_fields == "-"] + [a.partition("=")[2] == "@-" for a in args.fields]
    if sum(stdin_readers) > 1:
        raise ConfigError("standard input (-, @-) can give one value or --json, not several")
    if args.json_fields is not None:
        text = args.json_fields
        if text == "-" or text.startswith("@"):
            data = jsonio.read_input(text.removeprefix("@"))
            try:
                text = data.decode()
            except UnicodeDecodeError as exc:
                raise ConfigError(f"--json {args.json_fields}: not UTF-8 ({exc})") from None
        try:
            obj = jsonio.loads(text)
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
    fields = _fields(args)
    # Checked here as the replica checks it, so that a value no agent would take (an
    # integer past 64 bits, text that is not UTF-8) is refused in the same words whether
    # or not an agent runs, and before it is sent.
    validate_op(Put(collection=args.collection, key=args.key, fields=fields))
    request = {"collection": args.collection, "key": args.key, "fields": fields}

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
            lines.say("error", f"{args.collection}/{args.key} not found")
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
            admits = (
                "every holder of the secret" if listed is None else count(listed, "listed node")
            )
            print(f"mesh       {summary['mesh']!r}, admitting {admits}")
        if summary["agent"]:
            listen = ", ".join(summary["listen"])
            print(
                f"agent      running, listening on {listen}, {count(summary['links'], 'link')} up"
            )
            _print_identity_clashes(summary)
        else:
            print("agent      not running")
        print(f"changes    {summary['changes_held']} held, log position {summary['last_lsn']}")
        refused = summary["clock"]["writes_refused"]
        print(f"clock      {'ok' if refused is None else 'writes refused: ' + refused}")
        for name, counts in summary["collections"].items():
            if name == INTERNAL and not args.all:
                continue
            print(
                f"collection {name}: {count(counts['records'], 'record')}, "
                f"{count(counts['tombstones'], 'tombstone')}"
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
    hidden = () if args.all or args.collection is not None else (INTERNAL,)
    watch = functools.partial(_watch, _data_dir(args), args.collection, args.since, hidden=hidden)
    return trio.run(watch, args.follow)


async def _watch(
    data_dir: Path,
    collection: str | None,
    since: int | None,
    follow: bool,
    *,
    hidden: tuple[str, ...],
) -> int:
    request: dict[str, Value] = {"collection": collection, "since": since, "follow": follow}
    client = await AgentClient.connect(data_dir, client="blazemesh-cli")
    if client is None and follow:
        return await _follow_log(data_dir, collection, since, hidden)
    async with contextlib.AsyncExitStack() as stack:
        session: Session
        if client is None:
            session = await stack.enter_async_context(open_session(data_dir))
        else:
            stack.push_async_callback(client.aclose)
            session = client
        async for event in session.stream("watch", request):
            _print_event(event, hidden)
    return 0


async def _follow_log(
    data_dir: Path, collection: str | None, since: int | None, hidden: tuple[str, ...]
) -> int:
    """Without an agent: print log entries as they commit, by whichever process writes."""
    from blazemesh.agent.storage.merging import corrupt_log_entry
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
                try:
                    change = decode_change(blob)
                except RemoteProtocolError as exc:
                    raise corrupt_log_entry(lsn, str(data_dir / DB_FILE), exc) from None
                event = change_event(lsn, change, collection)
                _print_event(event, hidden)
            if rows:
                continue
            # SQLite offers no cross-process notification, so without an agent this polls
            # (one PRAGMA); with an agent running, watch is pushed through its socket.
            while not reader.changed():  # noqa: ASYNC110
                await trio.sleep(WATCH_POLL_S)
    finally:
        reader.close()


def _print_event(event: dict[str, Any], hidden: tuple[str, ...]) -> None:
    """One JSON line per op of a `watch` event, but those on the ``hidden`` collections."""
    for op in event["ops"]:
        if op["collection"] in hidden:
            continue
        line = {"lsn": event["lsn"], "origin": event["origin"], "seq": event["seq"], **op}
        print(jsonio.dumps(line), flush=True)
