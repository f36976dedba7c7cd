"""Tests of ``secureserve new`` (``secureserve.scaffold`` and ``secureserve.cli.new``)."""

import importlib.util
import json
import os
import stat
import struct
import subprocess
import sys
import textwrap
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from secureserve import scaffold
from secureserve.check import run_check
from secureserve.cli import main
from secureserve.config import load_settings
from secureserve.doctor import Severity, diagnose
from secureserve.errors import ConfigError
from secureserve.formats import Format, detect_format
from secureserve.lockfile import read_lock
from secureserve.release import verify_project
from secureserve.scaffold import TEMPLATES, class_name, create_project, validate_name
from secureserve.serving import load_model
from secureserve.settings import CheckSettings
from secureserve.testing import TestClient

#: Files rendered from templates/common/ that every project must have (the layer may
#: hold more: they are checked against the layer itself).
COMMON_FILES = {".gitignore", "pyproject.toml", "secureserve.toml", "tests/test_app.py"}
#: What every template renders besides the common layer, and what `new` generates.
TEMPLATE_FILES = {
    "README.md",
    "app.py",
    "data/check.jsonl",
    "data/train.jsonl",
    "models/labels.json",
    "models/profile.json",
    "secrets/audit-digest.key",
    "secrets/signing-key.pem",
    "secureserve.lock",
    "secureserve.lock.sig",
    "signing-key.pub.pem",
}
#: The generated model file of each template and the format its bytes must show.
MODEL_FILES = {
    "onnx": ("models/model.onnx", Format.ONNX),
    "safetensors": ("models/model.safetensors", Format.SAFETENSORS),
}
#: The mode of everything `new` creates, by (inside secrets/, is a folder).
MODES = {(False, False): 0o644, (False, True): 0o755, (True, False): 0o600, (True, True): 0o700}
#: How each template's app.py opens its model.
LOADER_CALLS = {
    "onnx": 'artifacts.onnx("model.onnx")',
    "safetensors": 'artifacts.safetensors("model.safetensors")',
}
#: The generated data and profile: the same bytes in every project.
DATA_FILES = ("data/check.jsonl", "data/train.jsonl", "models/profile.json")
#: The checks run on every template's project in process (load starts a real server:
#: it runs once, in its own test).
IN_PROCESS_CHECKS = ("robustness", "fairness", "drift", "fuzz")


@pytest.fixture(scope="module", params=TEMPLATES)
def template(request: pytest.FixtureRequest) -> str:
    """Each shipped template in turn."""
    return str(request.param)


@pytest.fixture(scope="module")
def project(template: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project named demo from ``template``, made through the command line."""
    parent = tmp_path_factory.mktemp(f"projects-{template}")
    assert main(["new", "demo", "--template", template, "--dir", str(parent)]) == 0
    return parent / "demo"


def _load_handler(project: Path, module_name: str, monkeypatch: pytest.MonkeyPatch) -> type:
    """Import ``project/app.py`` under ``module_name`` and return its handler class."""
    spec = importlib.util.spec_from_file_location(module_name, project / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return getattr(module, class_name(project.name))


def test_templates_are_onnx_then_safetensors():
    """Both templates ship, onnx first (the default)."""
    assert TEMPLATES == ("onnx", "safetensors")


def _common_layer_files() -> set[str]:
    """The names the common layer renders to (top-level renames applied, no tokens)."""
    root = scaffold.templates_root() / "common"
    names = set()
    for path in root.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            first, *rest = path.relative_to(root).parts
            names.add(Path(scaffold._RENAMES.get(first, first), *rest).as_posix())
    return names


def test_every_template_has_a_folder_and_a_model_writer():
    """Each shipped template has its folder beside common/ and a model writer, no more."""
    root = scaffold.templates_root()
    for template in TEMPLATES:
        assert (root / template / "app.py").is_file(), template
    assert (root / "common" / "tests" / "test_app.py").is_file()  # one test file for all
    assert set(scaffold._MODEL_WRITERS) == set(TEMPLATES)


def test_new_creates_the_project_files(template, project):
    """Every template file, the model, keys, lock and signature exist; no token is left."""
    files = {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}
    common = _common_layer_files()
    assert common >= COMMON_FILES
    assert common <= files
    assert files - common == TEMPLATE_FILES | {MODEL_FILES[template][0]}
    for name in ("app.py", "secureserve.toml", "README.md", "pyproject.toml", "tests/test_app.py"):
        text = (project / name).read_text("utf-8")
        assert "__project_name__" not in text
        assert "__ProjectName__" not in text
    app = (project / "app.py").read_text()
    assert "class Demo(ss.Model[Features, Prediction]):" in app
    assert LOADER_CALLS[template] in app
    for other, call in LOADER_CALLS.items():
        if other != template:
            assert call not in app
    assert 'name = "demo"' in (project / "pyproject.toml").read_text()
    assert not [p for p in project.parent.iterdir() if p.name != "demo"]


def test_new_lock_verifies_with_the_project_key(template, project):
    """The generated lock is signed, lists the model, labels and profile; every file matches."""
    settings = load_settings(project_dir=project, environ={})
    assert settings.model.signing_public_key == project / "signing-key.pub.pem"
    assert settings.audit.digest_key_file == project / "secrets" / "audit-digest.key"
    report = verify_project(settings, settings.model.signing_public_key)
    assert report.ok, report.problems
    assert report.checked == 3
    assert report.unlisted == []
    lock, _ = read_lock(project / "secureserve.lock")
    model_name = MODEL_FILES[template][0].removeprefix("models/")
    assert set(lock.files) == {model_name, "labels.json", "profile.json"}
    assert lock.files[model_name].format == MODEL_FILES[template][1].value


def test_new_private_keys_are_private(project):
    """The signing key and the digest key are 0600 in a 0700, git-ignored secrets/ folder."""
    assert stat.S_IMODE((project / "secrets").stat().st_mode) == 0o700
    for name in ("signing-key.pem", "audit-digest.key"):
        assert stat.S_IMODE((project / "secrets" / name).stat().st_mode) == 0o600
    ignored = set((project / ".gitignore").read_text().splitlines())
    assert {"secrets/", ".secureserve/", "audit/", "*.key", "run/"} <= ignored
    assert {"__pycache__/", ".venv/"} <= ignored


@pytest.mark.parametrize("template", TEMPLATES)
def test_new_modes_ignore_the_umask(template, tmp_path):
    """Under umask 002 files are 0644 and folders 0755 (secrets/ 0700, its files 0600).

    A group-writable model file, lock or public key would let another user swap the
    model: the doctor must find no error in a project made under a permissive umask.
    """
    previous = os.umask(0o002)
    try:
        project = create_project("demo", parent=tmp_path, template=template).path
    finally:
        os.umask(previous)
    modes = {
        path.relative_to(project).as_posix(): stat.S_IMODE(path.lstat().st_mode)
        for path in (project, *project.rglob("*"))
    }
    secret = {name for name in modes if name == "secrets" or name.startswith("secrets/")}
    assert secret == {"secrets", "secrets/audit-digest.key", "secrets/signing-key.pem"}
    for name, mode in modes.items():
        expected = MODES[name in secret, (project / name).is_dir()]
        assert mode == expected, f"{name}: {oct(mode)}"
    report = diagnose(project, environ={})
    errors = [f.code for f in report.findings if f.severity is Severity.ERROR]
    assert errors == []


def test_new_model_is_deterministic(template, project, tmp_path):
    """Two projects with the same name get byte-identical model, data and profile (keys differ)."""
    other = create_project("demo", parent=tmp_path, template=template).path
    model = MODEL_FILES[template][0]
    for name in (model, "models/labels.json", *DATA_FILES, "secureserve.lock", "app.py"):
        assert (other / name).read_bytes() == (project / name).read_bytes(), name
    assert (other / "signing-key.pub.pem").read_bytes() != (
        project / "signing-key.pub.pem"
    ).read_bytes()


def test_new_model_is_identical_in_another_process(template, project, tmp_path):
    """A fresh interpreter (another hash seed) writes the same model, data and profile."""
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from secureserve.scaffold import create_project
        create_project("demo", parent=Path({str(tmp_path)!r}), template={template!r})
        """
    )
    subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
        timeout=60,
    )
    for name in (MODEL_FILES[template][0], *DATA_FILES, "secureserve.lock"):
        assert (tmp_path / "demo" / name).read_bytes() == (project / name).read_bytes(), name


def test_new_model_format_is_detected(template, project):
    """The model file's bytes are detected as the template's format, not by its name."""
    model, expected = MODEL_FILES[template]
    assert detect_format((project / model).read_bytes()) is expected
    assert json.loads((project / "models/labels.json").read_text()) == ["first", "second"]


def test_new_safetensors_model_holds_only_w_and_b(tmp_path):
    """The safetensors header lists exactly W (2x2) and b (2) as F32, with no metadata."""
    project = create_project("demo", parent=tmp_path, template="safetensors").path
    data = (project / "models/model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    assert header == {
        "W": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
    }
    assert struct.unpack("<6f", data[8 + header_len :]) == (1.0, -1.0, -1.0, 1.0, 0.0, 0.0)


def test_new_templates_predict_alike(tmp_path, monkeypatch):
    """Served through TestClient, the onnx and safetensors projects give the same answers."""
    inputs = ([1, 3], [3, 1], [2, 2], [0.5, 0.25], [-3.5, -3], [-1000, 1000])
    instances = [{"features": features} for features in inputs]
    answers = {}
    for template in TEMPLATES:
        parent = tmp_path / template
        parent.mkdir()
        project = create_project("demo", parent=parent, template=template).path
        handler = _load_handler(project, f"scaffold_{template}_app", monkeypatch)
        with TestClient(handler, project_dir=project) as client:
            response = client.predict(instances)
        assert response.status_code == 200, response.text
        answers[template] = response.json()["predictions"]
    onnx_answers, safetensors_answers = answers["onnx"], answers["safetensors"]
    labels = ["second", "first", "first", "first", "second", "second"]
    assert [p["label"] for p in onnx_answers] == labels
    assert [p["label"] for p in safetensors_answers] == labels
    for ours, theirs in zip(safetensors_answers, onnx_answers, strict=True):
        assert ours["score"] == pytest.approx(theirs["score"], abs=0.01)
    # softmax of logits (x0 - x1, x1 - x0): 1 / (1 + e^-1) for [0.5, 0.25], and the
    # default output policy rounds scores to 2 decimals.
    assert safetensors_answers[3]["score"] == 0.62
    assert safetensors_answers[2]["score"] == 0.5
    assert safetensors_answers[5]["score"] == 1.0


def test_new_project_tests_pass(project):
    """The generated project's own tests (predict, 422, 401 via TestClient) pass."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests")],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def _rows(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file, one a line."""
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_new_check_data_is_the_models_rule_with_three_percent_flipped(project):
    """200 labelled rows in the schema's bounds, one decimal; 6 labels disagree with the rule.

    The cohort is drawn apart from the features: both groups are large, and each gets
    about as many "second" labels as the other.
    """
    text = (project / "data/check.jsonl").read_text("utf-8")
    assert "-0.0," not in text
    assert "-0.0]" not in text
    rows = _rows(project / "data/check.jsonl")
    assert len(rows) == 200
    disagreements = 0
    for row in rows:
        assert set(row) == {"instance", "label", "group"}
        assert set(row["instance"]) == {"features"}
        x1, x2 = row["instance"]["features"]
        for value in (x1, x2):
            assert -1000 <= value <= 1000
            assert round(value, 1) == value
        assert set(row["group"]) == {"cohort"}
        disagreements += row["label"] != ("second" if x2 > x1 else "first")
    assert disagreements == 6
    values = [v for row in rows for v in row["instance"]["features"]]
    assert min(values) < -900
    assert max(values) > 900
    cohorts = Counter(row["group"]["cohort"] for row in rows)
    assert set(cohorts) == {"a", "b"}
    assert min(cohorts.values()) >= 80
    second = {
        cohort: sum(r["label"] == "second" for r in rows if r["group"]["cohort"] == cohort) / n
        for cohort, n in cohorts.items()
    }
    assert abs(second["a"] - second["b"]) < 0.1


def test_new_training_sample_is_instances_in_the_schema(project):
    """data/train.jsonl: 500 instances of the input schema, other rows than the check set."""
    rows = _rows(project / "data/train.jsonl")
    assert len(rows) == 500
    assert all(set(row) == {"features"} and len(row["features"]) == 2 for row in rows)
    assert all(-1000 <= v <= 1000 for row in rows for v in row["features"])
    check = {tuple(row["instance"]["features"]) for row in _rows(project / "data/check.jsonl")}
    assert not check & {tuple(row["features"]) for row in rows}


def test_new_profile_is_what_secureserve_profile_writes(template, tmp_path, monkeypatch):
    """`secureserve profile data/train.jsonl` in the project writes the same bytes.

    The profile matches the handler as the server imports it (schema revision, feature
    names, sound statistics) and describes the 500 training rows.
    """
    monkeypatch.delitem(sys.modules, "app", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    project = create_project("demo", parent=tmp_path, template=template).path
    monkeypatch.chdir(project)
    out = tmp_path / "profile.json"
    assert main(["profile", "data/train.jsonl", "--out", str(out)]) == 0
    assert out.read_bytes() == (project / "models/profile.json").read_bytes()
    handler = _load_handler(project, f"scaffold_profile_{template}_app", monkeypatch)
    profile = load_model(handler, load_settings(project_dir=project, environ={})).profile
    assert profile is not None
    assert profile.count == 500
    assert profile.names == ("features[0]", "features[1]")
    assert profile.model == "demo"
    for feature in profile.features:
        assert -1000 <= feature.min < -990
        assert 990 < feature.max <= 1000


def test_new_leaves_no_module_or_path_behind(template, tmp_path):
    """Rendering imports each project's app.py privately: nothing stays in sys.modules.

    Many projects in one process each get their own handler, and sys.path is untouched.
    """
    path = list(sys.path)
    before = set(sys.modules)
    for index in range(3):
        create_project(f"demo{index}", parent=tmp_path, template=template)
    assert sys.path == path
    left = [
        name
        for name, module in sys.modules.items()
        if name not in before
        and (
            name.startswith("_secureserve_new_")
            or Path(getattr(module, "__file__", None) or "/").is_relative_to(tmp_path)
        )
    ]
    assert left == []
    assert "app" not in set(sys.modules) - before
    models = {
        json.loads((tmp_path / f"demo{i}/models/profile.json").read_text())["model"]
        for i in range(3)
    }
    assert models == {"demo0", "demo1", "demo2"}


def test_new_check_settings_are_explicit(template, project):
    """[check] in secureserve.toml sets every threshold, with positive_label "second"."""
    table = tomllib.loads((project / "secureserve.toml").read_text("utf-8"))["check"]
    assert set(table) == set(CheckSettings.__struct_fields__)
    settings = load_settings(project_dir=project, environ={})
    assert settings.check.positive_label == "second"
    assert settings.check.positive_label in json.loads(
        (project / "models/labels.json").read_text("utf-8")
    )


def test_new_project_passes_its_check(template, tmp_path, monkeypatch):
    """Robustness, fairness, drift and fuzzing all pass, judged, on data/check.jsonl.

    The thresholds are the project's own [check] section, the data the generated rows
    and the reference profile the generated models/profile.json.
    """
    monkeypatch.delitem(sys.modules, "app", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [n for n in os.environ if n.startswith("SECURESERVE_")]:
        monkeypatch.delenv(name)
    project = create_project("demo", parent=tmp_path, template=template).path
    report = run_check(
        project, project / "data/check.jsonl", sensitive=("cohort",), only=IN_PROCESS_CHECKS
    )
    assert [c.check for c in report.checks] == list(IN_PROCESS_CHECKS)
    for result in report.checks:
        assert result.passed is True, (result.check, result.summary)
        judged = [f for f in result.figures if f.passed is not None]
        assert judged, result.check
        assert all(f.passed is True for f in judged), (result.check, judged)
    assert report.passed is True
    assert report.instances == 200
    figures = {f.name: f for result in report.checks for f in result.figures}
    assert figures["robust_accuracy"].threshold == 0.5
    assert "20 rows" in (figures["robust_accuracy"].note or "")
    assert figures["noise_accuracy@0.0"].value == 0.97  # the 3 % flipped labels
    fairness = next(r for r in report.checks if r.check == "fairness")
    names = {f.name for f in fairness.figures if f.passed is not None}
    assert {"cohort: demographic_parity_difference", "cohort: equalized_odds_difference"} <= names


@pytest.mark.slow
def test_new_project_passes_the_load_check(tmp_path, monkeypatch):
    """The real server, started by the check, answers every request well within max_p99_ms."""
    monkeypatch.delitem(sys.modules, "app", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [n for n in os.environ if n.startswith("SECURESERVE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SECURESERVE_CHECK__LOAD_SECONDS", "1")
    monkeypatch.setenv("SECURESERVE_CHECK__LOAD_CONNECTIONS", "2")
    project = create_project("demo", parent=tmp_path).path
    report = run_check(project, project / "data/check.jsonl", only=("load",))
    (load,) = report.checks
    assert load.passed is True, load.summary
    figures = {f.name: f for f in load.figures}
    assert figures["error_rate"].value == 0.0
    assert figures["requests_per_second"].value > 0


def test_new_project_doctor_finds_the_profile(template, project):
    """A fresh project has a locked profile: no warning, no error, no profile-missing note."""
    report = diagnose(project, environ={})
    found = {f.code: f.severity for f in report.findings}
    assert "profile-missing" not in found
    assert Severity.ERROR not in found.values()
    assert Severity.WARNING not in found.values()


def test_new_prints_next_steps(tmp_path, capsys):
    """The command lists what it created and how to test and run the project."""
    assert main(["new", "hello_model", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"created {tmp_path / 'hello_model'}/" in out
    assert "secureserve.lock.sig" in out
    assert "pip install -e '.[test]' && pytest" in out
    assert "secureserve run --dev" in out
    assert "secureserve check --data data/check.jsonl --sensitive cohort" in out


def test_class_name_is_camel_case():
    """The handler class is the CamelCase of the project name."""
    assert class_name("fraud_score") == "FraudScore"
    assert class_name("demo") == "Demo"
    assert class_name("a1_b2") == "A1B2"


BAD_NAMES = [
    pytest.param("../x", id="parent-path"),
    pytest.param("/tmp/x", id="absolute-path"),  # noqa: S108 - a refused name
    pytest.param("a/b", id="nested-path"),
    pytest.param("x y", id="space"),
    pytest.param("1abc", id="leading-digit"),
    pytest.param("a-b", id="dash"),
    pytest.param("Demo", id="upper-case"),
    pytest.param("_x", id="leading-underscore"),
    pytest.param('a"b', id="quote"),
    pytest.param("", id="empty"),
    pytest.param("a" * 300, id="300-characters"),
    pytest.param("a" * 58, id="58-characters"),  # NAME-redis would pass 63 in Kubernetes
    pytest.param("demo_", id="trailing-underscore"),  # demo- is not a DNS label
    pytest.param("os", id="stdlib"),
    pytest.param("secureserve", id="secureserve"),
    pytest.param("numpy", id="dependency"),
    pytest.param("msgspec", id="msgspec"),
    pytest.param("class", id="keyword"),
    pytest.param("features", id="template-class-clash"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_new_refuses_bad_name(name, tmp_path, capsys):
    """A bad name is refused with a one-line reason and nothing is written."""
    assert main(["new", name, "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("secureserve: error: ")
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_longest_name_is_accepted(tmp_path):
    """57 characters is the longest name: its Kubernetes names stay DNS labels."""
    validate_name("a" * 57)


@pytest.mark.parametrize("existing", ["dir", "file"])
def test_new_refuses_existing_target(existing, tmp_path, capsys):
    """An existing directory or file of that name is refused and left untouched."""
    target = tmp_path / "demo"
    if existing == "dir":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    else:
        target.write_text("mine")
    assert main(["new", "demo", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err
    assert err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
    assert (target / "keep.txt" if existing == "dir" else target).read_text() == "mine"


def test_new_refuses_unknown_template_on_the_command_line(tmp_path, capsys):
    """--template pytorch is one line naming the choices (not a usage error); nothing written."""
    assert main(["new", "demo", "--template", "pytorch", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        "secureserve: error: unknown template 'pytorch'; choose one of: onnx, safetensors.\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("template", ["../etc", "common", "ONNX", "", "pytorch"])
def test_new_refuses_unknown_template(template, tmp_path):
    """A name that is not a shipped template (a path, the common layer) is a ConfigError."""
    with pytest.raises(ConfigError, match="choose one of: onnx, safetensors"):
        create_project("demo", parent=tmp_path, template=template)
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_missing_parent(tmp_path):
    """--dir must be an existing folder."""
    with pytest.raises(ConfigError, match="is not a folder"):
        create_project("demo", parent=tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("template", TEMPLATES)
def test_new_leaves_nothing_behind_on_failure(template, tmp_path, monkeypatch):
    """A failure while generating the model removes the half-built folder."""

    def boom(models: Path) -> None:
        raise ConfigError("simulated failure")

    monkeypatch.setitem(scaffold._MODEL_WRITERS, template, boom)
    with pytest.raises(ConfigError, match="simulated"):
        create_project("demo", parent=tmp_path, template=template)
    assert list(tmp_path.iterdir()) == []


def test_validate_name_accepts_a_good_name():
    """A lower-case package name that shadows nothing is accepted."""
    validate_name("fraud_score_2")
