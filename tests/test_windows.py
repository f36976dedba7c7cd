"""The counting windows of secureserve.windows, in memory, on a clock the tests move."""

from __future__ import annotations

import pytest
from limits import parse

from secureserve import windows
from secureserve.windows import MemoryWindows, Window


class Clock:
    """A ``time.time`` the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """windows.time.time replaced by a clock that moves only when told."""
    fake = Clock()
    monkeypatch.setattr(windows.time, "time", fake)
    return fake


def _window(rate: str, *, moving: bool = True) -> Window:
    item = parse(rate)
    namespace = "mw:test" if moving else "fw:test"
    return Window(type(item)(item.amount, item.multiples, namespace=namespace), moving, "test")


def test_windows_steady_traffic_below_the_rate_is_never_refused(clock):
    """1,200 an hour under 5000/hour, for 8 hours: every charge is taken.

    Charges closer than a thousandth of the window share an entry; an entry that kept
    taking them, re-dated each time, would never expire and would end up refusing.
    """
    memory, window = MemoryWindows(), _window("5000/hour")
    for _ in range(8 * 1200):
        assert memory.charge_now([(window, "alice")], 1) is None
        clock.now += 3.0


def test_windows_moving_window_admits_exactly_its_amount_in_any_period(clock):
    """60/minute: 60 in a burst, none more until the oldest leave the window."""
    memory, window = MemoryWindows(), _window("60/minute")
    for _ in range(60):
        assert memory.charge_now([(window, "alice")], 1) is None
        clock.now += 0.01
    refusal = memory.charge_now([(window, "alice")], 1)
    assert refusal is not None
    assert refusal.remaining == 0
    assert refusal.retry_at == pytest.approx(1_000_000.0 + 60, abs=0.07)  # oldest + 60 s
    clock.now = refusal.retry_at + 0.001
    assert memory.charge_now([(window, "alice")], 1) is None


def test_windows_entries_stay_bounded_whatever_the_rate(clock):
    """A million units a second, charged every microsecond: about 1,000 entries, not 100,000."""
    memory, window = MemoryWindows(), _window("1000000/second")
    for _ in range(100_000):
        memory.charge_now([(window, "alice")], 1)
        clock.now += 0.00001
    entries = memory._tables[window.table]["alice"].entries
    assert len(entries) <= 1002


def test_windows_charges_are_all_or_nothing(clock):
    """A charge one window refuses takes nothing from the others."""
    memory = MemoryWindows()
    principal, model = _window("10/minute"), _window("5/minute")
    model = Window(model.item, True, "per_model")
    plan = [(principal, "alice"), (model, "iris")]
    assert memory.charge_now(plan, 4) is None
    refusal = memory.charge_now(plan, 2)
    assert refusal is not None
    assert (refusal.window.reason, refusal.remaining) == ("per_model", 1)
    assert memory.charge_now([(principal, "alice")], 6) is None  # the 2 were not taken


def test_windows_fixed_window_resets_at_its_end(clock):
    """A quota counts from its first unit and starts afresh once its period is over."""
    memory, quota = MemoryWindows(), _window("10/day", moving=False)
    assert memory.charge_now([(quota, "alice")], 10) is None
    refusal = memory.charge_now([(quota, "alice")], 1)
    assert refusal is not None
    assert refusal.retry_at == pytest.approx(1_000_000.0 + 86400)
    clock.now += 86400
    assert memory.charge_now([(quota, "alice")], 10) is None


def test_windows_keys_per_kind_are_bounded(clock):
    """Past max_keys windows of one kind the oldest are forgotten, other kinds untouched."""
    memory = MemoryWindows(max_keys=100)
    addresses, principals = _window("10/minute"), _window("60/minute", moving=False)
    assert memory.charge_now([(principals, "alice")], 1) is None
    for n in range(1000):
        memory.charge_now([(addresses, f"203.0.113.{n}")], 1)
    assert len(memory._tables[addresses.table]) <= 100
    assert memory._tables[principals.table]["alice"].count == 1


def test_windows_of_one_kind_and_different_rates_are_counted_apart(clock):
    """Two models' own limits share a namespace: each keeps its own length and amount.

    Before, the first window seen in a namespace gave every counter of it its length: a
    model at 5/hour charged after one at 1/second was let through again a second later.
    """
    memory = MemoryWindows()
    fast = Window(parse("1/second").__class__(1, 1, namespace="mw:model-principal"), True, "m")
    slow = Window(parse("5/hour").__class__(5, 1, namespace="mw:model-principal"), True, "m")
    assert memory.charge_now([(fast, "a/alice")], 1) is None
    for _ in range(5):
        assert memory.charge_now([(slow, "b/alice")], 1) is None
    assert memory.charge_now([(slow, "b/alice")], 1) is not None
    clock.now += 1.2
    refusal = memory.charge_now([(slow, "b/alice")], 1)
    assert refusal is not None  # still within its hour
    assert refusal.retry_at == pytest.approx(1_000_000.0 + 3600, abs=4)
    assert memory.charge_now([(fast, "a/alice")], 1) is None  # its second is over
