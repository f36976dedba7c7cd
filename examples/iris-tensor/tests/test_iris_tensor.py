"""The iris tensor example: its file is the iris example's, and /v2 answers with it."""

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

INFER = "/v2/models/iris/infer"
ROWS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]


def test_the_onnx_file_is_the_iris_examples(project_dir: Path) -> None:
    """One model, two ways to serve it: the bytes must not drift apart."""
    here = (project_dir / "models" / "iris.onnx").read_bytes()
    assert here == (project_dir.parent / "iris" / "models" / "iris.onnx").read_bytes()


@pytest.fixture
def client(tensor_app: ModuleType, project_dir: Path) -> Iterator[Any]:
    """An in-process client with a fresh API key (role predict)."""
    from secureserve.testing import TestClient

    with TestClient(tensor_app.IrisTensor, project_dir=project_dir) as test_client:
        yield test_client


def test_metadata_names_the_graphs_tensors(client: Any) -> None:
    """GET /v2/models/iris: the inputs and outputs come from the graph."""
    meta = client.get("/v2/models/iris").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 3]}]


def test_each_species_is_recognised(client: Any) -> None:
    """The first flower of each species, in one JSON request, gets its class."""
    body = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": ROWS}]}
    reply = client.post(INFER, json=body)
    assert reply.status_code == 200
    (probs,) = reply.json()["outputs"]
    assert list(np.array(probs["data"]).reshape(3, 3).argmax(axis=1)) == [0, 1, 2]
