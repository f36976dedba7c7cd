"""Tests of ``secureserve new`` (``secureserve.scaffold`` and ``secureserve.cli.new``)."""

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from secureserve.cli import main
from secureserve.config import load_settings
from secureserve.errors import ConfigError
from secureserve.release import verify_project
from secureserve.scaffold import class_name, create_project, validate_name

EXPECTED_FILES = {
    ".gitignore",
    "README.md",
    "app.py",
    "models/labels.json",
    "models/model.onnx",
    "pyproject.toml",
    "secrets/audit-digest.key",
    "secrets/signing-key.pem",
    "secureserve.lock",
    "secureserve.lock.sig",
    "secureserve.toml",
    "signing-key.pub.pem",
    "tests/test_app.py",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project named demo, made through the command line."""
    parent = tmp_path_factory.mktemp("projects")
    assert main(["new", "demo", "--dir", str(parent)]) == 0
    return parent / "demo"


def test_new_creates_the_project_files(project):
    """Every template file, the model, keys, lock and signature exist; no token is left."""
    files = {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}
    assert files == EXPECTED_FILES
    for name in ("app.py", "secureserve.toml", "README.md", "pyproject.toml", "tests/test_app.py"):
        text = (project / name).read_text("utf-8")
        assert "__project_name__" not in text
        assert "__ProjectName__" not in text
    assert "class Demo(ss.Model[Features, Prediction]):" in (project / "app.py").read_text()
    assert 'name = "demo"' in (project / "pyproject.toml").read_text()
    assert not [p for p in project.parent.iterdir() if p.name != "demo"]


def test_new_lock_verifies_with_the_project_key(project):
    """The generated lock is signed and every model file matches it."""
    settings = load_settings(project_dir=project, environ={})
    assert settings.model.signing_public_key == project / "signing-key.pub.pem"
    assert settings.audit.digest_key_file == project / "secrets" / "audit-digest.key"
    report = verify_project(settings, settings.model.signing_public_key)
    assert report.ok, report.problems
    assert report.checked == 2


def test_new_private_keys_are_private(project):
    """The signing key and the digest key are 0600 in a 0700, git-ignored secrets/ folder."""
    assert stat.S_IMODE((project / "secrets").stat().st_mode) == 0o700
    for name in ("signing-key.pem", "audit-digest.key"):
        assert stat.S_IMODE((project / "secrets" / name).stat().st_mode) == 0o600
    ignored = (project / ".gitignore").read_text().splitlines()
    assert {"secrets/", ".secureserve/", "audit/", "__pycache__/", ".venv/"} <= set(ignored)


def test_new_model_is_deterministic(project, tmp_path):
    """Two projects with the same name get byte-identical model files (keys differ)."""
    other = create_project("demo", parent=tmp_path).path
    for name in ("models/model.onnx", "models/labels.json", "secureserve.lock", "app.py"):
        assert (other / name).read_bytes() == (project / name).read_bytes(), name
    assert (other / "signing-key.pub.pem").read_bytes() != (
        project / "signing-key.pub.pem"
    ).read_bytes()


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


def test_new_prints_next_steps(tmp_path, capsys):
    """The command lists what it created and how to test and run the project."""
    assert main(["new", "hello_model", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"created {tmp_path / 'hello_model'}/" in out
    assert "secureserve.lock.sig" in out
    assert "pip install -e '.[test]' && pytest" in out
    assert "secureserve run --dev" in out


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


def test_new_refuses_planned_template(tmp_path, capsys):
    """--template safetensors is refused as not yet available; nothing is written."""
    assert main(["new", "demo", "--template", "safetensors", "--dir", str(tmp_path)]) == 1
    assert "not available yet" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_unknown_template(tmp_path):
    """An unknown template name is a ConfigError naming the choices."""
    with pytest.raises(ConfigError, match="choose one of: onnx"):
        create_project("demo", parent=tmp_path, template="../etc")
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_missing_parent(tmp_path):
    """--dir must be an existing folder."""
    with pytest.raises(ConfigError, match="is not a folder"):
        create_project("demo", parent=tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_new_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    """A failure while generating removes the half-built folder."""
    from secureserve import scaffold

    def boom(models: Path) -> None:
        raise ConfigError("simulated failure")

    monkeypatch.setattr(scaffold, "_write_model", boom)
    with pytest.raises(ConfigError, match="simulated"):
        create_project("demo", parent=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_validate_name_accepts_a_good_name():
    """A lower-case package name that shadows nothing is accepted."""
    validate_name("fraud_score_2")
