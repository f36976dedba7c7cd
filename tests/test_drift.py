"""secureserve.drift: PSI over a sliding window against the profile, alone and over HTTP."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import numpy as np
import pytest
from app_helpers import asgi_client, bearer
from conftest import copy_example
from defense_helpers import (
    DRIFT,
    PREDICT,
    audit_lines,
    digits_app,
    digits_profile,
    digits_rows,
    digits_settings,
    instances,
    shifted,
)

from secureserve.drift import DriftMonitor, DriftReport
from secureserve.keys import mint_key
from secureserve.settings import DriftSettings

#: A pixel with a wide spread and room above it (shifting by its std stays mostly <= 16).
FEATURE = 46


class Recorder:
    """Collects what the monitor reports."""

    def __init__(self) -> None:
        self.changes: list[DriftReport] = []

    def change(self, report: DriftReport) -> None:
        self.changes.append(report)


def monitor(**settings: float) -> tuple[DriftMonitor, Recorder]:
    recorder = Recorder()
    drift = DriftMonitor(
        digits_profile(),
        DriftSettings(**settings),  # type: ignore[arg-type]
        model="digits",
        on_change=recorder.change,
    )
    return drift, recorder


def feed(drift: DriftMonitor, rows: np.ndarray, *, principals: int = 10, per_call: int = 8) -> int:
    """Send ``rows`` in small requests from rotating principals.

    Returns how many were sent when the alert state changed (it stops there), else -1.
    """
    before = drift.alert
    for start in range(0, len(rows), per_call):
        drift.observe(f"p{(start // per_call) % principals}", rows[start : start + per_call])
        if drift.alert != before:
            return start + per_call
    return -1


def test_data_like_the_profile_raises_no_alert_over_10000_instances():
    rng = np.random.default_rng(1)
    rows = digits_rows()[rng.integers(0, 1438, 10_000)]
    drift, recorder = monitor()
    assert feed(drift, rows) == -1
    assert recorder.changes == []
    assert drift.filled == drift.window  # the alert was looked at, window full
    assert drift.report().max_psi < DriftSettings().threshold


def test_one_feature_shifted_by_one_std_is_flagged_within_500_instances():
    rng = np.random.default_rng(2)
    data = digits_rows()
    std = data[:, FEATURE].std()
    drift, recorder = monitor()
    feed(drift, data[rng.integers(0, len(data), 1000)])  # a full window of normal traffic
    assert not drift.alert
    moved = np.clip(shifted(data[rng.integers(0, len(data), 2000)], FEATURE, std), 0, 16)
    seen = feed(drift, moved)
    assert 0 < seen <= 500
    (raised,) = recorder.changes
    assert raised.alert
    assert raised.features[0].feature == f"pixels[{FEATURE}]"  # the largest PSI comes first


def test_the_alert_clears_only_below_the_lower_bound_and_does_not_flap():
    rng = np.random.default_rng(3)
    data = digits_rows()
    std = data[:, FEATURE].std()
    drift, recorder = monitor()
    feed(drift, np.clip(shifted(data[rng.integers(0, 1438, 600)], FEATURE, std), 0, 16))
    assert drift.alert
    assert feed(drift, data[rng.integers(0, 1438, 3000)]) > 0
    feed(drift, data[rng.integers(0, 1438, 3000)])  # stays cleared: no flapping
    assert [r.alert for r in recorder.changes] == [True, False]
    assert recorder.changes[1].max_psi < drift.threshold


def test_one_principal_fills_at_most_its_share_of_the_window():
    """A lone caller cannot fill the window, so it alone can never raise the alert."""
    data = digits_rows()
    drift, recorder = monitor(max_share=0.2)
    moved = np.clip(shifted(np.tile(data, (3, 1)), FEATURE, 10.0), 0, 16)
    feed(drift, moved, principals=1)
    assert drift.filled == 100  # 0.2 x 500
    assert recorder.changes == []
    assert not drift.alert


def test_the_window_keeps_moving_when_every_caller_is_at_its_share():
    """Five callers, each at its 20 %: their latest instances replace their oldest."""
    rng = np.random.default_rng(5)
    data = digits_rows()
    drift, _ = monitor()
    feed(drift, data[rng.integers(0, len(data), 1000)], principals=5)
    assert drift.filled == 500
    assert not drift.alert
    moved = np.clip(shifted(data[rng.integers(0, len(data), 2000)], FEATURE, 16.0), 0, 16)
    assert 0 < feed(drift, moved, principals=5) <= 500


def test_one_noisy_caller_at_its_share_cannot_raise_the_alert():
    """Its 20 % moves one pixel a lot, yet leaving it out, nothing has drifted."""
    rng = np.random.default_rng(6)
    data = digits_rows()
    drift, recorder = monitor()
    normal = data[rng.integers(0, len(data), 3000)]
    noisy = np.clip(shifted(data[rng.integers(0, len(data), 3000)], FEATURE, 16.0), 0, 16)
    for i in range(0, 3000, 10):
        drift.observe("noisy", noisy[i : i + 10])
        drift.observe(f"p{i % 7}", normal[i : i + 10])
    assert drift.report().max_psi >= drift.threshold  # the plain maximum would alert
    assert recorder.changes == []
    assert not drift.alert


def test_memory_is_bounded_by_the_window_whatever_the_callers():
    """10,000 principals: the per-principal counts never exceed the window."""
    data = digits_rows()
    drift, _ = monitor(window=200)
    for i in range(10_000):
        drift.observe(f"caller-{i}", data[i % len(data)][None, :])
    assert drift.filled == 200
    assert len(drift._held) <= 200
    assert sum(len(slots) for slots in drift._held.values()) == 200
    assert drift._slots.shape == (200, 64)


def test_a_report_before_the_window_is_full_raises_nothing():
    drift, recorder = monitor()
    drift.observe("a", np.full((3, 64), 16.0))
    drift.evaluate()
    report = drift.report()
    assert report.filled == 3
    assert not report.alert
    assert recorder.changes == []


# --------------------------------------------------------------------------- over HTTP

ADMIN = mint_key(name="admin", roles=("admin",))
METRICS = mint_key(name="metrics", roles=("metrics",))
CALLERS = [mint_key(name=f"caller-{i}", roles=("predict",)) for i in range(6)]


def test_drift_over_http_report_gauge_and_audit():
    """Shifted traffic through requests: alerted within 500 instances, and it shows.

    The report (admins only), the gauge and the audit record all say so.
    """
    rng = np.random.default_rng(4)
    data = digits_rows()
    std = data[:, FEATURE].std()
    settings = digits_settings()
    app = digits_app(settings, ADMIN, METRICS, *CALLERS)
    with asgi_client(app) as client:
        normal = data[rng.integers(0, len(data), 512)]
        for i in range(16):  # a full window of ordinary traffic, 32 instances a request
            body = instances(normal[i * 32 : (i + 1) * 32])
            client.post(PREDICT, json=body, headers=bearer(CALLERS[i % 6])).raise_for_status()
        assert client.get(DRIFT, headers=bearer(ADMIN)).json()["alert"] is False
        moved = shifted(data[rng.integers(0, len(data), 512)], FEATURE, std)
        sent = 0
        while sent < 512:
            body = instances(moved[sent : sent + 32])
            client.post(PREDICT, json=body, headers=bearer(CALLERS[sent // 32 % 6]))
            sent += 32
            if client.get(DRIFT, headers=bearer(ADMIN)).json()["alert"]:
                break
        report = client.get(DRIFT, headers=bearer(ADMIN)).json()
        forbidden = client.get(DRIFT, headers=bearer(CALLERS[0]))
        metrics = client.get("/metrics", headers=bearer(METRICS)).text
    assert report["alert"] is True
    assert sent <= 500
    assert report["features"][0]["feature"] == f"pixels[{FEATURE}]"
    assert report["features"][0]["psi"] >= report["threshold"]
    assert forbidden.status_code == 403
    assert 'secureserve_drift_alert{model="digits"} 1.0' in metrics
    records = [r for r in audit_lines(settings) if r.get("action") == "drift-detected"]
    assert len(records) == 1
    assert f"pixels[{FEATURE}]" in records[0]["detail"]


def test_drift_gauge_shows_the_current_values():
    settings = digits_settings(drift={"window": 50, "max_share": 1.0})
    app = digits_app(settings, CALLERS[0], METRICS)
    with asgi_client(app, CALLERS[0]) as client:
        for i in range(2):
            body = instances(digits_rows()[i * 32 : (i + 1) * 32])
            client.post(PREDICT, json=body).raise_for_status()
        text = client.get("/metrics", headers=bearer(METRICS)).text
    assert f'secureserve_drift_psi{{feature="pixels[{FEATURE}]",model="digits"}}' in text


@pytest.mark.parametrize("drift", [{"enabled": False}])
def test_drift_off_is_a_clear_404(drift):
    app = digits_app(digits_settings(drift=drift), ADMIN)
    with asgi_client(app, ADMIN) as client:
        response = client.get(DRIFT)
    assert response.status_code == 404
    assert response.json()["type"].endswith("drift-off")


def test_a_reload_keeps_the_window_when_the_profile_is_the_same():
    settings = digits_settings()
    app = digits_app(settings, ADMIN, *CALLERS)
    with asgi_client(app) as client:
        for i in range(4):
            body = instances(digits_rows()[i * 32 : (i + 1) * 32])
            client.post(PREDICT, json=body, headers=bearer(CALLERS[i])).raise_for_status()
        before = client.get(DRIFT, headers=bearer(ADMIN)).json()["filled"]
        reload = client.post("/v1/models/digits:reload", headers=bearer(ADMIN))
        after = client.get(DRIFT, headers=bearer(ADMIN)).json()["filled"]
    assert reload.status_code == 200
    assert before == after == 128


def test_a_reload_with_another_profile_ends_a_raised_alert(tmp_path, monkeypatch):
    """The new window starts empty; the old alert is recorded as cleared, not left hanging."""
    from secureserve.cli import main
    from secureserve.config import load_settings

    project = copy_example("digits-safetensors", tmp_path / "digits", monkeypatch)
    settings = digits_settings(drift={"window": 64, "max_share": 1.0})
    settings = msgspec.structs.replace(
        load_settings(project_dir=project),
        audit=settings.audit,
        limits=settings.limits,
        model=msgspec.structs.replace(settings.model, dir=project / "models"),
    )
    settings = msgspec.structs.replace(settings, project_dir=project)
    app = digits_app(settings, ADMIN, CALLERS[0])
    moved = shifted(digits_rows()[:64], FEATURE, 16.0)
    with asgi_client(app) as client:
        for i in range(2):
            body = instances(moved[i * 32 : (i + 1) * 32])
            client.post(PREDICT, json=body, headers=bearer(CALLERS[0])).raise_for_status()
        assert client.get(DRIFT, headers=bearer(ADMIN)).json()["alert"] is True
        rows = digits_rows()
        np.save(project / "other.npy", rows[: len(rows) // 2], allow_pickle=False)
        cwd = Path.cwd()
        try:
            os.chdir(project)
            assert main(["profile", "other.npy"]) == 0
            assert main(["lock"]) == 0
        finally:
            os.chdir(cwd)
        assert client.post("/v1/models/digits:reload", headers=bearer(ADMIN)).status_code == 200
        report = client.get(DRIFT, headers=bearer(ADMIN)).json()
    assert (report["alert"], report["filled"]) == (False, 0)
    actions = [r.get("action") for r in audit_lines(settings)]
    assert (
        actions.index("drift-detected") < actions.index("reload") < actions.index("drift-cleared")
    )
