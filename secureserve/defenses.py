"""The model defenses of one deployment, run on the event loop before batching.

:class:`Defenses` turns a request's decoded instances into feature rows once, hands
them to the input guard (:mod:`secureserve.guard`) and, for the instances that will
reach the model, to the drift monitor (:mod:`secureserve.drift`), and reports to
metrics, logs and the audit log. :func:`defenses_for` decides at start-up what runs:
a model whose input has no feature view (free text, say) starts with these defenses
off and one log line saying why, unless one of them was switched on explicitly
(``[model] profile`` or ``[model.guard] mode``), which is then a start-up error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from secureserve.audit import AuditLog, AuditUnavailable
from secureserve.drift import DriftMonitor, DriftReport, top
from secureserve.errors import ConfigError, ModelError
from secureserve.features import NoFeatureViewError
from secureserve.guard import Flagged, InputGuard, guard_mode, out_of_distribution
from secureserve.logs import get_logger
from secureserve.metrics import Metrics
from secureserve.model import Model
from secureserve.profile import Profile
from secureserve.settings import ModelSettings

__all__ = ["Defenses", "check_feature_view"]


def check_feature_view(
    cls: type[Model[Any, Any]], settings: ModelSettings, *, has_profile: bool
) -> str | None:
    """Why the feature view is missing (then the defenses that need it are off), or None.

    A :class:`ConfigError` when a defense that needs it was switched on explicitly.
    """
    try:
        cls.feature_columns()
    except NoFeatureViewError as exc:
        if has_profile or settings.guard.mode in ("refuse", "flag"):
            wanted = "[model] profile" if has_profile else "[model.guard] mode"
            raise ConfigError(
                f"{wanted} needs the model's feature view, but {exc} Or switch the defense off."
            ) from None
        return str(exc)
    return None


class Defenses:
    """Guard and drift for one deployment; ``screen`` is called once per predict request."""

    def __init__(
        self,
        model: Model[Any, Any],
        profile: Profile | None,
        settings: ModelSettings,
        *,
        metrics: Metrics,
        audit: Callable[[], AuditLog],
    ) -> None:
        cls = type(model)
        self.model_name = cls.name
        self.profile = profile
        self._features = model.features
        self._width = len(profile.names) if profile is not None else 0
        self.mode: Literal["refuse", "flag", "off"] = guard_mode(
            settings.guard, has_profile=profile is not None
        )
        self.guard = InputGuard(profile, settings.guard) if profile and self.mode != "off" else None
        self._metrics = metrics
        self._audit = audit
        self.drift: DriftMonitor | None = None
        if profile is not None and settings.drift.enabled:
            self.drift = DriftMonitor(
                profile,
                settings.drift,
                model=cls.name,
                on_change=self._drift_changed,
            )
        self.active = self.guard is not None or self.drift is not None

    def screen(
        self, principal: str, instances: list[Any], request_id: str
    ) -> tuple[int, ...] | None:
        """Guard, then drift; the indexes of flagged instances, or None.

        Raises the 422 ``out-of-distribution`` in ``refuse`` mode.
        """
        if not self.active:
            return None
        rows = self._rows(instances)
        flagged = self.guard.check(rows) if self.guard is not None else []
        if flagged:
            self._count(flagged)
            if self.mode == "refuse":
                raise out_of_distribution(flagged)
            get_logger().warning(
                "input outside the reference profile (let through: guard mode flag)",
                model=self.model_name,
                request_id=request_id,
                flagged=[f.describe() for f in flagged[:5]],
                flagged_count=len(flagged),
            )
        if self.drift is not None:
            self.drift.observe(principal, rows)
        return tuple(f.index for f in flagged) or None

    def take_over(self, previous: Defenses) -> None:
        """After a reload: keep the drift window if the profile is the same, else end it.

        A new profile starts a new window; an alert the old one had raised is then
        recorded as cleared (``drift-cleared``, trigger ``reload``), so the audit log and
        the gauge never show an alert nobody watches any more.
        """
        old = previous.drift
        if old is None:
            return
        if self.drift is not None and self.profile == previous.profile:
            self.drift = old
            return
        if old.alert:
            old.alert = False
            self._metrics.drift_alert(self.model_name, alert=False)
            self._record_drift(
                "drift-cleared", "reload", "a reload brought another profile: a new window"
            )

    def drift_report(self) -> DriftReport | None:
        """The drift monitor's current window, or None when drift monitoring is off."""
        return self.drift.report() if self.drift is not None else None

    def refresh_metrics(self) -> None:
        """Set the drift gauges to the current window (called when metrics are read)."""
        if self.drift is not None:
            self._metrics.drift(self.model_name, self.drift.psi())
            self._metrics.drift_alert(self.model_name, alert=self.drift.alert)

    def _rows(self, instances: list[Any]) -> npt.NDArray[np.float64]:
        rows = self._features(instances)
        if (
            not isinstance(rows, np.ndarray)
            or rows.shape != (len(instances), self._width)
            or not np.isfinite(rows).all()
        ):
            shape = getattr(rows, "shape", type(rows).__name__)
            raise ModelError(
                f"features() returned {shape}, expected finite numbers of shape "
                f"({len(instances)}, {self._width})"
            )
        return rows

    def _count(self, flagged: list[Flagged]) -> None:
        for reason in ("range", "distance"):
            n = sum(1 for f in flagged if f.reason == reason)
            if n:
                self._metrics.guard_flagged(self.model_name, reason, n)

    def _drift_changed(self, report: DriftReport) -> None:
        alert = report.alert
        log = get_logger()
        features = top(report)
        if alert:
            log.warning(
                "drift detected: what callers send no longer looks like the profile",
                model=self.model_name,
                max_psi=report.max_psi,
                threshold=report.threshold,
                features=features,
            )
        else:
            log.info("drift cleared", model=self.model_name, max_psi=report.max_psi)
        self._metrics.drift_alert(self.model_name, alert=alert)
        action = "drift-detected" if alert else "drift-cleared"
        self._record_drift(action, "drift", msgspec.json.encode(features).decode())

    def _record_drift(self, action: str, trigger: str, detail: str) -> None:
        try:
            self._audit().admin(
                action=action, trigger=trigger, model=self.model_name, detail=detail
            )
        except AuditUnavailable:
            get_logger().exception("drift change not audited", model=self.model_name)
