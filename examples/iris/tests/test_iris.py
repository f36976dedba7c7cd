"""Tests of the iris example: the committed model files, the handler, the HTTP API.

The model-level tests need only onnx/onnxruntime (plus scikit-learn, a dev
dependency, for those that retrain or read the bundled data). The HTTP tests go
through ``secureserve.testing.TestClient``, in process, with a fresh API key;
they and the handler test need the secureserve core.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

LABELS = ["setosa", "versicolor", "virginica"]
# The first flower of each species in the Iris data (rows 0, 50 and 100).
SETOSA = [5.1, 3.5, 1.4, 0.2]
VERSICOLOR = [7.0, 3.2, 4.7, 1.4]
VIRGINICA = [6.3, 3.3, 6.0, 2.5]
PREDICT_PATH = "/v1/models/iris:predict"


@pytest.fixture(scope="module")
def session(project_dir: Path) -> ort.InferenceSession:
    """Open the committed ONNX model in a plain onnxruntime session."""
    return ort.InferenceSession(
        project_dir / "models" / "iris.onnx", providers=["CPUExecutionProvider"]
    )


# --- model files ------------------------------------------------------------


def test_iris_export_matches_committed_files(iris_train, project_dir, tmp_path):
    """Re-running the export of train.py yields exactly the committed bytes."""
    iris_train.export(tmp_path)
    for name in ("iris.onnx", "labels.json"):
        assert (tmp_path / name).read_bytes() == (project_dir / "models" / name).read_bytes(), name
    iris_train.write_check_data(tmp_path / "check.jsonl")
    committed = (project_dir / "data" / "check.jsonl").read_bytes()
    assert (tmp_path / "check.jsonl").read_bytes() == committed


def test_iris_labels_file(project_dir):
    """labels.json lists the three species in class-index order."""
    assert json.loads((project_dir / "models" / "labels.json").read_text("utf-8")) == LABELS


def test_iris_onnx_graph_interface(project_dir):
    """The graph is valid, opset 17, standard ops only: x float32 [N,4] -> probs float32 [N,3]."""
    model = onnx.load(project_dir / "models" / "iris.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.ir_version <= 10  # readable by onnxruntime 1.20
    assert {node.domain for node in model.graph.node} == {""}
    assert [node.op_type for node in model.graph.node] == ["MatMul", "Add", "Softmax"]

    def describe(value: onnx.ValueInfoProto) -> tuple[str, int, list[Any]]:
        tensor = value.type.tensor_type
        return value.name, tensor.elem_type, [d.dim_param or d.dim_value for d in tensor.shape.dim]

    float32 = onnx.TensorProto.FLOAT
    assert [describe(v) for v in model.graph.input] == [("x", float32, ["N", 4])]
    assert [describe(v) for v in model.graph.output] == [("probs", float32, ["N", 3])]


def test_iris_onnx_classifies_one_flower_per_species(session):
    """Each species' first flower gets its own label; each row of probs sums to 1."""
    x = np.array([SETOSA, VERSICOLOR, VIRGINICA], dtype=np.float32)
    (probs,) = session.run(["probs"], {"x": x})
    assert probs.dtype == np.float32
    assert probs.shape == (3, 3)
    assert probs.argmax(axis=1).tolist() == [0, 1, 2]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_iris_onnx_accuracy_on_bundled_data(iris_train, session):
    """The ONNX model is at least 90% accurate on all of the Iris data and on the held-out part."""
    x_train, x_test, y_train, y_test = iris_train.load_split()
    everything = (np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]))
    for x, y in (everything, (x_test, y_test)):
        (probs,) = session.run(["probs"], {"x": x.astype(np.float32)})
        assert np.mean(probs.argmax(axis=1) == y) >= 0.9


# --- the handler, without HTTP (needs the secureserve core) ------------------


def test_iris_handler_predicts_without_http(iris_app, project_dir):
    """Loaded through Artifacts, the handler labels one flower per species, with its score."""
    import secureserve as ss

    model = iris_app.Iris()
    model.load(ss.Artifacts(project_dir / "models"))
    flowers = [iris_app.Flower(features=f) for f in (SETOSA, VERSICOLOR, VIRGINICA)]
    predictions = model.predict(flowers)
    assert [p.label for p in predictions] == LABELS
    assert all(0.5 < p.score <= 1.0 for p in predictions)


# --- HTTP, through the in-process test client (needs the secureserve core) -------


@pytest.fixture(scope="module")
def client(iris_app: ModuleType, project_dir: Path) -> Iterator[Any]:
    """Serve the example in process; the client holds a fresh key with role ``predict``."""
    from secureserve.testing import TestClient

    with TestClient(iris_app.Iris, project_dir=project_dir) as test_client:
        yield test_client


def test_iris_predict_setosa(client):
    """A setosa flower comes back labelled setosa (label only, the policy of role predict)."""
    r = client.predict([{"features": SETOSA}])
    assert r.status_code == 200
    assert r.headers["x-model-version"] == "1.0.0"
    assert r.json() == {"predictions": [{"label": "setosa"}]}


def test_iris_analysts_see_the_score_rounded(iris_app, project_dir):
    """A key that also holds the custom role analyst gets the probability, 2 decimals."""
    from secureserve.testing import TestClient

    with TestClient(iris_app.Iris, project_dir=project_dir, roles=("predict", "analyst")) as c:
        (prediction,) = c.predict([{"features": SETOSA}]).json()["predictions"]
    assert prediction["label"] == "setosa"
    assert 0.5 < prediction["score"] <= 1.0
    assert prediction["score"] == round(prediction["score"], 2)


def test_iris_predict_batch_keeps_order(client):
    """Several instances in one request get one prediction each, in request order."""
    r = client.predict([{"features": f} for f in (VIRGINICA, SETOSA, VERSICOLOR)])
    assert r.status_code == 200
    labels = [p["label"] for p in r.json()["predictions"]]
    assert labels == ["virginica", "setosa", "versicolor"]


@pytest.mark.parametrize(
    ("instance", "path"),
    [
        ({"features": [5.1, 3.5, 1.4, 99]}, "instances[0].features[3]"),
        ({"features": [5.1, -3.5, 1.4, 0.2]}, "instances[0].features[1]"),
        ({"features": [5.1, 3.5, 1.4]}, "instances[0].features"),
        ({"features": [5.1, 3.5, 1.4, 0.2, 1.0]}, "instances[0].features"),
        ({"features": [5.1, 3.5, "1.4", 0.2]}, "instances[0].features[2]"),
        ({"features": SETOSA, "colour": "blue"}, "instances[0]"),
        ({}, "instances[0]"),
    ],
    ids=["above-max", "negative", "too-short", "too-long", "string", "unknown-field", "missing"],
)
def test_iris_predict_rejects_invalid_instance(client, instance, path):
    """An instance outside the schema is a 422 problem whose detail names the field path."""
    r = client.predict([instance])
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 422
    assert path in body["detail"]
    assert body["request_id"] == r.headers["x-request-id"]
    assert "msgspec" not in r.text


def test_iris_predict_requires_credentials(client):
    """Without a key the request is a 401 that asks for a bearer token and says nothing else."""
    r = client.anonymous().post(PREDICT_PATH, json={"instances": [{"features": SETOSA}]})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "predictions" not in r.json()
