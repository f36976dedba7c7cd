"""The model defenses of one deployment, run on the event loop before batching.

:class:`Defenses` turns a request's decoded instances (or, for a tensor model, its
input tensors) into feature rows once, through the model's :class:`FeatureSource`,
hands them to the input guard (:mod:`secureserve.guard`) and, for the instances that will
reach the model, to the drift monitor (:mod:`secureserve.drift`), and reports to
metrics, logs and the audit log. :func:`defenses_for` decides at start-up what runs:
a model whose input has no feature view (free text, say) starts with these defenses
off and one log line saying why, unless one of them was switched on explicitly
(``[model] profile`` or ``[model.guard] mode``), which is then a start-up error.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from secureserve.audit import AuditLog, AuditUnavailable
from secureserve.drift import DriftMonitor, DriftReport, top
from secureserve.errors import ConfigError, ModelError, RequestRejected
from secureserve.extraction import ExtractionMonitor, PrincipalStats, handle_of
from secureserve.features import NoFeatureViewError
from secureserve.guard import Flagged, InputGuard, guard_mode, out_of_distribution
from secureserve.logs import get_logger
from secureserve.metrics import Metrics
from secureserve.model import Model
from secureserve.profile import Profile
from secureserve.ratelimit import RateLimiter, throttle_window
from secureserve.settings import ModelSettings
from secureserve.windows import Window

__all__ = [
    "SHARED_READ_S",
    "Defenses",
    "FeatureSource",
    "Screened",
    "check_feature_view",
    "check_guard_has_profile",
    "without_view",
]

_V = TypeVar("_V")
#: How long a replica trusts what it read of a shared suspicion mark (Redis).
SHARED_READ_S: Final = 2.0
#: Up to this many values a request's feature rows are checked in plain Python.
_FEW_VALUES: Final = 16
_NOTHING: Final[frozenset[int]] = frozenset()


def _mark(handle: str) -> str:
    """The shared mark of a suspected principal, named by its handle (the model is in it)."""
    return f"suspect/{handle}"


def _remember(table: OrderedDict[str, _V], key: str, value: _V, bound: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > bound:
        table.popitem(last=False)


@dataclass(frozen=True)
class FeatureSource:
    """What the defenses read of a model: its served name, feature columns and rows.

    ``rows`` turns one request's data into a finite ``float64`` matrix of shape
    ``(instances, len(columns))`` or raises (a :class:`ModelError` when the model's own
    code is at fault, a 4xx :class:`RequestRejected` when the request is). ``columns``
    is empty for a model without a feature view: the defenses that need one are off.
    """

    model: str
    columns: tuple[str, ...]
    rows: Callable[[Any], npt.NDArray[np.float64]] = field(repr=False)

    @classmethod
    def of(cls, model: Model[Any, Any], *, has_view: bool) -> FeatureSource:
        """An ``ss.Model``'s source: its ``features()`` on a request's decoded instances."""
        handler = type(model)
        columns = handler.feature_columns() if has_view else ()
        width = len(columns)

        def rows(instances: list[Any]) -> npt.NDArray[np.float64]:
            found = model.features(instances)
            if (
                not isinstance(found, np.ndarray)
                or found.shape != (len(instances), width)
                or not _finite(found)
            ):
                shape = getattr(found, "shape", type(found).__name__)
                raise ModelError(
                    f"features() returned {shape}, expected finite numbers of shape "
                    f"({len(instances)}, {width})"
                )
            return found

        return cls(handler.name, columns, rows)


def _finite(rows: npt.NDArray[Any]) -> bool:
    """Whether every value of ``rows`` is finite.

    For float64 rows one sum settles the common case (numpy's call overhead would be most
    of the cost of more calls): a few values summed in Python, more by one dot product
    with themselves (``vdot``, which does not warn when it overflows). A finite sum says
    every value is; NaN, inf or an overflow is settled by numpy, value by value.
    """
    if rows.dtype == np.float64:
        if rows.size <= _FEW_VALUES:
            if math.isfinite(sum(rows.ravel().tolist())):
                return True
        elif math.isfinite(np.vdot(rows, rows)):
            return True
    return bool(np.isfinite(rows).all())


class Screened(msgspec.Struct, frozen=True):
    """One request's instances as feature rows, and what the guard found in them.

    A Struct, not a dataclass: one is made for every request, and a frozen dataclass
    sets each field through ``object.__setattr__`` (0.5 µs against 0.06).
    """

    rows: npt.NDArray[np.float64]
    flagged: tuple[int, ...] | None  # flagged and let through (audit field ``flagged``)
    outside: frozenset[int]  # what the guard's check found, whatever its mode


def check_feature_view(
    cls: type[Model[Any, Any]], settings: ModelSettings, *, has_profile: bool
) -> str | None:
    """Why the feature view is missing (then the defenses that need it are off), or None.

    A :class:`ConfigError` when a defense that needs it was switched on explicitly.
    """
    try:
        cls.feature_columns()
    except NoFeatureViewError as exc:
        return without_view(str(exc), settings, has_profile=has_profile)
    return None


def without_view(reason: str, settings: ModelSettings, *, has_profile: bool) -> str:
    """``reason`` why a model has no feature view, unless a defense needing one is on.

    A :class:`ConfigError` when one was switched on explicitly (a profile, or a guard
    mode); ``reason`` is a sentence ending with a full stop.
    """
    if has_profile or settings.guard.mode in ("refuse", "flag"):
        wanted = "[model] profile" if has_profile else "[model.guard] mode"
        raise ConfigError(
            f"{wanted} needs the model's feature view, but {reason} Or switch the defense off."
        )
    return reason


def check_guard_has_profile(settings: ModelSettings, *, has_profile: bool) -> None:
    """A guard switched on compares with the model's profile: refuse one without it."""
    if not has_profile and settings.guard.mode in ("refuse", "flag"):
        raise ConfigError(
            f'[model.guard] mode = "{settings.guard.mode}" compares instances with the '
            "model's reference profile, and there is none: write one with `secureserve "
            f"profile DATA --out {settings.dir.name}/profile.json`, then `secureserve "
            'lock`; or set mode = "off".'
        )


class Defenses:
    """Guard and drift for one deployment; ``screen`` is called once per predict request."""

    def __init__(
        self,
        source: FeatureSource,
        profile: Profile | None,
        settings: ModelSettings,
        *,
        metrics: Metrics,
        audit: Callable[[], AuditLog],
        limiter: Callable[[], RateLimiter],
    ) -> None:
        self.model_name = source.model
        self.profile = profile
        self._rows = source.rows
        self._columns = source.columns
        self._width = len(source.columns)
        has_view = bool(source.columns)
        self.mode: Literal["refuse", "flag", "off"] = guard_mode(
            settings.guard, has_profile=profile is not None
        )
        # the guard's check also feeds extraction detection's coverage signal, mode or not
        self._checker = InputGuard(profile, settings.guard) if profile is not None else None
        self.guard = self._checker if self.mode != "off" else None
        self._metrics = metrics
        self._audit = audit
        self._limiter = limiter
        # shared marks (Redis): what this replica last read, and when it wrote its own
        self._read: OrderedDict[str, tuple[float, bool | None]] = OrderedDict()
        self._marked_at: OrderedDict[str, float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_tracked = settings.extraction.max_principals
        self.drift: DriftMonitor | None = None
        if profile is not None and settings.drift.enabled:
            self.drift = DriftMonitor(
                profile,
                settings.drift,
                model=source.model,
                on_change=self._drift_changed,
            )
        extraction = settings.extraction
        self.action = extraction.action
        self.extraction: ExtractionMonitor | None = None
        if has_view and extraction.action != "off":
            self.extraction = ExtractionMonitor(
                extraction, width=self._width, model=source.model, on_suspect=self._suspected
            )
        self._throttle = (
            throttle_window(extraction.throttle_rate) if extraction.action == "throttle" else None
        )
        self._reported_drops = 0
        self.active = (
            self.guard is not None or self.drift is not None or self.extraction is not None
        )

    async def admit(self, principal: str) -> Window | None:
        """Before anything is charged: 403 for a blocked principal, or its throttle window.

        Only a principal suspected of extraction, under ``action = "block"`` or
        ``"throttle"``, is affected, until an admin clears it. With Redis limits the
        suspicion is shared: a mark set by any replica holds on every one (read at most
        every :data:`SHARED_READ_S` per principal), and a mark cleared anywhere ends it.
        """
        extraction = self.extraction
        if extraction is None or self.action == "flag":
            return None
        suspected = extraction.suspected(principal)
        limiter = self._limiter()
        if limiter.shared:
            read_at, shared = await self._read_mark(principal, limiter)
            marked_at = self._marked_at.get(principal)
            if shared:
                suspected = True
            elif shared is False and suspected:
                if marked_at is not None and marked_at < read_at:
                    # this replica wrote the mark, and a later read finds it gone: an admin
                    # cleared it on another replica
                    extraction.forget(principal)
                    self._marked_at.pop(principal, None)
                    suspected = False
                elif marked_at is None:  # the mark was never written here: try again
                    self._schedule_publish(principal)
        if not suspected:
            return None
        extraction.touch(principal)  # a refused request is still one seen
        if self.action == "block":
            raise RequestRejected(
                403,
                "suspected-extraction",
                "Refused: this credential's queries look like an attempt to copy the model",
                detail="an administrator must review and clear it",
                log_reason="extraction suspected; action block",
            )
        return self._throttle

    def screen(self, principal: str, instances: Any, request_id: str) -> Screened | None:
        """Guard, then drift, on the feature rows; what the guard found, or None.

        ``instances`` is what the model's :class:`FeatureSource` reads (decoded
        instances, or input tensors). Raises the 422 ``out-of-distribution`` in
        ``refuse`` mode.
        """
        if not self.active:
            return None
        rows = self._rows(instances)
        found = self._checker.check(rows) if self._checker is not None else []
        flagged = found if self.guard is not None else []
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
        if not found:  # the common case
            return Screened(rows=rows, flagged=None, outside=_NOTHING)
        return Screened(
            rows=rows,
            flagged=tuple(f.index for f in flagged) or None,
            outside=frozenset(f.index for f in found),
        )

    def after_predict(
        self,
        principal: str,
        screened: Screened | None,
        labels: list[Any] | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Hand the answered instances, with their predicted labels, to extraction detection.

        With the running ``loop``, they are observed at the end of its iteration, with the
        other requests answered in it (:meth:`ExtractionMonitor.defer`); else at once.
        """
        if self.extraction is None or screened is None:
            return
        rows, found = screened.rows, screened.outside
        outside = [i in found for i in range(len(rows))] if found else [False] * len(rows)
        if loop is None:
            self.extraction.observe(principal, rows, labels, outside)
        else:
            self.extraction.defer(principal, rows, labels, outside, loop)

    @property
    def wants_labels(self) -> bool:
        """Whether predicted labels should come back from the inference thread."""
        return self.extraction is not None

    def take_over(self, previous: Defenses) -> None:
        """After a reload: keep the drift window if the profile is the same, else end it.

        A new profile starts a new window; an alert the old one had raised is then
        recorded as cleared (``drift-cleared``, trigger ``reload``), so the audit log and
        the gauge never show an alert nobody watches any more.
        """
        same_view = previous._columns == self._columns  # a tensor graph may change on reload
        if previous.extraction is not None and self.extraction is not None and same_view:
            # what principals did is not undone by a reload; this object now answers for it
            self.extraction = previous.extraction
            self.extraction.rebind(self._suspected)
            self._marked_at, self._read = previous._marked_at, previous._read
            self._reported_drops, self._tasks = previous._reported_drops, previous._tasks
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
        """Set the drift and extraction gauges (called when metrics are read)."""
        if self.extraction is not None:
            extraction = self.extraction
            self._metrics.extraction(
                self.model_name,
                lowest=extraction.lowest_statistic(),
                dropped=extraction.dropped - self._reported_drops,
            )
            self._reported_drops = extraction.dropped
        if self.drift is not None:
            self._metrics.drift(self.model_name, self.drift.psi())
            self._metrics.drift_alert(self.model_name, alert=self.drift.alert)

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

    def clear_target(self, handle: str) -> tuple[bool, str | None]:
        """Whether ``handle`` can be cleared here, and its principal if it is tracked here.

        With Redis limits any handle can be: its mark may have been set by a replica that
        has since restarted, and removing a mark that is not there does no harm.
        """
        principal = self.extraction.principal_of(handle) if self.extraction else None
        return principal is not None or self._limiter().shared, principal

    async def clear(self, handle: str) -> None:
        """Clear ``handle`` here and, with Redis, on every replica (audit it first)."""
        principal = self.extraction.principal_of(handle) if self.extraction else None
        if principal is not None and self.extraction is not None:
            self.extraction.forget(principal)
            self._read.pop(principal, None)
            self._marked_at.pop(principal, None)
        await self._limiter().set_mark(_mark(handle), on=False)

    async def _read_mark(self, principal: str, limiter: RateLimiter) -> tuple[float, bool | None]:
        now = time.monotonic()
        cached = self._read.get(principal)
        if cached is not None and now - cached[0] < SHARED_READ_S:
            return cached
        mark = _mark(handle_of(self.model_name, principal))
        value = (now, await limiter.marked(mark))
        _remember(self._read, principal, value, self._max_tracked)
        return value

    def _schedule_publish(self, principal: str) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(principal))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, principal: str) -> None:
        """Write the shared mark; undo it if a clear came first while it was on its way."""
        limiter, extraction = self._limiter(), self.extraction
        mark = _mark(handle_of(self.model_name, principal))
        if not await limiter.set_mark(mark, on=True) or extraction is None:
            return
        if extraction.suspected(principal):
            _remember(self._marked_at, principal, time.monotonic(), self._max_tracked)
            self._read.pop(principal, None)
        else:
            await limiter.set_mark(mark, on=False)

    def _suspected(self, principal: str, stats: PrincipalStats) -> None:
        figures = {
            "handle": stats.handle,
            "reasons": stats.reasons,
            "queries": stats.queries,
            "prada": stats.prada,
            "ood_share": stats.ood_share,
            "rate_ratio": stats.rate_ratio,
            "action": self.action,
        }
        get_logger().warning(
            "extraction suspected: this principal's queries look like an attempt to copy the model",
            model=self.model_name,
            key_id=principal,
            **figures,
        )
        self._metrics.extraction_flagged(self.model_name)
        if self.action != "flag" and self._limiter().shared:  # every replica must act on it
            self._schedule_publish(principal)
        try:
            self._audit().admin(
                action="extraction-suspected",
                principal=principal,
                trigger="extraction",
                model=self.model_name,
                detail=msgspec.json.encode(figures).decode(),
            )
        except AuditUnavailable:
            get_logger().exception("extraction suspicion not audited", model=self.model_name)

    def _record_drift(self, action: str, trigger: str, detail: str) -> None:
        try:
            self._audit().admin(
                action=action, trigger=trigger, model=self.model_name, detail=detail
            )
        except AuditUnavailable:
            get_logger().exception("drift change not audited", model=self.model_name)
