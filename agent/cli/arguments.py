"""Argument types shared by the ``blazemesh`` commands: each refuses, as a usage error
(argparse's one line, exit 2), a value its plain Python type would take and misuse."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

# What each command module's ``register`` takes: the sub-command table, and how to find
# the data directory from the parsed arguments.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
DataDir: TypeAlias = Callable[[argparse.Namespace], Path]


def path(text: str) -> Path:
    """A path that names something: ``Path("")`` is the current directory, which no
    one means by an empty argument (``--out "$UNSET"`` would write into it)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path (say . for the current directory)")
    return Path(text)


INT64_MAX = 2**63 - 1  # SQLite's integers, and msgpack's signed ones


def int64(text: str) -> int:
    """An integer SQLite can compare with (a larger one raises OverflowError there)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise argparse.ArgumentTypeError(f"not a 64-bit integer: {text!r}")
    return value


def finite(text: str) -> float:
    """A finite number (``nan`` and ``inf`` would pass `float`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value
