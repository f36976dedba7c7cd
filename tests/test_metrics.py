"""Prometheus metrics: role-gated, fixed label sets, counts that follow the traffic."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics

from secureserve.metrics import _LATENCY_BUCKETS, Metrics, route_of
from secureserve.testing import TestClient

FLOWER = {"features": [5.1, 3.5, 1.4, 0.2]}


@pytest.fixture
def iris_cls(iris_project, monkeypatch):
    monkeypatch.syspath_prepend(str(iris_project))
    monkeypatch.delitem(__import__("sys").modules, "app", raising=False)
    from app import Iris

    return Iris


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/models/iris:predict", "predict"),
        ("/v1/models/anything:reload", "reload"),
        ("/v1/models/whatever", "model"),
        ("/v1/models", "models"),
        ("/metrics", "metrics"),
        ("/healthz", "healthz"),
        ("/../../etc/passwd", "other"),
    ],
)
def test_route_of_maps_paths_to_a_fixed_set(path, route):
    """Every path maps to one of a few names, so clients cannot mint new series."""
    assert route_of(path) == route


def test_metrics_needs_the_metrics_role(iris_project, iris_cls):
    """A predict-only key gets 403 on /metrics; anonymous gets 401."""
    with TestClient(iris_cls, project_dir=iris_project, roles=("predict",)) as client:
        assert client.get("/metrics").status_code == 403
        assert client.anonymous().get("/metrics").status_code == 401


def test_metrics_count_requests_failures_and_model_info(iris_project, iris_cls):
    """Requests by route/status, auth failures by reason, in-flight and model info are exposed."""
    with TestClient(iris_cls, project_dir=iris_project, roles=("predict", "metrics")) as client:
        assert client.predict([FLOWER]).status_code == 200
        assert client.predict([FLOWER]).status_code == 200
        client.anonymous().get("/v1/models")
        client.get("/v1/models/no-such-model-<script>")
        reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    assert 'secureserve_requests_total{route="predict",status="200"} 2.0' in text
    assert 'secureserve_auth_failures_total{reason="missing"} 1.0' in text
    assert 'secureserve_requests_total{route="model",status="404"} 1.0' in text
    assert 'secureserve_model_info{model="iris",revision="' in text
    assert "secureserve_in_flight_requests 1.0" in text  # the /metrics request itself
    assert "script" not in text
    assert 'secureserve_request_duration_seconds_bucket{le="0.001",route="predict"}' in text


def test_metrics_registries_are_per_app():
    """Two apps never share counters (and never touch the process-global registry)."""
    first, second = Metrics(), Metrics()
    first.observe(path="/healthz", status=200, seconds=0.001, reason=None)
    assert b'secureserve_requests_total{route="healthz",status="200"} 1.0' in first.render()
    assert b"secureserve_requests_total{" not in second.render()


def test_metrics_unknown_reasons_collapse_to_other():
    """A refusal reason outside the known set is counted as "other"."""
    metrics = Metrics()
    metrics.observe(path="/v1/models", status=401, seconds=0.001, reason="x" * 50)
    metrics.observe(path="/v1/models", status=429, seconds=0.001, reason="per_model")
    text = metrics.render().decode()
    assert 'secureserve_auth_failures_total{reason="other"} 1.0' in text
    assert 'secureserve_rate_limited_total{reason="per_model"} 1.0' in text


@pytest.mark.parametrize("created", [True, False])
def test_request_counters_expose_what_prometheus_client_would(created, monkeypatch):
    """The lock-free request counters give the samples of a Counter and a Histogram, exactly.

    Same observations into prometheus_client's own types: every line of both families
    is the same (``_created`` times aside), bounds and values above the last bound
    included, and no ``_created`` series once prometheus_client is told not to write them.
    """
    monkeypatch.setattr(prometheus_metrics, "_use_created", created)
    ours = Metrics()
    registry = CollectorRegistry()
    counter = Counter(
        "secureserve_requests",
        "HTTP requests by route and status.",
        ("route", "status"),
        registry=registry,
    )
    histogram = Histogram(
        "secureserve_request_duration_seconds",
        "Time from the first byte of the request to the end of the response.",
        ("route",),
        buckets=_LATENCY_BUCKETS,
        registry=registry,
    )
    seen = [
        ("/v1/models/iris:predict", 200, 0.0004),
        ("/v1/models/iris:predict", 200, 0.001),  # on a bound: counted in it (le)
        ("/v1/models/iris:predict", 422, 0.0011),
        ("/healthz", 200, 0.0),
        ("/v1/models/iris:predict", 200, 12.5),  # above the last bound: +Inf only
        ("/nowhere", 404, 0.3),
        ("/v1/models/iris:predict", 200, 0.25),
    ]
    for path, status, seconds in seen:
        ours.observe(path=path, status=status, seconds=seconds, reason=None)
        counter.labels(route_of(path), str(status)).inc()
        histogram.labels(route_of(path)).observe(seconds)

    def lines(text: bytes) -> list[str]:
        kept = [
            re.sub(r"(_created\{[^}]*\}) \S+$", r"\1 T", line)
            for line in text.decode().splitlines()
            if "secureserve_request" in line and "in_flight" not in line
        ]
        assert kept
        return kept

    assert lines(ours.render()) == lines(generate_latest(registry))
    assert (b"secureserve_requests_created{" in ours.render()) is created
    assert ours.render().count(b"_bucket{") == 3 * (len(_LATENCY_BUCKETS) + 1)
