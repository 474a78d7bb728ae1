"""``blazemesh export`` and ``import``: a node's records as JSON lines, to move data and to
look at it (the format: docs/operations.md, "Export and import").

One line per record: ``{"collection": ..., "key": ..., "fields": {...}}``, the fields in
the JSON of every command (`agent.cli.jsonio`: bytes as ``{"$bytes": ...}``). Import
reads and checks every line before it writes any, so a bad line imports nothing; the
records are then written in changes of at most `IMPORT_BATCH_BYTES`, and if one of those
fails the error says which lines were imported before it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import trio

from blazemesh.agent.api.client import Session, open_session
from blazemesh.agent.cli import jsonio
from blazemesh.agent.cli.arguments import DataDir, Subcommands, path
from blazemesh.agent.cli.lines import count
from blazemesh.agent.errors import AgentError, ConfigError
from blazemesh.agent.storage.store import Durability
from blazemesh.protocol.codec.control import op_map
from blazemesh.protocol.errors import ProtocolError
from blazemesh.protocol.model import MAX_CHANGE_BYTES, Put, encoded_size, validate_op
from blazemesh.protocol.topology import SETTINGS_COLLECTION

LINE_KEYS = {"collection", "key", "fields"}
# A change holds at most MAX_CHANGE_BYTES: a quarter leaves room for the keys and the
# encoding around the values, and keeps each commit short.
IMPORT_BATCH_BYTES = MAX_CHANGE_BYTES // 4
IMPORT_BATCH_RECORDS = 1_000  # records per change: each commit stays in milliseconds
MAX_LINE_CHARS = jsonio.MAX_INPUT_BYTES  # a record cannot be longer than a change


def register(
    sub: Subcommands,
    common: argparse.ArgumentParser,
    writes: argparse.ArgumentParser,
    data_dir: DataDir,
) -> None:
    """Add ``export`` and ``import`` to the ``blazemesh`` parser."""
    p = sub.add_parser(
        "export", parents=[common], help="print records as JSON lines (every collection)"
    )
    p.add_argument("collections", nargs="*", metavar="COLLECTION", help="only these")
    p.add_argument(
        "--all", action="store_true", help=f"also the internal {SETTINGS_COLLECTION!r} collection"
    )
    p.set_defaults(run=lambda args: cmd_export(data_dir(args), args))
    p = sub.add_parser(
        "import", parents=[common, writes], help="write the records of JSON lines `export` printed"
    )
    p.add_argument("source", type=path, metavar="FILE", help="the JSON lines; - for stdin")
    p.set_defaults(run=lambda args: cmd_import(data_dir(args), args))


def cmd_export(data_dir: Path, args: argparse.Namespace) -> int:
    async def run() -> int:
        session: Session
        async with open_session(data_dir) as session:
            collections = args.collections
            if not collections:
                info = await session.call("info", {})
                collections = [
                    name
                    for name in sorted(info["collections"])
                    if args.all or name != SETTINGS_COLLECTION
                ]
            for collection in collections:
                await _export(session, collection)
        return 0

    return trio.run(run)


async def _export(session: Session, collection: str) -> None:
    request: dict[str, Any] = {"collection": collection, "after": None}
    while True:
        page = await session.call("query", request)
        for record in page["records"]:
            line = {"collection": collection, "key": record["key"], "fields": record["fields"]}
            print(jsonio.dumps(line))
        if page["next"] is None:
            return
        request["after"] = page["next"]


def cmd_import(data_dir: Path, args: argparse.Namespace) -> int:
    source = str(args.source)
    if source == "-":
        puts = read_lines(sys.stdin, "stdin")
    else:
        with open(source, encoding="utf-8", errors="surrogateescape") as f:
            puts = read_lines(f, source)

    async def run() -> int:
        session: Session
        async with open_session(data_dir, durability=Durability(args.durability)) as session:
            await _write(session, puts)
        return 0

    code = trio.run(run)
    print(f"imported {count(len(puts), 'record')} from {'stdin' if source == '-' else source}")
    return code


def read_lines(lines: IO[str], name: str) -> list[Put]:
    """Every record of ``lines`` as a checked `Put`; `ConfigError` naming the first bad
    line (``name:N``), having done nothing. Blank lines are skipped."""
    puts = []
    number = 0
    while line := lines.readline(MAX_LINE_CHARS + 1):
        number += 1
        try:
            if len(line) > MAX_LINE_CHARS:
                raise ConfigError(f"longer than {MAX_LINE_CHARS:,} characters")
            if line.strip():
                puts.append(_put(line))
        except (ConfigError, ProtocolError) as exc:
            raise ConfigError(f"{name}:{number}: {exc}; nothing was imported") from None
    return puts


def _put(line: str) -> Put:
    try:
        line.encode()
    except UnicodeEncodeError:  # the bytes the file had there (surrogateescape)
        raise ConfigError("not UTF-8") from None
    try:
        obj = jsonio.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict) or obj.keys() != LINE_KEYS:
        raise ConfigError('a line is {"collection": ..., "key": ..., "fields": {...}}')
    collection, key, fields = obj["collection"], obj["key"], obj["fields"]
    if not (isinstance(collection, str) and isinstance(key, str) and isinstance(fields, dict)):
        raise ConfigError("collection and key are strings, fields an object")
    put = Put(collection=collection, key=key, fields=fields)
    validate_op(put)
    return put


async def _write(session: Session, puts: list[Put]) -> None:
    """Commit ``puts`` in batches; `AgentError` saying how many were written if one fails."""
    done = 0
    for batch in _batches(puts):
        try:
            await session.call("commit", {"ops": [op_map(put) for put in batch]})
        except AgentError as exc:
            written = f"the first {count(done, 'record')} were imported" if done else "none was"
            raise AgentError(f"import stopped at record {done + 1}: {exc}; {written}") from None
        done += len(batch)


def _batches(puts: list[Put]) -> Iterator[list[Put]]:
    batch: list[Put] = []
    size = 0
    for put in puts:
        put_size = len(put.key) + encoded_size(put.fields)
        if batch and (size + put_size > IMPORT_BATCH_BYTES or len(batch) >= IMPORT_BATCH_RECORDS):
            yield batch
            batch, size = [], 0
        batch.append(put)
        size += put_size
    if batch:
        yield batch
