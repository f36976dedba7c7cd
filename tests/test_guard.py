"""secureserve.guard: instances scored against the profile, refused (422) or flagged."""

from __future__ import annotations

import io

import numpy as np
from app_helpers import asgi_client, bearer, json_lines, json_logs, replaced
from defense_helpers import (
    PREDICT,
    audit_lines,
    digits_app,
    digits_profile,
    digits_rows,
    digits_settings,
    instances,
)

from secureserve.guard import InputGuard, guard_mode
from secureserve.keys import mint_key
from secureserve.settings import GuardSettings

CALLER = mint_key(name="caller", roles=("predict",))
METRICS = mint_key(name="metrics", roles=("metrics",))
#: Ink in every pixel: nothing like a handwritten digit (all values inside the schema).
BLOT = np.full(64, 16.0)


def test_training_data_passes_and_noise_does_not():
    guard = InputGuard(digits_profile(), GuardSettings())
    data = digits_rows()
    assert len(guard.check(data)) / len(data) < 0.01  # the defaults flag under 1 %
    noise = np.random.default_rng(0).uniform(0, 16, (200, 64))
    assert len(guard.check(noise)) == 200


def test_range_and_distance_reasons():
    profile = digits_profile()
    guard = InputGuard(profile, GuardSettings(margin=1000, max_distance=2))
    blot = np.array([16.0 if f.std > 0 else f.mean for f in profile.features])
    (flagged,) = guard.check(blot[None, :])
    assert flagged.reason == "distance"  # 1000 IQRs admit every value of a varying pixel
    assert flagged.features == ()
    guard = InputGuard(digits_profile(), GuardSettings())
    row = digits_rows()[0].copy()
    row[0] = 1.0  # pixel 0 is blank in every training image: it must stay exactly 0
    (flagged,) = guard.check(row[None, :])
    assert flagged.reason == "range"
    assert flagged.features == ("pixels[0]",)
    assert flagged.index == 0


def test_mode_defaults_to_flag_with_a_profile_and_off_without():
    assert guard_mode(GuardSettings(), has_profile=True) == "flag"
    assert guard_mode(GuardSettings(), has_profile=False) == "off"
    assert guard_mode(GuardSettings(mode="refuse"), has_profile=True) == "refuse"


def test_refuse_names_the_instance_only_and_logs_the_features():
    settings = digits_settings(guard={"mode": "refuse"})
    body = instances(np.stack([digits_rows()[0], BLOT]))
    with json_logs(io.BytesIO()) as logs:
        app = digits_app(settings, CALLER)
        with asgi_client(app, CALLER) as client:
            response = client.post(PREDICT, json=body)
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "urn:secureserve:problem:out-of-distribution"
    assert problem["detail"] == "instance 1 is unlike the data this model was built for"
    assert "pixels" not in response.text  # no feature names, no values, no bounds
    lines = json_lines(logs)
    (logged,) = [line for line in lines if line.get("status") == 422]
    assert "instance 1" in logged["reason"]
    assert "pixels[" in logged["reason"]
    assert logged["request_id"] == problem["request_id"]


def test_refusals_count_against_the_callers_limits():
    """Two instances refused still cost two predictions of the quota."""
    settings = replaced(
        digits_settings(guard={"mode": "refuse"}),
        limits={"per_principal": "3/minute"},
        server={"max_instances": 2},
    )
    app = digits_app(settings, CALLER)
    with asgi_client(app, CALLER) as client:
        refused = client.post(PREDICT, json=instances(np.stack([BLOT, BLOT])))
        limited = client.post(PREDICT, json=instances(np.stack([BLOT, BLOT])))
    assert refused.status_code == 422
    assert limited.status_code == 429


def test_flag_serves_and_records():
    settings = digits_settings(guard={"mode": "flag"})
    body = instances(np.stack([digits_rows()[0], BLOT, digits_rows()[1]]))
    with json_logs(io.BytesIO()) as logs:
        app = digits_app(settings, CALLER, METRICS)
        with asgi_client(app, CALLER) as client:
            response = client.post(PREDICT, json=body)
            normal = client.post(PREDICT, json=instances(digits_rows()[:2]))
            text = client.get("/metrics", headers=bearer(METRICS)).text
    lines = json_lines(logs)
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 3
    assert normal.status_code == 200
    requests = [r for r in audit_lines(settings) if r["event"] == "request"]
    assert requests[0]["flagged"] == [1]
    (warning,) = [line for line in lines if line.get("flagged_count")]
    assert warning["request_id"] == response.headers["x-request-id"]
    assert "flagged" not in requests[1]  # only flagged requests carry the field
    assert 'secureserve_guard_flagged_total{model="digits",reason="range"} 1.0' in text


def test_guard_off_lets_anything_in_the_schema_through():
    settings = digits_settings(guard={"mode": "off"})
    app = digits_app(settings, CALLER)
    with asgi_client(app, CALLER) as client:
        response = client.post(PREDICT, json=instances(BLOT[None, :]))
    assert response.status_code == 200
    assert "flagged" not in audit_lines(settings)[-1]
