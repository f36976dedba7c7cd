"""Tests for secureserve.release: ``lock_project`` and ``verify_project``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import hostile
import pytest
from conftest import EXAMPLES

from secureserve.config import load_settings
from secureserve.errors import ConfigError
from secureserve.lockfile import (
    LOCK_FILENAME,
    SIGNATURE_FILENAME,
    build_lock,
    read_lock,
    write_lock,
)
from secureserve.release import lock_project, model_files, verify_project
from secureserve.signing import generate_signing_key, sign

FILES = {
    "iris.onnx": hostile.valid_onnx(),
    "labels.json": b'["setosa", "versicolor", "virginica"]',
    "sub/deeper/w.safetensors": hostile.valid_safetensors(),
    "sub/notes.txt": b"release notes\n",
}


def _project(tmp_path: Path, files: dict[str, bytes] | None = None) -> Path:
    """A project folder: a minimal secureserve.toml and these files under models/."""
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "secureserve.toml").write_text('[model]\nhandler = "app:Model"\n')
    for name, data in (FILES if files is None else files).items():
        path = project / "models" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return project


def _settings(project: Path):
    return load_settings(project_dir=project, environ={})


def _keys(directory: Path, label: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / f"{label}.pem", directory / f"{label}.pub.pem"
    generate_signing_key(private, public)
    return private, public


def _signed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A locked and signed project; returns it with the key pair."""
    project = _project(tmp_path)
    lock_project(_settings(project))
    private, public = _keys(tmp_path / "keys", "signer")
    lock = project / LOCK_FILENAME
    (project / SIGNATURE_FILENAME).write_bytes(sign(lock.read_bytes(), private))
    return project, private, public


# --------------------------------------------------------------------------- lock_project


def test_lock_project_lists_every_file_with_hash_size_and_format(tmp_path):
    """Every file under models/ (nested folders too) is recorded with its sha256 and size."""
    project = _project(tmp_path)
    report = lock_project(_settings(project))
    assert report.path == project / LOCK_FILENAME
    lock, _ = read_lock(report.path)
    assert sorted(lock.files) == sorted(FILES)
    for name, data in FILES.items():
        entry = lock.files[name]
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.size == len(data)
    assert lock.files["iris.onnx"].format == "onnx"
    assert lock.files["sub/deeper/w.safetensors"].format == "safetensors"
    assert report.files == dict(lock.files)
    assert report.stale_signature is None


def test_lock_project_is_byte_stable(tmp_path):
    """Locking the same folder twice gives the same bytes, equal to ``build_lock``."""
    project = _project(tmp_path)
    first = lock_project(_settings(project)).path.read_bytes()
    report = lock_project(_settings(project))
    assert report.path.read_bytes() == first
    assert build_lock(report.files) == first


def test_lock_project_matches_iris_example_lock(iris_project):
    """The lock shipped with examples/iris is exactly what ``lock_project`` writes for it."""
    shipped = (EXAMPLES / "iris" / LOCK_FILENAME).read_bytes()
    (iris_project / LOCK_FILENAME).unlink()
    report = lock_project(_settings(iris_project))
    assert report.path.read_bytes() == shipped


@pytest.mark.parametrize(
    ("name", "data", "what"),
    [
        ("weights.pkl", hostile.pickle_payload(2, "release-weights.pkl"), "pickle"),
        (
            "sub/model.pt",
            hostile.zip_of([("archive/data.pkl", hostile.pickle_payload(2, "release-pt"))]),
            "PyTorch",
        ),
        ("arrays.npy", hostile.npy_object("release-npy"), "NumPy"),
        ("disguised.safetensors", hostile.pickle_payload(4, "release-disguised"), "pickle"),
        ("model.h5", hostile.HDF5, "HDF5"),
    ],
    ids=["pickle", "torch-zip", "npy", "pickle-renamed", "hdf5"],
)
def test_lock_project_refuses_never_loaded_formats(tmp_path, name, data, what):
    """A pickle/torch/npy/HDF5 file in models/ stops the lock, naming it; nothing is written."""
    project = _project(tmp_path, {**FILES, name: data})
    with pytest.raises(ConfigError) as caught:
        lock_project(_settings(project))
    message = str(caught.value)
    assert name in message
    assert what in message
    assert "safetensors or ONNX" in message
    assert not (project / LOCK_FILENAME).exists()
    assert [p.name for p in project.iterdir() if p.name.endswith(".tmp")] == []


def test_lock_project_refusal_keeps_existing_lock(tmp_path):
    """A refused re-lock leaves the previous lock file untouched."""
    project = _project(tmp_path)
    before = lock_project(_settings(project)).path.read_bytes()
    (project / "models" / "bad.pkl").write_bytes(hostile.pickle_payload(2, "release-keep"))
    with pytest.raises(ConfigError):
        lock_project(_settings(project))
    assert (project / LOCK_FILENAME).read_bytes() == before


def test_lock_project_reports_stale_signature(tmp_path):
    """Re-locking a signed project reports the signature that no longer covers the lock."""
    project, _, _ = _signed(tmp_path)
    (project / "models" / "labels.json").write_bytes(b'["a", "b", "c"]')
    report = lock_project(_settings(project))
    assert report.stale_signature == project / SIGNATURE_FILENAME


def test_lock_project_missing_model_folder(tmp_path):
    """A project without its model folder is a ConfigError naming ``[model] dir``."""
    project = _project(tmp_path, {})
    (project / "models").rmdir()
    with pytest.raises(ConfigError) as caught:
        lock_project(_settings(project))
    assert "[model] dir" in str(caught.value)


def test_lock_project_never_locks_its_own_lock_file(tmp_path):
    """A model folder that holds the lock itself (``[model] dir = "."``) must stay verifiable.

    Either the folder is refused (ConfigError naming ``[model] dir``), or the lock and
    its signature are left out of the lock, so that locking twice and verifying passes.
    """
    project = _project(tmp_path, {})
    (project / "secureserve.toml").write_text('[model]\ndir = "."\n')
    (project / "labels.json").write_bytes(FILES["labels.json"])
    refused = None
    try:
        lock_project(_settings(project))
        report = lock_project(_settings(project))
    except ConfigError as exc:
        refused = str(exc)
    if refused is not None:
        assert "[model] dir" in refused
        return
    assert LOCK_FILENAME not in report.files
    assert SIGNATURE_FILENAME not in report.files
    verified = verify_project(_settings(project), None)
    assert verified.ok, verified.problems


def test_model_files_sorted_posix_names(tmp_path):
    """``model_files`` lists nested files as sorted POSIX paths relative to the folder."""
    project = _project(tmp_path)
    assert model_files(project / "models") == sorted(FILES)


# --------------------------------------------------------------------------- verify_project


def test_verify_project_good_folder_ok(tmp_path):
    """A freshly locked folder verifies: every listed file checked, no problem, nothing extra."""
    project = _project(tmp_path)
    lock_project(_settings(project))
    report = verify_project(_settings(project), None)
    assert report.ok
    assert report.problems == []
    assert report.checked == len(FILES)
    assert report.unlisted == []
    assert report.key_id is None


def test_verify_project_changed_file_is_a_problem(tmp_path):
    """A file changed after locking is a problem naming it (lock-mismatch)."""
    project = _project(tmp_path)
    lock_project(_settings(project))
    (project / "models" / "sub" / "notes.txt").write_bytes(b"release notes!\n")
    report = verify_project(_settings(project), None)
    assert not report.ok
    assert len(report.problems) == 1
    assert report.problems[0].startswith("sub/notes.txt: ")
    assert LOCK_FILENAME in report.problems[0]
    assert report.checked == len(FILES) - 1


def test_verify_project_same_size_change_is_a_problem(tmp_path):
    """A change that keeps the size is still caught by the sha256."""
    project = _project(tmp_path)
    lock_project(_settings(project))
    (project / "models" / "labels.json").write_bytes(FILES["labels.json"].replace(b"s", b"S"))
    report = verify_project(_settings(project), None)
    assert not report.ok
    assert report.problems[0].startswith("labels.json: ")
    assert "sha256" in report.problems[0]


def test_verify_project_missing_listed_file_is_a_problem(tmp_path):
    """A listed file that is gone is a problem naming it."""
    project = _project(tmp_path)
    lock_project(_settings(project))
    (project / "models" / "iris.onnx").unlink()
    report = verify_project(_settings(project), None)
    assert not report.ok
    assert len(report.problems) == 1
    assert report.problems[0].startswith("iris.onnx: ")


def test_verify_project_unlisted_file_reported_not_a_problem(tmp_path):
    """An extra file is listed in ``unlisted`` (a model cannot open it) but is no problem."""
    project = _project(tmp_path)
    lock_project(_settings(project))
    (project / "models" / "sub" / "extra.bin").write_bytes(b"extra")
    report = verify_project(_settings(project), None)
    assert report.ok
    assert report.unlisted == ["sub/extra.bin"]
    assert report.checked == len(FILES)


def test_verify_project_without_lock_is_config_error(tmp_path):
    """Verifying a project that was never locked says to run ``secureserve lock``."""
    project = _project(tmp_path)
    with pytest.raises(ConfigError) as caught:
        verify_project(_settings(project), None)
    assert "secureserve lock" in str(caught.value)


def test_verify_project_valid_signature(tmp_path):
    """With the signer's public key, a signed and untouched project verifies with its key id."""
    project, _, public = _signed(tmp_path)
    report = verify_project(_settings(project), public)
    assert report.ok, report.problems
    assert report.key_id is not None
    assert len(report.key_id) == 16
    assert report.checked == len(FILES)


def test_verify_project_tampered_lock_signature_invalid(tmp_path):
    """A lock rewritten after signing (files matching it) fails the signature check."""
    project, _, public = _signed(tmp_path)
    (project / "models" / "labels.json").write_bytes(b'["x", "y", "z"]')
    lock_project(_settings(project))  # the files match the new lock; the signature does not
    report = verify_project(_settings(project), public)
    assert not report.ok
    assert len(report.problems) == 1
    assert "does not match the lock's content" in report.problems[0]
    assert report.checked == len(FILES)


def test_verify_project_edited_lock_bytes_signature_invalid(tmp_path):
    """Editing one sha256 inside the signed lock is caught by the signature."""
    project, _, public = _signed(tmp_path)
    lock, _ = read_lock(project / LOCK_FILENAME)
    entry = lock.files["labels.json"]
    forged = type(entry)(sha256="0" * 64, size=entry.size, format=entry.format)
    write_lock(project / LOCK_FILENAME, build_lock({**lock.files, "labels.json": forged}))
    report = verify_project(_settings(project), public)
    assert not report.ok
    assert any("does not match the lock's content" in p for p in report.problems)
    assert any(p.startswith("labels.json: ") for p in report.problems)


def test_verify_project_missing_signature_is_a_problem(tmp_path):
    """With a key given, a missing .sig file is a problem (the lock is unsigned)."""
    project, _, public = _signed(tmp_path)
    (project / SIGNATURE_FILENAME).unlink()
    report = verify_project(_settings(project), public)
    assert not report.ok
    assert report.problems == [f"{SIGNATURE_FILENAME} does not exist: the lock is unsigned"]
    assert report.key_id is None


def test_verify_project_other_key_is_a_problem(tmp_path):
    """A public key other than the signer's is reported as the wrong key."""
    project, _, _ = _signed(tmp_path)
    _, other_public = _keys(tmp_path / "keys", "other")
    report = verify_project(_settings(project), other_public)
    assert not report.ok
    assert len(report.problems) == 1
    assert "the signature was made with key" in report.problems[0]
    assert report.key_id is None


def test_verify_project_signature_ignored_without_key(tmp_path):
    """Without a key the signature is not checked (and a stale one is not a problem here)."""
    project, _, _ = _signed(tmp_path)
    (project / SIGNATURE_FILENAME).write_bytes(b"garbage")
    report = verify_project(_settings(project), None)
    assert report.ok
    assert report.key_id is None
