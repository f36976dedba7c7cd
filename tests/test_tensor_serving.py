"""secureserve.tensor_serving: a tensor model's defenses, from its profile to /v2 answers."""

from __future__ import annotations

import asyncio
import io
import json

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


def test_waiting_requests_run_as_one_batch_and_get_their_own_rows(tmp_path, monkeypatch):
    from secureserve.tensor_serving import TensorRunner

    instance = _iris_graph(tensor_project(tmp_path, monkeypatch))
    runs: list[int] = []
    infer = instance.infer

    def counted(inputs, wanted, options=None):
        runs.append(len(inputs["x"]))
        return infer(inputs, wanted, options)

    instance.infer = counted
    runner = TensorRunner(instance, max_batch=8, timeout=5)
    rows = np.array(ROWS * 3, dtype=np.float32)  # 6 rows: 3 requests of 2

    async def main():
        alone = [await runner.infer({"x": rows[:2]}, ["probs"], 2)]
        together = await asyncio.gather(
            *(runner.infer({"x": rows[i : i + 2]}, ["probs"], 2) for i in (0, 2, 4))
        )
        return alone, together

    alone, together = asyncio.run(main())
    runner.close()
    assert runs == [2, 6]  # the three waiting requests: one session run
    expected = infer({"x": rows}, ["probs"])[0][2]
    for i, outputs in enumerate(together):
        [(name, datatype, array)] = outputs
        assert (name, datatype, array.shape) == ("probs", "FP32", (2, 3))
        assert np.allclose(array, expected[2 * i : 2 * i + 2])
    assert np.allclose(alone[0][0][2], expected[:2])


def test_requests_that_do_not_fit_together_run_apart(tmp_path, monkeypatch):
    from secureserve.tensor_serving import TensorRunner

    instance = _iris_graph(tensor_project(tmp_path, monkeypatch))
    runs: list[int] = []
    infer = instance.infer

    def flaky(inputs, wanted, options=None):
        runs.append(len(inputs["x"]))
        if len(inputs["x"]) == 3:  # the merged run fails: each request is retried alone
            raise RuntimeError("merged run failed")
        return infer(inputs, wanted, options)

    instance.infer = flaky
    runner = TensorRunner(instance, max_batch=8, timeout=5)
    x = np.array(ROWS, dtype=np.float32)

    async def main():
        return await asyncio.gather(
            runner.infer({"x": x[:1]}, ["probs"], 1),
            runner.infer({"x": x}, ["probs"], 2),
            return_exceptions=True,
        )

    one, two = asyncio.run(main())
    runner.close()
    assert runs == [3, 1, 2]
    assert one[0][2].shape == (1, 3)
    assert two[0][2].shape == (2, 3)
