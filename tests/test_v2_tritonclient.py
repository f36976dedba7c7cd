"""The real ``tritonclient.http`` against ``secureserve run`` over TLS: existing clients work.

The iris example as an ``ss.TensorModel`` serves metadata, readiness, FP32 inference
in JSON and in binary, and each refusal a client must see as a clean
``InferenceServerException`` with its status; a second model over INT64, BOOL and
BYTES (string) tensors serves those datatypes both ways.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from server_helpers import running_server
from test_v2 import ROWS, tensor_project

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (dev extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        project = tensor_project(tmp_path_factory.mktemp("v2"), monkeypatch)
        with running_server(project, dev=True) as running:
            yield running
    finally:
        monkeypatch.undo()


def client(server):
    return httpclient.InferenceServerClient(
        url=f"127.0.0.1:{server.port}", ssl=True, ssl_options={"ca_certs": str(server.ca)}
    )


def auth(server, key=None):
    return {"Authorization": f"Bearer {key or server.key}"}


def rows_input(binary: bool, rows=ROWS, datatype="FP32"):
    tensor = httpclient.InferInput("x", [len(rows), 4], datatype)
    tensor.set_data_from_numpy(
        np.array(rows, dtype=np.float32 if datatype == "FP32" else np.int64), binary_data=binary
    )
    return tensor


def test_metadata_and_readiness(server):
    with client(server) as triton:
        assert triton.is_server_live()
        assert triton.is_server_ready()
        assert triton.is_model_ready("iris", headers=auth(server))
        meta = triton.get_model_metadata("iris", headers=auth(server))
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert triton.get_server_metadata(headers=auth(server))["extensions"] == [
            "binary_tensor_data"
        ]


@pytest.mark.parametrize("binary", [False, True])
def test_inference_in_json_and_in_binary(server, binary):
    wanted = [httpclient.InferRequestedOutput("probs", binary_data=binary)]
    with client(server) as triton:
        result = triton.infer(
            "iris", [rows_input(binary)], outputs=wanted, headers=auth(server), request_id="r1"
        )
    probs = result.as_numpy("probs")
    assert probs.shape == (2, 3)
    assert list(probs.argmax(axis=1)) == [0, 2]
    assert result.get_response()["id"] == "r1"


def test_default_binary_outputs_and_compression(server):
    with client(server) as triton:
        result = triton.infer(
            "iris",
            [rows_input(True)],
            headers=auth(server),
            request_compression_algorithm="gzip",
        )
    assert result.as_numpy("probs").shape == (2, 3)


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("wrong shape", "400"),
        ("wrong datatype", "400"),
        ("unknown model", "404"),
        ("no key", "401"),
        ("body too large", "413"),
    ],
)
def test_refusals_are_clean_exceptions_with_their_status(server, case, status):
    model, inputs, headers = "iris", [rows_input(True)], auth(server)
    if case == "wrong shape":
        tensor = httpclient.InferInput("x", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        inputs = [tensor]
    elif case == "wrong datatype":
        inputs = [rows_input(True, datatype="INT64")]
    elif case == "unknown model":
        model = "nope"
    elif case == "no key":
        headers = None
    elif case == "body too large":
        tensor = httpclient.InferInput("x", [100_000, 4], "FP32")
        tensor.set_data_from_numpy(np.zeros((100_000, 4), dtype=np.float32), binary_data=False)
        inputs = [tensor]
    with client(server) as triton, pytest.raises(InferenceServerException) as caught:
        triton.infer(model, inputs, headers=headers)
    assert caught.value.status() == status
    assert caught.value.message()  # the error member, read by tritonclient
    assert "Traceback" not in caught.value.message()


KINDS_APP = """
import secureserve as ss


class Kinds(ss.TensorModel):
    name = "kinds"
    file = "kinds.onnx"
"""


def kinds_project(root):
    """A tensor model over INT64, BOOL and BYTES: counts echoed, flags negated, words echoed."""
    from onnx import TensorProto, helper

    def io(name, kind, width):
        return helper.make_tensor_value_info(name, kind, ["N", width])

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["counts"], ["counts_out"]),
            helper.make_node("Not", ["flags"], ["flags_out"]),
            helper.make_node("Identity", ["words"], ["words_out"]),
        ],
        "kinds",
        [
            io("counts", TensorProto.INT64, 2),
            io("flags", TensorProto.BOOL, 2),
            io("words", TensorProto.STRING, 1),
        ],
        [
            io("counts_out", TensorProto.INT64, 2),
            io("flags_out", TensorProto.BOOL, 2),
            io("words_out", TensorProto.STRING, 1),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (root / "models").mkdir(parents=True)
    (root / "models" / "kinds.onnx").write_bytes(model.SerializeToString())
    (root / "app.py").write_text(KINDS_APP)
    (root / "secureserve.toml").write_text('[model]\nhandler = "app:Kinds"\n')
    subprocess.run(
        [sys.executable, "-m", "secureserve.cli", "lock"], cwd=root, check=True, capture_output=True
    )
    return root


@pytest.fixture(scope="module")
def kinds_server(tmp_path_factory):
    project = kinds_project(tmp_path_factory.mktemp("kinds"))
    with running_server(project, dev=True) as running:
        yield running


@pytest.mark.parametrize("binary", [False, True])
def test_int64_bool_and_bytes_tensors_both_ways(kinds_server, binary):
    counts = np.array([[1, -(2**40)], [7, 0]], dtype=np.int64)
    flags = np.array([[True, False], [False, False]])
    words = np.array([["héllo".encode()], [b""]], dtype=np.object_)
    inputs = []
    for name, datatype, data in (
        ("counts", "INT64", counts),
        ("flags", "BOOL", flags),
        ("words", "BYTES", words),
    ):
        tensor = httpclient.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        inputs.append(tensor)
    wanted = [
        httpclient.InferRequestedOutput(n, binary_data=binary)
        for n in ("counts_out", "flags_out", "words_out")
    ]
    with client(kinds_server) as triton:
        result = triton.infer("kinds", inputs, outputs=wanted, headers=auth(kinds_server))
    np.testing.assert_array_equal(result.as_numpy("counts_out"), counts)
    np.testing.assert_array_equal(result.as_numpy("flags_out"), ~flags)
    assert [
        w.decode() if isinstance(w, bytes) else w for w in result.as_numpy("words_out").ravel()
    ] == ["héllo", ""]
