"""Tests of ``secureserve doctor`` (``secureserve.doctor`` and ``secureserve.cli.doctor``).

Each test starts from a fresh ``secureserve new`` project, weakens one thing, and
checks that exactly the expected finding appears with the expected severity.
"""

import json
import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from two_models import copy_two_models

from secureserve.cli import main
from secureserve.config import load_settings
from secureserve.devcerts import ensure_dev_certificates
from secureserve.doctor import Severity, diagnose, format_report
from secureserve.doctor.ignorefiles import git_view, ignored
from secureserve.keys import create_key
from secureserve.release import lock_project
from secureserve.scaffold import create_project

#: What a fresh project reports on a developer machine: notes only.
#: (`secureserve new` writes and locks a reference profile: no profile-missing.)
FRESH_CODES = {"tls-not-configured", "tls-1.2-accepted", "auth-no-credentials"}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One generated project, copied for each test (key generation is not free)."""
    return create_project("demo", parent=tmp_path_factory.mktemp("template")).path


@pytest.fixture
def project(template, tmp_path) -> Path:
    copy = tmp_path / "demo"
    shutil.copytree(template, copy)
    return copy


def codes(report, severity=None):
    return {f.code for f in report.findings if severity is None or f.severity is severity}


def run(project, **environ):
    return diagnose(project, environ={f"SECURESERVE_{k}": v for k, v in environ.items()})


# --- a fresh project ------------------------------------------------------------------


def test_fresh_project_has_no_errors_or_warnings(project):
    report = run(project)
    assert report.ok
    assert codes(report) - {"files-writable"} == FRESH_CODES
    assert codes(report, Severity.ERROR) == set()
    assert codes(report, Severity.WARNING) == set()


def test_cli_exit_codes_and_json(project, capsys):
    assert main(["doctor", str(project)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"secureserve doctor: {project}")
    assert "0 error(s), 0 warning(s)" in text

    assert main(["doctor", str(project), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert data["summary"]["error"] == 0
    finding = data["findings"][0]
    assert set(finding) == {"severity", "code", "subject", "message", "fix"}

    (project / "secureserve.toml").write_text('[logging]\nlevel = "debug"\n', "utf-8")
    assert main(["doctor", str(project)]) == 0  # a warning alone passes ...
    assert main(["doctor", str(project), "--strict"]) == 1  # ... unless --strict
    capsys.readouterr()


def test_cli_exits_non_zero_on_an_error(project, capsys):
    (project / "models" / "labels.json").write_text('["a", "b"]\n', "utf-8")
    assert main(["doctor", str(project)]) == 1
    out = capsys.readouterr().out
    assert "ERROR    model-verify-failed" in out
    assert "fix the errors before production" in out


def test_invalid_settings_are_one_error(project):
    report = run(project, SERVER__WORKERS="2")
    [finding] = [f for f in report.findings if f.code == "config-invalid"]
    assert finding.severity is Severity.ERROR
    assert "workers" in finding.message
    assert not report.ok


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_text("x")])
def test_a_path_that_is_not_a_folder_is_refused_in_one_line(tmp_path, capsys, make):
    target = tmp_path / "project"
    make(target)
    assert main(["doctor", str(target)]) == 1
    err = capsys.readouterr().err
    assert (
        err == f"secureserve: error: {target} is not a folder; give the project folder "
        "(the one that holds secureserve.toml).\n"
    )


def test_missing_settings_file_is_a_warning(tmp_path):
    report = diagnose(tmp_path, environ={})
    assert "config-missing" in codes(report, Severity.WARNING)


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture
def with_certificate(project):
    certs = ensure_dev_certificates(project / ".secureserve")
    environ = {"TLS__CERT": str(certs.cert), "TLS__KEY": str(certs.key)}
    expires = x509.load_pem_x509_certificate(certs.cert.read_bytes()).not_valid_after_utc
    return project, certs, environ, expires


def test_valid_certificate_has_no_tls_finding(with_certificate):
    project, _, environ, expires = with_certificate
    report = diagnose(
        project,
        environ={f"SECURESERVE_{k}": v for k, v in environ.items()},
        now=expires - timedelta(days=60),
    )
    assert not {c for c in codes(report) if c.startswith("tls-")} - {"tls-1.2-accepted"}


def test_certificate_expiring_soon_is_a_warning(with_certificate):
    project, _, environ, expires = with_certificate
    env = {f"SECURESERVE_{k}": v for k, v in environ.items()}
    report = diagnose(project, environ=env, now=expires - timedelta(days=10))
    [finding] = [f for f in report.findings if f.code == "tls-expires-soon"]
    assert finding.severity is Severity.WARNING
    assert "expires in 9 days" in finding.message or "expires in 10 days" in finding.message
    expired = diagnose(project, environ=env, now=expires + timedelta(days=1))
    assert "tls-invalid" in codes(expired, Severity.ERROR)


def test_readable_tls_key_is_an_error(with_certificate):
    project, certs, environ, _ = with_certificate
    certs.key.chmod(0o644)
    report = diagnose(project, environ={f"SECURESERVE_{k}": v for k, v in environ.items()})
    [finding] = [f for f in report.findings if f.code == "tls-invalid"]
    assert "readable by every user" in finding.message


def test_certificate_not_here_is_a_note(project):
    """Mounted where the server runs, absent from a checkout: --strict in CI still passes."""
    report = run(project, TLS__CERT="/run/secrets/tls/tls.crt", TLS__KEY="/run/secrets/tls/k")
    assert "tls-file-missing" in codes(report, Severity.INFO)
    assert report.count(Severity.WARNING) == 0


# --- keys and secrets -----------------------------------------------------------------


def test_digest_key_readable_by_group_is_an_error(project):
    (project / "secrets" / "audit-digest.key").chmod(0o640)
    report = run(project)
    [finding] = [f for f in report.findings if f.code == "key-file-invalid"]
    assert finding.severity is Severity.ERROR
    assert "0640" in finding.message


def test_digest_key_missing_is_a_note_and_unset_a_warning(project):
    (project / "secrets" / "audit-digest.key").unlink()
    assert "key-file-missing" in codes(run(project), Severity.INFO)
    unset = run(project, AUDIT__DIGEST_KEY_FILE="null")
    assert "audit-digest-key-unset" in codes(unset, Severity.WARNING)


def test_key_content_never_appears_in_the_report(project):
    key = project / "secrets" / "audit-digest.key"
    secret = key.read_text().strip()
    key.chmod(0o644)
    report = run(project)
    assert not report.ok
    assert secret not in report.to_json().decode()
    assert secret not in format_report(report)


def test_active_dev_key_is_a_warning_and_counts_as_a_credential(project):
    create_key(project / "secrets" / "api_keys.toml", name="dev", roles=("predict",), dev=True)
    report = run(project)
    assert "keys-dev-key" in codes(report, Severity.WARNING)
    assert "auth-no-credentials" not in codes(report)


def test_broken_keys_file_is_an_error(project):
    (project / "secrets" / "api_keys.toml").write_text("[[keys]]\nid = 1\n", "utf-8")
    assert "keys-file-invalid" in codes(run(project), Severity.ERROR)


def test_jwks_with_a_private_key_is_an_error(project):
    jwks = project / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "A", "d": "B"}]}))
    report = run(
        project,
        AUTH__JWKS_FILE=str(jwks),
        AUTH__JWT_ISSUER="https://issuer.example",
        AUTH__JWT_AUDIENCE="demo",
        AUTH__JWT_LEEWAY_S="120",
    )
    assert "jwks-invalid" in codes(report, Severity.ERROR)
    assert "jwt-leeway-large" in codes(report, Severity.WARNING)


def test_private_key_in_the_model_folder_is_an_error(project):
    shutil.copy(project / "secrets" / "signing-key.pem", project / "models" / "key.pem")
    report = run(project)
    assert "private-key-in-model-dir" in codes(report, Severity.ERROR)
    assert "model-unlisted" in codes(report, Severity.WARNING)


def test_private_key_not_git_ignored_is_an_error(project):
    (project / ".gitignore").write_text("audit/\n", "utf-8")
    findings = [f for f in run(project).findings if f.code == "private-key-not-ignored"]
    assert {f.subject for f in findings} == {
        "secrets/signing-key.pem",
        "secrets/audit-digest.key",
    }


def test_private_key_readable_by_others_is_an_error(project):
    (project / "secrets" / "signing-key.pem").chmod(0o644)
    [finding] = [f for f in run(project).findings if f.code == "private-key-permissions"]
    assert finding.subject == "secrets/signing-key.pem"


def test_password_in_the_settings_file_is_an_error(project):
    config = project / "secureserve.toml"
    written = config.read_text("utf-8").replace(
        "[limits]\n", '[limits]\nstorage = "redis://:hunter2@127.0.0.1:6379/0"\n'
    )
    config.write_text(written, "utf-8")
    report = run(project)
    assert "secret-in-config" in codes(report, Severity.ERROR)
    assert "hunter2" not in report.to_json().decode()


def test_password_in_the_environment_is_fine(project):
    report = run(project, LIMITS__STORAGE="redis://:hunter2@127.0.0.1:6379/0")
    assert "secret-in-config" not in codes(report)


# --- relaxed protections ----------------------------------------------------------------


def test_limits_switched_off_are_warnings(project):
    report = run(
        project,
        LIMITS__PER_PRINCIPAL="off",
        LIMITS__AUTH_FAILURES_PER_IP="off",
        LIMITS__QUOTA="off",
        LIMITS__ON_STORAGE_ERROR="memory",
    )
    subjects = {f.subject for f in report.findings if f.code == "limit-off"}
    assert subjects == {
        "[limits] per_principal",
        "[limits] auth_failures_per_ip",
        "[limits] quota",
    }
    assert "limits-storage-fallback" in codes(report, Severity.WARNING)
    assert report.ok


@pytest.mark.parametrize(
    ("environ", "code"),
    [
        ({"AUDIT__ON_WRITE_ERROR": "continue"}, "audit-continue"),
        ({"LOGGING__LEVEL": "debug"}, "logging-debug"),
        ({"LOGGING__FORMAT": "console"}, "logging-console"),
        ({"MODEL__ONNX_ALLOWED_DOMAINS": '["com.example"]'}, "onnx-custom-domains"),
        ({"SERVER__MAX_BODY_BYTES": str(128 * 1024 * 1024)}, "body-limit-large"),
        ({"SERVER__TRUSTED_PROXIES": '["10.0.0.0/8"]'}, "trusted-proxies-wide"),
        ({"MODEL__SIGNING_PUBLIC_KEY": "null"}, "model-unsigned"),
    ],
)
def test_opt_outs_are_warnings(project, environ, code):
    report = run(project, **environ)
    assert code in codes(report, Severity.WARNING)
    assert code not in codes(run(project))


# --- model files ------------------------------------------------------------------------


def test_changed_model_file_is_an_error(project):
    (project / "models" / "model.onnx").write_bytes(b"\x08\x08")
    [finding] = [f for f in run(project).findings if f.code == "model-verify-failed"]
    assert "model.onnx" in finding.message


def test_missing_lock_is_an_error(project):
    (project / "secureserve.lock").unlink()
    assert "model-unlocked" in codes(run(project, MODEL__SIGNING_PUBLIC_KEY="null"))
    assert "model-unlocked" in codes(run(project), Severity.ERROR)


def test_missing_signature_is_an_error(project):
    (project / "secureserve.lock.sig").unlink()
    [finding] = [f for f in run(project).findings if f.code == "model-verify-failed"]
    assert "unsigned" in finding.message


@pytest.mark.parametrize("name", ["models/model.onnx", "app.py", "secureserve.toml", "."])
def test_served_files_writable_by_others_are_an_error(project, name):
    (project / name).chmod(0o777 if name == "." else 0o666)
    [finding] = [f for f in run(project).findings if f.code == "files-shared-writable"]
    assert str((project / name).resolve()) in finding.message


def test_served_files_writable_by_this_user_are_a_note(project, monkeypatch):
    [finding] = [f for f in run(project).findings if f.code == "files-writable"]
    assert finding.severity is Severity.INFO
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert "files-writable" not in codes(run(project))


# --- several models ------------------------------------------------------------------------


@pytest.fixture
def two(tmp_path, monkeypatch) -> Path:
    """The iris and digits examples as ``[models.iris]`` and ``[models.digits]``, locked."""
    project = copy_two_models(tmp_path / "two", monkeypatch)
    lock_project(load_settings(project_dir=project, environ={}))
    return project


def test_two_models_locked_have_no_model_error(two):
    """A locked two-model project: no error; the unsigned lock is one warning for all."""
    report = diagnose(two, environ={}, handler=True)
    assert codes(report, Severity.ERROR) == set()
    [unsigned] = [f for f in report.findings if f.code == "model-unsigned"]
    assert unsigned.subject == "[models.*] signing_public_key"
    assert not codes(report) & {"model-unlisted", "handler-invalid", "defenses-off"}


def test_two_models_tampered_file_is_named_with_its_folder(two):
    """A changed file in one model folder is an error naming the folder and the file."""
    (two / "models" / "digits" / "digits.safetensors").write_bytes(b"{}")
    [finding] = [f for f in run(two).findings if f.code == "model-verify-failed"]
    assert finding.message.startswith("models/digits/digits.safetensors: ")


def test_two_models_unlisted_files_name_the_table(two):
    """Files the lock does not list are reported per folder, naming the model's table."""
    (two / "models" / "iris" / "notes.txt").write_text("x")
    [finding] = [f for f in run(two).findings if f.code == "model-unlisted"]
    assert finding.subject == f"[models.iris] dir {two / 'models' / 'iris'}"
    assert "notes.txt" in finding.message


def test_two_models_missing_lock_counts_every_folder(two):
    """Without a lock, one error counts the files of every model folder."""
    (two / "secureserve.lock").unlink()
    [finding] = [f for f in run(two).findings if f.code == "model-unlocked"]
    assert "4 model file(s)" in finding.message


def test_two_models_missing_folder_names_its_table(two):
    """A model folder that does not exist is an error naming its table."""
    shutil.rmtree(two / "models" / "digits")
    [finding] = [f for f in run(two).findings if f.code == "model-dir-missing"]
    assert finding.subject.startswith("[models.digits] dir ")
    assert "model-verify-failed" not in codes(run(two))


def test_two_models_missing_section_is_an_error(two):
    """A model added after the lock was written has no section: an error saying to re-lock."""
    shutil.copytree(two / "models" / "iris", two / "models" / "wine")
    with (two / "secureserve.toml").open("a") as out:
        out.write('\n[models.wine]\nhandler = "iris_app:Iris"\ndir = "models/wine"\n')
    [finding] = [f for f in run(two).findings if f.code == "model-verify-failed"]
    assert "models/wine" in finding.message
    assert "[models.wine] dir" in finding.message


def test_two_models_every_model_s_files_are_checked_for_writers(two):
    """Each model's handler module and files are among the served files checked."""
    for name in ("digits_app.py", "models/digits/digits.safetensors"):
        (two / name).chmod(0o666)
    [finding] = [f for f in run(two).findings if f.code == "files-shared-writable"]
    assert str(two / "digits_app.py") in finding.message
    assert str(two / "models" / "digits" / "digits.safetensors") in finding.message


def test_two_models_key_in_any_model_folder_is_an_error(two):
    """A private key in the second model's folder is found too."""
    key = two / "models" / "digits" / "release.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    [finding] = [f for f in run(two).findings if f.code == "private-key-in-model-dir"]
    assert finding.subject == "models/digits/release.key"


def test_two_models_key_files_are_reported_per_model(two):
    """A model's encryption key file that is not here is a note naming that model's table."""
    text = (
        (two / "secureserve.toml")
        .read_text()
        .replace(
            'dir = "models/digits"\n',
            'dir = "models/digits"\nencryption_key_file = "k/model.key"\n',
        )
    )
    (two / "secureserve.toml").write_text(text)
    [finding] = [f for f in run(two).findings if f.code == "key-file-missing"]
    assert finding.subject == "[models.digits] encryption_key_file"


# --- Dockerfile and Kubernetes ------------------------------------------------------------

DOCKERIGNORE = "secrets/\n.secureserve/\n"
GOOD_FINAL = 'USER 10001:10001\nHEALTHCHECK CMD ["true"]\nENTRYPOINT ["secureserve", "run"]\n'


@pytest.mark.parametrize(
    ("final_stage", "code", "severity"),
    [
        ('ENTRYPOINT ["secureserve", "run"]\n', "docker-root", Severity.ERROR),
        ("USER root\n" + GOOD_FINAL.replace("USER 10001:10001\n", ""), "docker-root", None),
        ("USER 0:0\n" + GOOD_FINAL.replace("USER 10001:10001\n", ""), "docker-root", None),
        (GOOD_FINAL.replace("10001:10001", "app"), "docker-user-name", Severity.WARNING),
        (GOOD_FINAL.replace('"run"]', '"run", \\\n  "--dev"]'), "docker-dev-mode", None),
        (GOOD_FINAL.replace('HEALTHCHECK CMD ["true"]\n', ""), "docker-no-healthcheck", None),
    ],
)
def test_dockerfile_findings(project, final_stage, code, severity):
    # The builder stage's USER must not count for the final stage.
    (project / "Dockerfile").write_text(
        "FROM python:3.11-slim AS build\nUSER 10001\nRUN true\n\nFROM python:3.11-slim\n"
        + final_stage,
        "utf-8",
    )
    (project / ".dockerignore").write_text(DOCKERIGNORE, "utf-8")
    report = run(project)
    assert code in codes(report, severity)
    (project / "Dockerfile").write_text("FROM python:3.11-slim\n" + GOOD_FINAL, "utf-8")
    assert not {c for c in codes(run(project)) if c.startswith("docker-")}


def test_build_context_with_keys_is_an_error(project):
    (project / "Dockerfile").write_text("FROM python:3.11-slim\n" + GOOD_FINAL, "utf-8")
    (project / ".dockerignore").unlink(missing_ok=True)
    exposed = {f.subject for f in run(project).findings if f.code == "private-key-in-image"}
    assert exposed == {"secrets/signing-key.pem", "secrets/audit-digest.key"}
    (project / ".dockerignore").write_text(DOCKERIGNORE, "utf-8")
    assert "private-key-in-image" not in codes(run(project))
    (project / ".dockerignore").write_text(DOCKERIGNORE + "!secrets/audit-digest.key\n")
    exposed = {f.subject for f in run(project).findings if f.code == "private-key-in-image"}
    assert exposed == {"secrets/audit-digest.key"}


def test_replicas_with_memory_limits_are_an_error(project):
    k8s = project / "k8s"
    k8s.mkdir(exist_ok=True)
    for stale in k8s.iterdir():
        stale.unlink()
    (k8s / "deployment.yaml").write_text("kind: Deployment\nspec:\n  replicas: 3\n", "utf-8")
    assert "limits-memory-replicas" in codes(run(project), Severity.ERROR)
    shared = run(project, LIMITS__STORAGE="redis://127.0.0.1:6379/0")
    assert "limits-memory-replicas" not in codes(shared)
    env = (
        "kind: Deployment\nspec:\n  replicas: 3\n  env:\n    - name: SECURESERVE_LIMITS__STORAGE\n"
    )
    (k8s / "deployment.yaml").write_text(env + '      value: "memory://"\n', "utf-8")
    assert "limits-memory-replicas" in codes(run(project))
    (k8s / "deployment.yaml").write_text(env + "      valueFrom: {secretKeyRef: {name: r}}\n")
    assert "limits-memory-replicas" not in codes(run(project))
    (k8s / "base").mkdir()  # a kustomize layout: manifests in sub-folders count too
    (k8s / "deployment.yaml").rename(k8s / "base" / "deployment.yaml")
    (k8s / "base" / "hpa.yml").write_text("kind: HorizontalPodAutoscaler\n", "utf-8")
    assert "limits-memory-replicas" not in codes(run(project))
    (k8s / "base" / "deployment.yaml").unlink()
    assert "limits-memory-replicas" in codes(run(project))


# --- ignore files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "patterns", "anchored", "expected"),
    [
        ("secrets/key.pem", ["secrets/"], False, True),
        ("secrets/key.pem", ["secrets/"], True, True),
        ("a/secrets/key.pem", ["secrets/"], False, True),  # git: any depth
        ("a/secrets/key.pem", ["secrets/"], True, False),  # Docker: from the root
        ("a/secrets/key.pem", ["**/secrets"], True, True),
        ("key.pem", ["*.pem"], True, True),
        ("a/b/key.pem", ["**/*.pem"], True, True),
        ("a/b/key.pem", ["a/*.pem"], True, False),
        ("certs/key.pem", ["*.pem"], True, False),
        ("certs/key.pem", ["*.pem"], False, True),
        ("secrets", ["secrets/"], False, False),  # a file, not a folder
        ("secrets/a.key", ["secrets/", "!secrets/a.key"], True, False),
        ("secrets/a.key", ["/secrets"], False, True),
        ("models/secrets/a.key", ["/secrets"], False, False),
        ("x.key", ["# x.key", "y.key"], False, False),
    ],
)
def test_ignored(path, patterns, anchored, expected):
    assert ignored(path, [p for p in patterns if not p.startswith("#")], anchored=anchored) is (
        expected
    )


# Docker's rules are moby/patternmatcher's, not git's: each group names a difference.
@pytest.mark.parametrize(
    ("path", "lines", "expected"),
    [
        # no implicit "at any depth": *.pem is the root's, **/*.pem everyone's
        ("key.pem", ["*.pem"], True),
        ("certs/key.pem", ["*.pem"], False),
        ("certs/key.pem", ["**/*.pem"], True),
        ("certs/a/key.pem", ["**.pem"], True),  # Docker: any path that ends in .pem
        ("a/x/b", ["a**b"], True),  # "**" inside a name spans folders too
        ("axb", ["a**b"], False),
        # a pattern that names a folder excludes all of it; "/" at the end is cleaned away
        ("secrets/sub/a.key", ["secrets"], True),
        ("secrets/sub/a.key", ["secrets/*"], True),
        ("secrets", ["secrets/"], True),  # git: "secrets/" never names a file
        ("models/secrets/a.key", ["secrets"], False),
        # "!" re-includes a file even inside an excluded folder (git cannot); last wins
        ("secrets/a.key", ["secrets", "!secrets/a.key"], False),
        ("secrets/b.key", ["secrets", "!secrets/a.key"], True),
        ("secrets/a.key", ["*", "!secrets", "secrets/*.key"], True),
        # a leading "/" is dropped and every pattern is cleaned as filepath.Clean cleans
        ("secrets/a.key", ["/secrets/a.key"], True),
        ("secrets/a.key", ["//secrets//./a.key/"], True),
        ("secrets/a.key", ["other/../secrets/a.key"], True),
        ("secrets/a.key", ["/../secrets"], True),
        ("secrets/a.key", ["../secrets", ".", "/"], False),  # name nothing in the context
        ("secrets/a.key", ["secrets", "!../../secrets/a.key"], True),  # cleaned to an exclusion
        # comments only where a line starts with "#"; white space trimmed, also after "!"
        ("secrets/a.key", ["  secrets  ", "# !secrets/a.key"], True),
        ("secrets/a.key", ["secrets", " ! secrets/a.key "], False),
        ("#a.key", [" #a.key"], True),
        # brackets and escapes as Go reads them: "[!a]" is "!" or "a", "[^a]" is not "a"
        ("!.key", ["[!a].key"], True),
        ("b.key", ["[!a].key"], False),
        ("b.key", ["[^a].key"], True),
        ("*.key", ["\\*.key"], True),
        ("a.key", ["\\*.key"], False),
        ("x\ny/a.key", ["**/*.key"], False),  # Go's "." does not match a newline
        # what Docker refuses or mistranslates: an exclusion excludes nothing, an
        # exception re-includes everything (the doctor errs towards "in the image")
        ("b.key", ["[a-c-e].key"], False),
        ("a.key", ["a.key\\"], False),
        ("a.key", ["\\a.key"], False),  # Go's regexp reads "\a" as BEL
        ("a.key", ["a.key", "!z[*]"], False),
    ],
)
def test_docker_rules_are_not_gits(path, lines, expected):
    assert ignored(path, lines, anchored=True) is expected


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [  # from moby/patternmatcher's own tests (TestMatches, TestMatch)
        ("**", "dir/file", True),
        ("**/", "file", True),
        ("dir/**", "dir/dir2/file", True),
        ("**/dir", "dir", True),
        ("**/dir2/*", "dir/dir2/file", True),
        ("**file", "dir/dir/file", True),
        ("**/file*.txt*", "dir/dir/file.txt", True),
        ("**/**/*.txt2", "dir/dir/file.txt", False),
        ("a**/*.txt", "a/dir/dir/file.txt", True),
        ("a/*.txt", "a/dir/file.txt", False),
        ("a/*.txt**", "a/file.txt", True),
        ("a[^b-d]e", "aze", True),
        (".*", "foo", False),
        ("abc.def", "abcZdef", False),
        ("abc?def", "abcdef", False),
        ("a\\\\", "a\\", True),
        ("abc/**", "abc", False),
        ("**/.foo", "bar.foo", False),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
        ("a*", "ab/c", True),
        ("a*/b", "a/c/b", False),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
        ("a*b?c*x", "abxbbxdbxebxczzx", True),
        ("a?b", "a☺b", True),
        ("a[^a][^a][^a]b", "a☺b", False),
        ("[a-ζ]*", "\u03b1", True),  # Greek alpha
        ("[x\\-]", "-", True),
        ("[]a]", "]", False),  # refused by Docker
        ("[x-]", "x", False),
        ("a[", "a", False),
    ],
)
def test_docker_patterns_match_as_patternmatcher_does(pattern, path, expected):
    assert ignored(path, [pattern], anchored=True) is expected


@pytest.mark.parametrize(
    ("path", "lines", "expected"),
    [
        ("a.key", ["*a*.key"], True),  # three wildcards, "at any depth" counted: run
        ("x/y/a.key", ["**/x/**/a.key"], True),
        ("a.key", ["*a*.k*y"], False),  # four: not run, so it ignores nothing ...
        ("secrets/a.key", ["secrets/*", "!*b*c*"], False),  # ... or re-includes everything
        ("secrets/a.key", ["secrets/*", "!*b*c*", "secrets/a.key"], True),
        ("secrets/a.key", ["secrets/*", "!**/x/**/y/**/z"], False),  # three "**"
    ],
)
def test_gitignore_lines_too_slow_for_pathspec_err_towards_reporting(path, lines, expected):
    assert ignored(path, lines, anchored=False) is expected


# --- hostile projects: no hang, no crash, no forged output ---------------------------------


@pytest.mark.parametrize(
    "name", ["k8s/x.yaml", ".gitignore", ".dockerignore", "secureserve.lock", "Dockerfile"]
)
def test_a_fifo_in_place_of_a_file_does_not_hang(project, name):
    path = project / name
    path.parent.mkdir(exist_ok=True)
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    report = run(project)  # would block forever on open() or read()
    assert report.findings


def test_api_key_records_as_a_fifo_are_an_error(project):
    os.mkfifo(project / "secrets" / "api_keys.toml")
    [finding] = [f for f in run(project).findings if f.code == "keys-file-invalid"]
    assert "not a regular file" in finding.message


def test_symlink_loops_and_odd_entries_do_not_crash(project):
    (project / "loop").symlink_to("loop")
    (project / "k8s" / "dir.yaml").mkdir(parents=True)
    (project / "zero.key").symlink_to("/dev/zero")
    report = run(project)
    assert "doctor-check-failed" not in codes(report)
    assert "private-key-permissions" not in codes(report)  # links are not followed


def test_a_failing_check_is_an_error_not_a_pass(project, monkeypatch):
    from secureserve.doctor import files

    def broken(project, settings):
        raise RuntimeError("boom")

    monkeypatch.setattr(files, "check", broken)
    [finding] = [f for f in run(project).findings if f.code == "doctor-check-failed"]
    assert finding.severity is Severity.ERROR
    assert "RuntimeError" in finding.message
    with pytest.raises(RuntimeError):
        diagnose(project, environ={}, debug=True)


def test_hostile_file_names_cannot_forge_the_report(project, capsys):
    forged = "x\n0 error(s), 0 warning(s): no error-level findings.\x1b[2J.key"
    (project / forged).write_text("k", "utf-8")
    (project / os.fsdecode(b"bad\xff.key")).write_text("k", "utf-8")
    (project / ".gitignore").write_text("audit/\n", "utf-8")
    assert main(["doctor", str(project)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "x\\x0a0 error(s)" in out
    assert main(["doctor", str(project), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    subjects = {f["subject"] for f in data["findings"] if f["code"] == "private-key-not-ignored"}
    assert "bad\\xff.key" in subjects


def test_many_unlisted_files_are_summarised(project):
    for i in range(25):
        (project / "models" / f"extra{i:02}.json").write_text("{}", "utf-8")
    [finding] = [f for f in run(project).findings if f.code == "model-unlisted"]
    assert finding.message.endswith("and 15 more.")


# --- secrets written in files ---------------------------------------------------------------


def test_api_key_in_a_file_is_an_error_without_repeating_it(project):
    key = create_key(project / "secrets" / "api_keys.toml", name="c", roles=("predict",))
    (project / "client.py").write_text(f'\n\nKEY = "{key.secret}"\n', "utf-8")
    report = run(project)
    [finding] = [f for f in report.findings if f.code == "secret-in-file"]
    assert finding.subject == "client.py:3"
    assert finding.message.startswith(f"an API key ss_{key.record.id}_... is written here")
    assert f"`secureserve keys revoke {key.record.id}`" in finding.fix
    secret_part = key.secret[len("ss_") + 13 :]  # after "ss_<12 hex>_"; it may hold "_" too
    assert secret_part not in report.to_json().decode()


def test_encryption_key_in_an_env_file_is_an_error(project):
    (project / ".env").write_text("SECURESERVE_MODEL__ENCRYPTION_KEY=" + "A" * 43 + "=\n")
    [finding] = [f for f in run(project).findings if f.code == "secret-in-file"]
    assert finding.severity is Severity.ERROR
    assert finding.message.startswith("a model encryption key is written here")
    assert "encrypt the model files again" in finding.fix


def test_password_in_the_storage_url_query_is_an_error(project):
    config = project / "secureserve.toml"
    for url in ("redis://redis:6379/0?password=hunter2", "redis://:pw@[::1:6379/0"):
        text = config.read_text("utf-8").split("\n[limits]\n")[0]
        config.write_text(f'{text}\n[limits]\nstorage = "{url}"\n', "utf-8")
        report = run(project)
        assert "secret-in-config" in codes(report, Severity.ERROR) or "config-invalid" in codes(
            report
        )
        assert "hunter2" not in report.to_json().decode()
        assert "doctor-check-failed" not in codes(report)


# --- git and Docker decide what is shipped ----------------------------------------------------


def _git(project, *args):
    subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True)


@pytest.fixture
def repository(project):
    _git(project, "init", "-q")
    return project


def test_a_tracked_key_is_not_ignored_whatever_gitignore_says(repository):
    assert "private-key-not-ignored" not in codes(run(repository))
    _git(repository, "add", "-f", "secrets/signing-key.pem")
    [finding] = [f for f in run(repository).findings if f.code == "private-key-not-ignored"]
    assert finding.subject == "secrets/signing-key.pem"


def test_a_nested_gitignore_can_re_include_a_key(repository):
    (repository / "secrets" / ".gitignore").write_text("!audit-digest.key\n", "utf-8")
    (repository / ".gitignore").write_text("secrets/*\n!secrets/.gitignore\n", "utf-8")
    subjects = {f.subject for f in run(repository).findings if f.code == "private-key-not-ignored"}
    assert subjects == {"secrets/audit-digest.key"}


def test_a_project_in_a_repository_without_rules_is_judged_by_git(tmp_path, template):
    shutil.copytree(template, tmp_path / "repo" / "demo")
    (tmp_path / "repo" / "demo" / ".gitignore").unlink()
    _git(tmp_path / "repo", "init", "-q")
    subjects = {
        f.subject
        for f in run(tmp_path / "repo" / "demo").findings
        if f.code == "private-key-not-ignored"
    }
    assert subjects == {"secrets/signing-key.pem", "secrets/audit-digest.key"}


@pytest.mark.parametrize(
    ("ignore_file", "rules"),
    [
        (".dockerignore", "secrets/\n!./secrets/signing-key.pem\n"),
        (".dockerignore", "secrets/\n! secrets/signing-key.pem\n"),
        (".dockerignore", "secrets/\n!/secrets//signing-key.pem\n"),
        ("Dockerfile.dockerignore", "secrets/audit-digest.key\n"),  # preferred by BuildKit
    ],
)
def test_docker_reincludes_are_cleaned_like_docker_does(project, ignore_file, rules):
    (project / "Dockerfile").write_text("FROM python:3.11-slim\n" + GOOD_FINAL, "utf-8")
    (project / ".dockerignore").write_text(DOCKERIGNORE, "utf-8")
    (project / ignore_file).write_text(rules, "utf-8")
    [finding] = [f for f in run(project).findings if f.code == "private-key-in-image"]
    assert finding.subject == "secrets/signing-key.pem"


def _git_check_ignore(folder, paths):
    """What ``git check-ignore`` itself answers, without global excludes or the index."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(
        ["git", "-C", str(folder), "check-ignore", "--no-index", "--stdin", "-z"],
        input="\0".join(paths).encode() + b"\0",
        capture_output=True,
        check=False,
        env=env,
    )
    assert done.returncode in {0, 1}, done.stderr
    return {name for name in done.stdout.decode().split("\0") if name}


def _fallback_and_git(tmp_path, rules, paths):
    """The doctor's answer outside a repository, and git's inside one, for the same files."""
    answers = []
    for name in ("plain", "repo"):
        folder = tmp_path / name
        for path in paths:
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_text("k", "utf-8")
        (folder / ".gitignore").write_bytes(rules.encode())
    _git(tmp_path / "repo", "init", "-q")
    answers.append(set(git_view(tmp_path / "plain", paths).ignored))
    answers.append(_git_check_ignore(tmp_path / "repo", paths))
    return answers


@pytest.mark.parametrize(
    ("rules", "paths"),
    [
        ("key.pem\t\n*.key  \n", ["key.pem", "a/b.key"]),  # git trims spaces only
        ("key.pem\\ \n", ["key.pem ", "key.pem"]),
        ("\\#secret.key\n\\!x.key\n", ["#secret.key", "!x.key"]),
        ("[!a]x.key\n[^a]y.key\n", ["ax.key", "bx.key", "ay.key", "by.key"]),
        ("secrets/*\n!secrets/a.key\n", ["secrets/a.key", "secrets/b.key"]),
        ("secrets/\n/root.key\n", ["secrets/a.key", "m/secrets/b.key", "o/secrets", "root.key"]),
        ("a/**/b.key\n**/*.pem\n!**/public.pem\n", ["a/b.key", "a/x/b.key", "c/a/b.key"]),
        ("**/*.pem\n!**/public.pem\n", ["a/private.pem", "a/public.pem"]),
        ("\ufeffbom.key\r\ncrlf.key\r\n", ["bom.key", "crlf.key"]),
        ("[z-a].key\n*.key\n!keep.key\n", ["keep.key", "z.key"]),
        ("secrets/**\n!secrets/a.key\n", ["secrets/a.key", "secrets/b.key"]),
    ],
)
def test_gitignore_without_a_repository_is_read_as_git_reads_it(tmp_path, rules, paths):
    fallback, git = _fallback_and_git(tmp_path, rules, paths)
    assert fallback == git


def test_gitignore_fallback_re_includes_inside_an_ignored_folder_unlike_git(tmp_path):
    # pathspec lets "!" re-include a file in an excluded folder; git does not descend
    # into the folder. The doctor then reports a key git would ignore: never the reverse.
    paths = ["secrets/a.key", "secrets/b.key"]
    fallback, git = _fallback_and_git(tmp_path, "secrets/\n!secrets/a.key\n", paths)
    assert git == {"secrets/a.key", "secrets/b.key"}
    assert fallback == {"secrets/b.key"}


def test_a_pathological_gitignore_pattern_does_not_stall(project):
    (project / ".gitignore").write_text("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b\n", "utf-8")
    key = project / ("a" * 60 + ".key")
    key.write_text("k", "utf-8")
    key.chmod(0o600)
    subjects = {f.subject for f in run(project).findings if f.code == "private-key-not-ignored"}
    assert key.name in subjects  # pathspec alone takes hours; the test's timeout bounds it


def test_docker_patterns_are_anchored_at_the_context_root(project):
    (project / "Dockerfile").write_text(FINAL + GOOD_FINAL, "utf-8")
    (project / ".dockerignore").write_text("*.pem\n*.key\n", "utf-8")  # the root's only
    exposed = {f.subject for f in run(project).findings if f.code == "private-key-in-image"}
    assert exposed == {"secrets/signing-key.pem", "secrets/audit-digest.key"}
    (project / ".dockerignore").write_text("**/*.pem\n**/*.key\n", "utf-8")
    assert "private-key-in-image" not in codes(run(project))


# --- the Dockerfile, read as the builder reads it ---------------------------------------------

FINAL = "FROM python:3.11-slim\n"


@pytest.mark.parametrize(
    ("dockerfile", "code"),
    [
        (FINAL + 'USER 10001\nENTRYPOINT ["secureserve", "run", \\\n\n# x\n  "--dev"]\n', "dev"),
        (FINAL + 'USER 10001\nENTRYPOINT\t["secureserve", "run", "--dev"]\n', "dev"),
        (FINAL + "USER 10001\nENV MODE=--dev\nCMD secureserve run $MODE\n", "dev"),
        ("FROM python:3.11-slim AS base\nCMD secureserve run --dev\nFROM base\nUSER 1\n", "dev"),
        (FINAL + "USER 00\n", "root"),
        ("ARG UID=0\n" + FINAL + "ARG UID\nUSER ${UID}\n", "root"),
        (FINAL + 'USER "root"\n', "root"),
        (FINAL + "RUN <<EOF\nUSER 10001\nEOF\n", "root"),
        ("FROM python:3.11-slim AS base\nUSER 0\nFROM base\n", "root"),
        (FINAL + "user 0:0\n", "root"),
    ],
)
def test_dockerfile_tricks_are_seen_through(project, dockerfile, code):
    (project / "Dockerfile").write_text(dockerfile, "utf-8")
    (project / ".dockerignore").write_text(DOCKERIGNORE, "utf-8")
    expected = {"dev": "docker-dev-mode", "root": "docker-root"}[code]
    assert expected in codes(run(project), Severity.ERROR)


def test_unresolved_user_and_disabled_healthcheck(project):
    (project / "Dockerfile").write_text(FINAL + "USER $APP_UID\nHEALTHCHECK NONE\n", "utf-8")
    report = run(project)
    assert {"docker-user-name", "docker-unresolved"} <= codes(report, Severity.WARNING)
    assert "docker-no-healthcheck" in codes(report, Severity.INFO)


def test_containerfile_is_read_too(project):
    (project / "Dockerfile").unlink(missing_ok=True)
    (project / "Containerfile").write_text(FINAL + 'CMD ["secureserve", "run"]\n', "utf-8")
    assert "docker-root" in codes(run(project), Severity.ERROR)


def test_settings_set_by_the_dockerfile_are_checked(project):
    shutil.rmtree(project / "k8s")  # its literal values would be named too
    (project / "Dockerfile").write_text(
        FINAL
        + "ENV SECURESERVE_LIMITS__PER_PRINCIPAL=off \\\n    SECURESERVE_LOGGING__LEVEL=debug\n"
        + GOOD_FINAL,
        "utf-8",
    )
    report = run(project)
    subjects = {f.subject for f in report.findings if f.code in {"limit-off", "logging-debug"}}
    assert subjects == {
        "[limits] per_principal (as set by the Dockerfile ENV)",
        "[logging] level (as set by the Dockerfile ENV)",
    }


def test_replicas_check_ignores_comments_and_reads_quoted_kinds(project):
    k8s = project / "k8s"
    shutil.rmtree(k8s, ignore_errors=True)
    k8s.mkdir()
    (k8s / "hpa.yaml").write_text(
        'kind: "HorizontalPodAutoscaler"\n# set SECURESERVE_LIMITS__STORAGE here\n', "utf-8"
    )
    assert "limits-memory-replicas" in codes(run(project), Severity.ERROR)


# --- second review: git, Docker's own reading, bounded work -----------------------------------


def test_git_config_cannot_make_the_doctor_run_a_command(repository, tmp_path):
    marker = tmp_path / "ran"
    _git(repository, "add", "-f", "secrets/signing-key.pem")
    _git(repository, "config", "core.fsmonitor", f"touch {marker}; false #")
    report = run(repository)
    assert not marker.exists()
    assert "private-key-not-ignored" in codes(report, Severity.ERROR)


def test_git_that_cannot_answer_is_an_error_not_a_fallback(repository):
    _git(repository, "config", "core.worktree", "/nonexistent/elsewhere")
    [finding] = [f for f in run(repository).findings if f.code == "git-failed"]
    assert finding.severity is Severity.ERROR
    assert "private-key-not-ignored" not in codes(run(repository))


@pytest.mark.parametrize(
    "line",
    ["#\rsecrets/", "secrets/\x1c"],  # a comment for Docker; a pattern Docker keeps whole
)
def test_dockerignore_lines_are_read_as_docker_reads_them(project, line):
    (project / "Dockerfile").write_text(FINAL + GOOD_FINAL, "utf-8")
    (project / ".dockerignore").write_text(f"{line}\n.secureserve/\n", "utf-8")
    exposed = {f.subject for f in run(project).findings if f.code == "private-key-in-image"}
    assert "secrets/signing-key.pem" in exposed


def test_a_pathological_ignore_pattern_does_not_stall(project):
    (project / "Dockerfile").write_text(FINAL + GOOD_FINAL, "utf-8")
    (project / ".dockerignore").write_text("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b\n", "utf-8")
    key = project / ("a" * 60 + ".key")
    key.write_text("k", "utf-8")
    key.chmod(0o600)
    assert "private-key-in-image" in codes(run(project))  # the test's timeout bounds it


def test_secrets_past_the_first_chunk_are_found(project):
    pem = (project / "secrets" / "signing-key.pem").read_text("utf-8")
    (project / "bundle.pem").write_text("# padding\n" * 200_000 + pem, "utf-8")
    key = create_key(project / "secrets" / "api_keys.toml", name="c", roles=("predict",))
    (project / "notebook.ipynb").write_text("x" * 3_000_000 + f" {key.secret}\n", "utf-8")
    report = run(project)
    assert "bundle.pem" in {f.subject for f in report.findings if f.code.startswith("private-")}
    assert "notebook.ipynb:1" in {f.subject for f in report.findings if f.code == "secret-in-file"}


@pytest.mark.parametrize(
    "text",
    [
        '- name: SECURESERVE_MODEL__ENCRYPTION_KEY\n  value: "{key}"\n',
        "ENV SECURESERVE_MODEL__ENCRYPTION_KEY {key}\n",
        'os.environ["SECURESERVE_MODEL__ENCRYPTION_KEY"] = "{key}"\n',
    ],
)
def test_encryption_keys_are_found_in_any_syntax(project, text):
    (project / "leak.txt").write_text(text.format(key="Q" * 43 + "="), "utf-8")
    assert "leak.txt:1" in {f.subject for f in run(project).findings if f.code == "secret-in-file"}


def test_a_storage_password_baked_into_the_image_is_an_error(project):
    (project / "Dockerfile").write_text(
        FINAL + "ENV SECURESERVE_LIMITS__STORAGE=redis://:pw@redis:6379/0\n" + GOOD_FINAL, "utf-8"
    )
    report = run(project)
    assert "secret-in-image" in codes(report, Severity.ERROR)
    assert ":pw@" not in report.to_json().decode()


def test_served_files_behind_links_and_in_packages_are_checked(project, tmp_path):
    loose = tmp_path / "loose.py"
    loose.write_text((project / "app.py").read_text("utf-8"), "utf-8")
    loose.chmod(0o666)
    (project / "app.py").unlink()
    (project / "app.py").symlink_to(loose)
    [finding] = [f for f in run(project).findings if f.code == "files-shared-writable"]
    assert str(project / "app.py") in finding.message
    (project / "app.py").unlink()
    package = project / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("", "utf-8")
    (package / "__init__.py").chmod(0o666)
    report = run(project, MODEL__HANDLER="pkg.app:Demo")
    [finding] = [f for f in report.findings if f.code == "files-shared-writable"]
    assert str(package / "__init__.py") in finding.message


def test_group_write_in_a_private_group_is_not_shared(project):
    model = project / "models" / "model.onnx"
    model.chmod(0o664)
    status = model.stat()
    import grp
    import pwd

    private = (
        pwd.getpwuid(status.st_uid).pw_gid == status.st_gid
        and not grp.getgrgid(status.st_gid).gr_mem
    )
    assert ("files-shared-writable" in codes(run(project))) is not private
    os.chown(model, -1, 65534 if status.st_gid != 65534 else 65533)
    assert "files-shared-writable" in codes(run(project), Severity.ERROR)


def test_deeply_nested_settings_are_a_finding_not_a_traceback(project, capsys):
    config = project / "secureserve.toml"
    config.write_text(config.read_text("utf-8") + "\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["doctor", str(project), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert "config-invalid" in {f["code"] for f in data["findings"]}


def test_bidi_overrides_in_names_are_escaped(project):
    (project / "a\u202egp.key").write_text("k", "utf-8")
    (project / ".gitignore").write_text("audit/\n", "utf-8")
    assert "\u202e" not in format_report(run(project))


@pytest.mark.parametrize(
    "env",
    [
        '        - name: SECURESERVE_LIMITS__QUOTA\n          value: "off"\n',
        "        - {name: SECURESERVE_LIMITS__QUOTA, value: 'off'}\n",
    ],
)
def test_settings_set_by_the_manifests_are_checked(project, env):
    (project / "Dockerfile").unlink(missing_ok=True)
    k8s = project / "k8s"
    shutil.rmtree(k8s, ignore_errors=True)
    k8s.mkdir()
    (k8s / "deployment.yaml").write_text(
        "kind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n"
        "      - name: server\n        env:\n" + env,
        "utf-8",
    )
    [finding] = [f for f in run(project).findings if f.code == "limit-off"]
    assert finding.subject == "[limits] quota (as set by k8s/)"
    assert finding.severity is Severity.WARNING
