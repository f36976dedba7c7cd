"""The ``secureserve`` command: start-up refusals, ``keys`` and ``certs``.

Refusals run the real entry point (``python -m secureserve.cli``) in a copy of the
iris example; ``keys list``/``revoke`` and ``certs dev`` also run in-process
through ``secureserve.cli.main``.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hostile import MARKER_PREFIX, marker_for, pickle_payload
from server_helpers import (
    HOST,
    free_port,
    run_cli,
    set_toml,
    write_server_certificate,
)

from secureserve.cli import main
from secureserve.devcerts import ensure_dev_certificates
from secureserve.lockfile import LOCK_FILENAME, LockEntry, build_lock, read_lock, write_lock

KEY_LINE = re.compile(r"ss_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


def _assert_cli_error(result, *needles: str) -> None:
    """A non-zero exit with one paragraph on stderr naming ``needles``, and no traceback."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    message = result.stderr.strip()
    assert message.startswith("secureserve: error:"), result.stderr
    assert "\n\n" not in message, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in message, (needle, message)


def _replace_in_toml(project: Path, old: str, new: str) -> None:
    path = project / "secureserve.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# --------------------------------------------------------------------------- run: refusals


def test_run_without_certificate_config_refused(iris_project):
    """No [tls] cert/key and no --dev: refused with a hint at both fixes."""
    result = run_cli("run", "--port", str(free_port()), cwd=iris_project)
    _assert_cli_error(result, "[tls] cert", "--dev")


def test_run_debug_shows_traceback(iris_project):
    """With --debug the same refusal prints the traceback, then the one-line error."""
    result = run_cli("run", "--debug", "--port", str(free_port()), cwd=iris_project)
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("secureserve: error:")


def test_run_missing_certificate_file_refused(iris_project):
    """A [tls] cert path that does not exist is named in the error."""
    missing = iris_project / "certs" / "server.pem"
    set_toml(iris_project, "tls", cert=missing, key=iris_project / "certs" / "key.pem")
    result = run_cli("run", "--port", str(free_port()), cwd=iris_project)
    _assert_cli_error(result, str(missing), "does not exist")


def test_run_expired_certificate_refused(iris_project, tmp_path):
    """A certificate whose not_valid_after is in the past is refused before serving."""
    now = datetime.now(UTC)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_server_certificate(
        cert, key, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    set_toml(iris_project, "tls", cert=cert, key=key)
    result = run_cli("run", "--port", str(free_port()), cwd=iris_project)
    _assert_cli_error(result, str(cert), "expired")


def test_run_world_readable_key_refused(iris_project, tmp_path):
    """A private key with mode 0644 is refused, with the chmod that fixes it."""
    certs = ensure_dev_certificates(tmp_path / "certs")
    certs.key.chmod(0o644)
    result = run_cli(
        "run",
        "--port",
        str(free_port()),
        cwd=iris_project,
        env={"SECURESERVE_TLS__CERT": str(certs.cert), "SECURESERVE_TLS__KEY": str(certs.key)},
    )
    _assert_cli_error(result, str(certs.key), "chmod 600")


def test_run_unknown_config_key_refused(iris_project):
    """A typo in secureserve.toml names the section and key."""
    set_toml(iris_project, "server", colour="blue")
    result = run_cli("run", "--dev", "--port", str(free_port()), cwd=iris_project)
    _assert_cli_error(result, "[server] colour")


def test_run_wrong_type_refused(iris_project):
    """``port = "x"`` names [server] port."""
    _replace_in_toml(iris_project, "port = 8443", 'port = "x"')
    result = run_cli("run", "--dev", cwd=iris_project)
    _assert_cli_error(result, "[server] port")


def test_run_unknown_environment_setting_refused(iris_project):
    """SECURESERVE_SERVER__NOPE is named as not a setting."""
    result = run_cli(
        "run",
        "--dev",
        "--port",
        str(free_port()),
        cwd=iris_project,
        env={"SECURESERVE_SERVER__NOPE": "1"},
    )
    _assert_cli_error(result, "SECURESERVE_SERVER__NOPE")


def test_run_port_in_use_refused(iris_project):
    """A port another socket holds is a clear error naming the port."""
    with socket.create_server((HOST, 0)) as holder:
        port = holder.getsockname()[1]
        result = run_cli("run", "--dev", "--port", str(port), cwd=iris_project)
    _assert_cli_error(result, str(port), "in use")


def test_run_handler_import_error_refused(iris_project):
    """``handler = "nosuch:Model"``: the module that failed to import is named."""
    _replace_in_toml(iris_project, 'handler = "app:Iris"', 'handler = "nosuch:Model"')
    result = run_cli("run", "--dev", "--port", str(free_port()), cwd=iris_project)
    _assert_cli_error(result, "nosuch")


def test_run_handler_not_a_model_refused(iris_project):
    """APP naming a class that is not a Model subclass (the input Struct) is refused."""
    result = run_cli("run", "--dev", "--port", str(free_port()), "app:Flower", cwd=iris_project)
    _assert_cli_error(result, "app:Flower", "secureserve.Model", "its handlers: Iris")


def test_run_handler_missing_names_the_handlers_there(iris_project):
    """A misspelt class is said to be missing (not "not a subclass"), with the ones there."""
    _replace_in_toml(iris_project, 'handler = "app:Iris"', 'handler = "app:Irsi"')
    result = run_cli("run", "--dev", "--port", str(free_port()), cwd=iris_project)
    _assert_cli_error(result, "app has no 'Irsi'", "its handlers: Iris")
    assert "subclass" not in result.stderr


def test_run_outside_a_project_says_there_is_no_config(tmp_path):
    """``run --dev`` in a folder without secureserve.toml says so, and what to do."""
    result = run_cli("run", "--dev", "--port", str(free_port()), cwd=tmp_path)
    _assert_cli_error(result, "no model handler", "There is no secureserve.toml in", "--config")


def _relock(project: Path, name: str, data: bytes) -> None:
    """Record ``data`` as ``name`` in the project's lock, as a careless release would."""
    lock, _ = read_lock(project / LOCK_FILENAME)
    entry = LockEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data), format="pickle")
    write_lock(project / LOCK_FILENAME, build_lock({**lock.files, name: entry}))


def test_run_hostile_model_file_refused(iris_project):
    """A pickle in place of models/iris.onnx, even with a matching lock, is refused by name."""
    name = "cli-iris.onnx"
    marker = marker_for(name)
    marker.unlink(missing_ok=True)
    payload = pickle_payload(2, name)
    (iris_project / "models" / "iris.onnx").write_bytes(payload)
    _relock(iris_project, "iris.onnx", payload)
    result = run_cli("run", "--dev", "--port", str(free_port()), cwd=iris_project)
    _assert_cli_error(result, "iris.onnx")
    assert "pickle" in result.stderr.lower()
    assert not marker.exists()
    assert not list(Path(MARKER_PREFIX).parent.glob(Path(MARKER_PREFIX).name + "*"))


def test_run_tampered_model_file_refused_by_lock(iris_project):
    """A swapped model file that the lock does not vouch for is refused before parsing."""
    name = "cli-tampered.onnx"
    marker = marker_for(name)
    marker.unlink(missing_ok=True)
    (iris_project / "models" / "iris.onnx").write_bytes(pickle_payload(2, name))
    result = run_cli("run", "--dev", "--port", str(free_port()), cwd=iris_project)
    _assert_cli_error(result, "iris.onnx", "secureserve.lock")
    assert not marker.exists()


def test_run_dev_refuses_public_host(iris_project):
    """``run --dev --host 0.0.0.0`` is refused before any certificate or key is written."""
    everywhere = "0.0.0.0"  # noqa: S104 - the refused setting under test, never bound
    result = run_cli(
        "run", "--dev", "--host", everywhere, "--port", str(free_port()), cwd=iris_project
    )
    _assert_cli_error(result, everywhere, "127.0.0.1")
    assert not (iris_project / ".secureserve").exists()
    assert not (iris_project / "secrets" / "api_keys.toml").exists()


def _dev_folder(project: Path) -> dict[str, bytes]:
    """Every file under the project's .secureserve/ by relative path, with its bytes."""
    folder = project / ".secureserve"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")}


@pytest.mark.parametrize("failure", ["handler", "port"])
def test_run_dev_failed_first_run_leaves_no_dev_folder(iris_project, failure):
    """A first ``run --dev`` that fails removes the .secureserve/ it made.

    The handler import fails after the certificates are made; a port in use after the
    development digest key is made too: either way nothing of .secureserve/ is left.
    """
    with socket.create_server((HOST, 0)) as holder:
        if failure == "handler":
            args = ["run", "--dev", "--port", str(free_port()), "nosuch:Model"]
        else:
            args = ["run", "--dev", "--port", str(holder.getsockname()[1])]
        result = run_cli(*args, cwd=iris_project)
    _assert_cli_error(result, "nosuch" if failure == "handler" else "in use")
    assert not (iris_project / ".secureserve").exists()


def test_run_dev_failure_keeps_what_was_there(iris_project, monkeypatch, capsys):
    """A failed ``run --dev`` in an existing .secureserve/ removes only what it added.

    The CA and certificates of ``certs dev`` (perhaps trusted by the developer's tools)
    and a file of the developer's stay byte for byte; the digest key the failed run
    made is gone.
    """
    monkeypatch.chdir(iris_project)
    assert main(["certs", "dev"]) == 0
    capsys.readouterr()
    (iris_project / ".secureserve" / "notes.txt").write_text("mine\n")
    before = _dev_folder(iris_project)
    assert "audit-digest.key" not in before
    with socket.create_server((HOST, 0)) as holder:
        port = holder.getsockname()[1]
        result = run_cli("run", "--dev", "--port", str(port), cwd=iris_project)
    _assert_cli_error(result, str(port), "in use")
    assert _dev_folder(iris_project) == before


# --------------------------------------------------------------------------- keys


def test_keys_create_prints_secret_once_stores_hash(iris_project):
    """``keys create``: the secret alone on stdout; the 0600 key file holds only its SHA-256."""
    result = run_cli("keys", "create", "--role", "predict", "--name", "ci", cwd=iris_project)
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip()
    match = KEY_LINE.fullmatch(secret)
    assert match is not None, result.stdout
    key_id, raw = match.groups()
    assert secret not in result.stderr
    assert key_id in result.stderr
    keys_file = iris_project / "secrets" / "api_keys.toml"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    stored = keys_file.read_text()
    assert hashlib.sha256(raw.encode()).hexdigest() in stored
    assert raw not in stored
    assert secret not in stored


def test_keys_list_never_prints_secrets(iris_project, monkeypatch, capsys):
    """``keys list`` shows ids, state and roles, never a secret or its digest."""
    monkeypatch.chdir(iris_project)
    assert main(["keys", "create", "--role", "predict", "--role", "admin", "--name", "ops"]) == 0
    secret = capsys.readouterr().out.strip()
    key_id, raw = KEY_LINE.fullmatch(secret).groups()
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr()
    assert key_id in listed.out
    assert "active" in listed.out
    assert "roles=predict,admin" in listed.out
    shown = listed.out + listed.err
    assert raw not in shown
    assert hashlib.sha256(raw.encode()).hexdigest() not in shown


def test_keys_create_takes_custom_roles_and_refuses_malformed_ones(
    iris_project, monkeypatch, capsys
):
    """A custom role (analyst) is stored as given; a malformed name is a one-line error."""
    monkeypatch.chdir(iris_project)
    assert main(["keys", "create", "--role", "predict", "--role", "analyst", "--name", "r"]) == 0
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    assert "roles=predict,analyst" in capsys.readouterr().out
    assert main(["keys", "create", "--role", "ana lyst", "--name", "bad"]) != 0
    assert "not a role name" in capsys.readouterr().err


def test_keys_create_warns_of_a_role_nothing_uses(iris_project, monkeypatch, capsys):
    """A mistyped role is created as asked, with a warning and the likely role; known ones are not.

    ``analyst`` is a custom role the iris example's output policy names.
    """
    monkeypatch.chdir(iris_project)
    assert main(["keys", "create", "--role", "predict", "--role", "analyst", "--name", "ok"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["keys", "create", "--role", "predicts", "--name", "typo"]) == 0
    err = capsys.readouterr().err
    assert "warning: role 'predicts' is not one of secureserve's" in err
    assert "did you mean 'predict'?" in err
    assert "secureserve keys revoke" in err


def test_keys_create_warns_of_a_model_not_served(tmp_path, monkeypatch, capsys):
    """In a project of [models.<name>] tables, a key for another name is warned about."""
    from two_models import copy_two_models

    monkeypatch.chdir(copy_two_models(tmp_path / "two", monkeypatch))
    argv = ["keys", "create", "--role", "predict", "--name", "m", "--model"]
    assert main([*argv, "iris"]) == 0
    err = capsys.readouterr().err
    assert "models: iris" in err
    assert "warning" not in err
    assert main([*argv, "irsi"]) == 0
    assert "warning: model 'irsi' is not served by this project" in capsys.readouterr().err


def test_keys_revoke_marks_key_revoked(iris_project, monkeypatch, capsys):
    """``keys revoke ID`` keeps the record and lists it as revoked; unknown ids are an error."""
    monkeypatch.chdir(iris_project)
    assert main(["keys", "create", "--role", "predict", "--name", "gone"]) == 0
    key_id = KEY_LINE.fullmatch(capsys.readouterr().out.strip()).group(1)
    assert main(["keys", "revoke", key_id]) == 0
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(key_id))
    assert "revoked" in line
    assert main(["keys", "revoke", "000000000000"]) != 0
    assert capsys.readouterr().err.startswith("secureserve: error:")


# --------------------------------------------------------------------------- certs


def test_certs_dev_writes_private_key_0600(iris_project, monkeypatch, capsys):
    """``certs dev`` writes the CA, leaf and key under .secureserve/, the key with mode 0600."""
    monkeypatch.chdir(iris_project)
    assert main(["certs", "dev"]) == 0
    out = capsys.readouterr().out
    folder = iris_project / ".secureserve"
    key = folder / "key.pem"
    assert str(key) in out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "ca.pem").is_file()
    assert (folder / "cert.pem").is_file()
    assert os.access(folder / "ca.pem", os.R_OK)


@pytest.mark.parametrize("argv", [["certs"], ["keys"]])
def test_cli_subcommand_without_action_is_usage_error(argv, capsys):
    """``certs`` or ``keys`` without an action is argparse's usage error (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("docs_installed", [True, False])
def test_dev_banner_says_only_what_is_true(tmp_path, monkeypatch, docs_installed):
    """The banner says a previous dev key is revoked only when there was one; /docs as it is."""
    from types import SimpleNamespace

    from secureserve import docs_page
    from secureserve.cli.serve import _dev_banner
    from secureserve.config import load_settings

    monkeypatch.setattr(docs_page, "installed", lambda: docs_installed)
    settings = load_settings(project_dir=tmp_path)
    assert settings.auth.keys_file.is_relative_to(tmp_path)
    certs = SimpleNamespace(ca_cert=tmp_path / "ca.pem")
    first, second = _dev_banner(settings, certs), _dev_banner(settings, certs)
    assert "revoked" not in first
    assert "(shown once; the previous dev key is revoked)" in second
    docs_line = next(line for line in first.splitlines() if "Docs:" in line)
    if docs_installed:
        assert docs_line.endswith("(the interactive API page: paste the key there)")
    else:
        assert docs_line.endswith("/docs needs Swagger UI: pip install 'secureserve[docs]'")
