"""secureserve.explain and ``POST :explain``: attributions per feature, for role explain."""

from __future__ import annotations

import importlib.util
from typing import Any

import msgspec
import numpy as np
import pytest
from app_helpers import asgi_client, bearer, build_app, replaced, unlimited_iris_settings
from conftest import load_iris
from defense_helpers import (
    audit_lines,
    digits_app,
    digits_handler,
    digits_profile,
    digits_rows,
    digits_settings,
    instances,
)

import secureserve as ss
from secureserve.keys import mint_key
from secureserve.serving import load_model

EXPLAIN = "/v1/models/digits:explain"
EXPLAINER = mint_key(name="explainer", roles=("explain",))
PREDICTOR = mint_key(name="predictor", roles=("predict",))
BOTH = mint_key(name="both", roles=("predict", "explain", "analyst"))


def test_occlusion_attributions_are_the_probability_drops():
    """Each attribution is p(label | x) - p(label | x with that pixel at the median)."""
    settings = digits_settings()
    rows = digits_rows()[:2]
    with asgi_client(digits_app(settings, EXPLAINER)) as client:
        response = client.post(EXPLAIN, json=instances(rows), headers=bearer(EXPLAINER))
    assert response.status_code == 200
    explanations = response.json()["explanations"]
    assert len(explanations) == 2
    model = load_model(digits_handler(), settings).instance
    medians = np.array([f.quantiles.q50 for f in digits_profile().features]).round()
    for row, explanation in zip(rows, explanations, strict=True):
        (base,) = model.predict(model.from_features(row[None, :]))
        label = str(base.digit)
        assert explanation["prediction"]["digit"] == base.digit
        attributions = explanation["attributions"]
        assert list(attributions) == [f"pixels[{i}]" for i in range(64)]
        for j in (10, 20, 43):
            moved = row.copy()
            moved[j] = medians[j]
            (out,) = model.predict(model.from_features(moved[None, :]))
            expected = base.scores[label] - out.scores[label]
            assert attributions[f"pixels[{j}]"] == pytest.approx(expected, abs=0.006)


def test_explanations_need_the_explain_role_and_are_audited_as_such():
    settings = digits_settings()
    with asgi_client(digits_app(settings, EXPLAINER, PREDICTOR)) as client:
        refused = client.post(EXPLAIN, json=instances(digits_rows()[:1]), headers=bearer(PREDICTOR))
        allowed = client.post(EXPLAIN, json=instances(digits_rows()[:1]), headers=bearer(EXPLAINER))
    assert refused.status_code == 403
    assert allowed.status_code == 200
    routes = [r["route"] for r in audit_lines(settings) if r["event"] == "request"]
    assert "explain" in routes


class Guess(msgspec.Struct):
    label: ss.Label
    scores: ss.Scores | None = None


def _toy_handler() -> type:
    """A digits-input model whose scores are optional (so label_only is allowed)."""
    digit = digits_handler().input_type

    class Toy(ss.Model[digit, Guess]):  # type: ignore[valid-type]
        name = "digits"

        def predict(self, batch: list[Any]) -> list[Guess]:
            out = []
            for item in batch:
                ink = min(sum(item.pixels) / 1000, 1.0)
                out.append(Guess("dark" if ink > 0.3 else "light", {"dark": ink, "light": 1 - ink}))
            return out

    return Toy


def test_label_only_withholds_attributions():
    settings = digits_settings(output={"policy": "label_only", "roles": {"analyst": "full"}})
    app = build_app(_toy_handler(), settings, EXPLAINER, BOTH)
    body = instances(digits_rows()[:1])
    with asgi_client(app) as client:
        hidden = client.post(EXPLAIN, json=body, headers=bearer(EXPLAINER)).json()
        shown = client.post(EXPLAIN, json=body, headers=bearer(BOTH)).json()
    assert hidden["explanations"][0]["attributions"] is None
    assert set(hidden["explanations"][0]["prediction"]) == {"label"}
    assert len(shown["explanations"][0]["attributions"]) == 64


def test_the_policy_decides_what_an_explanation_shows():
    """top_k 3 for explain alone; full for a caller that also holds analyst."""
    settings = digits_settings(output={"roles": {"analyst": "full"}})
    body = instances(digits_rows()[:1])
    with asgi_client(digits_app(settings, EXPLAINER, BOTH)) as client:
        limited = client.post(EXPLAIN, json=body, headers=bearer(EXPLAINER)).json()
        full = client.post(EXPLAIN, json=body, headers=bearer(BOTH)).json()
    assert len(limited["explanations"][0]["prediction"]["scores"]) == 3
    assert len(full["explanations"][0]["prediction"]["scores"]) == 10


def test_explanations_have_their_own_limit_and_cost_the_quota():
    """explain_per_principal counts instances; the quota counts the 65 evaluations each."""
    settings = replaced(
        digits_settings(), limits={"explain_per_principal": "3/minute", "quota": "150/day"}
    )
    with asgi_client(digits_app(settings, EXPLAINER)) as client:
        first = client.post(EXPLAIN, json=instances(digits_rows()[:2]), headers=bearer(EXPLAINER))
        over_rate = client.post(
            EXPLAIN, json=instances(digits_rows()[:2]), headers=bearer(EXPLAINER)
        )
        over_quota = client.post(
            EXPLAIN, json=instances(digits_rows()[:1]), headers=bearer(EXPLAINER)
        )
    assert first.status_code == 200
    assert over_rate.status_code == 429  # 4 instances > 3 per minute
    assert over_rate.json()["type"].endswith("rate-limited")
    assert over_quota.status_code == 429  # 3 instances fit the rate, 130 + 65 > 150 do not
    assert over_quota.json()["type"].endswith("quota-exhausted")


def test_without_a_profile_explain_is_a_409_saying_why():
    key = mint_key(name="explainer", roles=("explain",))
    app = build_app(load_iris(), unlimited_iris_settings(), key)
    with asgi_client(app, key) as client:
        response = client.post(
            "/v1/models/iris:explain", json={"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]}
        )
    assert response.status_code == 409
    assert response.json()["type"].endswith("explain-unavailable")
    assert "secureserve profile" in response.json()["detail"]


@pytest.mark.skipif(
    importlib.util.find_spec("shap") is None,
    reason="the shap package (pip install 'secureserve[explain]') is not installed",
)
def test_kernelshap_attributions_add_up_to_the_prediction_change():
    """KernelSHAP's efficiency property: the attributions sum to f(x) - f(background)."""
    settings = digits_settings(explain={"method": "kernelshap", "samples": 256})
    row = digits_rows()[3]
    with asgi_client(digits_app(settings, EXPLAINER)) as client:
        response = client.post(EXPLAIN, json=instances(row[None, :]), headers=bearer(EXPLAINER))
    assert response.status_code == 200
    (explanation,) = response.json()["explanations"]
    model = load_model(digits_handler(), settings).instance
    medians = np.array([f.quantiles.q50 for f in digits_profile().features]).round()
    (base,) = model.predict(model.from_features(row[None, :]))
    (reference,) = model.predict(model.from_features(medians[None, :]))
    label = str(base.digit)
    total = sum(explanation["attributions"].values())
    assert total == pytest.approx(base.scores[label] - reference.scores[label], abs=0.05)
