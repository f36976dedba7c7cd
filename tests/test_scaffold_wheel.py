"""``secureserve new`` as a new user meets it: from a built wheel in a fresh environment.

One test walks the whole path: build the wheel, install it in a new virtual
environment (a user who was handed the wheel), ``secureserve new demo``, then follow
the generated README's shell blocks as written, in a terminal where that environment
is active: make the project's own ``.venv``, install secureserve into it from the wheel
(the README's ``/path/to/secureserve``), install the project, run its tests and serve
it with ``secureserve run --dev``; from another terminal, the README's ``curl`` with
the printed key; after Ctrl-C, ``secureserve doctor``, then the README's
``pip install 'secureserve[check]'`` and ``secureserve check`` (its load test cut to
one second through ``SECURESERVE_CHECK__LOAD_SECONDS``). secureserve is not on the
package index: every install here must find it installed already. Its dependencies
come from the package index (or pip's local wheels), as on a fresh machine. The
terminal, the block reader and the server helpers are those of tests/test_docs.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_docs import (
    GENERATED_README,
    activated_env,
    block,
    call,
    fill,
    open_terminals,
    run_readme_curl,
    stop,
    user_env,
    wait_for_server,
)

from secureserve.scaffold import templates_root
from tests.server_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 600.0


def test_templates_come_from_the_repository_in_an_editable_install():
    """The test environment installs secureserve editable: templates are read in place."""
    assert templates_root() == ROOT / "templates"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_wheel_to_served_project(tmp_path):
    """The generated README, followed as written from a wheel, serves, checks and passes."""
    env = user_env()

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
    run(str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel))

    # The templates come from the wheel, not from this checkout.
    found = run(
        str(bin_dir / "python"),
        "-c",
        "from secureserve.scaffold import templates_root; print(templates_root())",
    ).strip()
    assert found.endswith("site-packages/secureserve/_templates"), found

    created = run(str(bin_dir / "secureserve"), "new", "demo")
    assert created.startswith("created demo/\n")
    project = tmp_path / "demo"
    with open_terminals(tmp_path / "terminals") as terminals:
        _follow_the_readme(project, wheel, tmp_path / "venv", terminals)


def _follow_the_readme(project: Path, wheel: Path, venv: Path, terminals) -> None:
    readme = project / "README.md"
    port = free_port()
    you = terminals(
        project,
        activated_env(
            venv, SECURESERVE_SERVER__PORT=str(port), SECURESERVE_CHECK__LOAD_SECONDS="1"
        ),
    )
    install = block(GENERATED_README, "python -m venv .venv && . .venv/bin/activate", file=readme)
    make_venv, secureserve, the_project, tests, serve = install.commands()
    for command in (make_venv, fill(secureserve, {"/path/to/secureserve": str(wheel)})):
        result = you.run(command, timeout=INSTALL_TIMEOUT_S)
        assert result.status == 0, result
    result = you.run(the_project, timeout=INSTALL_TIMEOUT_S)
    assert result.status == 0, result  # secureserve>=0.1 is satisfied by the wheel's
    found = you.run("command -v secureserve").out.strip()
    assert found == str(project / ".venv" / "bin" / "secureserve")  # the project's own
    result = you.run(tests)
    assert result.status == 0, result
    assert "3 passed" in result.out

    typed = you.type(serve)
    ca, key = wait_for_server(you, typed, port)
    assert key is not None
    other = terminals(project, user_env(KEY=key))
    run_readme_curl(other, readme, port)
    body = {"instances": [{"features": [1, 3]}]}
    status, reply = call(port, ca, "POST", "/v1/models/demo:predict", body=body)
    assert status == 401
    assert json.loads(reply)["detail"] == "no bearer token"
    stop(you, typed)

    [doctor] = block(GENERATED_README, "secureserve doctor", file=readme).commands()
    result = you.run(doctor)
    assert result.status == 0, result  # no error-level finding
    # The dev key minted by `run --dev` is still active: the doctor says so.
    assert "keys-dev-key" in result.out

    extra, check = block(
        GENERATED_README, "pip install 'secureserve[check]'", file=readme
    ).commands()
    result = you.run(extra, timeout=INSTALL_TIMEOUT_S)
    assert result.status == 0, result
    result = you.run(check, timeout=INSTALL_TIMEOUT_S)
    assert result.status == 0, result
    _check_passed(project, result.out)


def _check_passed(project: Path, out: str) -> None:
    """The generated project's check, with matplotlib from the [check] extra: all pass."""
    lines = out.splitlines()
    verdicts = {line.split()[1]: line.split()[0] for line in lines if line[:4] in ("pass", "FAIL")}
    assert verdicts == dict.fromkeys(("robustness", "fairness", "fuzz", "load", "drift"), "pass")
    page = (project / "check-report" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4  # matplotlib came with the extra
    saved = json.loads((project / "check-report" / "report.json").read_text())
    assert saved["signature"] == "verified"  # the generated project requires a signed lock
    assert saved["lock_sha256"] is not None
