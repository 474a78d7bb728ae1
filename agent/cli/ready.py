"""``blazemesh wait-ready``: wait until the data directory's agent is ready, for scripts.

Ready means what `agent.service` says: serving its control socket, listening, and caught
up with its static peers (or done waiting for them). Exit 0 once it is, with one line
saying where it listens; exit 1 with one line saying what was found if it is not within
``--timeout``.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import trio

from blazemesh.agent.api.client import wait_ready
from blazemesh.agent.cli.arguments import DataDir, Subcommands, finite
from blazemesh.agent.cli.lines import count
from blazemesh.agent.errors import ConfigError

DEFAULT_TIMEOUT_S = 30.0  # a service manager's start-up timeout is of this order


def register(
    sub: Subcommands,
    common: argparse.ArgumentParser,
    data_dir: DataDir,
) -> None:
    """Add ``wait-ready`` to the ``blazemesh`` parser."""
    p = sub.add_parser(
        "wait-ready",
        parents=[common],
        help="wait until the agent serves and has caught up with its static peers",
    )
    p.add_argument(
        "--timeout",
        type=finite,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up after this long, with exit status 1 (default: {DEFAULT_TIMEOUT_S:g})",
    )
    p.set_defaults(run=lambda args: cmd_wait_ready(data_dir(args), args))


def cmd_wait_ready(data_dir: Path, args: argparse.Namespace) -> int:
    timeout_s = args.timeout
    if timeout_s <= 0:
        raise ConfigError(f"--timeout must be a number of seconds above 0, got {timeout_s}")
    health = trio.run(functools.partial(wait_ready, data_dir, timeout_s=timeout_s))
    print(
        f"agent {health['short_id']} ready: listening on {', '.join(health['listen'])}, "
        f"{count(health['links'], 'link')} up"
    )
    return 0
