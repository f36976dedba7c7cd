"""secureserve.tensor_serving: a tensor model's defenses, from its profile to /v2 answers."""

from __future__ import annotations

import asyncio
import io
import json
import time

import numpy as np
import onnx
import pytest
from app_helpers import asgi_client, bearer, json_lines, json_logs
from conftest import EXAMPLES
from onnx import TensorProto, helper
from test_v2 import FULL, INFER, ROWS, infer_body, tensor_app, tensor_project

from secureserve.cli import main
from secureserve.cli._common import import_handler
from secureserve.errors import ConfigError
from secureserve.keys import mint_key
from secureserve.profile import read_rows

CALLER = mint_key(name="caller", roles=("predict",))
ADMIN = mint_key(name="admin", roles=("admin",))
#: Far outside every iris measurement (each value still a valid FP32).
OUTLIER = [[50.0, 50.0, 50.0, 50.0]]
REFUSE = '\n[model.guard]\nmode = "refuse"\n'


def iris_rows() -> list[list[float]]:
    """The 150 flowers of examples/iris/data/check.jsonl, one row of 4 numbers each."""
    lines = (EXAMPLES / "iris" / "data" / "check.jsonl").read_text().splitlines()
    return [json.loads(line)["instance"]["features"] for line in lines]


def profiled(tmp_path, monkeypatch, extra: str = ""):
    """The iris tensor project with a profile of its data written by `secureserve profile`."""
    project = tensor_project(tmp_path, monkeypatch, extra=FULL + extra)
    data = project / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in iris_rows()))
    assert main(["profile", str(data)]) == 0
    assert main(["lock"]) == 0
    return project


def test_profile_names_the_input_columns_and_the_guard_refuses_outliers(tmp_path, monkeypatch):
    project = profiled(tmp_path, monkeypatch, extra=REFUSE)
    profile = json.loads((project / "models" / "profile.json").read_text())
    assert [f["name"] for f in profile["features"]] == ["x[0]", "x[1]", "x[2]", "x[3]"]
    assert profile["count"] == 150
    with asgi_client(tensor_app(project, CALLER), CALLER) as client:
        usual = client.post(INFER, json=infer_body())
        outlier = client.post(INFER, json=infer_body(ROWS + OUTLIER))
    assert usual.status_code == 200
    assert outlier.status_code == 422
    problem = outlier.json()
    assert problem["type"] == "urn:secureserve:problem:out-of-distribution"
    assert problem["error"]  # the member tritonclient reads


def test_flag_mode_answers_and_records_the_flagged_rows(tmp_path, monkeypatch):
    project = profiled(tmp_path, monkeypatch, extra='\n[model.guard]\nmode = "flag"\n')
    with asgi_client(tensor_app(project, CALLER), CALLER) as client:
        reply = client.post(INFER, json=infer_body(ROWS + OUTLIER))
    assert reply.status_code == 200
    assert reply.json()["outputs"][0]["shape"] == [3, 3]
    audit = (project / "audit" / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in audit]
    [request] = [r for r in records if r.get("route") == "infer"]
    assert request["flagged"] == [2]


def test_drift_and_extraction_statistics_are_served_for_tensor_models(tmp_path, monkeypatch):
    project = profiled(tmp_path, monkeypatch)
    with asgi_client(tensor_app(project, CALLER, ADMIN), CALLER) as client:
        for _ in range(3):
            assert client.post(INFER, json=infer_body()).status_code == 200
        drift = client.get("/v1/models/iris/drift", headers=bearer(ADMIN))
        principals = client.get("/v1/models/iris/principals", headers=bearer(ADMIN))
    assert drift.status_code == 200
    report = drift.json()
    assert report["filled"] == 6
    assert {f["feature"] for f in report["features"]} <= {"x[0]", "x[1]", "x[2]", "x[3]"}
    assert principals.status_code == 200
    [tracked] = principals.json()["principals"]
    assert tracked["queries"] == 6  # every answered row was seen by extraction detection


def two_input_graph(path) -> None:
    """An ONNX graph with two FP32 [-1, 4] inputs (no single feature input to read)."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 4])
    out = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["n", 4])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "two", [a, b], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_a_graph_without_a_feature_input_starts_with_the_defenses_off(tmp_path, monkeypatch):
    project = tensor_project(tmp_path, monkeypatch)
    two_input_graph(project / "models" / "iris.onnx")
    assert main(["lock"]) == 0
    with (
        json_logs(io.BytesIO()) as logs,
        asgi_client(tensor_app(project, CALLER), CALLER) as client,
    ):
        assert client.get("/v2/models/iris").status_code == 200
    lines = json_lines(logs)
    [off] = [line for line in lines if line["event"].startswith("model defenses that need")]
    assert "has 2 inputs" in off["reason"]
    [defenses] = [line for line in lines if line["event"] == "model defenses"]
    assert (defenses["guard"], defenses["drift"], defenses["extraction"]) == ("off",) * 3


def test_a_profile_for_a_graph_without_a_feature_input_is_refused(tmp_path, monkeypatch, capsys):
    project = tensor_project(tmp_path, monkeypatch, extra=FULL + REFUSE)
    two_input_graph(project / "models" / "iris.onnx")
    assert main(["lock"]) == 0
    needs_view = r"\[model.guard\] mode needs the model's feature view, but iris.onnx has 2 inputs"
    with pytest.raises(ConfigError, match=needs_view):
        tensor_app(project, CALLER)
    assert main(["profile", "rows.jsonl"]) == 1
    assert "iris has no feature view to profile: iris.onnx has 2 inputs" in capsys.readouterr().err


def test_read_rows_names_bad_lines(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("[1, 2]\n[[3], [4]]\n")  # nested or flat: one instance each
    assert read_rows(good, ("x[0]", "x[1]"), np.dtype(np.uint8)).tolist() == [[1, 2], [3, 4]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('[1, 2]\n[1, 2, 3]\n{"x": 1}\n')
    with pytest.raises(ConfigError) as caught:
        read_rows(bad, ("x[0]", "x[1]"), np.dtype(np.uint8))
    assert "line 2: 3 numbers, expected 2" in str(caught.value)
    assert "line 3: not a JSON array of numbers" in str(caught.value)
    bad.write_text("[1, 2]\n[300, 1]\n[1.5, 1]\n[-1, 0]\n")
    with pytest.raises(ConfigError) as caught:
        read_rows(bad, ("x[0]", "x[1]"), np.dtype(np.uint8))
    for line in (2, 3, 4):
        assert f"line {line}: not a finite uint8 value" in str(caught.value)
    assert "line 1" not in str(caught.value)
    csv = tmp_path / "rows.csv"
    csv.write_text("x[1],x[0]\n2,1\n1,300\n")
    with pytest.raises(ConfigError, match=r"line 3: not a finite uint8 value"):
        read_rows(csv, ("x[0]", "x[1]"), np.dtype(np.uint8))
    assert read_rows(csv, ("x[0]", "x[1]"), np.dtype(np.float32)).tolist() == [[1, 2], [300, 1]]
    npy = tmp_path / "rows.npy"
    np.save(npy, np.array([[0.5, np.inf]]))
    with pytest.raises(ConfigError, match=r"row 0: not a finite float32 value"):
        read_rows(npy, ("x[0]", "x[1]"), np.dtype(np.float32))


def test_metadata_and_reload_over_v1_admin_routes(tmp_path, monkeypatch):
    """A tensor model is reloaded alone, verified, by POST /v1/models/{name}:reload."""
    project = profiled(tmp_path, monkeypatch)
    with asgi_client(tensor_app(project, CALLER, ADMIN), CALLER) as client:
        before = client.get("/v1/models/iris", headers=bearer(ADMIN)).json()
        assert {a["name"] for a in before["artifacts"]} >= {"iris.onnx", "profile.json"}
        (project / "models" / "profile.json").write_bytes(b"{}")  # not what the lock says
        refused = client.post("/v1/models/iris:reload", headers=bearer(ADMIN))
        assert main(["profile", "rows.jsonl"]) == 0
        assert main(["lock"]) == 0
        reloaded = client.post("/v1/models/iris:reload", headers=bearer(ADMIN))
        served = client.post(INFER, json=infer_body())
    assert refused.status_code == 500
    assert refused.json()["type"] == "urn:secureserve:problem:reload-failed"
    assert reloaded.status_code == 200
    assert reloaded.json()["previous_revision"] == before["revision"]
    assert served.status_code == 200


def test_an_empty_batch_is_refused_not_fed_to_the_defenses(tmp_path, monkeypatch):
    """Shape [0, 4] decodes (no values); it is a 422, as an empty instances list on /v1."""
    project = tensor_project(tmp_path, monkeypatch)
    empty = {"inputs": [{"name": "x", "shape": [0, 4], "datatype": "FP32", "data": []}]}
    with asgi_client(tensor_app(project, CALLER), CALLER) as client:
        reply = client.post(INFER, json=empty)
    assert reply.status_code == 422
    assert reply.json()["detail"].startswith("$.inputs: 1 to ")


def _iris_graph(project):
    from secureserve.config import load_settings
    from secureserve.serving import open_model_files
    from secureserve.tensor_serving import open_graph

    settings = load_settings(project_dir=project)
    artifacts, _, _ = open_model_files(settings, settings.model, model="iris")
    return open_graph(import_handler("app:IrisTensor", project), artifacts)


def _counting_runner(tmp_path, monkeypatch, *, independent, fail_merged=False):
    """A TensorRunner over the iris graph whose session runs are counted (rows per run)."""
    from secureserve.tensor_serving import TensorRunner

    instance = _iris_graph(tensor_project(tmp_path, monkeypatch))
    monkeypatch.setattr(type(instance), "independent_rows", independent)
    runs: list[int] = []
    infer = instance.infer

    def counted(inputs, wanted, options=None):
        runs.append(len(inputs["x"]))
        if fail_merged and len(inputs["x"]) > 2:
            raise RuntimeError("merged run failed")
        return infer(inputs, wanted, options)

    instance.infer = counted
    return TensorRunner(instance, max_batch=8, timeout=5), runs, infer


def _three_waiting(runner, rows):
    async def main():
        first = await runner.infer({"x": rows[:2]}, ["probs"], 2)
        waiting = await asyncio.gather(
            *(runner.infer({"x": rows[i : i + 2]}, ["probs"], 2) for i in (0, 2, 4))
        )
        return first, waiting

    try:
        return asyncio.run(main())
    finally:
        runner.close()


def test_waiting_requests_run_as_one_batch_and_get_their_own_rows(tmp_path, monkeypatch):
    runner, runs, infer = _counting_runner(tmp_path, monkeypatch, independent=True)
    rows = np.array(ROWS * 3, dtype=np.float32)  # 6 rows: 3 requests of 2
    first, waiting = _three_waiting(runner, rows)
    assert runs == [2, 6]  # the three waiting requests: one session run
    expected = infer({"x": rows}, ["probs"])[0][2]
    for i, outputs in enumerate(waiting):
        [(name, datatype, array)] = outputs
        assert (name, datatype, array.shape) == ("probs", "FP32", (2, 3))
        assert np.allclose(array, expected[2 * i : 2 * i + 2])
    assert np.allclose(first[0][2], expected[:2])


def test_rows_are_never_merged_unless_the_class_says_they_are_independent(tmp_path, monkeypatch):
    """A graph may mix rows (batch statistics, top-k over the batch): each request alone."""
    runner, runs, _ = _counting_runner(tmp_path, monkeypatch, independent=False)
    _, waiting = _three_waiting(runner, np.array(ROWS * 3, dtype=np.float32))
    assert runs == [2, 2, 2, 2]
    assert [outputs[0][2].shape for outputs in waiting] == [(2, 3)] * 3


def test_a_failed_merged_run_is_retried_request_by_request(tmp_path, monkeypatch):
    runner, runs, _ = _counting_runner(tmp_path, monkeypatch, independent=True, fail_merged=True)
    _, waiting = _three_waiting(runner, np.array(ROWS * 3, dtype=np.float32))
    assert runs == [2, 6, 2, 2, 2]  # the merged run, then each alone, once
    assert [outputs[0][2].shape for outputs in waiting] == [(2, 3)] * 3


def test_a_run_whose_requests_all_timed_out_is_stopped_not_retried(tmp_path, monkeypatch):
    """The session sees terminate (as onnxruntime does) and no request is run again."""
    from secureserve.errors import RequestRejected
    from secureserve.tensor_serving import TensorRunner

    instance = _iris_graph(tensor_project(tmp_path, monkeypatch))
    monkeypatch.setattr(type(instance), "independent_rows", True)
    runs: list[int] = []
    infer = instance.infer

    def slow(inputs, wanted, options=None):
        runs.append(len(inputs["x"]))
        if len(inputs["x"]) > 1:  # the slow requests: until stopped (at most 5 s)
            for _ in range(500):
                if options.terminate:
                    raise RuntimeError("Exiting due to terminate flag being set to true.")
                time.sleep(0.01)
        return infer(inputs, wanted, options)

    instance.infer = slow
    runner = TensorRunner(instance, max_batch=8, timeout=0.3)
    x = np.array(ROWS, dtype=np.float32)

    async def main():
        timed_out = await asyncio.gather(
            *(runner.infer({"x": x}, ["probs"], 2) for _ in range(3)), return_exceptions=True
        )
        start = time.monotonic()
        after = await runner.infer({"x": x[:1]}, ["probs"], 1)
        return timed_out, after, time.monotonic() - start

    timed_out, after, waited = asyncio.run(main())
    runner.close()
    assert all(isinstance(e, RequestRejected) and e.status == 504 for e in timed_out)
    assert runs == [6, 1]  # stopped, never run again; then the next request
    assert after[0][2].shape == (1, 3)
    assert waited < 2.0  # the thread was free (a generous bound only a failure misses)


def test_requests_that_do_not_fit_together_run_apart(tmp_path, monkeypatch):
    """Another dtype or other outputs: separate runs (and one's failure is its own)."""
    from secureserve.errors import ModelError

    runner, runs, _ = _counting_runner(tmp_path, monkeypatch, independent=True)
    x = np.array(ROWS, dtype=np.float32)

    async def main():
        await runner.infer({"x": x[:1]}, ["probs"], 1)
        return await asyncio.gather(
            runner.infer({"x": x}, ["probs"], 2),
            runner.infer({"x": x.astype(np.float64)}, ["probs"], 2),  # the graph takes FP32
            runner.infer({"x": x}, ["probs", "probs"], 2),  # other outputs wanted
            return_exceptions=True,
        )

    try:
        same, other_dtype, other_outputs = asyncio.run(main())
    finally:
        runner.close()
    assert runs == [1, 2, 2, 2]
    assert same[0][2].shape == (2, 3)
    assert isinstance(other_dtype, ModelError)
    assert [name for name, _, _ in other_outputs] == ["probs", "probs"]


def softmax_graph(path, width: int) -> None:
    """X FP32 [n, width] -> probs = softmax(x): a graph of another input width."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", width])
    node = helper.make_node("Softmax", ["x"], ["probs"], axis=1)
    model = helper.make_model(
        helper.make_graph([node], "softmax", [x], [probs]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.save(model, path)


def test_a_reload_that_changes_the_input_width_starts_extraction_detection_afresh(
    tmp_path, monkeypatch
):
    """The old principals' histories are of 4 numbers a row: kept, they would break infer."""
    project = tensor_project(tmp_path, monkeypatch)

    def width_documented(client) -> int:
        document = client.get("/openapi.json").json()
        request = document["paths"][INFER]["post"]["requestBody"]["content"]["application/json"]
        [tensor] = request["schema"]["properties"]["inputs"]["items"]["oneOf"]
        return tensor["properties"]["shape"]["prefixItems"][1]["const"]

    with asgi_client(tensor_app(project, CALLER, ADMIN), CALLER) as client:
        assert client.post(INFER, json=infer_body()).status_code == 200
        assert width_documented(client) == 4
        softmax_graph(project / "models" / "iris.onnx", 5)
        assert main(["lock"]) == 0
        assert client.post("/v1/models/iris:reload", headers=bearer(ADMIN)).status_code == 200
        wide = {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]}
        reply = client.post(INFER, json=wide)
        principals = client.get("/v1/models/iris/principals", headers=bearer(ADMIN)).json()
        assert width_documented(client) == 5  # the document follows the graph
    assert reply.status_code == 200
    assert reply.json()["outputs"][0]["shape"] == [1, 5]
    assert [p["queries"] for p in principals["principals"]] == [1]  # a new history
