"""secureserve.deadlines: many per-request deadlines on one timer per event loop."""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from secureserve.deadlines import RESOLUTION_S, Deadlines


def test_deadlines_fire_when_due_never_before():
    """Each callback runs once, with its key, after its time and within the resolution."""

    async def main() -> dict[str, float]:
        deadlines: Deadlines[str] = Deadlines(asyncio.get_running_loop())
        fired: dict[str, float] = {}
        start = time.monotonic()
        for key, seconds in (("short", 0.1), ("long", 0.3)):
            deadlines.add(key, seconds, lambda k: fired.__setitem__(k, time.monotonic() - start))
        await asyncio.sleep(0.3 + 5 * RESOLUTION_S)
        assert len(deadlines) == 0
        return fired

    fired = asyncio.run(main())
    assert set(fired) == {"short", "long"}
    assert 0.1 <= fired["short"] < 0.1 + 4 * RESOLUTION_S
    assert 0.3 <= fired["long"] < 0.3 + 4 * RESOLUTION_S


def test_deadlines_cancelled_never_fire_and_the_timer_stops():
    """A cancelled deadline does nothing; with none pending, no timer is left running."""

    async def main() -> list[str]:
        deadlines: Deadlines[str] = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        deadlines.add("a", 0.05, fired.append)
        deadlines.add("b", 0.05, fired.append)
        deadlines.cancel("a")
        deadlines.cancel("never added")  # nothing happens
        await asyncio.sleep(0.05 + 4 * RESOLUTION_S)
        assert deadlines._timer is None
        deadlines.add("c", 10, fired.append)  # a new one starts the timer again
        assert deadlines._timer is not None
        deadlines.cancel("c")
        await asyncio.sleep(2 * RESOLUTION_S)
        assert deadlines._timer is None
        return fired

    assert asyncio.run(main()) == ["b"]


def test_deadlines_add_again_replaces_the_deadline():
    """Adding a key again moves its deadline (one entry, one call)."""

    async def main() -> list[str]:
        deadlines: Deadlines[str] = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        deadlines.add("k", 0.01, fired.append)
        deadlines.add("k", 0.3, fired.append)
        assert len(deadlines) == 1
        await asyncio.sleep(0.15)
        assert fired == []
        await asyncio.sleep(0.15 + 4 * RESOLUTION_S)
        return fired

    assert asyncio.run(main()) == ["k"]


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
        await asyncio.sleep(0.2 + 4 * RESOLUTION_S)
        return fired

    with capture_logs() as logs:
        assert asyncio.run(main()) == ["ok", "later"]
    assert [entry["event"] for entry in logs] == ["deadline callback failed"]
