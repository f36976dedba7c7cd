"""Several models in one app: ``[models.<name>]`` tables, each with its own files and policies.

The two examples are served together from one secureserve.toml, built in a temporary
folder (tests/two_models.py): ``iris_app.py`` and ``digits_app.py`` (the examples'
handlers), their model folders under ``models/``, one lock with a section per folder.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import numpy as np
import pytest
from app_helpers import asgi_client, bearer, build_app, replaced
from conftest import EXAMPLES
from server_helpers import running_server
from two_models import copy_two_models

from secureserve.cli import main
from secureserve.cli._common import import_handler
from secureserve.config import load_settings
from secureserve.errors import ArtifactError, ConfigError
from secureserve.keys import mint_key

FLOWER = {"features": [5.1, 3.5, 1.4, 0.2]}


def digit() -> dict[str, list[int]]:
    return {"pixels": np.load(EXAMPLES / "digits-safetensors" / "data" / "train.npy")[0].tolist()}


def two_model_project(root: Path, monkeypatch: pytest.MonkeyPatch, extra: str = "") -> Path:
    """The two examples in one project at ``root`` (role analyst sees iris in full), locked."""
    project = copy_two_models(root, monkeypatch)
    config = project / "secureserve.toml"
    text = config.read_text().replace(
        'policy = "label_only"\n',
        'policy = "label_only"\n\n[models.iris.output.roles]\nanalyst = "full"\n',
        1,
    )
    config.write_text(text + extra)
    monkeypatch.chdir(project)
    assert main(["lock"]) == 0
    return project


def handlers(project: Path) -> dict[str, type]:
    return {
        "iris": import_handler("iris_app:Iris", project),
        "digits": import_handler("digits_app:Digits", project),
    }


def two_model_app(project: Path, *keys, **settings_changes):
    settings = load_settings(project_dir=project)
    settings = replaced(
        settings,
        audit={"path": project / "audit" / "audit.jsonl"},
        limits={"per_principal": None, "quota": None},
        **settings_changes,
    )
    return build_app(handlers(project), settings, *keys)


# --------------------------------------------------------------------------- settings


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "secureserve.toml").write_text(text)
    return tmp_path / "secureserve.toml"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[model]\nhandler = "a:B"\n[models.iris]\nhandler = "iris_app:Iris"\n',
            "[model] and [models.<name>] are both set",
        ),
        ('[models.Iris]\nhandler = "a:B"\n', "models"),
        ('[models.ir-is]\nhandler = "a:B"\n', "models"),
        ("[model]\noptional = true\n", "[model] optional"),
        (
            '[models.a]\nsigning_public_key = "a.pem"\n[models.b]\nsigning_public_key = "b.pem"\n',
            "set the same key on every model",
        ),
        ('[models.a.limits]\nper_principal = "lots"\n', "[models.a.limits] per_principal"),
        (
            '[models.a]\nproviders = ["CPUExecutionProvider", "CPUExecutionProvider"]\n',
            "[models.a] providers lists",
        ),
    ],
)
def test_settings_of_several_models_are_checked(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert message in str(caught.value)


def test_each_model_is_addressed_from_the_environment_and_its_paths_resolve(tmp_path):
    config = write(tmp_path, '[models.iris]\ndir = "models/iris"\n')
    env = {"SECURESERVE_MODELS__IRIS__OUTPUT__POLICY": "full"}
    settings = load_settings(config, environ=env)
    assert settings.served()["iris"].output.policy == "full"
    assert settings.models["iris"].dir == tmp_path / "models" / "iris"
    assert settings.table("iris") == "[models.iris]"


def test_a_table_must_be_named_after_its_handler(tmp_path, monkeypatch):
    project = two_model_project(tmp_path / "p", monkeypatch)
    settings = load_settings(project_dir=project)
    renamed = {"iris": handlers(project)["digits"], "digits": handlers(project)["iris"]}
    with pytest.raises(
        ConfigError, match=r"\[models.iris\] handler .* serves a model named 'digits'"
    ):
        build_app(renamed, settings)
    with pytest.raises(ConfigError, match="no handler for digits"):
        build_app({"iris": handlers(project)["iris"]}, settings)
    with pytest.raises(ConfigError, match="pass create_app a mapping"):
        build_app(handlers(project)["iris"], settings)


# --------------------------------------------------------------------------- serving


def test_two_models_serve_side_by_side_each_with_its_policy(tmp_path, monkeypatch):
    project = two_model_project(tmp_path / "p", monkeypatch)
    everything = mint_key(name="all", roles=("predict",))
    analyst = mint_key(name="analyst", roles=("predict", "analyst"))
    only_iris = mint_key(name="iris-only", roles=("predict",), models=("iris",))
    app = two_model_app(project, everything, analyst, only_iris)
    with asgi_client(app) as client:  # one lifespan; each request names its key

        def call(key, method, path, **kwargs):
            return client.request(method, path, headers=bearer(key), **kwargs)

        iris = call(everything, "POST", "/v1/models/iris:predict", json={"instances": [FLOWER]})
        digits = call(
            everything, "POST", "/v1/models/digits:predict", json={"instances": [digit()]}
        )
        listed = call(everything, "GET", "/v1/models").json()["models"]
        paths = call(everything, "GET", "/openapi.json").json()["paths"]
        full = call(analyst, "POST", "/v1/models/iris:predict", json={"instances": [FLOWER]})
        mine = call(only_iris, "GET", "/v1/models").json()["models"]
        hidden = call(only_iris, "POST", "/v1/models/digits:predict", json={"instances": [digit()]})
        my_paths = call(only_iris, "GET", "/openapi.json").json()["paths"]
    assert iris.status_code == digits.status_code == 200
    assert iris.json()["predictions"] == [{"label": "setosa"}]  # label_only
    assert len(digits.json()["predictions"][0]["scores"]) == 3  # top_k 3
    assert [m["name"] for m in listed] == ["iris", "digits"]
    assert all(m["ready"] for m in listed)
    assert "/v1/models/iris:predict" in paths
    assert "/v1/models/digits:predict" in paths
    assert set(full.json()["predictions"][0]) == {"label", "score"}  # iris's role policy
    assert [m["name"] for m in mine] == ["iris"]
    assert hidden.status_code == 404
    assert "/v1/models/digits:predict" not in my_paths
    assert "/v1/models/iris:predict" in my_paths


def test_a_models_own_limit_counts_that_model_alone(tmp_path, monkeypatch):
    extra = '\n[models.iris.limits]\nper_principal = "3/minute"\n\n[server]\nmax_instances = 2\n'
    project = two_model_project(tmp_path / "p", monkeypatch, extra)
    key = mint_key(name="k", roles=("predict",))
    app = two_model_app(project, key)
    with asgi_client(app, key) as client:
        answers = [
            client.post("/v1/models/iris:predict", json={"instances": [FLOWER]}).status_code
            for _ in range(4)
        ]
        two = client.post("/v1/models/iris:predict", json={"instances": [FLOWER] * 2})
        digits = [
            client.post("/v1/models/digits:predict", json={"instances": [digit()] * 2})
            for _ in range(3)
        ]
    assert answers == [200, 200, 200, 429]
    assert two.status_code == 429
    assert [d.status_code for d in digits] == [200] * 3  # no limit of its own; server-wide off


def test_reloading_one_model_leaves_the_other_running(tmp_path, monkeypatch):
    project = two_model_project(tmp_path / "p", monkeypatch)
    admin = mint_key(name="admin", roles=("admin", "predict"))
    app = two_model_app(project, admin)
    with asgi_client(app, admin) as client:
        digits_before = app.state.models.get("digits").current
        reloaded = client.post("/v1/models/iris:reload")
        assert reloaded.status_code == 200
        assert reloaded.json()["name"] == "iris"
        assert app.state.models.get("digits").current is digits_before
        assert (
            client.post("/v1/models/iris:predict", json={"instances": [FLOWER]}).status_code == 200
        )


def test_a_failing_model_stops_start_up_naming_it(tmp_path, monkeypatch, capsys):
    project = two_model_project(tmp_path / "p", monkeypatch)
    weights = project / "models" / "digits" / "digits.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ArtifactError, match=r"digits\.safetensors"):
        two_model_app(project)


def test_an_optional_model_that_fails_leaves_the_others_serving(tmp_path, monkeypatch):
    project = two_model_project(tmp_path / "p", monkeypatch)
    text = (
        (project / "secureserve.toml")
        .read_text()
        .replace('dir = "models/digits"\n', 'dir = "models/digits"\noptional = true\n')
    )
    (project / "secureserve.toml").write_text(text)
    weights = project / "models" / "digits" / "digits.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + b"\0")
    admin = mint_key(name="admin", roles=("admin", "predict"))
    app = two_model_app(project, admin)
    with asgi_client(app, admin) as client:
        assert client.get("/readyz").status_code == 200
        listed = {m["name"]: m["ready"] for m in client.get("/v1/models").json()["models"]}
        assert listed == {"iris": True, "digits": False}
        refused = client.post("/v1/models/digits:predict", json={"instances": [digit()]})
        assert refused.status_code == 503
        assert refused.json()["type"].endswith("model-unavailable")
        assert client.get("/v1/models/digits").json()["ready"] is False
        assert (
            client.post("/v1/models/iris:predict", json={"instances": [FLOWER]}).status_code == 200
        )
        weights.write_bytes(good)  # the file fixed: a reload brings the model up
        reloaded = client.post("/v1/models/digits:reload")
        assert reloaded.status_code == 200
        assert reloaded.json()["previous_revision"] == "not loaded"
        served = client.post("/v1/models/digits:predict", json={"instances": [digit()]})
        assert served.status_code == 200


def test_sighup_reloads_each_model_and_one_refused_keeps_the_others(tmp_path, monkeypatch):
    project = two_model_project(tmp_path / "p", monkeypatch)
    app = two_model_app(project)
    models = app.state.models
    with asgi_client(app):  # the lifespan: audit log open
        iris_before = models.get("iris").current
        digits_before = models.get("digits").current
        weights = project / "models" / "iris" / "iris.onnx"
        weights.write_bytes(weights.read_bytes() + b"\0")
        asyncio.run(models.reload_all(trigger="SIGHUP"))
        assert models.get("iris").current is iris_before  # refused: kept
        assert models.get("digits").current is not digits_before  # reloaded
    log = (project / "audit" / "audit.jsonl").read_text()
    assert '"action":"reload-refused"' in log
    assert '"model":"digits"' in log


@pytest.mark.slow
def test_the_real_server_serves_both_models_over_tls(tmp_path, monkeypatch):
    """``secureserve run`` on the two-model project: each model answers over TLS."""
    project = two_model_project(tmp_path / "p", monkeypatch)
    with running_server(project, dev=True) as server:
        iris = server.predict({"instances": [FLOWER]}, model="iris")
        digits = server.predict({"instances": [digit()]}, model="digits")
        lines = server.log_lines()
    assert iris.status == digits.status == 200
    assert iris.json() == {"predictions": [{"label": "setosa"}]}
    assert len(msgspec.json.decode(digits.body)["predictions"][0]["scores"]) == 3
    starting = next(line for line in lines if line["event"] == "starting")
    assert starting["models"] == {"iris": "1.0.0", "digits": "1.0.0"}


def test_explanations_are_charged_on_the_models_own_limits(tmp_path, monkeypatch):
    extra = '\n[models.digits.limits]\nper_principal = "2/minute"\n\n[server]\nmax_instances = 2\n'
    project = two_model_project(tmp_path / "p", monkeypatch, extra)
    key = mint_key(name="k", roles=("explain", "predict"))
    app = two_model_app(project, key)
    with asgi_client(app, key) as client:
        answers = [
            client.post("/v1/models/digits:explain", json={"instances": [digit()]}).status_code
            for _ in range(3)
        ]
        predicted = client.post("/v1/models/digits:predict", json={"instances": [digit()]})
    assert answers == [200, 200, 429]
    assert predicted.status_code == 429  # the same window: explaining used it up


def test_metrics_keep_one_series_per_model_through_a_reload(tmp_path, monkeypatch):
    project = two_model_project(tmp_path / "p", monkeypatch)
    key = mint_key(name="ops", roles=("metrics", "admin"))
    app = two_model_app(project, key)
    with asgi_client(app, key) as client:
        assert client.post("/v1/models/iris:reload").status_code == 200
        text = client.get("/metrics").text
    served = [line for line in text.splitlines() if line.startswith("secureserve_model_info{")]
    assert len(served) == 2
    assert any('model="iris"' in line for line in served)
    assert any('model="digits"' in line for line in served)


def test_optional_covers_a_models_files_not_a_mistake_in_its_settings(tmp_path, monkeypatch):
    project = two_model_project(tmp_path / "p", monkeypatch)
    text = (project / "secureserve.toml").read_text()
    text = text.replace('dir = "models/digits"\n', 'dir = "models/digits"\noptional = true\n')
    text = text.replace(
        "[models.digits.output]", '[models.digits.guard]\nmode = "refuse"\n\n[models.digits.output]'
    )
    (project / "secureserve.toml").write_text(text)
    (project / "models" / "digits" / "profile.json").unlink()  # guard mode needs a profile
    monkeypatch.chdir(project)
    assert main(["lock"]) == 0
    with pytest.raises(ConfigError, match="guard"):
        two_model_app(project)


def test_each_models_revision_follows_its_own_files(tmp_path, monkeypatch):
    """Re-locking after a change to digits changes digits' revision, not iris's."""
    project = two_model_project(tmp_path / "p", monkeypatch)
    first = two_model_app(project)
    before = {s.name: s.current.revision for s in first.state.models}
    first.state.models.audit.close()  # the next app writes the same audit file
    (project / "models" / "digits" / "notes.json").write_text('{"n": 1}\n')
    assert main(["lock"]) == 0
    after = {s.name: s.current.revision for s in two_model_app(project).state.models}
    assert after["iris"] == before["iris"]
    assert after["digits"] != before["digits"]
