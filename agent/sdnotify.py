"""Telling a service manager how the agent is doing: the ``sd_notify`` protocol.

systemd (a unit with ``Type=notify``, docs/blazemesh.service) passes the path of a Unix
datagram socket in ``NOTIFY_SOCKET``; a service sends it newline-separated ``KEY=VALUE``
lines: ``READY=1`` once it serves, ``STATUS=...`` for ``systemctl status``,
``STOPPING=1`` when it begins to stop (sd_notify(3)). Without ``NOTIFY_SOCKET`` nothing is
sent. A failure to send is logged and never stops the agent: the manager then reports a
start-up timeout, which its log explains.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


class Notifier:
    """Sends states to the socket named by ``environ["NOTIFY_SOCKET"]``, if any."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.address = _address(environ.get(NOTIFY_SOCKET_ENV, ""))

    def notify(self, **states: str) -> bool:
        """Send ``states`` (``ready="1"`` is ``READY=1``); return whether they were sent.

        Never blocks: a manager whose queue is full misses the message, and the log says so.
        """
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in states.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            log.warning("could not tell the service manager %r: %s", message, exc)
            return False
        return True


def _address(value: str) -> str | bytes | None:
    """The socket address in ``value``: a path, or ``@name`` in the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    if value:
        log.warning("ignoring %s=%r: not a socket path or @name", NOTIFY_SOCKET_ENV, value)
    return None
