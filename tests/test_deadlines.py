"""secureserve.deadlines: many per-request deadlines on one timer per event loop.

Timers on a busy machine run late: the tests wait for what must happen (up to seconds)
and check what must not have happened before its time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from structlog.testing import capture_logs

from secureserve.deadlines import RESOLUTION_S, Deadlines


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until ``condition()`` holds (a failed assertion after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(RESOLUTION_S / 2)


def test_deadlines_fire_when_due_never_before():
    """Each callback runs once, with its key, after its time."""

    async def main() -> dict[str, float]:
        deadlines: Deadlines[str] = Deadlines(asyncio.get_running_loop())
        fired: dict[str, float] = {}
        start = time.monotonic()
        for key, seconds in (("short", 0.1), ("long", 0.3)):
            deadlines.add(key, seconds, lambda k: fired.__setitem__(k, time.monotonic() - start))
        await _until(lambda: len(fired) == 2)
        assert len(deadlines) == 0
        return fired

    fired = asyncio.run(main())
    assert fired["short"] >= 0.1
    assert fired["long"] >= 0.3
    assert fired["short"] < fired["long"]


def test_deadlines_cancelled_never_fire_and_the_timer_stops():
    """A cancelled deadline does nothing; with none pending, no timer is left running."""

    async def main() -> list[str]:
        deadlines: Deadlines[str] = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        deadlines.add("a", 0.05, fired.append)
        deadlines.add("b", 0.05, fired.append)
        deadlines.cancel("a")
        deadlines.cancel("never added")  # nothing happens
        await _until(lambda: deadlines._timer is None)
        assert fired == ["b"]
        deadlines.add("c", 10, fired.append)  # a new one starts the timer again
        assert deadlines._timer is not None
        deadlines.cancel("c")
        await _until(lambda: deadlines._timer is None)
        return fired

    assert asyncio.run(main()) == ["b"]


def test_deadlines_add_again_replaces_the_deadline():
    """Adding a key again moves its deadline (one entry, one call)."""

    async def main() -> tuple[list[str], float]:
        deadlines: Deadlines[str] = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        start = time.monotonic()
        deadlines.add("k", 0.01, fired.append)
        deadlines.add("k", 0.3, lambda k: fired.append(f"{k} {time.monotonic() - start:.3f}"))
        assert len(deadlines) == 1
        await _until(lambda: bool(fired))
        await asyncio.sleep(2 * RESOLUTION_S)  # nothing else comes
        return fired, time.monotonic() - start

    fired, _ = asyncio.run(main())
    assert len(fired) == 1
    assert float(fired[0].split()[1]) >= 0.3


def test_deadlines_a_failing_callback_does_not_stop_the_others():
    """One callback raising is logged; the other deadlines still fire and later ones too."""

    def boom(_: str) -> None:
        raise RuntimeError("callback failed")

    async def main() -> list[str]:
        deadlines: Deadlines[str] = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        deadlines.add("boom", 0.01, boom)
        deadlines.add("ok", 0.01, fired.append)
        deadlines.add("later", 0.2, fired.append)
        await _until(lambda: len(fired) == 2)
        return fired

    with capture_logs() as logs:
        assert asyncio.run(main()) == ["ok", "later"]
    assert [entry["event"] for entry in logs] == ["deadline callback failed"]


def test_running_loop_is_the_scopes_when_the_server_put_it_there():
    import asyncio

    from secureserve.deadlines import SCOPE_LOOP, running_loop

    other = asyncio.new_event_loop()
    try:

        async def run() -> None:
            assert running_loop({}) is asyncio.get_running_loop()  # asked of asyncio
            assert running_loop({SCOPE_LOOP: other}) is other  # taken as given

        asyncio.run(run())
    finally:
        other.close()
