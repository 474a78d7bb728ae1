"""How the ``blazemesh`` commands speak: counts in words (`count`); and on stderr, every
error and warning is one line that starts with ``blazemesh: `` (``blazemesh: error: ...``,
``blazemesh: warning: ...``), whichever part of the code it comes from.

The library logs through `logging` and configures nothing; a command other than ``agent``
(which logs with timestamps: `agent.cli.node.LOG_FORMAT`) turns what it logs at WARNING
and above into such lines with `show_log_warnings`.
"""

from __future__ import annotations

import logging
import sys

PREFIX = "blazemesh: "


def say(kind: str, message: str) -> None:
    """Print ``blazemesh: KIND: MESSAGE`` on stderr."""
    print(f"{PREFIX}{kind}: {message}", file=sys.stderr, flush=True)


class _LogLines(logging.Handler):
    """A log record as one `say` line; the stream is whatever `sys.stderr` is then."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            say(record.levelname.lower(), record.getMessage())
        except Exception:
            self.handleError(record)


LOG_LINES = _LogLines(logging.WARNING)


def show_log_warnings() -> None:
    """Print what the library logs at WARNING and above as `say` lines (once per process)."""
    root = logging.getLogger()
    if LOG_LINES not in root.handlers:
        root.addHandler(LOG_LINES)


def hide_log_warnings() -> None:
    """Undo `show_log_warnings`, for a command that configures logging of its own."""
    logging.getLogger().removeHandler(LOG_LINES)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in the number it takes: "1 record", "2 records", "0 records"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
