"""Ctrl-C for the commands that run for a while (``demo``, ``sim run``).

Without this, SIGINT raises `KeyboardInterrupt` wherever the program happens to be, in
the middle of any task's code: cleanup may be skipped and the task's neighbours fail
around it, which prints as a traceback. Here the first SIGINT cancels the run instead;
the run unwinds as it does for any cancellation (its cleanup runs: agents stopped,
directories removed), and the command exits with `INTERRUPTED`. Further SIGINTs while
it unwinds are taken and ignored, so that a second Ctrl-C cannot cut the cleanup short.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")

INTERRUPTED = 130  # the exit status of a command stopped by SIGINT: 128 + 2, as shells say


async def until_interrupted(run: Callable[[], Awaitable[T]], said: Callable[[], None]) -> T | None:
    """``await run()``; if SIGINT comes first, call ``said`` (to tell the user), cancel the
    run and return None once it has unwound."""
    results: list[T] = []
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            run_scope = trio.CancelScope()

            async def interrupt() -> None:
                async for _ in signals:  # the first cancels the run; the rest are ignored
                    if not run_scope.cancel_called:
                        said()
                        run_scope.cancel()

            nursery.start_soon(interrupt)
            with run_scope:
                results.append(await run())
            nursery.cancel_scope.cancel()
    return results[0] if results else None
