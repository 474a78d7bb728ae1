"""Membership commands: init --mesh, invite, join, trust, rotate-secret."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from blazemesh.agent.api.client import no_agent_holds, reach_agent
from blazemesh.agent.cli.arguments import DataDir, Subcommands
from blazemesh.agent.cli.ids import resolve_node_ids
from blazemesh.agent.cli.lines import count
from blazemesh.agent.errors import ConfigError
from blazemesh.agent.storage.paths import KEY_FILE, make_data_dir
from blazemesh.agent.trust.membership import (
    MESH_FILE,
    Mesh,
    decode_invite,
    load_mesh,
    new_mesh,
    save_mesh,
)
from blazemesh.protocol.ids import node_id_short, node_id_text

if TYPE_CHECKING:
    from blazemesh.agent.trust.identity import Identity


def register(
    sub: Subcommands,
    common: argparse.ArgumentParser,
    data_dir: DataDir,
) -> None:
    """Add the membership commands to the ``blazemesh`` parser."""

    def bind(run: Callable[[Path, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        return lambda args: run(data_dir(args), args)

    p = sub.add_parser(
        "init", parents=[common], help="create the data directory, identity and optionally a mesh"
    )
    p.add_argument("--mesh", metavar="NAME", help="also start a new mesh of this name")
    p.set_defaults(run=bind(cmd_init))

    p = sub.add_parser("invite", parents=[common], help="print a join code for this mesh")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print the code alone: CODE=$(blazemesh invite -q)",
    )
    p.set_defaults(run=bind(cmd_invite))

    p = sub.add_parser("join", parents=[common], help="join the mesh of a join code")
    p.add_argument("code")
    p.add_argument("--force", action="store_true", help="leave the current mesh for this one")
    p.set_defaults(run=bind(cmd_join))

    p = sub.add_parser("trust", parents=[common], help="manage the allowlist of nodes")
    trust = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = trust.add_parser("add", parents=[common], help="admit nodes (turns allowlist mode on)")
    t.add_argument("node_ids", nargs="+", metavar="NODE_ID")
    t.set_defaults(run=bind(cmd_trust_add))
    t = trust.add_parser("remove", parents=[common], help="stop admitting a node")
    t.add_argument("node_ids", nargs="+", metavar="NODE_ID")
    t.set_defaults(run=bind(cmd_trust_remove))
    t = trust.add_parser("list", parents=[common], help="print the allowlist")
    t.set_defaults(run=bind(cmd_trust_list))
    t = trust.add_parser("disable", parents=[common], help="admit every holder of the secret")
    t.set_defaults(run=bind(cmd_trust_disable))

    p = sub.add_parser(
        "rotate-secret", parents=[common], help="replace the mesh secret; print the new join code"
    )
    p.set_defaults(run=bind(cmd_rotate))


def _identity(data_dir: Path, *, create: bool) -> Identity:
    """This node's identity; with ``create``, made (and the data directory) if missing."""
    # Loaded only now: its signing and Noise code is a fifth of a command's start-up, and
    # the commands that reach the agent need none of it.
    from blazemesh.agent.trust.identity import create_identity, load_identity

    if create:
        make_data_dir(data_dir)
        if not (data_dir / KEY_FILE).exists():
            return create_identity(data_dir)
    return load_identity(data_dir)


def _print_code(mesh: Mesh, identity: Identity) -> None:
    print(mesh.invite(identity.node_id))
    print(
        "  This code holds the mesh secret: give it only to devices that should join, and "
        "run `blazemesh join CODE` on each."
    )


def cmd_init(data_dir: Path, args: argparse.Namespace) -> int:
    existed = (data_dir / KEY_FILE).exists()
    identity = _identity(data_dir, create=True)
    state = "is already initialised" if existed else "initialised"
    print(f"{data_dir} {state}; node {identity.text} ({identity.short})")
    if args.mesh is None:
        return 0
    if (data_dir / MESH_FILE).exists():
        raise ConfigError(
            f"{data_dir} already belongs to mesh {load_mesh(data_dir).name!r}: use "
            "`blazemesh rotate-secret` for a new secret, or `join --force` to move"
        )
    mesh = new_mesh(args.mesh)
    save_mesh(data_dir, mesh)
    print(f"created mesh {mesh.name!r}. Join code:")
    _print_code(mesh, identity)
    return 0


def cmd_invite(data_dir: Path, args: argparse.Namespace) -> int:
    identity = _identity(data_dir, create=False)
    mesh = load_mesh(data_dir)
    if args.quiet:
        print(mesh.invite(identity.node_id))
        return 0
    print(f"join code for mesh {mesh.name!r}:")
    _print_code(mesh, identity)
    return 0


def cmd_join(data_dir: Path, args: argparse.Namespace) -> int:
    invite = decode_invite(args.code)
    identity = _identity(data_dir, create=True)
    if (data_dir / MESH_FILE).exists() and not args.force:
        current = load_mesh(data_dir)
        if current.secret != invite.secret:
            raise ConfigError(
                f"{data_dir} belongs to mesh {current.name!r}; add --force to leave it for "
                f"{invite.mesh!r}"
            )
    _save(data_dir, Mesh(name=invite.mesh, secret=invite.secret))
    print(
        f"joined mesh {invite.mesh!r} (invited by {node_id_short(invite.inviter)}); "
        f"this node is {identity.text} ({identity.short})"
    )
    return 0


def _save(data_dir: Path, mesh: Mesh) -> None:
    """Save the membership and have the running agent, if any, apply it at once."""
    save_mesh(data_dir, mesh)

    async def tell_agent() -> bool:
        # An agent that is starting is waited for: it may have read the file before this
        # command changed it.
        client = await reach_agent(data_dir, functools.partial(no_agent_holds, data_dir))
        if client is None:
            return False
        try:
            await client.call("mesh.reload", {})
        finally:
            await client.aclose()
        return True

    if trio.run(tell_agent):
        print("the running agent applied the change; links it no longer admits are closed")


def cmd_trust_add(data_dir: Path, args: argparse.Namespace) -> int:
    mesh = load_mesh(data_dir)
    was_open = mesh.allowlist is None
    mesh.trust(resolve_node_ids(data_dir, args.node_ids, "NODE_ID"))
    _save(data_dir, mesh)
    if was_open:
        print("allowlist mode is on: only listed nodes can connect to this node")
    print(f"{count(len(mesh.allowlist or ()), 'node')} on the allowlist")
    return 0


def cmd_trust_remove(data_dir: Path, args: argparse.Namespace) -> int:
    mesh = load_mesh(data_dir)
    missing = [
        text
        for text, n in zip(
            args.node_ids, resolve_node_ids(data_dir, args.node_ids, "NODE_ID"), strict=True
        )
        if not mesh.revoke(n)
    ]
    _save(data_dir, mesh)
    if missing:
        raise ConfigError(f"not on the allowlist: {', '.join(missing)}")
    print(f"{count(len(mesh.allowlist or ()), 'node')} on the allowlist")
    return 0


def cmd_trust_list(data_dir: Path, args: argparse.Namespace) -> int:
    mesh = load_mesh(data_dir)
    if mesh.allowlist is None:
        print("allowlist mode is off: every holder of the mesh secret can connect")
        return 0
    for node_id in sorted(mesh.allowlist):
        print(f"{node_id_text(node_id)}  ({node_id_short(node_id)})")
    return 0


def cmd_trust_disable(data_dir: Path, args: argparse.Namespace) -> int:
    mesh = load_mesh(data_dir)
    mesh.allowlist = None
    _save(data_dir, mesh)
    print("allowlist mode is off: every holder of the mesh secret can connect")
    return 0


def cmd_rotate(data_dir: Path, args: argparse.Namespace) -> int:
    identity = _identity(data_dir, create=False)
    old = load_mesh(data_dir)
    mesh = new_mesh(old.name)
    mesh.allowlist = old.allowlist
    _save(data_dir, mesh)
    print(
        f"mesh {mesh.name!r} has a new secret; devices holding the old one can no longer "
        "connect to this node. New join code:"
    )
    _print_code(mesh, identity)
    return 0
