"""Work in a worker thread that a cancellation stops, and waits for.

``anyio.to_thread.run_sync(..., abandon_on_cancel=True)`` returns at a cancellation while its
thread runs on. A caller whose thread writes into what the caller is about to close or rename
must instead wake the thread and wait until it has stopped. But anyio never runs a call that was
cancelled before a worker thread took it: at the call's first checkpoint, while it waits for a
thread slot, or queued to a thread that a loaded machine has not scheduled yet. Waiting for the
end of such a call waits for ever (a pull whose other blob failed at that moment hung, its event
loop idle). :func:`run_stoppable` knows whether the call started, and makes sure a call it gave
up on never starts later.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

POLL = 0.01  # seconds between looks at a stopping thread (no thread slot is taken to wait)


class _NeverStarted(Exception):
    """Raised in the worker thread for a call given up on before it started (nobody sees it:
    its waiter is gone)."""


async def run_stoppable(
    func: Callable[[], T],
    stop: Callable[[], None],
    *,
    limiter: anyio.CapacityLimiter | None = None,
) -> T:
    """``func()`` in a worker thread. Interrupted (cancelled, Ctrl-C): a call that started is
    woken by ``stop()`` (called in the event loop's thread) and waited for, shielded, until it
    returns; a call that had not started is made never to start; then the interruption goes
    on. ``func`` must return soon once ``stop()`` was called."""
    lock = threading.Lock()
    state = {"started": False, "given up": False}
    ended = threading.Event()

    def run() -> T:
        with lock:
            if state["given up"]:
                raise _NeverStarted
            state["started"] = True
        try:
            return func()
        finally:
            ended.set()

    try:
        return await anyio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=limiter)
    except BaseException:
        with lock:
            state["given up"] = True
            started = state["started"]
        if started and not ended.is_set():  # (func's own error has ended it)
            stop()
            with anyio.CancelScope(shield=True):
                while not ended.is_set():
                    await anyio.sleep(POLL)
        raise
