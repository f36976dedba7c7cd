"""Drift monitoring: what callers send now, compared with the reference profile.

A sliding window of the last ``window`` instances that reached the model is kept as
histogram bin numbers over the profile's bins (one small integer per feature per
instance), with running counts per bin. The population stability index (PSI) of
each feature compares the window's histogram with the profile's:
``sum((p_now - p_ref) * ln(p_now / p_ref))`` over the bins, each share floored at
:data:`EPSILON`. The alert is raised when the largest PSI reaches ``threshold`` and
cleared only below 0.8 x ``threshold`` (hysteresis: one noisy boundary does not
flap); each change is one structured log line and one audit admin record
(``drift-detected`` with the features and their PSI, ``drift-cleared``).

One caller cannot steer the window: each principal holds at most ``max_share`` of
its slots (beyond that, its latest instances replace its own oldest), and the alert is
raised only if the largest PSI still reaches the threshold with each of the five
principals holding most of the window left out in turn (unless ``max_share = 1``). So
with fewer than ``1 / max_share`` callers the window never fills and no alert is
raised; a model with one client should set ``max_share = 1``. Memory is ``window x features`` small
integers plus ``features x bins`` counts, whatever the traffic; the per-principal slot
sets hold ``window`` slots in all (a principal without instances in the window is
dropped).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

from secureserve.profile import Profile
from secureserve.settings import DriftSettings

__all__ = ["DriftMonitor", "DriftReport", "FeatureDrift"]

#: Smallest share a bin is given in the PSI, so that an empty bin counts but stays finite.
EPSILON: Final = 1e-4
#: The alert clears when the largest PSI falls below this share of the threshold.
CLEAR_RATIO: Final = 0.8
#: Features named in the alert's log line and audit record (largest PSI first).
_REPORTED: Final = 10
#: Principals left out one at a time before an alert is raised (those holding most slots).
_LEFT_OUT: Final = 5


class FeatureDrift(msgspec.Struct, frozen=True):
    """One feature's PSI over the current window."""

    feature: str
    psi: float


class DriftReport(msgspec.Struct, frozen=True):
    """``GET /v1/models/{name}/drift``: the current window against the profile."""

    model: str
    window: int
    filled: int
    threshold: float
    alert: bool
    max_psi: float | None
    features: list[FeatureDrift]


class DriftMonitor:
    """The window of one deployment; every method runs on the event loop thread.

    Slots: the window is a ring of ``window`` slots, each holding one instance's bin
    numbers and its principal. A principal with room in its share takes the ring's next
    slot (evicting the oldest instance there); a principal at its share overwrites its
    own oldest slot instead, so its latest instances count and the ring never stalls.

    ``on_change(report)`` is called when the alert is raised or cleared (``report.alert``).
    """

    def __init__(
        self,
        profile: Profile,
        settings: DriftSettings,
        *,
        model: str,
        on_change: Callable[[DriftReport], None],
    ) -> None:
        self.model = model
        self.names = profile.names
        self.window = settings.window
        self.threshold = settings.threshold
        self.max_per_principal = max(1, math.floor(settings.max_share * settings.window))
        width = max(len(f.edges) for f in profile.features)
        # cut points padded with +inf, so every feature has `width` columns
        self._edges = np.full((len(self.names), width), np.inf)
        reference = np.zeros((len(self.names), width + 1))
        for j, feature in enumerate(profile.features):
            self._edges[j, : len(feature.edges)] = feature.edges
            reference[j, : len(feature.counts)] = np.asarray(feature.counts) / feature.count
        self._reference = np.maximum(reference, EPSILON)
        self._bins = len(self.names) * (width + 1)
        self._offsets = np.arange(len(self.names)) * (width + 1)  # flat index of each feature
        self._slots = np.zeros((self.window, len(self.names)), dtype=np.int32)
        self._owners: list[str | None] = [None] * self.window
        self._written = np.zeros(self.window, dtype=np.int64)  # when each slot was last written
        self._clock = 0
        self._held: dict[str, set[int]] = {}  # the slots of each principal in the window
        self._counts = np.zeros(self._bins, dtype=np.int64)
        self._next = 0
        self.filled = 0
        self._since = 0
        self._every = max(1, self.window // 20)
        self.alert = False
        self._on_change = on_change

    def observe(self, principal: str, rows: npt.NDArray[np.float64]) -> None:
        """Add ``rows`` sent by ``principal`` within its share, and re-evaluate now and then."""
        if not len(rows):
            return
        # bin number of every value: how many cut points lie strictly below it
        flat = (rows[:, :, None] > self._edges[None, :, :]).sum(axis=2) + self._offsets
        held = self._held.setdefault(principal, set())
        room = max(self.max_per_principal - len(held), 0)
        if room:
            self._take_next(principal, held, flat[:room])
        if len(flat) > room:  # at its share: its latest rows replace its own oldest
            self._overwrite_own(held, flat[room:][-self.max_per_principal :])
        self._since += len(flat)
        if self._since >= self._every:
            self._since = 0
            self.evaluate()

    def _take_next(self, principal: str, held: set[int], flat: npt.NDArray[np.int64]) -> None:
        slots = ((self._next + np.arange(len(flat))) % self.window).tolist()
        self._next = (slots[-1] + 1) % self.window
        evicted = []
        for slot in slots:
            owner = self._owners[slot]
            if owner is not None:  # the oldest instance there leaves the window
                evicted.append(slot)
                owned = self._held[owner]
                owned.discard(slot)
                if not owned and owner != principal:
                    del self._held[owner]
            self._owners[slot] = principal
        if evicted:
            self._counts -= np.bincount(self._slots[evicted].ravel(), minlength=self._bins)
        self.filled += len(slots) - len(evicted)
        self._write(slots, flat)
        held.update(slots)

    def _overwrite_own(self, held: set[int], flat: npt.NDArray[np.int64]) -> None:
        slots = sorted(held, key=self._written.__getitem__)[: len(flat)]
        self._counts -= np.bincount(self._slots[slots].ravel(), minlength=self._bins)
        self._write(slots, flat)

    def _write(self, slots: list[int], flat: npt.NDArray[np.int64]) -> None:
        self._slots[slots] = flat
        self._written[slots] = np.arange(self._clock, self._clock + len(slots))
        self._clock += len(slots)
        self._counts += np.bincount(flat.ravel(), minlength=self._bins)

    def _psi(self, counts: npt.NDArray[np.int64], filled: int) -> npt.NDArray[np.float64]:
        now = np.maximum(counts.reshape(len(self.names), -1) / filled, EPSILON)
        psi: npt.NDArray[np.float64] = (
            (now - self._reference) * np.log(now / self._reference)
        ).sum(axis=1)
        return psi

    def psi(self) -> list[FeatureDrift]:
        """The PSI of every feature over the current window (empty while it is empty)."""
        if not self.filled:
            return []
        pairs = zip(self.names, self._psi(self._counts, self.filled).tolist(), strict=True)
        return [FeatureDrift(name, round(value, 6)) for name, value in pairs]

    def robust_max(self, largest: float) -> float:
        """The largest PSI with each of the principals holding most of the window left out.

        The smallest of those maxima: an alert needs more than one caller's traffic.
        """
        holders = sorted(self._held.values(), key=len, reverse=True)[:_LEFT_OUT]
        result = largest
        for slots in holders:
            rest = self.filled - len(slots)
            if rest <= 0:
                return 0.0
            rows = self._slots[sorted(slots)].ravel()
            counts = self._counts - np.bincount(rows, minlength=self._bins)
            result = min(result, float(self._psi(counts, rest).max()))
        return result

    def evaluate(self) -> None:
        """Raise or clear the alert from the current window (a full one only).

        Cheap on purpose (it runs every ``window / 20`` instances): one PSI per feature,
        and the leave-one-out only near the threshold; the report is built only when the
        alert changes. Gauges are set when metrics are read (:meth:`psi`).
        """
        if self.filled < self.window:
            return
        robust = float(self._psi(self._counts, self.filled).max())
        shared = self.max_per_principal < self.window  # max_share = 1: one caller may decide
        if shared and robust >= CLEAR_RATIO * self.threshold:  # below it, nothing can change
            robust = self.robust_max(robust)
        raised = not self.alert and robust >= self.threshold
        cleared = self.alert and robust < CLEAR_RATIO * self.threshold
        if raised or cleared:
            self.alert = raised
            self._on_change(self.report())

    def report(self, values: list[FeatureDrift] | None = None) -> DriftReport:
        """The current state; the features sorted by PSI, largest first."""
        values = self.psi() if values is None else values
        ranked = sorted(values, key=lambda f: f.psi, reverse=True)
        return DriftReport(
            model=self.model,
            window=self.window,
            filled=self.filled,
            threshold=self.threshold,
            alert=self.alert,
            max_psi=ranked[0].psi if ranked else None,
            features=ranked,
        )


def top(report: DriftReport) -> list[dict[str, Any]]:
    """The features that drifted most, for a log line or an audit detail."""
    return [{"feature": f.feature, "psi": f.psi} for f in report.features[:_REPORTED]]


def psi_of(profile: Profile, rows: npt.NDArray[np.float64]) -> list[FeatureDrift]:
    """The PSI of every feature between ``rows`` and the profile, binned as the monitor bins."""
    result = []
    for column, feature in zip(rows.T, profile.features, strict=True):
        # bin number: how many cut points lie strictly below the value
        bins = np.searchsorted(np.asarray(feature.edges), column, side="left")
        now = np.maximum(np.bincount(bins, minlength=len(feature.counts)) / len(column), EPSILON)
        ref = np.maximum(np.asarray(feature.counts) / feature.count, EPSILON)
        value = float(((now - ref) * np.log(now / ref)).sum())
        result.append(FeatureDrift(feature.name, round(value, 6)))
    return result
