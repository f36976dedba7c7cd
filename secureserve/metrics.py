"""Prometheus metrics, served at ``/metrics`` to principals with the ``metrics`` role.

Each app has its own registry (never the process-global one), so a service that
mounts secureserve keeps its own metrics apart. Label values come from small fixed
sets (route names, status codes, refusal reasons), never from what a client sent,
so a client cannot blow up the number of series.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from secureserve.drift import FeatureDrift

__all__ = ["CONTENT_TYPE", "Metrics", "route_of"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
_FIXED_PATHS: Final = {
    "/v1/models": "models",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/openapi.json": "openapi",
    "/metrics": "metrics",
    "/v2": "v2-server",
    "/v2/health/live": "v2-live",
    "/v2/health/ready": "v2-ready",
}
_AUTH_REASONS: Final = frozenset(
    {
        "missing",
        "not-bearer",
        "unknown-revoked-or-expired-key",
        "key-file-invalid",
        "no-client-certificate",
    }
)
_JWT_REASON: Final = re.compile(r"jwt-[a-z-]{1,40}")
_LIMIT_REASONS: Final = frozenset(
    {"per_principal", "per_model", "quota", "auth-failures-per-ip", "throttle"}
)
_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Each bucket's ``le`` label, written as prometheus_client writes it (tests check).
_BUCKET_LABELS: Final = (*(repr(bound) for bound in _LATENCY_BUCKETS), "+Inf")


#: Routes under /v1/models/, by how their paths end (checked in order).
_MODEL_ROUTES: Final = (
    (":predict", "predict"),
    (":reload", "reload"),
    (":explain", "explain"),
    (":clear", "principal-clear"),
    ("/drift", "drift"),
    ("/principals", "principals"),
)


_V2_ROUTES: Final = (("/infer", "infer"), ("/ready", "v2-model-ready"))


def route_of(path: str) -> str:
    """The route name of a path, from a fixed set (``other`` for anything unknown)."""
    fixed = _FIXED_PATHS.get(path)
    if fixed is not None:
        return fixed
    if path.startswith("/v2/models/"):
        return next((name for end, name in _V2_ROUTES if path.endswith(end)), "v2-model")
    if not path.startswith("/v1/models/"):
        return "other"
    return next((name for end, name in _MODEL_ROUTES if path.endswith(end)), "model")


class _Requests(Collector):
    """``secureserve_requests`` and ``secureserve_request_duration_seconds``, kept cheaply.

    Every request updates both, so they are plain numbers updated on the event loop:
    prometheus_client's own counter and histogram take a lock each and walk the buckets
    in Python, about 5 µs of every request between them (benchmarks/app_cpu.py). They
    become the same samples a ``Counter`` and a ``Histogram`` would give when /metrics
    is read. Bounded: routes and statuses come from fixed sets.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], list[float]] = {}  # [count, created]
        # route -> [count per bucket (the last one +Inf), sum, created]
        self._latency: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        count = self._counts.get((route, status))
        if count is None:
            count = self._counts[route, status] = [0, time.time()]
        count[0] += 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = ([0] * (len(_LATENCY_BUCKETS) + 1), [0.0, time.time()])
        latency[0][bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1  # le: upper bounds
        latency[1][0] += seconds

    def describe(self) -> list[Metric]:
        """The two families, without samples (for the registry's name check)."""
        return list(self._families(empty=True))

    def collect(self) -> Iterator[Metric]:
        """The samples, as prometheus_client's ``Counter`` and ``Histogram`` name them."""
        return self._families(empty=False)

    def _families(self, *, empty: bool) -> Iterator[Metric]:
        requests = Metric("secureserve_requests", "HTTP requests by route and status.", "counter")
        latency = Metric(
            "secureserve_request_duration_seconds",
            "Time from the first byte of the request to the end of the response.",
            "histogram",
        )
        if not empty:  # snapshots: /metrics may be read from another thread
            # as prometheus_client's own types: no _created series once it is told so,
            # by PROMETHEUS_DISABLE_CREATED_SERIES or by its disable_created_metrics
            created_too = getattr(prometheus_metrics, "_use_created", True)
            for (route, status), (count, created) in list(self._counts.items()):
                labels = {"route": route, "status": str(status)}
                requests.add_sample("secureserve_requests_total", labels, count)
                if created_too:
                    requests.add_sample("secureserve_requests_created", labels, created)
            for route, (buckets, (total, created)) in list(self._latency.items()):
                self._histogram(
                    latency, route, list(buckets), total, created if created_too else None
                )
        yield requests
        yield latency

    @staticmethod
    def _histogram(
        family: Metric, route: str, buckets: list[int], total: float, created: float | None
    ) -> None:
        name = family.name
        cumulative = 0
        for le, count in zip(_BUCKET_LABELS, buckets, strict=True):
            cumulative += count
            family.add_sample(f"{name}_bucket", {"route": route, "le": le}, cumulative)
        family.add_sample(f"{name}_count", {"route": route}, cumulative)
        family.add_sample(f"{name}_sum", {"route": route}, total)
        if created is not None:
            family.add_sample(f"{name}_created", {"route": route}, created)


class _Level:
    """A number of things now (requests in flight), changed on the event loop, lock-free."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        """One more."""
        self.value += 1

    def dec(self) -> None:
        """One fewer."""
        self.value -= 1


class Metrics:
    """The counters, histogram and gauges of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = _Requests()
        self.registry.register(self._requests)
        self.auth_failures = Counter(
            "secureserve_auth_failures",
            "Refused credentials by reason.",
            ("reason",),
            registry=self.registry,
        )
        self.limited = Counter(
            "secureserve_rate_limited",
            "Requests refused by a rate limit (reason: per_principal, per_model, "
            "auth-failures-per-ip) or an exhausted quota (reason: quota).",
            ("reason",),
            registry=self.registry,
        )
        self.in_flight = _Level()  # read when /metrics is
        Gauge(
            "secureserve_in_flight_requests",
            "Requests being served now.",
            registry=self.registry,
        ).set_function(lambda: self.in_flight.value)
        self._drift_children: dict[tuple[str, str], Any] = {}  # bounded by the feature count
        self._serving: dict[str, tuple[str, str]] = {}  # model -> its series' labels
        self.model_info = Gauge(
            "secureserve_model_info",
            "The model version serving (value 1), by name, version and lock revision.",
            ("model", "version", "revision"),
            registry=self.registry,
        )
        self.guard_flagged_total = Counter(
            "secureserve_guard_flagged",
            "Instances outside the reference profile (reason: range, distance), "
            "refused or let through as [model.guard] mode says.",
            ("model", "reason"),
            registry=self.registry,
        )
        self.drift_psi = Gauge(
            "secureserve_drift_psi",
            "Population stability index of each feature over the drift window.",
            ("model", "feature"),
            registry=self.registry,
        )
        self.extraction_flags = Counter(
            "secureserve_extraction_flags",
            "Principals newly suspected of model extraction (see GET .../principals).",
            ("model",),
            registry=self.registry,
        )
        self.extraction_statistic = Gauge(
            "secureserve_extraction_statistic",
            "The lowest PRADA statistic (Shapiro-Wilk W) among tracked principals.",
            ("model",),
            registry=self.registry,
        )
        self.extraction_dropped = Counter(
            "secureserve_extraction_dropped",
            "Principals no longer tracked: the least recently seen, beyond max_principals.",
            ("model",),
            registry=self.registry,
        )
        self.drift_alerting = Gauge(
            "secureserve_drift_alert",
            "1 while the drift alert is raised, else 0.",
            ("model",),
            registry=self.registry,
        )

    def observe(self, *, path: str, status: int, seconds: float, reason: str | None) -> None:
        """Record one finished request (on the event loop)."""
        self._requests.observe(route_of(path), status, seconds)
        if status == 401:  # noqa: PLR2004 - HTTP status
            self.auth_failures.labels(_auth_reason(reason)).inc()
        elif status == 429:  # noqa: PLR2004 - HTTP status
            self.limited.labels(reason if reason in _LIMIT_REASONS else "other").inc()

    def serving(self, *, model: str, version: str, revision: str) -> None:
        """Mark the version of ``model`` now serving (after start-up or a reload).

        One series per served model: the model's previous series goes, the others stay.
        """
        previous = self._serving.get(model)
        if previous is not None:
            self.model_info.remove(model, *previous)
        self._serving[model] = (version, revision)
        self.model_info.labels(model, version, revision).set(1)

    def guard_flagged(self, model: str, reason: str, count: int) -> None:
        """Count instances the input guard flagged (``reason``: range or distance)."""
        self.guard_flagged_total.labels(model, reason).inc(count)

    def drift(self, model: str, values: list[FeatureDrift]) -> None:
        """Set the PSI gauge of every feature (one series per feature: a fixed set).

        The labelled children are looked up once and kept, like those of ``observe``.
        """
        children = self._drift_children
        for value in values:
            child = children.get((model, value.feature))
            if child is None:
                child = children[model, value.feature] = self.drift_psi.labels(model, value.feature)
            child.set(value.psi)

    def extraction_flagged(self, model: str) -> None:
        """Count a principal newly suspected of extraction."""
        self.extraction_flags.labels(model).inc()

    def extraction(self, model: str, *, lowest: float | None, dropped: int) -> None:
        """Set the lowest PRADA statistic and count principals dropped since the last read."""
        # NaN: no principal has enough queries for the statistic (no stale value stays)
        self.extraction_statistic.labels(model).set(math.nan if lowest is None else lowest)
        if dropped > 0:
            self.extraction_dropped.labels(model).inc(dropped)

    def drift_alert(self, model: str, *, alert: bool) -> None:
        """Show whether the drift alert is raised."""
        self.drift_alerting.labels(model).set(1 if alert else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


def _auth_reason(reason: str | None) -> str:
    """Known reasons (JWT checks are a fixed set in tokens.py) as they are, else ``other``."""
    if reason is not None and (reason in _AUTH_REASONS or _JWT_REASON.fullmatch(reason)):
        return reason
    return "other"
