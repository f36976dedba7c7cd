"""``secureserve new`` as a new user meets it: from a built wheel in a fresh environment.

One test walks the whole path: build the wheel, install it with the ``[check]`` extra
in a new virtual environment, ``secureserve new demo``, install the project, run its
tests, serve it with ``secureserve run --dev``, call it over HTTPS with the printed
key, run ``secureserve doctor`` on it, and run its CI's ``secureserve check`` step.
It needs a package index (or pip's local wheels) to install the dependencies, as a
fresh machine does.
"""

import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from secureserve.scaffold import templates_root
from tests.server_helpers import clean_env, dev_banner, free_port

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0


def test_templates_come_from_the_repository_in_an_editable_install():
    """The test environment installs secureserve editable: templates are read in place."""
    assert templates_root() == ROOT / "templates"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_to_served_project(tmp_path):
    env = clean_env()
    for name in ("PYTHONPATH", "PYTEST_ADDOPTS", "VIRTUAL_ENV"):
        env.pop(name, None)

    def run(*command, cwd=tmp_path):
        done = subprocess.run(
            command, check=False, cwd=cwd, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", "dist", str(ROOT))
    [wheel] = (tmp_path / "dist").glob("secureserve-*.whl")
    run(sys.executable, "-m", "venv", "venv")
    bin_dir = tmp_path / "venv" / "bin"
    # with the check's extra, as the generated project's CI installs it
    run(str(bin_dir / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[check]")

    # The templates come from the wheel, not from this checkout.
    found = run(
        str(bin_dir / "python"),
        "-c",
        "from secureserve.scaffold import templates_root; print(templates_root())",
    ).strip()
    assert found.endswith("site-packages/secureserve/_templates"), found

    created = run(str(bin_dir / "secureserve"), "new", "demo")
    project = tmp_path / "demo"
    assert created.startswith("created demo/\n")
    run(str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "-e", ".[test]", cwd=project)
    tests = run(
        str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project
    )
    assert "3 passed" in tests

    _serve_and_call(bin_dir / "secureserve", project, env)

    report = json.loads(run(str(bin_dir / "secureserve"), "doctor", "--json", cwd=project))
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert errors == []
    assert report["ok"] is True
    # The dev key minted by `run --dev` is still active: the doctor says so.
    assert "keys-dev-key" in {f["code"] for f in report["findings"]}

    _check(bin_dir / "secureserve", project, env)


def _check(secureserve: Path, project: Path, env: dict[str, str]) -> None:
    """The generated project's CI step, from the wheel with the [check] extra: all pass."""
    quick = {**env, "SECURESERVE_CHECK__LOAD_SECONDS": "1"}  # the rest as generated
    done = subprocess.run(
        [str(secureserve), "check", "--data", "data/check.jsonl", "--sensitive", "cohort"],
        cwd=project,
        env=quick,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    lines = done.stdout.splitlines()
    verdicts = {line.split()[1]: line.split()[0] for line in lines if line[:4] in ("pass", "FAIL")}
    assert verdicts == dict.fromkeys(("robustness", "fairness", "fuzz", "load", "drift"), "pass")
    page = (project / "check-report" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4  # matplotlib came with the extra
    saved = json.loads((project / "check-report" / "report.json").read_text())
    assert saved["signature"] == "verified"  # the generated project requires a signed lock
    assert saved["lock_sha256"] is not None


def _serve_and_call(secureserve: Path, project: Path, env: dict[str, str]) -> None:
    port = free_port()
    stderr_path = project.parent / "run-stderr.txt"
    with stderr_path.open("wb") as stderr:
        server = subprocess.Popen(
            [str(secureserve), "run", "--dev", "--port", str(port)],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        ca, key = _wait_ready(server, stderr_path, port)
        context = ssl.create_default_context(cafile=str(ca))
        url = f"https://127.0.0.1:{port}/v1/models/demo:predict"
        body = json.dumps({"instances": [{"features": [1, 3]}, {"features": [3, 1]}]}).encode()
        status, reply = _post(url, body, context, key)
        assert status == 200, reply
        assert [p["label"] for p in reply["predictions"]] == ["second", "first"]
        status, reply = _post(url, body, context, None)
        assert status == 401
        assert reply["detail"] == "no bearer token"
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def _wait_ready(server: subprocess.Popen, stderr_path: Path, port: int) -> tuple[Path, str]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"secureserve run --dev exited:\n{stderr_path.read_text()}")
        banner = dev_banner(stderr_path.read_text(errors="replace"))
        if banner is not None:
            ca, _ = banner
            context = ssl.create_default_context(cafile=str(ca))
            try:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{port}/readyz", context=context, timeout=5
                ) as reply:
                    if reply.status == 200:
                        return banner
            except (OSError, urllib.error.URLError):
                pass
        time.sleep(0.2)
    pytest.fail(f"secureserve run --dev did not become ready:\n{stderr_path.read_text()}")


def _post(url: str, body: bytes, context: ssl.SSLContext, key: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 - https only
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:  # noqa: S310
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
