"""secureserve.v2 and ss.TensorModel: the Open Inference Protocol routes over an ONNX file."""

from __future__ import annotations

import gzip
import json
import struct
import sys
import zlib

import numpy as np
import pytest
from app_helpers import asgi_client, bearer, build_app, replaced
from conftest import copy_example

from secureserve.cli import main
from secureserve.cli._common import import_handler
from secureserve.config import load_settings
from secureserve.errors import ConfigError
from secureserve.keys import mint_key

TENSOR_APP = """
import secureserve as ss


class IrisTensor(ss.TensorModel):
    name = "iris"
    version = "1"
    file = "iris.onnx"
"""
FULL = '\n[model.output]\npolicy = "full"\n'
INFER = "/v2/models/iris/infer"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def tensor_project(tmp_path, monkeypatch, extra: str = FULL):
    """examples/iris served as a tensor model: its ONNX file, no code but the class."""
    project = copy_example("iris", tmp_path / "iris", monkeypatch)
    (project / "app.py").write_text(TENSOR_APP)
    config = project / "secureserve.toml"
    text = config.read_text().replace('handler = "app:Iris"', 'handler = "app:IrisTensor"')
    # the example's own [model.output] table goes: a tensor model states its policy
    head, _, _ = text.partition("[model.output]")
    config.write_text(head + extra)
    monkeypatch.chdir(project)
    assert main(["lock"]) == 0
    return project


def tensor_app(project, *keys, **changes):
    limits = {"per_principal": None, "quota": None, **changes.pop("limits", {})}
    settings = replaced(
        load_settings(project_dir=project),
        audit={"path": project / "audit" / "audit.jsonl"},
        limits=limits,
        **changes,
    )
    return build_app(import_handler("app:IrisTensor", project), settings, *keys)


def infer_body(rows=ROWS, **extra):
    tensor = {"name": "x", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}
    return {"inputs": [tensor], **extra}


@pytest.fixture
def served(tmp_path, monkeypatch):
    project = tensor_project(tmp_path, monkeypatch)
    key = mint_key(name="client", roles=("predict",))
    with asgi_client(tensor_app(project, key), key) as client:
        yield client


def test_a_tensor_model_with_scores_needs_an_explicit_full_policy(tmp_path, monkeypatch):
    project = tensor_project(tmp_path, monkeypatch, extra="")
    with pytest.raises(ConfigError, match=r'\[model.output\] policy: .*probs.* policy = "full"'):
        tensor_app(project)
    del sys.modules["app"]


def test_metadata_comes_from_the_graph(served):
    meta = served.get("/v2/models/iris").json()
    assert meta["name"] == "iris"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 3]}]
    assert served.get("/v2/models/iris/versions/1").status_code == 200
    assert served.get("/v2/models/iris/ready").json() == {"name": "iris", "ready": True}
    server = served.get("/v2").json()
    assert server == {"name": "secureserve", "version": "2", "extensions": ["binary_tensor_data"]}


def test_json_inference_answers_every_row_and_echoes_the_id(served):
    reply = served.post(INFER, json=infer_body(id="req-7"))
    assert reply.status_code == 200
    body = reply.json()
    assert body["id"] == "req-7"
    assert body["model_name"] == "iris"
    assert body["model_version"] == "1"
    (probs,) = body["outputs"]
    assert probs["name"] == "probs"
    assert probs["shape"] == [2, 3]
    values = np.array(probs["data"]).reshape(2, 3)
    assert np.allclose(values.sum(axis=1), 1.0, atol=1e-5)
    assert values[0].argmax() == 0  # setosa
    assert values[1].argmax() == 2  # virginica


def test_binary_inference_both_ways(served):
    data = np.array(ROWS, dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": data.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    reply = served.post(
        INFER,
        content=header + data.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/octet-stream"
    length = int(reply.headers["inference-header-content-length"])
    meta = json.loads(reply.content[:length])
    (probs,) = meta["outputs"]
    assert probs["parameters"]["binary_data_size"] == 2 * 3 * 4
    values = np.frombuffer(reply.content[length:], dtype="<f4").reshape(2, 3)
    assert values[1].argmax() == 2


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_are_inflated(served, encoding):
    raw = json.dumps(infer_body()).encode()
    packed = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    reply = served.post(INFER, content=packed, headers={"Content-Encoding": encoding})
    assert reply.status_code == 200


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"),
    [
        (infer_body([[1.0, 2.0, 3.0]]), {}, 400, "shape"),
        (
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]},
            {},
            400,
            "FP32",
        ),
        (
            {"inputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            {},
            400,
            "x",
        ),
        (infer_body(outputs=[{"name": "no'pe"}]), {}, 400, "no output named 'no\\'pe'"),
        ({**infer_body(), "extra\u001b": 1}, {}, 400, "$: unknown field 'extra\\x1b'"),
        (infer_body(), {"Content-Encoding": "br"}, 415, "gzip"),
    ],
)
def test_bad_requests_are_problems_with_the_protocols_error_member(
    served, body, headers, status, needle
):
    reply = served.post(INFER, content=json.dumps(body).encode(), headers=headers)
    assert reply.status_code == status
    problem = reply.json()
    assert needle in problem["error"]
    assert problem["status"] == status
    assert "Traceback" not in reply.text


def test_a_zip_bomb_is_413_before_it_is_inflated(served):
    bomb = gzip.compress(b" " * (8 << 20))  # 8 MiB of spaces, a few KiB packed
    reply = served.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"})
    assert reply.status_code == 413
    assert "once inflated" in reply.json()["error"]


def test_unknown_models_versions_and_the_v1_routes(served):
    assert served.post("/v2/models/other/infer", json=infer_body()).status_code == 404
    assert served.post("/v2/models/iris/versions/2/infer", json=infer_body()).status_code == 404
    assert served.post("/v2/models/iris/versions/1/infer", json=infer_body()).status_code == 200
    v1 = served.post("/v1/models/iris:predict", json={"instances": [{"features": ROWS[0]}]})
    assert v1.status_code == 404
    assert "served over /v2" in v1.json()["detail"]


def test_credentials_roles_and_probes(tmp_path, monkeypatch):
    project = tensor_project(tmp_path, monkeypatch)
    reader = mint_key(name="reader", roles=("metrics",))
    app = tensor_app(project, reader)
    with asgi_client(app) as client:
        anonymous = client.post(INFER, json=infer_body())
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "Unauthorized: no bearer token"
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        forbidden = client.post(INFER, json=infer_body(), headers=bearer(reader))
        assert forbidden.status_code == 403


def test_limits_are_charged_per_row(tmp_path, monkeypatch):
    project = tensor_project(tmp_path, monkeypatch)
    key = mint_key(name="k", roles=("predict",))
    limits = {"per_principal": "5/minute"}
    app = tensor_app(project, key, server={"max_instances": 4}, limits=limits)
    with asgi_client(app, key) as client:
        too_many = client.post(INFER, json=infer_body(ROWS * 3))  # 6 rows: costs 1, 422
        first = client.post(INFER, json=infer_body(ROWS * 2))  # 4 rows: 5 of 5
        second = client.post(INFER, json=infer_body(ROWS))  # 2 more: over 5
    assert first.status_code == 200
    assert second.status_code == 429
    assert too_many.status_code == 422


def test_bytes_tensors_go_binary_with_length_prefixes():
    """The binary BYTES layout tritonclient sends: a 4-byte little-endian length each."""
    from secureserve.tensors import decode_request

    items = [b"ab", b""]
    blob = b"".join(struct.pack("<I", len(i)) + i for i in items)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "t",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    request = decode_request(header + blob, len(header), max_elements=10)
    assert list(request.inputs["t"]) == items


def test_a_server_without_tensor_models_has_no_v2_routes(tmp_path, monkeypatch):
    project = copy_example("iris", tmp_path / "plain", monkeypatch)
    key = mint_key(name="k", roles=("predict",))
    settings = replaced(
        load_settings(project_dir=project), audit={"path": project / "audit" / "a.jsonl"}
    )
    app = build_app(import_handler("app:Iris", project), settings, key)
    with asgi_client(app, key) as client:
        assert client.get("/v2").status_code == 404
        assert client.post(INFER, json=infer_body()).status_code == 404


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Origin": "https://evil.example"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Content-Type": "application/json; charset=utf-8"}, 200),
        ({"Content-Type": "application/octet-stream"}, 200),
    ],
)
def test_only_what_protocol_clients_send_is_taken(served, headers, status):
    """No form or cross-site fetch from a web page can run inference in a user's name."""
    reply = served.post(INFER, content=json.dumps(infer_body()).encode(), headers=headers)
    assert reply.status_code == status


def test_a_repeated_content_encoding_is_refused(served):
    raw = gzip.compress(json.dumps(infer_body()).encode())
    reply = served.post(
        INFER,
        content=raw,
        headers=[("Content-Encoding", "gzip"), ("Content-Encoding", "identity")],
    )
    assert reply.status_code == 400


def test_every_float_output_is_a_score_unless_the_class_says_otherwise(tmp_path, monkeypatch):
    """A sigmoid of shape [N, 1] is a probability too: no full policy, no start."""
    from onnx import TensorProto, helper, numpy_helper

    project = tensor_project(tmp_path, monkeypatch, extra="")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["p"]),
        ],
        "binary",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(np.ones((4, 1), dtype=np.float32), name="W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (project / "models" / "iris.onnx").write_bytes(model.SerializeToString())
    assert main(["lock"]) == 0
    with pytest.raises(ConfigError, match=r"outputs p are class scores"):
        tensor_app(project)
    (project / "app.py").write_text(TENSOR_APP + "    scores = ()  # p is a regression\n")
    del sys.modules["app"]
    key = mint_key(name="k", roles=("predict",))
    with asgi_client(tensor_app(project, key), key) as client:
        assert client.post(INFER, json=infer_body()).status_code == 200


def test_v2_requests_have_their_own_route_in_the_metrics(tmp_path, monkeypatch):
    project = tensor_project(tmp_path, monkeypatch)
    key = mint_key(name="k", roles=("predict", "metrics"))
    with asgi_client(tensor_app(project, key), key) as client:
        assert client.post(INFER, json=infer_body()).status_code == 200
        text = client.get("/metrics").text
    assert 'secureserve_requests_total{route="infer",status="200"} 1.0' in text
