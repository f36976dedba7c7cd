"""Verified hot reload: swap only what passed every check; the old version keeps serving."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import signal
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest
from app_helpers import json_lines, json_logs
from server_helpers import copy_iris, running_server, set_toml

import secureserve as ss
from secureserve.config import load_settings
from secureserve.release import lock_project
from secureserve.serving import HandlerSource
from secureserve.signing import generate_signing_key, sign
from secureserve.testing import TestClient

FLOWER = {"features": [5.1, 3.5, 1.4, 0.2]}
RELOAD = "/v1/models/iris:reload"


def _relock(project: Path) -> None:
    lock_project(load_settings(project_dir=project, environ={}))


def _set_labels(project: Path, labels: list[str]) -> None:
    (project / "models" / "labels.json").write_text(json.dumps(labels))


def _iris(project: Path, roles=("predict", "admin")) -> TestClient:
    from app import Iris  # the copy's handler, importable because conftest puts it on sys.path

    return TestClient(Iris, project_dir=project, roles=roles)


@pytest.fixture
def project(iris_project, monkeypatch):
    """The iris project copy, importable as ``app``."""
    monkeypatch.syspath_prepend(str(iris_project))
    monkeypatch.delitem(__import__("sys").modules, "app", raising=False)
    return iris_project


def test_reload_swaps_in_a_relocked_release(project):
    """Changed files that were re-locked are served after a reload, with a new revision."""
    with _iris(project) as client:
        before = client.get("/v1/models/iris").json()["revision"]
        _set_labels(project, ["one", "two", "three"])
        _relock(project)
        reply = client.post(RELOAD)
        assert reply.status_code == 200
        body = reply.json()
        assert body["previous_revision"] == before
        assert body["revision"] != before
        assert client.get("/v1/models/iris").json()["revision"] == body["revision"]
        assert client.predict([FLOWER]).json()["predictions"][0]["label"] == "one"


def test_reload_refuses_a_tampered_file_and_keeps_serving(project):
    """A file changed without re-locking: 500 without details, and the old version answers."""
    with _iris(project) as client:
        before = client.get("/v1/models/iris").json()["revision"]
        _set_labels(project, ["evil", "evil", "evil"])
        reply = client.post(RELOAD)
        assert reply.status_code == 500
        problem = reply.json()
        assert problem["type"] == "urn:secureserve:problem:reload-failed"
        assert "labels.json" not in reply.text
        assert "lock" not in problem["detail"]
        assert client.get("/v1/models/iris").json()["revision"] == before
        assert client.predict([FLOWER]).json()["predictions"][0]["label"] == "setosa"


def test_reload_needs_admin_role(project):
    """A predict-only key cannot trigger a reload."""
    with _iris(project, roles=("predict",)) as client:
        assert client.post(RELOAD).status_code == 403


class Meta(msgspec.Struct):
    x: int


class Answer(msgspec.Struct):
    version: str


class Versioned(ss.Model[Meta, Answer]):
    """Reads its version from a metadata file and blocks in predict until released."""

    name = "versioned"
    gate = threading.Event()
    entered = threading.Event()

    def load(self, artifacts: ss.Artifacts) -> None:
        self.version = artifacts.json("meta.json")["version"]

    def predict(self, batch: list[Meta]) -> list[Answer]:
        if batch[0].x == 1:
            Versioned.entered.set()
            Versioned.gate.wait(10)
        return [Answer(self.version) for _ in batch]


def test_reload_in_flight_request_finishes_on_its_version(tmp_path):
    """A request that started before the swap answers with the old version; later ones the new."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "meta.json").write_text('{"version": "1"}')
    settings = load_settings(project_dir=tmp_path, environ={})
    lock_project(settings)
    Versioned.gate.clear()
    Versioned.entered.clear()
    with TestClient(Versioned, config=settings, roles=("predict", "admin")) as client:
        results: dict[str, object] = {}

        def slow_request() -> None:
            reply = client.predict([{"x": 1}])
            results["slow"] = (reply.headers["x-model-version"], reply.json())

        worker = threading.Thread(target=slow_request)
        worker.start()
        assert Versioned.entered.wait(5)
        (tmp_path / "models" / "meta.json").write_text('{"version": "2"}')
        lock_project(settings)
        assert client.post("/v1/models/versioned:reload").json()["version"] == "2"
        fresh = client.predict([{"x": 0}])
        Versioned.gate.set()
        worker.join(10)
    assert results["slow"] == ("1", {"predictions": [{"version": "1"}]})
    assert fresh.headers["x-model-version"] == "2"
    assert fresh.json() == {"predictions": [{"version": "2"}]}


@pytest.mark.slow
def test_reload_signed_release_end_to_end(tmp_path):
    """Sign, serve, tamper, reload: refused and the old version answers; re-signed: swapped.

    Over a real TLS server, with the reload triggered by SIGHUP and by the admin route.
    """
    project = copy_iris(tmp_path / "iris")
    generate_signing_key(tmp_path / "signing.pem", tmp_path / "signing.pub.pem")
    set_toml(project, "model", signing_public_key=tmp_path / "signing.pub.pem")
    settings = load_settings(project_dir=project, environ={})
    lock_project(settings)
    lock = project / "secureserve.lock"
    (project / "secureserve.lock.sig").write_bytes(
        sign(lock.read_bytes(), tmp_path / "signing.pem")
    )

    with running_server(project) as server:
        assert server.predict({"instances": [FLOWER]}).json()["predictions"][0]["label"] == "setosa"
        revision = server.request("GET", "/v1/models/iris", key=server.key).json()["revision"]

        # 1. a swapped file, lock untouched: refused
        _set_labels(project, ["evil", "evil", "evil"])
        assert server.request("POST", RELOAD, key=server.key).status == 500
        # 2. re-locked but not re-signed: refused too (SIGHUP path this time)
        lock_project(settings)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "model reload refused" not in server.stdout() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "model reload refused" in server.stdout()
        assert server.alive()
        reply = server.predict({"instances": [FLOWER]})
        assert reply.json()["predictions"][0]["label"] == "setosa"
        assert (
            server.request("GET", "/v1/models/iris", key=server.key).json()["revision"] == revision
        )

        # 3. re-signed: the release is accepted
        (project / "secureserve.lock.sig").write_bytes(
            sign(lock.read_bytes(), tmp_path / "signing.pem")
        )
        reloaded = server.request("POST", RELOAD, key=server.key)
        assert reloaded.status == 200
        assert reloaded.json()["previous_revision"] == revision
        assert server.predict({"instances": [FLOWER]}).json()["predictions"][0]["label"] == "evil"
    logs = [line for line in server.log_lines() if line.get("event") == "model reload refused"]
    assert len(logs) == 2
    assert {line["trigger"] for line in logs} == {"http", "SIGHUP"}


def test_reload_refused_when_the_audit_log_cannot_record_it(project):
    """No unrecorded model change: an unwritable audit log refuses the reload (503)."""
    with _iris(project) as client:
        before = client.get("/v1/models/iris").json()["revision"]
        _set_labels(project, ["one", "two", "three"])
        _relock(project)
        client.audit_path.chmod(0o400)
        try:
            reply = client.post(RELOAD)
        finally:
            client.audit_path.chmod(0o600)
        assert reply.status_code == 503
        assert reply.json()["type"] == "urn:secureserve:problem:audit-unavailable"
        assert client.get("/v1/models/iris").json()["revision"] == before


def test_openapi_hidden_from_principals_without_the_model(project):
    """A key limited to other models gets 404 for the schema too, as if the model were absent."""
    from app import Iris

    with TestClient(Iris, project_dir=project, models=("other",)) as client:
        assert client.get("/openapi.json").status_code == 404
    with TestClient(Iris, project_dir=project) as client:
        assert client.get("/openapi.json").status_code == 200


# ------------------------------------------------------------ code is not reloaded


def _edit_handler(project: Path) -> Path:
    """Change what the iris handler's predict returns, as a developer editing app.py would."""
    source = project / "app.py"
    text = source.read_text()
    assert "label=self.labels[i]" in text
    source.write_text(text.replace("label=self.labels[i]", 'label="edited"'))
    return source


def test_reload_answer_says_model_files_only(project):
    """An untouched handler: ``handler_code`` unchanged; the note says code needs a restart."""
    with _iris(project) as client:
        body = client.post(RELOAD).json()
    assert body["handler_code"] == "unchanged"
    assert "model files only" in body["note"]
    assert "restart" in body["note"]


def test_reload_after_editing_the_handler_warns_and_keeps_the_old_code(project):
    """app.py edited: 200 with ``changed-restart-needed``, a warning naming model and file.

    The old code keeps serving (this is what the warning is for).
    """
    out = io.BytesIO()
    with json_logs(out), _iris(project) as client:
        source = _edit_handler(project)
        reply = client.post(RELOAD)
        label = client.predict([FLOWER]).json()["predictions"][0]["label"]
    assert reply.status_code == 200
    assert reply.json()["handler_code"] == "changed-restart-needed"
    assert label == "setosa"  # not "edited": Python keeps the class it imported
    (warning,) = [line for line in json_lines(out) if "code changed" in line["event"]]
    assert warning["level"] == "warning"
    assert warning["model"] == "iris"
    assert warning["files"] == [str(source)]
    assert warning["trigger"] == "http"
    assert "restart" in warning["event"]


def test_sighup_reload_warns_when_the_handler_changed(project):
    """The SIGHUP path (every model reloaded in turn) logs the same warning."""
    out = io.BytesIO()
    with json_logs(out), _iris(project) as client:
        _edit_handler(project)
        asyncio.run(client.app.state.models.reload_all(trigger="SIGHUP"))
    (warning,) = [line for line in json_lines(out) if "code changed" in line["event"]]
    assert warning["trigger"] == "SIGHUP"
    assert warning["model"] == "iris"


class NoSource(ss.Model[Meta, Answer]):
    """A handler whose module has no file, as if imported from a zip or a .pyc only."""

    __module__ = "nowhere_on_disk"
    name = "nosource"

    def load(self, artifacts: ss.Artifacts) -> None:
        self.version = artifacts.json("meta.json")["version"]

    def predict(self, batch: list[Meta]) -> list[Answer]:
        return [Answer(self.version) for _ in batch]


def test_reload_of_a_handler_without_source_says_unknown(tmp_path):
    """No readable source file: the reload works and ``handler_code`` is unknown."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "meta.json").write_text('{"version": "1"}')
    settings = load_settings(project_dir=tmp_path, environ={})
    lock_project(settings)
    with TestClient(NoSource, config=settings, roles=("admin",)) as client:
        reply = client.post("/v1/models/nosource:reload")
    assert reply.status_code == 200
    assert reply.json()["handler_code"] == "unknown"


def test_handler_source_follows_the_users_base_classes(tmp_path, monkeypatch):
    """A base class in another file of the project counts; secureserve's own files do not."""
    (tmp_path / "base_mod.py").write_text(
        "import secureserve as ss\n\nclass Base(ss.Model):\n    pass\n"
    )
    (tmp_path / "leaf_mod.py").write_text(
        "from base_mod import Base\n\nclass Leaf(Base):\n    name = 'leaf'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("base_mod", "leaf_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    leaf = importlib.import_module("leaf_mod").Leaf
    source = HandlerSource(leaf)
    assert sorted(source.digests) == [str(tmp_path / "base_mod.py"), str(tmp_path / "leaf_mod.py")]
    assert source.changed() == []
    assert source.state([]) == "unchanged"
    (tmp_path / "base_mod.py").write_text("# edited\n")
    assert source.changed() == [str(tmp_path / "base_mod.py")]
    assert source.state(source.changed()) == "changed-restart-needed"


def test_reload_result_schema_lists_the_handler_code_states(project):
    """/openapi.json describes the reload answer with the three states and the note."""
    with _iris(project) as client:
        document = client.get("/openapi.json").json()
    schema = document["components"]["schemas"]["ReloadResult"]
    assert schema["properties"]["handler_code"]["enum"] == [
        "changed-restart-needed",
        "unchanged",
        "unknown",
    ]
    assert {"handler_code", "note"} <= set(schema["required"])
