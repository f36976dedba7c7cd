"""Tests for secureserve.release: ``lock_project``, ``verify_project`` and ``verified_lock``.

One model (``[model]``) has a v1 lock; several (``[models.<name>]``, the iris and digits
examples side by side, see two_models.py) one v2 lock with a section per model folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import hostile
import pytest
from conftest import EXAMPLES, copy_example
from two_models import copy_two_models

from secureserve.config import load_settings
from secureserve.errors import ArtifactError, ConfigError
from secureserve.lockfile import (
    FOLDERS_LOCK_FORMAT,
    LOCK_FILENAME,
    MISSING_LOCK,
    SIGNATURE_FILENAME,
    FoldersLock,
    build_folders_lock,
    build_lock,
    parse_lock,
    read_lock,
    read_lock_file,
    write_lock,
)
from secureserve.release import (
    lock_project,
    model_files,
    signing_public_key,
    unlisted_files,
    verified_lock,
    verify_project,
)
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


def test_verify_project_unlisted_file_fails_the_verification(tmp_path):
    """An extra file is named in ``unlisted`` and fails ``ok``; the listed files still match."""
    project = _project(tmp_path)
    lock_project(_settings(project))
    (project / "models" / "sub" / "extra.bin").write_bytes(b"extra")
    report = verify_project(_settings(project), None)
    assert not report.ok
    assert report.problems == []
    assert report.unlisted == ["sub/extra.bin"]
    assert report.checked == len(FILES)


def test_verify_project_hidden_files_are_locked_and_verified_like_others(tmp_path):
    """Dotfiles are model files too: locked, so a fresh lock verifies; added later, unlisted."""
    project = _project(tmp_path, {**FILES, ".hidden/meta.json": b"{}", ".DS_Store": b"x"})
    report = lock_project(_settings(project))
    assert {".DS_Store", ".hidden/meta.json"} <= set(report.files)
    assert verify_project(_settings(project), None).ok
    (project / "models" / ".cache").write_bytes(b"y")
    verified = verify_project(_settings(project), None)
    assert (verified.ok, verified.unlisted) == (False, [".cache"])


# --------------------------------------------------------------------------- unlisted_files


@pytest.mark.parametrize("example", ["iris", "digits-safetensors", "iris-tensor"])
def test_unlisted_files_of_a_locked_example_is_empty(tmp_path, monkeypatch, example):
    """An example has no unlisted file, as shipped and locked anew: the walk is the lock's."""
    project = copy_example(example, tmp_path / example, monkeypatch)
    settings = _settings(project)
    shipped, _ = verified_lock(settings, settings.model)
    assert unlisted_files(settings.model.dir, shipped) == []
    lock_project(settings)
    lock, _ = verified_lock(settings, settings.model)
    assert unlisted_files(settings.model.dir, lock) == []
    assert verify_project(settings, None).ok


def test_unlisted_files_names_what_the_lock_does_not_list(tmp_path):
    """Files added after the lock are named, sorted, as POSIX paths in the folder."""
    project = _project(tmp_path)
    settings = _settings(project)
    lock_project(settings)
    (project / "models" / "zz.onnx").write_bytes(b"new")
    (project / "models" / "sub" / "deeper" / "a.bin").write_bytes(b"new")
    lock, _ = verified_lock(settings, settings.model)
    assert unlisted_files(settings.model.dir, lock) == ["sub/deeper/a.bin", "zz.onnx"]


def test_unlisted_files_of_a_missing_folder_is_empty(tmp_path):
    """A model folder that is not there has no unlisted file (its loads fail on their own)."""
    assert unlisted_files(tmp_path / "absent", MISSING_LOCK) == []


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


# --------------------------------------------------------------------------- several models


@pytest.fixture
def two(tmp_path, monkeypatch) -> Path:
    """A project serving iris and digits from ``models/iris`` and ``models/digits``."""
    return copy_two_models(tmp_path / "two", monkeypatch)


def _with_key(project: Path, keys: Path) -> tuple[Path, Path]:
    """Set the same signing key on both models; return the key pair."""
    private, public = _keys(keys, "signer")
    text = (project / "secureserve.toml").read_text()
    for name in ("iris", "digits"):
        text = text.replace(
            f'dir = "models/{name}"\n', f'dir = "models/{name}"\nsigning_public_key = "{public}"\n'
        )
    (project / "secureserve.toml").write_text(text)
    return private, public


def _sign(project: Path, private: Path) -> None:
    lock = project / LOCK_FILENAME
    (project / SIGNATURE_FILENAME).write_bytes(sign(lock.read_bytes(), private))


def test_lock_project_several_models_writes_one_section_per_folder(two):
    """Each model folder is a section named by its path in the project, listing its files."""
    report = lock_project(_settings(two))
    lock, data = read_lock_file(two / LOCK_FILENAME)
    assert isinstance(lock, FoldersLock)
    assert lock.format == FOLDERS_LOCK_FORMAT
    assert sorted(lock.folders) == ["models/digits", "models/iris"]
    assert sorted(lock.folders["models/iris"].files) == ["iris.onnx", "labels.json"]
    assert sorted(lock.folders["models/digits"].files) == ["digits.safetensors", "profile.json"]
    assert report.folders["models/iris"] == lock.folders["models/iris"].files
    assert sorted(report.files) == [
        "models/digits/digits.safetensors",
        "models/digits/profile.json",
        "models/iris/iris.onnx",
        "models/iris/labels.json",
    ]
    iris = lock.folders["models/iris"].files
    assert iris == parse_lock((EXAMPLES / "iris" / LOCK_FILENAME).read_bytes()).files
    assert data == build_folders_lock({k: v for k, v in report.folders.items() if k})


def test_lock_project_several_models_is_canonical_and_deterministic(two):
    """Locking twice gives the same bytes; the order of the tables does not matter."""
    first = lock_project(_settings(two)).path.read_bytes()
    toml = two / "secureserve.toml"
    iris, digits = toml.read_text().split("[models.digits]\n", 1)
    toml.write_text(f"[models.digits]\n{digits}\n{iris}")
    assert lock_project(_settings(two)).path.read_bytes() == first
    assert first.endswith(b"}\n")
    assert b"\r" not in first


def test_lock_project_one_model_still_writes_v1(tmp_path):
    """A project with ``[model]`` keeps the v1 format: no sections, the same bytes as before."""
    project = _project(tmp_path)
    data = lock_project(_settings(project)).path.read_bytes()
    assert json.loads(data)["format"] == "secureserve-lock/v1"
    assert b'"folders"' not in data


def test_lock_project_models_sharing_a_folder_share_one_section(two):
    """Two served models with the same dir give one section."""
    toml = two / "secureserve.toml"
    toml.write_text(
        toml.read_text() + '\n[models.iris_again]\nhandler = "iris_app:Iris"\ndir = "models/iris"\n'
    )
    lock_project(_settings(two))
    lock, _ = read_lock_file(two / LOCK_FILENAME)
    assert isinstance(lock, FoldersLock)
    assert sorted(lock.folders) == ["models/digits", "models/iris"]
    report = verify_project(_settings(two), None)
    assert report.ok, report.problems
    [iris] = [f for f in report.folders if f.folder.section == "models/iris"]
    assert iris.folder.tables == ("[models.iris]", "[models.iris_again]")


def test_lock_project_folder_outside_the_project_is_refused(two, tmp_path):
    """A model folder the lock cannot name (outside the project) is a ConfigError naming it."""
    shutil.move(two / "models" / "digits", tmp_path / "elsewhere")
    toml = two / "secureserve.toml"
    toml.write_text(toml.read_text().replace('"models/digits"', f'"{tmp_path / "elsewhere"}"'))
    with pytest.raises(ConfigError) as caught:
        lock_project(_settings(two))
    message = str(caught.value)
    assert "[models.digits] dir" in message
    assert "project folder" in message
    assert not (two / LOCK_FILENAME).exists()


def test_lock_project_several_models_refusal_names_the_folder(two):
    """A never-loaded file in one folder stops the lock, named by its path in the project."""
    (two / "models" / "digits" / "old.pkl").write_bytes(b"\x80\x04\x95\x00.")
    with pytest.raises(ConfigError) as caught:
        lock_project(_settings(two))
    assert "models/digits/old.pkl" in str(caught.value)
    assert not (two / LOCK_FILENAME).exists()


def test_lock_project_several_models_missing_folder_names_its_table(two):
    """A model folder that does not exist names the table whose dir it is."""
    shutil.rmtree(two / "models" / "iris")
    with pytest.raises(ConfigError) as caught:
        lock_project(_settings(two))
    assert "[models.iris] dir" in str(caught.value)


def test_verify_project_several_models_ok(two):
    """A freshly locked two-model project verifies, with each folder's count."""
    lock_project(_settings(two))
    report = verify_project(_settings(two), None)
    assert report.ok, report.problems
    assert report.checked == 4
    assert [(f.folder.section, f.checked) for f in report.folders] == [
        ("models/digits", 2),
        ("models/iris", 2),
    ]
    assert report.unlisted == []
    assert report.unused == []


def test_verify_project_tampered_file_is_named_with_its_folder(two):
    """A file changed in one folder is a problem naming folder and file; the other passes."""
    lock_project(_settings(two))
    path = two / "models" / "digits" / "profile.json"
    path.write_bytes(path.read_bytes().replace(b"1", b"2", 1))
    report = verify_project(_settings(two), None)
    assert not report.ok
    [problem] = report.problems
    assert problem.startswith("models/digits/profile.json: ")
    assert "sha256" in problem
    assert report.checked == 3


def test_verify_project_unlisted_file_is_named_with_its_folder(two):
    """An extra file is reported by its path in the project, per folder, and fails ``ok``."""
    lock_project(_settings(two))
    (two / "models" / "iris" / "notes.txt").write_text("x")
    report = verify_project(_settings(two), None)
    assert not report.ok
    assert report.problems == []
    assert report.unlisted == ["models/iris/notes.txt"]
    [iris] = [f for f in report.folders if f.folder.section == "models/iris"]
    assert iris.unlisted == ["notes.txt"]


def test_verify_project_missing_section_is_a_problem_naming_the_folder(two):
    """A model added after locking has no section: a problem naming its folder and table."""
    lock_project(_settings(two))
    shutil.copytree(two / "models" / "iris", two / "models" / "wine")
    toml = two / "secureserve.toml"
    toml.write_text(
        toml.read_text() + '\n[models.wine]\nhandler = "iris_app:Iris"\ndir = "models/wine"\n'
    )
    report = verify_project(_settings(two), None)
    assert not report.ok
    [problem] = report.problems
    for needle in ("models/wine", "[models.wine] dir", "secureserve lock"):
        assert needle in problem
    assert report.checked == 4


def test_verify_project_section_no_model_uses_is_reported_unused(two):
    """A section left by a removed model is listed in ``unused``, not a problem."""
    lock_project(_settings(two))
    toml = two / "secureserve.toml"
    toml.write_text(toml.read_text().split("[models.digits]")[0])
    report = verify_project(_settings(two), None)
    assert report.ok
    assert report.unused == ["models/digits"]


def test_verify_project_one_model_lock_for_several_models_is_refused(two):
    """A v1 lock where the settings serve several models says to lock again."""
    write_lock(two / LOCK_FILENAME, build_lock({}))
    with pytest.raises(ConfigError) as caught:
        verify_project(_settings(two), None)
    assert "secureserve lock" in str(caught.value)
    assert "secureserve-lock/v1" in str(caught.value)


def test_verify_project_several_models_lock_for_one_model_is_refused(tmp_path):
    """A v2 lock where the settings serve one model says to lock again."""
    project = _project(tmp_path)
    write_lock(project / LOCK_FILENAME, build_folders_lock({"models": {}}))
    with pytest.raises(ConfigError) as caught:
        verify_project(_settings(project), None)
    assert "secureserve-lock/v2" in str(caught.value)


def test_verify_project_signature_over_v2_verifies(two, tmp_path):
    """A signature over the v2 lock's bytes verifies with the models' signing key."""
    private, public = _with_key(two, tmp_path / "keys")
    lock_project(_settings(two))
    _sign(two, private)
    report = verify_project(_settings(two), public)
    assert report.ok, report.problems
    assert report.key_id is not None
    assert signing_public_key(_settings(two)) == public


def test_verify_project_changed_byte_in_signed_v2_fails(two, tmp_path):
    """One changed byte of a signed v2 lock (still a valid lock) fails the signature."""
    private, public = _with_key(two, tmp_path / "keys")
    lock_project(_settings(two))
    _sign(two, private)
    path = two / LOCK_FILENAME
    path.write_bytes(path.read_bytes().replace(b'"size": 38', b'"size": 39'))
    report = verify_project(_settings(two), public)
    assert not report.ok
    assert any("does not match the lock's content" in p for p in report.problems)
    assert any(p.startswith("models/iris/labels.json: ") for p in report.problems)


# --------------------------------------------------------------------------- verified_lock


def test_verified_lock_gives_each_model_its_folder_and_the_file_sha(two):
    """Each model gets its own folder's Lock; the digest is the whole lock file's."""
    lock_project(_settings(two))
    settings = _settings(two)
    digest = hashlib.sha256((two / LOCK_FILENAME).read_bytes()).hexdigest()
    iris, iris_sha = verified_lock(settings, settings.models["iris"])
    digits, digits_sha = verified_lock(settings, settings.models["digits"])
    assert sorted(iris.files) == ["iris.onnx", "labels.json"]
    assert sorted(digits.files) == ["digits.safetensors", "profile.json"]
    assert iris_sha == digits_sha == digest


def test_verified_lock_one_model_is_the_v1_lock(tmp_path):
    """With ``[model]`` the whole v1 lock is the model's, as before."""
    project = _project(tmp_path)
    lock_project(_settings(project))
    settings = _settings(project)
    lock, digest = verified_lock(settings, settings.model)
    assert lock == read_lock(project / LOCK_FILENAME)[0]
    assert digest == hashlib.sha256((project / LOCK_FILENAME).read_bytes()).hexdigest()


def test_verified_lock_without_lock_or_key_refuses_every_file(two):
    """No lock and no signing key: ``MISSING_LOCK`` (each artifact refused), no digest."""
    settings = _settings(two)
    assert verified_lock(settings, settings.models["iris"]) == (MISSING_LOCK, None)


def test_verified_lock_without_lock_but_with_key_is_an_error(two, tmp_path):
    """With a signing key set, a missing lock stops the model at once."""
    _with_key(two, tmp_path / "keys")
    settings = _settings(two)
    with pytest.raises(ConfigError) as caught:
        verified_lock(settings, settings.models["iris"])
    assert "secureserve lock" in str(caught.value)


def test_verified_lock_missing_signature_names_the_table(two, tmp_path):
    """A signing key without a signature file names the model's table and the fix."""
    _with_key(two, tmp_path / "keys")
    lock_project(_settings(two))
    settings = _settings(two)
    with pytest.raises(ConfigError) as caught:
        verified_lock(settings, settings.models["digits"])
    assert "[models.digits] signing_public_key" in str(caught.value)
    assert "secureserve sign" in str(caught.value)


def test_verified_lock_checks_the_signature_over_the_exact_bytes(two, tmp_path):
    """A signed v2 lock verifies; after one changed byte the signature check refuses it."""
    private, _ = _with_key(two, tmp_path / "keys")
    lock_project(_settings(two))
    _sign(two, private)
    settings = _settings(two)
    lock, _ = verified_lock(settings, settings.models["iris"])
    assert "iris.onnx" in lock.files
    path = two / LOCK_FILENAME
    path.write_bytes(path.read_bytes().replace(b'"size": 38', b'"size": 39'))
    with pytest.raises(ArtifactError) as caught:
        verified_lock(settings, settings.models["iris"])
    assert caught.value.name == LOCK_FILENAME


def test_verified_lock_missing_section_is_a_clear_error(two):
    """A model whose folder has no section stops with its folder, table and the fix."""
    lock_project(_settings(two))
    shutil.copytree(two / "models" / "iris", two / "models" / "wine")
    toml = two / "secureserve.toml"
    toml.write_text(
        toml.read_text() + '\n[models.wine]\nhandler = "iris_app:Iris"\ndir = "models/wine"\n'
    )
    settings = _settings(two)
    with pytest.raises(ConfigError) as caught:
        verified_lock(settings, settings.models["wine"])
    for needle in ("models/wine", "[models.wine]", "secureserve lock"):
        assert needle in str(caught.value)
    verified_lock(settings, settings.models["iris"])  # the others still load


def test_verified_lock_v1_lock_with_several_models_is_an_error(two):
    """A leftover v1 lock is not read as any model's folder."""
    write_lock(two / LOCK_FILENAME, build_lock({}))
    settings = _settings(two)
    with pytest.raises(ConfigError) as caught:
        verified_lock(settings, settings.models["iris"])
    assert "secureserve lock" in str(caught.value)
