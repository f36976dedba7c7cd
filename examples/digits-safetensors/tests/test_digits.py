"""Tests of the digits example: the committed weights, the handler, the HTTP API.

The model-level tests need only numpy/safetensors (plus scikit-learn, a dev
dependency, for those that retrain or read the bundled data). The HTTP tests go
through ``secureserve.testing.TestClient``, in process, with a fresh API key;
they and the handler test need the secureserve core.
"""

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

# Three images from scikit-learn's digits data (rows 0, 1 and 7), 8 rows of 8 pixels.
ZERO = [
    0, 0, 5, 13, 9, 1, 0, 0,
    0, 0, 13, 15, 10, 15, 5, 0,
    0, 3, 15, 2, 0, 11, 8, 0,
    0, 4, 12, 0, 0, 8, 8, 0,
    0, 5, 8, 0, 0, 9, 8, 0,
    0, 4, 11, 0, 1, 12, 7, 0,
    0, 2, 14, 5, 10, 12, 0, 0,
    0, 0, 6, 13, 10, 0, 0, 0,
]  # fmt: skip
ONE = [
    0, 0, 0, 12, 13, 5, 0, 0,
    0, 0, 0, 11, 16, 9, 0, 0,
    0, 0, 3, 15, 16, 6, 0, 0,
    0, 7, 15, 16, 16, 2, 0, 0,
    0, 0, 1, 16, 16, 3, 0, 0,
    0, 0, 1, 16, 16, 6, 0, 0,
    0, 0, 1, 16, 16, 6, 0, 0,
    0, 0, 0, 11, 16, 10, 0, 0,
]  # fmt: skip
SEVEN = [
    0, 0, 7, 8, 13, 16, 15, 1,
    0, 0, 7, 7, 4, 11, 12, 0,
    0, 0, 0, 0, 8, 13, 1, 0,
    0, 4, 8, 8, 15, 15, 6, 0,
    0, 2, 11, 15, 15, 4, 0, 0,
    0, 0, 0, 16, 5, 0, 0, 0,
    0, 0, 0, 9, 15, 1, 0, 0,
    0, 0, 0, 13, 5, 0, 0, 0,
]  # fmt: skip
PREDICT_PATH = "/v1/models/digits:predict"
SHAPES = {"W1": (64, 32), "b1": (32,), "W2": (32, 10), "b2": (10,)}


@pytest.fixture(scope="module")
def weights(project_dir: Path) -> dict[str, np.ndarray]:
    """Read the committed weights with safetensors directly."""
    return load_file(project_dir / "models" / "digits.safetensors")


def forward(weights: dict[str, np.ndarray], pixels: np.ndarray) -> np.ndarray:
    """Return class probabilities of raw 0..16 pixels (the reference forward pass)."""
    hidden = np.maximum(pixels.astype(np.float32) @ weights["W1"] + weights["b1"], 0.0)
    logits = hidden @ weights["W2"] + weights["b2"]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


# --- model files ------------------------------------------------------------


def test_digits_export_matches_committed_file(digits_train, project_dir, tmp_path):
    """Re-running the training of train.py yields exactly the committed bytes, data too."""
    digits_train.export(tmp_path, tmp_path / "data")
    name = "digits.safetensors"
    assert (tmp_path / name).read_bytes() == (project_dir / "models" / name).read_bytes()
    for name in ("train.npy", "check.jsonl"):
        written = (tmp_path / "data" / name).read_bytes()
        assert written == (project_dir / "data" / name).read_bytes(), name


def test_digits_weights_layout(weights):
    """The file holds exactly W1, b1, W2, b2 as finite float32 arrays of the MLP's shapes."""
    assert {name: w.shape for name, w in weights.items()} == SHAPES
    for w in weights.values():
        assert w.dtype == np.float32
        assert np.isfinite(w).all()


def test_digits_weights_classify_known_images(weights):
    """Three known images are read as 0, 1 and 7; each row of probabilities sums to 1."""
    probs = forward(weights, np.array([ZERO, ONE, SEVEN]))
    assert probs.argmax(axis=1).tolist() == [0, 1, 7]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_digits_accuracy_on_held_out_part(digits_train, weights):
    """The committed weights are at least 90% accurate on the images held out from training."""
    _, x_test, _, y_test = digits_train.load_split()
    assert len(y_test) > 300
    assert np.mean(forward(weights, x_test).argmax(axis=1) == y_test) >= 0.9


# --- the handler, without HTTP (needs the secureserve core) ------------------


def test_digits_handler_matches_reference_forward_pass(digits_app, project_dir, weights):
    """Loaded through Artifacts, the handler agrees with the reference forward pass."""
    import secureserve as ss

    model = digits_app.Digits()
    model.load(ss.Artifacts(project_dir / "models"))
    images = [ZERO, ONE, SEVEN]
    predictions = model.predict([digits_app.Digit(pixels=p) for p in images])
    probs = forward(weights, np.array(images))
    assert [p.digit for p in predictions] == [0, 1, 7]
    assert [p.score for p in predictions] == pytest.approx([row.max() for row in probs], abs=1e-6)
    assert [len(p.scores) for p in predictions] == [10, 10, 10]  # the policy cuts them


# --- HTTP, through the in-process test client (needs the secureserve core) -------


@pytest.fixture(scope="module")
def client(digits_app: ModuleType, project_dir: Path) -> Iterator[Any]:
    """Serve the example in process; the client holds a fresh key with role ``predict``."""
    from secureserve.testing import TestClient

    with TestClient(digits_app.Digits, project_dir=project_dir) as test_client:
        yield test_client


def test_digits_predict_zero(client):
    """An image of a zero comes back as digit 0, with the answering model version."""
    r = client.predict([{"pixels": ZERO}])
    assert r.status_code == 200
    assert r.headers["x-model-version"] == "1.0.0"
    (prediction,) = r.json()["predictions"]
    assert prediction["digit"] == 0
    assert 0.5 < prediction["score"] <= 1.0
    # the output policy of secureserve.toml: the three best digits, rounded to 2 decimals
    assert prediction["score"] == round(prediction["score"], 2)
    assert len(prediction["scores"]) == 3
    assert prediction["scores"]["0"] == prediction["score"]


def test_digits_predict_batch_keeps_order(client):
    """Several images in one request get one prediction each, in request order."""
    r = client.predict([{"pixels": p} for p in (SEVEN, ZERO, ONE)])
    assert r.status_code == 200
    assert [p["digit"] for p in r.json()["predictions"]] == [7, 0, 1]


@pytest.mark.parametrize(
    ("instance", "path"),
    [
        ({"pixels": [*ZERO[:63], 17]}, "instances[0].pixels[63]"),
        ({"pixels": [-1, *ZERO[1:]]}, "instances[0].pixels[0]"),
        ({"pixels": ZERO[:63]}, "instances[0].pixels"),
        ({"pixels": [*ZERO, 0]}, "instances[0].pixels"),
        ({"pixels": [*ZERO[:5], "x", *ZERO[6:]]}, "instances[0].pixels[5]"),
        ({"pixels": ZERO, "label": 0}, "instances[0]"),
        ({}, "instances[0]"),
    ],
    ids=["above-max", "negative", "too-short", "too-long", "string", "unknown-field", "missing"],
)
def test_digits_predict_rejects_invalid_instance(client, instance, path):
    """An image outside the schema is a 422 problem whose detail names the field path."""
    r = client.predict([instance])
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 422
    assert path in body["detail"]
    assert body["request_id"] == r.headers["x-request-id"]
    assert "msgspec" not in r.text


def test_digits_predict_requires_credentials(client):
    """Without a key the request is a 401 that asks for a bearer token and says nothing else."""
    r = client.anonymous().post(PREDICT_PATH, json={"instances": [{"pixels": ZERO}]})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "predictions" not in r.json()
