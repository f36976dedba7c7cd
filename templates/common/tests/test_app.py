"""HTTP tests of the __project_name__ model, in process through ``secureserve.testing``.

The client loads secureserve.toml and the model files exactly as ``secureserve run``
would (the signed lock is checked) and holds a fresh API key with role ``predict``.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from app import __ProjectName__
from secureserve.testing import TestClient

PROJECT_DIR = Path(__file__).resolve().parents[1]
PREDICT_PATH = "/v1/models/__project_name__:predict"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """Serve the project in process with a throw-away key."""
    with TestClient(__ProjectName__, project_dir=PROJECT_DIR) as test_client:
        yield test_client


def test_predict_labels_the_larger_feature(client: TestClient) -> None:
    """[1, 3] is labelled "second" and [3, 1] "first", in request order."""
    response = client.predict([{"features": [1.0, 3.0]}, {"features": [3.0, 1.0]}])
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["second", "first"]
    assert all(0.5 < p["score"] <= 1.0 for p in predictions)


def test_predict_rejects_invalid_instance(client: TestClient) -> None:
    """A value outside the schema is a 422 whose detail names the field path."""
    response = client.predict([{"features": [1.0, 5000.0]}])
    assert response.status_code == 422
    assert "instances[0].features[1]" in response.json()["detail"]


def test_predict_requires_credentials(client: TestClient) -> None:
    """Without a key the request is a 401 asking for a bearer token."""
    response = client.anonymous().post(PREDICT_PATH, json={"instances": [{"features": [1, 2]}]})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
