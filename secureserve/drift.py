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
its slots, and its instances beyond that are not added until its own age out.
Memory is ``window x features`` small integers plus ``features x bins`` counts,
whatever the traffic; the per-principal counts hold at most ``window`` entries
(a principal without instances in the window is dropped).
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

    ``on_change(report)`` is called when the alert is raised or cleared (``report.alert``);
    ``on_values(psi)`` after every evaluation (for the gauges).
    """

    def __init__(
        self,
        profile: Profile,
        settings: DriftSettings,
        *,
        model: str,
        on_change: Callable[[DriftReport], None],
        on_values: Callable[[list[FeatureDrift]], None],
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
        self._counts = np.zeros(self._bins, dtype=np.int64)
        self._per_principal: dict[str, int] = {}
        self._next = 0
        self.filled = 0
        self._since = 0
        self._every = max(1, self.window // 20)
        self.alert = False
        self._on_change = on_change
        self._on_values = on_values

    def observe(self, principal: str, rows: npt.NDArray[np.float64]) -> None:
        """Add ``rows`` sent by ``principal`` (up to its share), and re-evaluate now and then."""
        held = self._per_principal.get(principal, 0)
        room = self.max_per_principal - held
        if room <= 0:
            return
        rows = rows[:room]
        # bin number of every value: how many cut points lie strictly below it
        flat = (rows[:, :, None] > self._edges[None, :, :]).sum(axis=2) + self._offsets
        slots = (self._next + np.arange(len(flat))) % self.window  # oldest first
        self._next = int(slots[-1] + 1) % self.window
        leaving = [(slot, self._owners[slot]) for slot in slots.tolist()]
        evicted = [slot for slot, owner in leaving if owner is not None]
        if evicted:  # the oldest instances leave the window
            self._counts -= np.bincount(self._slots[evicted].ravel(), minlength=self._bins)
            for _, owner in leaving:
                if owner is not None:
                    self._release(owner)
        self.filled += len(flat) - len(evicted)
        self._slots[slots] = flat
        for slot in slots.tolist():
            self._owners[slot] = principal
        self._per_principal[principal] = self._per_principal.get(principal, 0) + len(flat)
        self._counts += np.bincount(flat.ravel(), minlength=self._bins)
        self._since += len(flat)
        if self._since >= self._every:  # the gauges follow; the alert waits for a full window
            self._since = 0
            self.evaluate()

    def _release(self, owner: str) -> None:
        left = self._per_principal[owner] - 1
        if left:
            self._per_principal[owner] = left
        else:
            del self._per_principal[owner]

    def psi(self) -> list[FeatureDrift]:
        """The PSI of every feature over the current window (empty while it is empty)."""
        if not self.filled:
            return []
        now = self._counts.reshape(len(self.names), -1) / self.filled
        now = np.maximum(now, EPSILON)
        values = ((now - self._reference) * np.log(now / self._reference)).sum(axis=1)
        pairs = zip(self.names, values.tolist(), strict=True)
        return [FeatureDrift(name, round(value, 6)) for name, value in pairs]

    def evaluate(self) -> DriftReport:
        """Compute the PSI, update the gauges, and raise or clear the alert (full window only)."""
        values = self.psi()
        self._on_values(values)
        report = self.report(values)
        if report.max_psi is not None and self.filled == self.window:
            raised = not self.alert and report.max_psi >= self.threshold
            cleared = self.alert and report.max_psi < CLEAR_RATIO * self.threshold
            if raised or cleared:
                self.alert = raised
                report = self.report(values)
                self._on_change(report)
        return report

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
