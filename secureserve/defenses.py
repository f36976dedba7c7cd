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
from secureserve.drift import DriftMonitor, DriftReport, FeatureDrift, top
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
                on_values=self._drift_values,
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

    def drift_report(self) -> DriftReport | None:
        """The drift monitor's current window, or None when drift monitoring is off."""
        return self.drift.evaluate() if self.drift is not None else None

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

    def _drift_values(self, values: list[FeatureDrift]) -> None:
        self._metrics.drift(self.model_name, values)

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
        try:
            self._audit().admin(
                action="drift-detected" if alert else "drift-cleared",
                trigger="drift",
                model=self.model_name,
                detail=msgspec.json.encode(features).decode(),
            )
        except AuditUnavailable:
            log.exception("drift change not audited", model=self.model_name)
