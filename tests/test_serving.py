"""Tests for secureserve.serving: loading a handler through the lock, signature and key."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from pathlib import Path

import hostile
import pytest
from app_helpers import Echo, Number, json_lines, json_logs
from conftest import load_iris, shared_fixtures
from server_helpers import set_toml
from two_models import copy_two_models

import secureserve as ss
from secureserve import encryption
from secureserve.app import create_app
from secureserve.cli._common import import_handler
from secureserve.config import load_settings
from secureserve.errors import ArtifactError, ConfigError, LoadError
from secureserve.keys import KeyStore
from secureserve.lockfile import LOCK_FILENAME, SIGNATURE_FILENAME, LockEntry, build_lock, read_lock
from secureserve.release import lock_project
from secureserve.serving import load_model, started
from secureserve.signing import generate_signing_key, sign
from secureserve.testing import TestClient

FLOWER = {"features": [5.1, 3.5, 1.4, 0.2]}
FIXTURES = shared_fixtures()
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text()) if FIXTURES else {"models": []}
REFUSED_FIXTURES = [m for m in MANIFEST["models"] if m["expect"] == "refuse"]


Iris = load_iris()


class IrisWithExtra(Iris):
    """Iris that also opens ``extra.json``, a file the lock may not list."""

    def load(self, artifacts):
        super().load(artifacts)
        self.extra = artifacts.json("extra.json")


class Loader(ss.Model[Number, Echo]):
    """Opens one named file with one loader method, as a handler would."""

    name = "loader"

    def __init__(self, method: str, artifact: str) -> None:
        self.method = method
        self.artifact = artifact

    def load(self, artifacts):
        getattr(artifacts, self.method)(self.artifact)

    def predict(self, batch):
        return [Echo(y=item.x) for item in batch]


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch):
    """No test inherits an encryption key (or any setting) from the environment."""
    monkeypatch.delenv(encryption.KEY_ENV, raising=False)


def _settings(project: Path):
    return load_settings(project_dir=project)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refusal(project: Path, model=Iris) -> ArtifactError:
    with pytest.raises(ArtifactError) as caught:
        load_model(model, _settings(project))
    return caught.value


def _clear(marker: Path | str | None) -> Path | None:
    """Delete a payload marker (failing the test if that is impossible) before loading."""
    if marker is None:
        return None
    path = Path(marker)
    path.unlink(missing_ok=True)
    assert not path.exists()
    return path


# --------------------------------------------------------------------------- the lock


def test_load_model_iris_project_loads_and_records_locked_hashes(iris_project):
    """The iris example loads; ``opened`` holds exactly the locked files and their hashes."""
    loaded = load_model(Iris, _settings(iris_project))
    opened = loaded.opened
    assert loaded.instance.labels == ["setosa", "versicolor", "virginica"]
    lock, _ = read_lock(iris_project / LOCK_FILENAME)
    assert set(opened) == {"iris.onnx", "labels.json"}
    for name, record in opened.items():
        assert record.sha256 == lock.files[name].sha256
        assert record.size == lock.files[name].size


def test_create_app_iris_predicts(iris_project):
    """Through ``create_app`` (TestClient), the locked iris model answers a prediction."""
    with TestClient(Iris, config=_settings(iris_project)) as client:
        response = client.predict([FLOWER])
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "setosa"


UNLISTED = "files in the model folder are not in secureserve.lock"


def _unlisted_warnings(load) -> list[dict]:
    """The unlisted-files warnings that ``load()`` logs (as JSON lines)."""
    with json_logs(io.BytesIO()) as buffer:
        load()
    return [line for line in json_lines(buffer) if line["event"].startswith(UNLISTED)]


def test_create_app_warns_about_files_the_lock_does_not_list(iris_project):
    """A file beside the release is a warning naming it at start-up, not a refusal."""
    (iris_project / "models" / "notes.txt").write_text("x")
    (iris_project / "models" / ".env").write_text("SECRET=1")

    def serve():
        with TestClient(Iris, config=_settings(iris_project)) as client:
            assert client.predict([FLOWER]).status_code == 200

    [warning] = _unlisted_warnings(serve)
    assert warning["level"] == "warning"
    assert warning["files"] == [".env", "notes.txt"]
    assert warning["unlisted_count"] == 2
    assert warning["folder"] == str(iris_project.resolve() / "models")
    assert "secureserve lock" in warning["event"]


def test_load_model_unlisted_warning_names_at_most_20_files(iris_project):
    """Many unlisted files: the first 20 names (sorted) and the count."""
    extra = iris_project / "models" / "extra"
    extra.mkdir()
    for number in range(25):
        (extra / f"f{number:02}.bin").write_bytes(b"x")
    [warning] = _unlisted_warnings(lambda: load_model(Iris, _settings(iris_project)))
    assert warning["files"] == [f"extra/f{number:02}.bin" for number in range(20)]
    assert warning["unlisted_count"] == 25


def test_load_model_freshly_locked_folder_gives_no_unlisted_warning(iris_project):
    """The example as shipped, and locked again with a new file, warns about nothing."""
    assert _unlisted_warnings(lambda: load_model(Iris, _settings(iris_project))) == []
    (iris_project / "models" / "notes.txt").write_text("x")
    lock_project(_settings(iris_project))
    assert _unlisted_warnings(lambda: load_model(Iris, _settings(iris_project))) == []


def test_load_model_without_lock_gives_no_unlisted_warning(iris_project):
    """Without a lock every file is refused with its own error; no unlisted-files warning."""
    (iris_project / LOCK_FILENAME).unlink()
    (iris_project / "models" / "notes.txt").write_text("x")

    def load():
        with pytest.raises(ArtifactError):
            load_model(Iris, _settings(iris_project))

    assert _unlisted_warnings(load) == []


def test_load_model_several_models_warn_per_folder(tmp_path, monkeypatch):
    """With [models.<name>], each model's own folder is compared with its section."""
    project = copy_two_models(tmp_path / "two", monkeypatch)
    lock_project(_settings(project))
    (project / "models" / "digits" / "old-weights.bin").write_bytes(b"x")
    settings = _settings(project)
    handlers = {
        name: import_handler(model.handler, project) for name, model in settings.models.items()
    }

    def load():
        for name, model in settings.models.items():
            load_model(handlers[name], settings, model)

    [warning] = _unlisted_warnings(load)
    assert warning["files"] == ["old-weights.bin"]
    assert warning["folder"] == str(project.resolve() / "models" / "digits")
    assert warning["model"] == handlers["digits"].name


def test_load_model_without_lock_refuses_first_artifact(iris_project):
    """No secureserve.lock: the handler's first file is refused (``no-lock``) with the fix."""
    (iris_project / LOCK_FILENAME).unlink()
    error = _refusal(iris_project)
    assert error.reason == "no-lock"
    assert error.name == "iris.onnx"
    assert "secureserve lock" in str(error)
    assert LOCK_FILENAME in str(error)


def test_create_app_without_lock_refused(iris_project):
    """``create_app`` stops with the same ``no-lock`` refusal before anything is served."""
    (iris_project / LOCK_FILENAME).unlink()
    with pytest.raises(ArtifactError) as caught:
        create_app(Iris, config=_settings(iris_project), keys=KeyStore(None, records=[]))
    assert caught.value.reason == "no-lock"


@pytest.mark.parametrize("same_size", [False, True], ids=["size-differs", "same-size"])
def test_load_model_swapped_file_refused_by_lock_before_parsing(iris_project, same_size):
    """A pickle swapped in for iris.onnx after locking is ``lock-mismatch``; it never runs."""
    case = f"serving-swap-{same_size}"
    marker = _clear(hostile.marker_for(case))
    target = iris_project / "models" / "iris.onnx"
    payload = hostile.pickle_payload(2, case)
    if same_size:  # bytes after the STOP opcode keep the size, so only the sha256 differs
        payload += b" " * (target.stat().st_size - len(payload))
        assert len(payload) == target.stat().st_size
    target.write_bytes(payload)
    error = _refusal(iris_project)
    assert error.reason == "lock-mismatch"
    assert error.name == "iris.onnx"
    assert ("sha256" if same_size else "size") in str(error)
    assert not marker.exists()


def test_load_model_changed_metadata_refused(iris_project):
    """A changed labels.json (valid JSON) is refused as ``lock-mismatch`` too."""
    (iris_project / "models" / "labels.json").write_text('["a", "b", "c"]')
    error = _refusal(iris_project)
    assert error.reason == "lock-mismatch"
    assert error.name == "labels.json"


def test_load_model_unlisted_file_not_locked(iris_project):
    """A file the handler opens that is on disk but not in the lock is ``not-locked``."""
    (iris_project / "models" / "extra.json").write_text("{}")
    error = _refusal(iris_project, IrisWithExtra)
    assert error.reason == "not-locked"
    assert error.name == "extra.json"
    assert "secureserve lock" in str(error)


# --------------------------------------------------------------------------- signatures


@pytest.fixture
def signed_iris(iris_project, tmp_path):
    """The iris project with a signed lock and ``[model] signing_public_key`` set."""
    keys = tmp_path / "keys"
    keys.mkdir()
    private, public = keys / "signer.pem", keys / "signer.pub.pem"
    generate_signing_key(private, public)
    lock = iris_project / LOCK_FILENAME
    (iris_project / SIGNATURE_FILENAME).write_bytes(sign(lock.read_bytes(), private))
    set_toml(iris_project, "model", signing_public_key=public)
    return iris_project


def test_load_model_valid_signature_loads(signed_iris):
    """With a signing key configured, a correctly signed lock loads the model."""
    loaded = load_model(Iris, _settings(signed_iris))
    assert set(loaded.opened) == {"iris.onnx", "labels.json"}
    assert loaded.instance.labels[0] == "setosa"


def test_load_model_missing_signature_config_error(signed_iris):
    """A signing key is configured but the .sig file is gone: ConfigError naming it."""
    (signed_iris / SIGNATURE_FILENAME).unlink()
    with pytest.raises(ConfigError) as caught:
        load_model(Iris, _settings(signed_iris))
    assert SIGNATURE_FILENAME in str(caught.value)
    assert "secureserve sign" in str(caught.value)


def test_load_model_missing_lock_with_signing_key_config_error(signed_iris):
    """A signing key is configured and the lock is gone: ConfigError, not a per-file refusal."""
    (signed_iris / LOCK_FILENAME).unlink()
    with pytest.raises(ConfigError) as caught:
        load_model(Iris, _settings(signed_iris))
    assert "secureserve lock" in str(caught.value)


def test_load_model_tampered_lock_signature_invalid(signed_iris):
    """A lock whose labels.json sha256 was changed after signing: ``signature-invalid``."""
    labels = signed_iris / "models" / "labels.json"
    labels.write_text('["setosa", "versicolor", "pwned"]')
    lock, _ = read_lock(signed_iris / LOCK_FILENAME)
    forged = LockEntry(sha256=_sha(labels), size=labels.stat().st_size, format="unknown")
    (signed_iris / LOCK_FILENAME).write_bytes(build_lock({**lock.files, "labels.json": forged}))
    error = _refusal(signed_iris)
    assert error.reason == "signature-invalid"
    assert error.name == LOCK_FILENAME


def test_load_model_other_key_signature_wrong_key(signed_iris, tmp_path):
    """A lock signed by another key than the configured one: ``signature-wrong-key``."""
    other = tmp_path / "other"
    other.mkdir()
    generate_signing_key(other / "k.pem", other / "k.pub.pem")
    lock = signed_iris / LOCK_FILENAME
    (signed_iris / SIGNATURE_FILENAME).write_bytes(sign(lock.read_bytes(), other / "k.pem"))
    error = _refusal(signed_iris)
    assert error.reason == "signature-wrong-key"


# --------------------------------------------------------------------------- encryption


@pytest.fixture
def encrypted_iris(iris_project):
    """iris.onnx encrypted to iris.onnx.enc (plaintext deleted, re-locked); returns the key."""
    secrets = iris_project / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    key_file = secrets / "model.key"
    encryption.generate_key(key_file)
    key = encryption.load_key(key_file=key_file)
    models = iris_project / "models"
    encryption.encrypt_file(models / "iris.onnx", models / "iris.onnx.enc", key)
    (models / "iris.onnx").unlink()
    lock_project(_settings(iris_project))
    return iris_project, key_file, key


def test_encrypted_artifact_loads_and_predicts_with_key_file(encrypted_iris):
    """With a 0600 ``[model] encryption_key_file`` the encrypted model loads and predicts.

    The admin metadata lists iris.onnx.enc with the encrypted file's sha256 and size.
    """
    project, key_file, _ = encrypted_iris
    set_toml(project, "model", encryption_key_file=key_file)
    enc = project / "models" / "iris.onnx.enc"
    with TestClient(Iris, config=_settings(project), roles=("predict", "admin")) as client:
        response = client.predict([FLOWER])
        meta = client.get("/v1/models/iris")
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "setosa"
    assert meta.status_code == 200
    artifacts = {a["name"]: a for a in meta.json()["artifacts"]}
    assert set(artifacts) == {"iris.onnx.enc", "labels.json"}
    assert artifacts["iris.onnx.enc"]["sha256"] == _sha(enc)
    assert artifacts["iris.onnx.enc"]["size"] == enc.stat().st_size


def test_encrypted_artifact_opened_records_encrypted_file(encrypted_iris):
    """``opened`` names iris.onnx.enc with the sha256 the lock holds for it."""
    project, key_file, _ = encrypted_iris
    set_toml(project, "model", encryption_key_file=key_file)
    opened = load_model(Iris, _settings(project)).opened
    lock, _ = read_lock(project / LOCK_FILENAME)
    assert "iris.onnx" not in opened
    assert opened["iris.onnx.enc"].sha256 == lock.files["iris.onnx.enc"].sha256
    assert opened["iris.onnx.enc"].sha256 == _sha(project / "models" / "iris.onnx.enc")


def test_encrypted_artifact_loads_with_key_from_environment(encrypted_iris, monkeypatch):
    """The key may come from ``SECURESERVE_MODEL__ENCRYPTION_KEY`` (base64) instead."""
    project, key_file, key = encrypted_iris
    key_file.unlink()
    monkeypatch.setenv(encryption.KEY_ENV, base64.b64encode(key).decode())
    with TestClient(Iris, config=_settings(project)) as client:
        response = client.predict([FLOWER])
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "setosa"


def test_encrypted_artifact_wrong_key_refused(encrypted_iris):
    """Another key: ``encrypted-wrong-key-or-tampered``, naming the encrypted file."""
    project, _, _ = encrypted_iris
    other = project / "secrets" / "other.key"
    encryption.generate_key(other)
    set_toml(project, "model", encryption_key_file=other)
    error = _refusal(project)
    assert error.reason == "encrypted-wrong-key-or-tampered"
    assert "iris.onnx.enc" in str(error)


def test_encrypted_artifact_without_key_refused(encrypted_iris):
    """No key configured anywhere: ``no-decryption-key`` with the setting to use."""
    project, _, _ = encrypted_iris
    error = _refusal(project)
    assert error.reason == "no-decryption-key"
    assert error.name == "iris.onnx.enc"
    assert "encryption_key_file" in str(error)


def test_encrypted_artifact_key_file_readable_by_others_refused(encrypted_iris):
    """A key file of mode 0644 stops loading with a ConfigError naming it and chmod 600."""
    project, key_file, _ = encrypted_iris
    key_file.chmod(0o644)
    set_toml(project, "model", encryption_key_file=key_file)
    with pytest.raises(ConfigError) as caught:
        load_model(Iris, _settings(project))
    assert str(key_file) in str(caught.value)
    assert "chmod 600" in str(caught.value)


def test_encrypted_artifact_changed_after_locking_refused_before_decrypting(encrypted_iris):
    """A changed iris.onnx.enc is ``lock-mismatch`` even with no key: the lock comes first."""
    project, _, _ = encrypted_iris
    enc = project / "models" / "iris.onnx.enc"
    data = bytearray(enc.read_bytes())
    data[-1] ^= 1
    enc.write_bytes(bytes(data))
    error = _refusal(project)
    assert error.reason == "lock-mismatch"
    assert error.name == "iris.onnx.enc"


def test_encrypted_pickle_refused_after_decryption(encrypted_iris):
    """A pickle encrypted as iris.onnx.enc and correctly locked is refused by content."""
    project, key_file, key = encrypted_iris
    case = "serving-encrypted.onnx"
    marker = _clear(hostile.marker_for(case))
    models = project / "models"
    (models / "iris.onnx.enc").unlink()
    (models / "iris.onnx").write_bytes(hostile.pickle_payload(2, case))
    encryption.encrypt_file(models / "iris.onnx", models / "iris.onnx.enc", key)
    (models / "iris.onnx").unlink()
    enc = models / "iris.onnx.enc"
    lock, _ = read_lock(project / LOCK_FILENAME)
    entry = LockEntry(sha256=_sha(enc), size=enc.stat().st_size, format="encrypted")
    (project / LOCK_FILENAME).write_bytes(build_lock({**lock.files, "iris.onnx.enc": entry}))
    set_toml(project, "model", encryption_key_file=key_file)
    error = _refusal(project)
    assert error.reason == "pickle"
    assert error.name == "iris.onnx"
    assert "safetensors" in str(error)
    assert not marker.exists()


# --------------------------------------------------------------------------- hostile files


def _locked_project(tmp_path: Path, model_dir_name: str = "models") -> Path:
    """Write secureserve.toml, and a lock of every regular file under the model folder.

    The entries are built here with hashlib (``secureserve lock`` refuses pickles on
    purpose), so that what refuses a hostile file is the content check.
    """
    project = tmp_path
    (project / "secureserve.toml").write_text(f'[model]\ndir = "{model_dir_name}"\n')
    model_dir = project / model_dir_name
    entries = {}
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            name = path.relative_to(model_dir).as_posix()
            entries[name] = LockEntry(
                sha256=hashlib.sha256(data).hexdigest(), size=len(data), format="unknown"
            )
    (project / LOCK_FILENAME).write_bytes(build_lock(entries))
    return project


@pytest.mark.skipif(FIXTURES is None, reason="no shared fixtures")
@pytest.mark.parametrize("entry", REFUSED_FIXTURES, ids=lambda m: m["file"])
def test_load_model_refuses_locked_shared_fixture(tmp_path, entry):
    """Each hostile shared fixture, correctly locked, is refused by content; no payload runs."""
    marker = _clear(entry["marker"])
    if entry["file"].startswith("onnx_external_escape/"):
        shutil.copytree(FIXTURES / "onnx_external_escape", tmp_path / "onnx_external_escape")
        shutil.copy(FIXTURES / "outside.bin", tmp_path / "outside.bin")
        model_dir_name, name = "onnx_external_escape", "model.onnx"
    else:
        model_dir_name, name = "models", entry["file"]
        (tmp_path / "models").mkdir()
        shutil.copy(FIXTURES / name, tmp_path / "models" / name)
    project = _locked_project(tmp_path, model_dir_name)
    method = "onnx" if name.endswith(".onnx") else "safetensors"
    error = _refusal(project, Loader(method, name))
    assert error.reason == entry["reason"]
    assert error.name == name
    assert str(error).startswith(f"{name}: ")
    assert marker is None or not marker.exists()


@pytest.mark.parametrize("case", hostile.CASES, ids=lambda c: c.name)
def test_load_model_refuses_locked_hostile_file(tmp_path, case):
    """Each generated hostile file, correctly locked, is refused by content; no payload runs."""
    marker = _clear(case.marker)
    case.write(tmp_path / "models")
    project = _locked_project(tmp_path)
    error = _refusal(project, Loader(case.method, case.name))
    assert error.reason == case.reason
    assert error.name == case.name
    assert str(error).startswith(f"{case.name}: ")
    assert marker is None or not marker.exists()


class _Starting:
    """A handler whose ``load`` raises what it is given."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error, self.warm = error, False

    def load(self, artifacts: object) -> None:
        if self.error is not None:
            raise self.error

    def warmup(self) -> None:
        self.warm = True


def test_started_names_the_handler_whose_own_code_failed():
    """A handler's failure (in its constructor or load) is a LoadError naming its class.

    secureserve's own errors (a file that failed verification) pass as they are.
    """
    assert started(_Starting, None, "app.Ok").warm
    with pytest.raises(LoadError) as failed:
        started(lambda: _Starting(ValueError("no weights")), None, "app.Bad")
    assert str(failed.value) == (
        "app.Bad failed while loading: ValueError: no weights. Run with --debug for the traceback."
    )

    def broken() -> _Starting:
        raise KeyError("x")

    with pytest.raises(LoadError, match=r"^app\.Broken failed while loading: KeyError"):
        started(broken, None, "app.Broken")
    refused = ArtifactError("w.safetensors", "hash-mismatch", "sha256 differs from the lock")
    with pytest.raises(ArtifactError) as passed:
        started(lambda: _Starting(refused), None, "app.Tampered")
    assert passed.value is refused
