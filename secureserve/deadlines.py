"""Deadlines of seconds for every request, on one timer per event loop.

Each request has two: its body must arrive (``[server] body_timeout_s``) and its model
must answer (``predict_timeout_s``). Neither fires in the normal case, yet a
``loop.call_later`` for each costs about 1.4 µs on uvloop (a timer handle made,
scheduled in libuv's heap, then stopped and closed), on every request. :class:`Deadlines`
keeps them in a dict instead (0.05 µs to add and remove one) and looks at it every
:data:`RESOLUTION_S` seconds while any is pending: a deadline never fires before it is
due, and at most that much later. With nothing pending there is no timer.

Memory: one entry per pending deadline, each removed when it fires or is cancelled;
the requests that hold them are bounded by ``[server] max_in_flight``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any, Final, Generic, TypeVar

from secureserve.logs import get_logger

__all__ = ["RESOLUTION_S", "Deadlines", "on_loop"]

#: How late a deadline may fire: the interval of the look at pending deadlines.
RESOLUTION_S: Final = 0.05

_K = TypeVar("_K", bound=Hashable)


class Deadlines(Generic[_K]):
    """Deadlines on one event loop; every method runs on that loop's thread.

    :meth:`add` arranges ``callback(key)`` for ``seconds`` from now unless
    :meth:`cancel` removes ``key`` first.
    """

    __slots__ = ("_due", "_loop", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[_K, tuple[float, Callable[[_K], None]]] = {}
        self._timer: asyncio.TimerHandle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the deadlines run on."""
        return self._loop

    def add(self, key: _K, seconds: float, callback: Callable[[_K], None]) -> None:
        """Call ``callback(key)`` once ``seconds`` have passed (replaces ``key``'s deadline)."""
        self._due[key] = (self._loop.time() + seconds, callback)
        if self._timer is None:
            self._timer = self._loop.call_later(RESOLUTION_S, self._fire_due)

    def cancel(self, key: _K) -> None:
        """``key``'s deadline no longer applies (nothing happens if it has none)."""
        self._due.pop(key, None)

    def __len__(self) -> int:
        return len(self._due)

    def _fire_due(self) -> None:
        """Fire what is due; look again later while anything is pending."""
        now = self._loop.time()
        due = self._due
        fired = [(key, entry[1]) for key, entry in due.items() if entry[0] <= now]
        for key, _ in fired:
            del due[key]
        self._timer = self._loop.call_later(RESOLUTION_S, self._fire_due) if due else None
        for key, callback in fired:
            try:
                callback(key)
            except Exception:  # noqa: BLE001 - one failing callback must not stop the others
                get_logger().exception("deadline callback failed")


#: Where secureserve's HTTP protocol leaves the event loop serving a request, in its ASGI
#: scope. Asking asyncio for the running loop costs a system call on CPython 3.11
#: (``getpid()``, a fork check); the layers that need it read it here when it is set.
SCOPE_LOOP: Final = "secureserve.loop"


def running_loop(scope: MutableMapping[str, Any]) -> asyncio.AbstractEventLoop:
    """The loop serving the request of ``scope`` (asked of asyncio when the server did not say)."""
    loop: asyncio.AbstractEventLoop | None = scope.get(SCOPE_LOOP)
    return loop if loop is not None else asyncio.get_running_loop()


def on_loop(deadlines: Deadlines[_K] | None, loop: asyncio.AbstractEventLoop) -> Deadlines[_K]:
    """``deadlines`` if they run on ``loop``, else new ones there.

    An app or a runner may be used from another loop than the one it first ran on
    (tests, a service that restarts its loop): the deadlines must fire on the loop
    that waits for them.
    """
    if deadlines is None or deadlines.loop is not loop:
        return Deadlines(loop)
    return deadlines
