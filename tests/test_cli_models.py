"""The model-file commands: lock, sign, verify, encrypt, decrypt and their keys.

Most run in-process through ``secureserve.cli.main`` in a copy of the iris example;
a few run the real entry point (``python -m secureserve.cli``) to see exactly what a
user sees. One slow test signs the project and starts real servers on it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import EXAMPLES
from server_helpers import free_port, run_cli, running_server, set_toml
from two_models import copy_two_models

from secureserve.cli import main
from secureserve.lockfile import (
    LOCK_FILENAME,
    SIGNATURE_FILENAME,
    FoldersLock,
    read_lock,
    read_lock_file,
)

PRIVATE = Path("secrets/signing-key.pem")
PUBLIC = Path("signing-key.pub.pem")
ENC_KEY = Path("secrets/model.key")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_error(code: int, stderr: str, *needles: str) -> None:
    """Exit 1 and one paragraph on stderr, starting ``secureserve: error:``, no traceback."""
    assert code == 1, stderr
    message = stderr.strip()
    assert message.startswith("secureserve: error:"), stderr
    assert "\n\n" not in message, stderr
    assert message.count("secureserve: error:") == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.fixture
def project(iris_project, monkeypatch):
    """The iris copy as the working directory, with no SECURESERVE_* setting inherited."""
    for name in [n for n in os.environ if n.startswith("SECURESERVE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(iris_project)
    return iris_project


@pytest.fixture
def signed(project, capsys):
    """The project with a new key pair, a fresh lock and its signature."""
    assert main(["signing-key", "new"]) == 0
    assert main(["lock"]) == 0
    assert main(["sign", "--private-key", str(PRIVATE)]) == 0
    capsys.readouterr()
    return project


@pytest.fixture
def enc_key(project, capsys):
    """A new encryption key file under secrets/."""
    assert main(["encryption-key", "new", str(ENC_KEY)]) == 0
    capsys.readouterr()
    return project / ENC_KEY


# --------------------------------------------------------------------------- lock


def test_lock_prints_files_and_writes_lock(project, capsys):
    """``lock`` writes secureserve.lock listing every model file and prints each one."""
    (project / LOCK_FILENAME).unlink()
    assert main(["lock"]) == 0
    out = capsys.readouterr().out
    assert f"{project / LOCK_FILENAME} (2 files)" in out
    lock, _ = read_lock(project / LOCK_FILENAME)
    assert sorted(lock.files) == ["iris.onnx", "labels.json"]
    for name, entry in lock.files.items():
        assert name in out
        assert entry.sha256[:16] in out


def test_lock_refuses_pickle_in_model_folder(project, capsys):
    """``lock`` with a pickle in models/ fails with one paragraph naming it; lock unchanged."""
    before = (project / LOCK_FILENAME).read_bytes()
    (project / "models" / "extra.pkl").write_bytes(b"\x80\x02}q\x00.")
    code = main(["lock"])
    _assert_error(code, capsys.readouterr().err, "extra.pkl", "safetensors")
    assert (project / LOCK_FILENAME).read_bytes() == before


def test_lock_warns_about_stale_signature(signed, capsys):
    """Re-locking a signed project after a change says the signature must be made again."""
    (signed / "models" / "labels.json").write_text('["a", "b", "c"]')
    assert main(["lock"]) == 0
    err = capsys.readouterr().err
    assert SIGNATURE_FILENAME in err
    assert "secureserve sign" in err


# --------------------------------------------------------------------------- signing keys


def test_signing_key_new_writes_private_0600_and_public(project, capsys):
    """``signing-key new``: private key 0600 under secrets/, public key beside the config."""
    assert main(["signing-key", "new"]) == 0
    out = capsys.readouterr().out
    private, public = project / PRIVATE, project / PUBLIC
    assert _mode(private) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert str(private) in out
    assert str(public) in out
    assert b"PRIVATE" not in out.encode()


def test_signing_key_new_refuses_to_overwrite(project, capsys):
    """A second ``signing-key new`` fails naming the existing key; both files stay as they were."""
    assert main(["signing-key", "new"]) == 0
    before = ((project / PRIVATE).read_bytes(), (project / PUBLIC).read_bytes())
    capsys.readouterr()
    code = main(["signing-key", "new"])
    _assert_error(code, capsys.readouterr().err, "already exists", str(project / PRIVATE))
    assert ((project / PRIVATE).read_bytes(), (project / PUBLIC).read_bytes()) == before


# --------------------------------------------------------------------------- sign and verify


def test_sign_then_verify_exit_zero(signed, capsys):
    """``sign`` writes the .sig; ``verify --public-key`` reports a valid signature and exits 0."""
    assert (signed / SIGNATURE_FILENAME).is_file()
    assert main(["verify", "--public-key", str(PUBLIC)]) == 0
    captured = capsys.readouterr()
    assert "signature: valid" in captured.out
    assert "files: 2 match" in captured.out
    assert "error" not in captured.err


def test_verify_uses_configured_public_key(signed, capsys):
    """Without ``--public-key``, ``verify`` checks with ``[model] signing_public_key``."""
    set_toml(signed, "model", signing_public_key=str(PUBLIC))
    assert main(["verify"]) == 0
    assert "signature: valid" in capsys.readouterr().out


def test_verify_without_key_says_signature_not_checked(signed, capsys):
    """With no key at all, ``verify`` checks the files and says the signature was not checked."""
    assert main(["verify"]) == 0
    assert "not checked" in capsys.readouterr().err


def test_verify_tampered_model_file_exit_one(signed, capsys):
    """A model file changed after signing: exit 1, stderr names the file."""
    (signed / "models" / "labels.json").write_text('["setosa", "versicolor", "pwned"]')
    code = main(["verify", "--public-key", str(PUBLIC)])
    _assert_error(code, capsys.readouterr().err, "labels.json", LOCK_FILENAME)


def test_verify_other_public_key_exit_one(signed, capsys):
    """Verifying with a public key other than the signer's: exit 1, says which key signed."""
    assert (
        main(["signing-key", "new", "--private-key", "secrets/o.pem", "--public-key", "o.pem"]) == 0
    )
    capsys.readouterr()
    code = main(["verify", "--public-key", "o.pem"])
    _assert_error(code, capsys.readouterr().err, "the signature was made with key")


def test_verify_missing_signature_exit_one(signed, capsys):
    """With a key given but no .sig file: exit 1 naming the signature file."""
    (signed / SIGNATURE_FILENAME).unlink()
    code = main(["verify", "--public-key", str(PUBLIC)])
    _assert_error(code, capsys.readouterr().err, SIGNATURE_FILENAME)


def test_verify_unlisted_files_exit_one_naming_each(signed, capsys):
    """Files the lock does not list: exit 1, one error naming each, and the fix."""
    (signed / "models" / "notes.txt").write_text("x")
    (signed / "models" / "old").mkdir()
    (signed / "models" / "old" / "weights\x1b.bin").write_bytes(b"x")
    code = main(["verify", "--public-key", str(PUBLIC)])
    captured = capsys.readouterr()
    _assert_error(code, captured.err, "2 files", LOCK_FILENAME, "secureserve lock")
    assert captured.err.splitlines()[1:3] == ["  notes.txt", "  'old/weights\\x1b.bin'"]
    assert "signature: valid" in captured.out  # the rest was still checked
    assert "files: 2 match" in captured.out


def test_verify_fresh_lock_of_a_folder_with_extra_files_exit_zero(signed, capsys):
    """Locking again takes the new files in: verify passes with nothing unlisted."""
    (signed / "models" / "notes.txt").write_text("x")
    assert main(["lock"]) == 0
    assert main(["verify"]) == 0
    captured = capsys.readouterr()
    assert "files: 3 match" in captured.out
    assert "error" not in captured.err


def test_verify_tampered_model_file_real_process(signed):
    """The real command: exit 1, stderr one paragraph naming the file, no traceback."""
    (signed / "models" / "iris.onnx").write_bytes(b"\x80\x02}q\x00.")
    result = run_cli("verify", "--public-key", str(PUBLIC), cwd=signed)
    _assert_error(result.returncode, result.stderr, "iris.onnx")


def test_sign_missing_private_key_error(project, capsys):
    """``sign`` with a private key that does not exist fails in one paragraph naming it."""
    code = main(["sign", "--private-key", "secrets/nope.pem"])
    _assert_error(code, capsys.readouterr().err, "nope.pem")
    assert not (project / SIGNATURE_FILENAME).exists()


# --------------------------------------------------------------------------- several models


@pytest.fixture
def two(tmp_path, monkeypatch):
    """The two-model project (iris and digits) as the working directory, no env settings."""
    for name in [n for n in os.environ if n.startswith("SECURESERVE_")]:
        monkeypatch.delenv(name)
    project = copy_two_models(tmp_path / "two", monkeypatch)
    monkeypatch.chdir(project)
    return project


@pytest.fixture
def two_signed(two, capsys):
    """The two-model project locked and signed, both tables naming the public key."""
    assert main(["signing-key", "new"]) == 0
    toml = two / "secureserve.toml"
    text = toml.read_text()
    for name in ("iris", "digits"):
        text = text.replace(
            f'dir = "models/{name}"\n', f'dir = "models/{name}"\nsigning_public_key = "{PUBLIC}"\n'
        )
    toml.write_text(text)
    assert main(["lock"]) == 0
    assert main(["sign", "--private-key", str(PRIVATE)]) == 0
    capsys.readouterr()
    return two


def test_lock_several_models_prints_each_folder(two, capsys):
    """``lock`` with two models writes a v2 lock and prints each folder with its files."""
    assert main(["lock"]) == 0
    out = capsys.readouterr().out
    assert f"{two / LOCK_FILENAME} (4 files in 2 model folders)" in out
    assert "models/digits (2 files)" in out
    assert "models/iris (2 files)" in out
    assert (
        out.index("models/digits (") < out.index("digits.safetensors") < out.index("models/iris (")
    )
    lock, _ = read_lock_file(two / LOCK_FILENAME)
    assert isinstance(lock, FoldersLock)


def test_sign_then_verify_several_models(two_signed, capsys):
    """A signed v2 lock verifies with the configured key; each folder's count is printed."""
    assert main(["verify"]) == 0
    out = capsys.readouterr().out
    assert "signature: valid" in out
    assert "files: 4 match" in out
    assert "models/digits ([models.digits]): 2 files match" in out
    assert "models/iris ([models.iris]): 2 files match" in out


def test_verify_several_models_tampered_file_names_its_folder(two_signed, capsys):
    """A changed file in one folder: exit 1, one error naming the folder and the file."""
    (two_signed / "models" / "iris" / "labels.json").write_text('["a", "b", "pwned"]')
    code = main(["verify"])
    _assert_error(code, capsys.readouterr().err, "models/iris/labels.json", LOCK_FILENAME)


def test_verify_several_models_unlisted_file_names_its_folder(two_signed, capsys):
    """An extra file in one model folder: exit 1, named by its path in the project."""
    (two_signed / "models" / "digits" / "notes.txt").write_text("x")
    code = main(["verify"])
    captured = capsys.readouterr()
    _assert_error(code, captured.err, "1 file in the model folders is not in", LOCK_FILENAME)
    assert "  models/digits/notes.txt\n" in captured.err
    assert "models/iris ([models.iris]): 2 files match" in captured.out


def test_verify_several_models_changed_lock_byte_fails(two_signed, capsys):
    """One changed byte of the signed v2 lock fails the signature check."""
    path = two_signed / LOCK_FILENAME
    path.write_bytes(path.read_bytes().replace(b'"size": 38', b'"size": 39'))
    code = main(["verify"])
    err = capsys.readouterr().err
    assert code == 1
    assert "does not match the lock's content" in err


def test_sign_refuses_a_hostile_v2_lock(two, capsys):
    """``sign`` refuses a lock that does not parse (a ``..`` section) and writes no .sig."""
    assert main(["signing-key", "new"]) == 0
    (two / LOCK_FILENAME).write_text(
        '{"folders": {"../etc": {"files": {}}}, "format": "secureserve-lock/v2"}\n'
    )
    capsys.readouterr()
    code = main(["sign", "--private-key", str(PRIVATE)])
    _assert_error(code, capsys.readouterr().err, "unsafe path", "secureserve lock")
    assert not (two / SIGNATURE_FILENAME).exists()


def test_verify_old_v1_lock_with_several_models_says_lock_again(two, capsys):
    """A v1 lock left from a one-model project: exit 1 saying to run ``secureserve lock``."""
    shutil.copy(EXAMPLES / "iris" / LOCK_FILENAME, two / LOCK_FILENAME)
    code = main(["verify"])
    _assert_error(code, capsys.readouterr().err, "secureserve-lock/v1", "secureserve lock")


# --------------------------------------------------------------------------- encryption


def test_encryption_key_new_writes_0600(enc_key):
    """``encryption-key new PATH`` writes a base64 32-byte key with mode 0600."""
    assert _mode(enc_key) == 0o600
    assert len(base64.b64decode(enc_key.read_bytes().strip(), validate=True)) == 32


def test_encryption_key_new_refuses_to_overwrite(enc_key, capsys):
    """A second ``encryption-key new`` on the same path fails and keeps the key."""
    before = enc_key.read_bytes()
    code = main(["encryption-key", "new", str(ENC_KEY)])
    _assert_error(code, capsys.readouterr().err, "already exists")
    assert enc_key.read_bytes() == before


def test_encrypt_writes_enc_and_keeps_plaintext(project, enc_key, capsys):
    """``encrypt FILE`` writes FILE.enc (encrypted, not the plaintext) and leaves FILE as it was."""
    plain = project / "models" / "iris.onnx"
    original = plain.read_bytes()
    assert main(["encrypt", "models/iris.onnx", "--key-file", str(ENC_KEY)]) == 0
    assert "secureserve lock" in capsys.readouterr().out
    enc = project / "models" / "iris.onnx.enc"
    assert plain.read_bytes() == original
    assert enc.is_file()
    assert original not in enc.read_bytes()
    assert len(enc.read_bytes()) > len(original)


def test_decrypt_round_trip_equals_original(project, enc_key):
    """``decrypt FILE.enc --output`` gives back the exact original bytes."""
    original = (project / "models" / "iris.onnx").read_bytes()
    assert main(["encrypt", "models/iris.onnx", "--key-file", str(ENC_KEY)]) == 0
    assert (
        main(
            ["decrypt", "models/iris.onnx.enc", "--key-file", str(ENC_KEY), "--output", "back.onnx"]
        )
        == 0
    )
    assert (project / "back.onnx").read_bytes() == original


def test_decrypt_default_target_round_trip(project, enc_key):
    """Without ``--output``, ``decrypt`` writes FILE (the .enc name without its suffix)."""
    plain = project / "models" / "iris.onnx"
    original = plain.read_bytes()
    assert main(["encrypt", "models/iris.onnx", "--key-file", str(ENC_KEY)]) == 0
    plain.unlink()
    assert main(["decrypt", "models/iris.onnx.enc", "--key-file", str(ENC_KEY)]) == 0
    assert plain.read_bytes() == original


def test_decrypt_refuses_existing_target(project, enc_key, capsys):
    """``decrypt`` never overwrites: the plaintext still there is an error and stays intact."""
    plain = project / "models" / "iris.onnx"
    original = plain.read_bytes()
    assert main(["encrypt", "models/iris.onnx", "--key-file", str(ENC_KEY)]) == 0
    capsys.readouterr()
    code = main(["decrypt", "models/iris.onnx.enc", "--key-file", str(ENC_KEY)])
    _assert_error(code, capsys.readouterr().err, "iris.onnx")
    assert plain.read_bytes() == original


def test_decrypt_wrong_key_exit_one_no_output(project, enc_key, capsys):
    """Another key: exit 1 with one paragraph, and no output file (not even a partial one)."""
    assert main(["encrypt", "models/iris.onnx", "--key-file", str(ENC_KEY)]) == 0
    assert main(["encryption-key", "new", "secrets/other.key"]) == 0
    capsys.readouterr()
    code = main(
        ["decrypt", "models/iris.onnx.enc", "--key-file", "secrets/other.key", "--output", "o.onnx"]
    )
    _assert_error(code, capsys.readouterr().err, "iris.onnx.enc")
    assert not (project / "o.onnx").exists()
    assert sorted(p.name for p in project.iterdir() if p.name.startswith(".")) == []


def test_decrypt_wrong_key_real_process(project, enc_key):
    """The real command with the wrong key: exit 1, one paragraph, no traceback, no output."""
    assert main(["encrypt", "models/iris.onnx", "--key-file", str(ENC_KEY)]) == 0
    assert main(["encryption-key", "new", "secrets/other.key"]) == 0
    result = run_cli(
        "decrypt",
        "models/iris.onnx.enc",
        "--key-file",
        "secrets/other.key",
        "--output",
        "o.onnx",
        cwd=project,
    )
    _assert_error(result.returncode, result.stderr, "iris.onnx.enc")
    assert not (project / "o.onnx").exists()


def test_encrypt_key_file_readable_by_others_refused(project, enc_key, capsys):
    """``encrypt`` with a 0644 key file fails naming it; no .enc is written."""
    enc_key.chmod(0o644)
    code = main(["encrypt", "models/iris.onnx", "--key-file", str(ENC_KEY)])
    _assert_error(code, capsys.readouterr().err, "chmod 600")
    assert not (project / "models" / "iris.onnx.enc").exists()


def test_decrypt_without_enc_suffix_needs_output(project, enc_key, capsys):
    """``decrypt`` of a file not ending in .enc asks for ``--output``."""
    code = main(["decrypt", "models/iris.onnx", "--key-file", str(ENC_KEY)])
    _assert_error(code, capsys.readouterr().err, "--output")


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_signed_project_serves_then_tampered_labels_refuse_start(iris_project):
    """A signed, signature-requiring iris project serves; a tampered labels.json stops a restart.

    The lock is made and signed with the CLI, ``[model] signing_public_key`` is set, a
    real server predicts; then labels.json is changed and a second server on the same
    project must refuse to start, naming secureserve.lock and labels.json.
    """
    for args in (("signing-key", "new"), ("lock",), ("sign", "--private-key", str(PRIVATE))):
        result = run_cli(*args, cwd=iris_project)
        assert result.returncode == 0, result.stderr
    set_toml(iris_project, "model", signing_public_key=str(PUBLIC))
    with running_server(iris_project) as server:
        reply = server.predict({"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]})
        assert reply.status == 200, reply.body
        assert reply.json()["predictions"][0]["label"] == "setosa"

    labels = iris_project / "models" / "labels.json"
    labels.write_text(json.dumps(["setosa", "versicolor", "pwned"]))
    result = run_cli("run", "--dev", "--port", str(free_port()), cwd=iris_project)
    _assert_error(result.returncode, result.stderr, LOCK_FILENAME, "labels.json")
