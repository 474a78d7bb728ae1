"""Node ids as a user types them: the full 26-character form, or the short ``abcd-efgh``
form that every command prints.

A short id is a prefix of the full one: it names a node only among the nodes this one
knows of. Those are itself, its allowlist, and, if its agent runs, the peers it links to
and the nodes its discovery sees. An unknown or ambiguous short id is one line that says
how to find the full id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from blazemesh.agent.api.client import AgentCallError, AgentClient
from blazemesh.agent.errors import ConfigError
from blazemesh.agent.storage.paths import KEY_FILE
from blazemesh.agent.trust.membership import MESH_FILE, load_mesh
from blazemesh.protocol.errors import LocalProtocolError
from blazemesh.protocol.ids import node_id_text, parse_node_id

SHORT_ID_CHARS = 8  # base32 characters of the short form (protocol.ids.node_id_short)
_BASE32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def resolve_node_ids(data_dir: Path, texts: list[str], option: str) -> list[bytes]:
    """The node ids ``texts`` name, full or short (`ConfigError` naming ``option`` if one
    is neither, or a short one matches no node known here, or several)."""
    known: list[bytes] | None = None
    out = []
    for text in texts:
        short = _short_form(text)
        if short is None:
            out.append(_full(text, option))
            continue
        if known is None:
            known = known_node_ids(data_dir)
        out.append(_match(short, text, known, option))
    return out


def _short_form(text: str) -> str | None:
    """The 8 base32 characters of ``text`` if it is a short id, else None."""
    cleaned = text.strip().replace("-", "").lower()
    if len(cleaned) == SHORT_ID_CHARS and set(cleaned) <= _BASE32:
        return cleaned
    return None


def _full(text: str, option: str) -> bytes:
    try:
        return parse_node_id(text)
    except LocalProtocolError as exc:
        raise ConfigError(f"{option}: {exc} (or the short form, as abcd-efgh)") from None


def _match(short: str, text: str, known: list[bytes], option: str) -> bytes:
    matches = sorted({n for n in known if node_id_text(n).startswith(short)}, key=node_id_text)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(
            f"{option}: no node known here has the short id {text}: give its full id "
            "(`blazemesh info` on that node prints it; `peers` and `discover` here show "
            "those the agent sees)"
        )
    raise ConfigError(
        f"{option}: the short id {text} is ambiguous here ({', '.join(map(node_id_text, matches))})"
        ": give the full id"
    )


def known_node_ids(data_dir: Path) -> list[bytes]:
    """This node, its allowlist, and what its agent (if one runs) links to and sees."""
    from blazemesh.agent.trust.identity import load_identity

    known = []
    if (data_dir / KEY_FILE).exists():
        known.append(load_identity(data_dir).node_id)
    if (data_dir / MESH_FILE).exists():
        known += load_mesh(data_dir).allowlist or ()
    for row in trio.run(_agent_rows, data_dir):
        known.append(parse_node_id(row["node_id"]))
    return known


async def _agent_rows(data_dir: Path) -> list[dict[str, Any]]:
    client = await AgentClient.connect(data_dir, client="blazemesh-cli")
    if client is None:
        return []
    rows: list[dict[str, Any]] = []
    try:
        for op in ("peers", "discover"):
            try:
                rows += [row for row in await client.call(op, {}) if row.get("node_id")]
            except AgentCallError:  # `discover` of an agent run with --discovery none
                continue
    finally:
        await client.aclose()
    return rows
