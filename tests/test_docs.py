"""Docs are code: every shell block a user is told to run is run here, as written.

What counts: fenced blocks whose info string is ``sh``, ``bash``, ``shell`` or
``console``, in README.md, docs/*.md and the README that ``secureserve new`` renders
(templates/onnx/README.md; the safetensors template must have the same shell blocks,
which a test checks). A fence without an info string shows output or a file tree and
is never run; an info string this file does not know fails a test, so a command cannot
slip past under a new spelling.

Each shell block, named by its file and its first command (trailing comment left
out), is either in ``RUN``, with the test that runs it, or in ``NOT_RUN``, with the
reason; a block in neither, or an entry that names no block, fails
``test_every_shell_block_is_run_or_excused``.

How a block runs: typed into a ``Terminal``, a bash that takes one command at a time
and keeps its folder and variables between them, like the user's shell; each command's
exit status is checked. It starts in the folder the docs put the user in, with
``secureserve`` on the PATH only where the user has it: the README's blocks start in a
terminal without it, as after ``scripts/quickstart``. The text of a block is changed
only where a user fills something in: the port (each server gets a free one through
``SECURESERVE_SERVER__PORT``, and a client's URL the same port instead of 8443), the
API key a server printed (for ``ss_...``, or as ``KEY`` in the environment for blocks
that say ``$KEY``), and the placeholders each test names (``/path/to/secureserve``,
``path/to/project``, the ``/tmp`` file a model is decrypted to, the id of a key to
revoke). Settings shown as TOML are written into the project's secureserve.toml, with
certificate paths filled in. A command that keeps running (``secureserve
run``) is started, waited for, used by the next blocks from another terminal, and
stopped with Ctrl-C (SIGINT). One test runs one story (a server and every block about
it).

The README's two quick-start commands: ``scripts/test`` is the suite itself, and CI's
``.ci/run`` executes it as written (``test_readme_test_command_is_what_ci_runs``);
``scripts/quickstart`` installs into a fresh ``.venv`` from the package index, so the
suite runs its serve step (the script's own last line) and the README's ``curl``
against it, while ``SECURESERVE_DOCS_INSTALL=1`` runs the whole script as written in a
copy of the checkout (minutes, and the package index: outside the suite, and run by
``.ci/run`` after it). The generated README's
install block runs in tests/test_scaffold_wheel.py (slow), from a built wheel, with
the helpers of this file.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secureserve.devcerts import ensure_dev_certificates
from secureserve.scaffold import create_project
from secureserve.tls import server_context
from tests.server_helpers import HOST, ca_builder, clean_env, copy_iris, dev_banner, free_port

ROOT = Path(__file__).resolve().parents[1]
#: The virtual environment running the tests: the checkout's ``.venv`` that
#: ``scripts/quickstart`` makes, with secureserve (editable) and pytest.
VENV = Path(sys.prefix)
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})
KNOWN_LANGUAGES = SHELL_LANGUAGES | {"", "python", "toml", "json", "yaml", "text"}
GENERATED_README = "templates/onnx/README.md"
COMMAND_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
INSTALL_TIMEOUT_S = 1800.0  # scripts/install in a fresh .venv
REVOKED_WITHIN_S = 3.0  # the docs say "within a second"; slack for a loaded machine
SETOSA = {"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]}
KEY_RE = re.compile(r"\bss_([0-9a-f]{12})_[A-Za-z0-9_-]+")

# --------------------------------------------------------------------------- the inventory

#: Shell blocks run by a test here (or elsewhere), by (file, first command).
RUN: dict[tuple[str, str], str] = {
    ("README.md", "scripts/quickstart"): (
        "test_readme_quickstart_serve_step (its serve step, in the suite); "
        "test_readme_quickstart_from_a_fresh_copy (all of it; SECURESERVE_DOCS_INSTALL=1)"
    ),
    ("README.md", "curl --cacert examples/iris/.secureserve/ca.pem"): (
        "test_readme_quickstart_serve_step"
    ),
    ("README.md", "scripts/test"): (
        "CI: .ci/run executes it as written (test_readme_test_command_is_what_ci_runs)"
    ),
    ("README.md", ". .venv/bin/activate"): "test_readme_new_project",
    ("docs/access.md", "openssl x509 -in client.pem -noout -subject -nameopt sep_comma_plus"): (
        "test_access_subject_is_what_openssl_prints"
    ),
    ("docs/audit.md", "secureserve audit key new secrets/audit.key"): (
        "test_quickstart_production"
    ),
    ("docs/audit.md", "secureserve audit verify audit/audit.jsonl"): ("test_quickstart_production"),
    ("docs/defenses.md", "secureserve profile data/train.npy --out models/profile.json"): (
        "test_defenses_profile_of_the_digits_example"
    ),
    ("docs/doctor.md", "secureserve doctor"): "test_readme_new_project",
    ("docs/keys.md", "secureserve keys create --name checkout --role predict"): (
        "test_quickstart_production"
    ),
    ("docs/model-files.md", "secureserve encryption-key new secrets/model.key"): (
        "test_model_files_encryption"
    ),
    (
        "docs/model-files.md",
        (
            "secureserve signing-key new --private-key secrets/signing-key.pem "
            "--public-key signing-key.pub.pem"
        ),
    ): "test_model_files_release",
    ("docs/quickstart.md", "scripts/quickstart"): (
        "as README.md's: test_readme_quickstart_serve_step, "
        "test_readme_quickstart_from_a_fresh_copy"
    ),
    ("docs/quickstart.md", "curl --cacert examples/iris/.secureserve/ca.pem"): (
        "test_readme_quickstart_serve_step"
    ),
    ("docs/quickstart.md", "secureserve audit key new secrets/audit-digest.key"): (
        "test_quickstart_production"
    ),
    (
        "docs/quickstart.md",
        "secureserve keys create --name checkout-service --role predict --model iris",
    ): "test_quickstart_production",
    ("docs/scaffolding.md", "secureserve new fraud_score"): "test_scaffolding_new",
    ("docs/tls.md", "secureserve certs request --name api.example.com"): ("test_tls_company_ca"),
    ("docs/tls.md", "openssl req -in certs/api.example.com.csr -noout -text -verify"): (
        "test_tls_company_ca"
    ),
    ("docs/tls.md", "cat api.example.com.crt intermediate.crt > certs/api.example.com.chain.pem"): (
        "test_tls_company_ca"
    ),
    (GENERATED_README, "python -m venv .venv && . .venv/bin/activate"): (
        "tests/test_scaffold_wheel.py::test_wheel_to_served_project (slow: a built wheel "
        "in fresh virtual environments)"
    ),
    (GENERATED_README, 'curl --cacert .secureserve/ca.pem -H "Authorization: Bearer $KEY"'): (
        "test_readme_new_project; tests/test_scaffold_wheel.py::test_wheel_to_served_project"
    ),
    (GENERATED_README, "secureserve doctor"): (
        "test_readme_new_project; tests/test_scaffold_wheel.py::test_wheel_to_served_project"
    ),
    (GENERATED_README, "pip install 'secureserve[check]'"): (
        "tests/test_scaffold_wheel.py::test_wheel_to_served_project (installs the extra "
        "from the package index)"
    ),
    (GENERATED_README, "secureserve profile data/train.jsonl"): "test_readme_new_project",
}

_KUBECTL = (
    "needs kubectl and a cluster; the manifests are validated against the Kubernetes "
    "schemas, and the Secrets they mount checked, by tests/test_scaffold_deploy.py"
)
_DOCKER = (
    "needs docker and a registry; the Dockerfile is checked by "
    "tests/test_scaffold_deploy.py and tests/test_doctor_dockerfile.py"
)
_BENCHMARK = "a benchmark run by hand: minutes on pinned cores; results in docs/performance.md"

#: Shell blocks not run, by (file, first command), with the reason.
NOT_RUN: dict[tuple[str, str], str] = {
    ("docs/check.md", "pip install 'secureserve[check]'"): (
        "installs the [check] extra from the package index; the same two commands run for "
        "a generated project in tests/test_scaffold_wheel.py, and tests/test_check.py "
        "runs the check"
    ),
    ("docs/check.md", "pip install 'secureserve[check,mlflow]'"): (
        "installs MLflow from the package index; tests/test_check_tracking.py runs "
        "`check --mlflow` against a SQLite store"
    ),
    ("docs/deployment.md", "docker build -t registry.example.com/fraud-score:0.1.0 ."): _DOCKER,
    ("docs/deployment.md", "secureserve keys create --role predict --name client-a"): _KUBECTL,
    ("docs/deployment.md", "kubectl create secret generic fraud-score-api-keys"): _KUBECTL,
    ("docs/deployment.md", "kubectl apply -f k8s/"): _KUBECTL,
    ("docs/deployment.md", "kubectl apply -f k8s/certificate.yaml"): (
        "needs a cluster with cert-manager; the Certificate is checked by "
        "tests/test_scaffold_deploy.py"
    ),
    ("docs/deployment.md", "kubectl rollout restart deployment/fraud-score"): _KUBECTL,
    ("docs/models.md", "pip install secureserve"): (
        "replaces onnxruntime with the GPU build from the package index (and secureserve "
        "is not published there yet); tests/test_providers.py covers provider selection"
    ),
    (
        "docs/performance.md",
        ".venv/bin/python benchmarks/run.py --rounds 5 --duration 8 --warmup 2 --cold-runs 5",
    ): _BENCHMARK,
    ("docs/performance.md", "apt-get install -y wrk"): _BENCHMARK + ", and wrk from apt",
    ("docs/performance.md", ".venv/bin/pip install py-spy"): _BENCHMARK + ", and py-spy",
    (
        "docs/performance.md",
        ".venv/bin/python benchmarks/artifact_load.py --mb 100 --runs 5",
    ): _BENCHMARK,
    ("docs/performance.md", "git worktree add /tmp/core 35115b8"): (
        _BENCHMARK + ", against an older commit in a git worktree"
    ),
    ("docs/tls.md", "kubectl create secret tls fraud-score-tls"): _KUBECTL,
    ("docs/tls.md", "cat > /usr/local/sbin/secureserve-deploy-hook <<'HOOK'"): (
        "as root on a VM: writes /usr/local/sbin, restarts a systemd unit, and certbot "
        "needs a public name and port 80; the chain it writes is what test_tls_company_ca "
        "serves"
    ),
    (GENERATED_README, "docker build -t registry.example.com/__project-name__:0.1.0 ."): _DOCKER,
    (GENERATED_README, "secureserve keys create --role predict --name client-a"): _KUBECTL,
    (GENERATED_README, "kubectl create secret generic __project-name__-api-keys"): _KUBECTL,
    (GENERATED_README, "kubectl apply -f k8s/"): _KUBECTL,
}


# --------------------------------------------------------------------------- blocks

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_TRAILING_COMMENT = re.compile(r"\s{2,}#.*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown file: where it is, its language and its text."""

    path: str
    line: int
    language: str
    text: str

    @property
    def first(self) -> str:
        """The first command, without a trailing comment or line continuation."""
        for line in self.text.splitlines():
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                return _TRAILING_COMMENT.sub("", stripped).removesuffix("\\").rstrip()
        return ""

    @property
    def key(self) -> tuple[str, str]:
        """(file, first command): how RUN and NOT_RUN name the block."""
        return (self.path, self.first)

    def commands(self) -> list[str]:
        """The commands as a user types them: one per line, continued lines kept together.

        Comment lines and blank lines between commands are left out.
        """
        commands: list[str] = []
        current: list[str] = []
        for line in self.text.splitlines():
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            assert "<<" not in line, f"{self}: a here-document cannot be typed line by line"
            current.append(line)
            if not line.endswith("\\"):
                commands.append("\n".join(current))
                current = []
        assert not current, f"{self}: the last line continues"
        return commands

    def output(self) -> str:
        """The output the block shows as comments after its last command (``# ...``)."""
        lines = self.text.rstrip("\n").splitlines()
        shown: list[str] = []
        while lines and lines[-1].lstrip().startswith("# "):
            shown.insert(0, lines.pop().lstrip()[2:])
        assert shown, f"{self}: no output shown after the last command"
        return "\n".join(shown)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


def fenced_blocks(path: Path, label: str | None = None) -> list[Block]:
    """Every fenced block of the Markdown file ``path`` (``label`` names it in keys)."""
    name = label or path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        info = opening["info"].split()
        end = i + 1
        while end < len(lines):
            closing = lines[end].strip()
            if closing.startswith(fence) and not closing.strip(fence[0]):
                break
            end += 1
        body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
        blocks.append(Block(name, i + 1, info[0] if info else "", "\n".join(body) + "\n"))
        i = end + 1
    return blocks


def documents() -> list[Path]:
    """The Markdown files whose shell blocks users are told to run."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / GENERATED_README]


def shell_blocks(path: Path, label: str | None = None) -> list[Block]:
    """The shell blocks of ``path``."""
    return [b for b in fenced_blocks(path, label) if b.language in SHELL_LANGUAGES]


def block(path: str, first: str, *, file: Path | None = None) -> Block:
    """The one shell block of ``path`` (or of ``file``, named ``path``) starting with ``first``."""
    found = [b for b in shell_blocks(file or ROOT / path, path) if b.first == first]
    assert len(found) == 1, f"{path}: {len(found)} shell blocks start with {first!r}"
    return found[0]


def next_block(shell: Block, *, file: Path | None = None) -> Block:
    """The fenced block right after ``shell`` in its file (its output or settings)."""
    blocks = fenced_blocks(file or ROOT / shell.path, shell.path)
    index = next(i for i, b in enumerate(blocks) if b.line == shell.line)
    return blocks[index + 1]


def run_readme_curl(terminal: Terminal, readme: Path, port: int) -> None:
    """The generated README's ``curl``, typed in ``terminal``: it prints what the README shows."""
    curl = block(
        GENERATED_README,
        'curl --cacert .secureserve/ca.pem -H "Authorization: Bearer $KEY"',
        file=readme,
    )
    [command] = curl.commands()
    result = terminal.run(fill(command, {"8443": str(port)}))
    assert result.status == 0, result
    assert result.out.strip() == curl.output()


def fill(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each placeholder replaced; a placeholder that is missing fails."""
    for placeholder, value in replacements.items():
        assert placeholder in text, f"{placeholder!r} is not in {text!r}"
        text = text.replace(placeholder, value)
    return text


# --------------------------------------------------------------------------- terminals


def user_env(**extra: str) -> dict[str, str]:
    """A new terminal's environment: no ``secureserve`` on the PATH, no settings.

    No ``SECURESERVE_*`` variable, nothing of the test runner (``PYTEST_*``,
    ``PYTHON*``, ``VIRTUAL_ENV``), and no PATH entry that holds a ``secureserve``.
    """
    env = clean_env()
    for name in list(env):
        if name.startswith(("PYTEST_", "PYTHON")) or name == "VIRTUAL_ENV":
            del env[name]
    entries = env.get("PATH", os.defpath).split(os.pathsep)
    env["PATH"] = os.pathsep.join(
        e for e in entries if e and not (Path(e) / "secureserve").exists()
    )
    env.update(extra)
    return env


def activated_env(venv: Path = VENV, **extra: str) -> dict[str, str]:
    """:func:`user_env` after ``. VENV/bin/activate``."""
    env = user_env(**extra)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


@dataclass(frozen=True)
class Typed:
    """A command typed into a terminal: where its output starts, where its status goes."""

    command: str
    status_file: Path
    out_at: int
    err_at: int


@dataclass(frozen=True, repr=False)
class Result:
    """What a typed command did (its repr is a transcript, for assertion messages)."""

    command: str
    status: int
    out: str
    err: str

    def __repr__(self) -> str:
        return f"$ {self.command}\n[exit {self.status}]\n{self.out[-4000:]}\n{self.err[-4000:]}"


class Terminal:
    """A bash a user types into, one command at a time; folder and variables persist.

    Each command runs with stdin from /dev/null (the rest of the input is bash's), and
    its exit status is written to a file of its own. Output goes to two files, never a
    pipe that could fill up. bash leads its own process group, so :meth:`close` can
    stop whatever is still running.
    """

    def __init__(self, cwd: Path, env: dict[str, str], logs: Path, name: str) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self._logs = logs
        self._name = name
        self._out = logs / f"{name}.stdout"
        self._err = logs / f"{name}.stderr"
        self._count = 0
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self._bash = subprocess.Popen(
                ["bash", "--noprofile", "--norc"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )

    def type(self, command: str) -> Typed:
        """Type ``command`` and return at once (it may keep running: a server)."""
        self._count += 1
        status = self._logs / f"{self._name}.{self._count}.status"
        typed = Typed(command, status, self._out.stat().st_size, self._err.stat().st_size)
        part, final = shlex.quote(f"{status}.part"), shlex.quote(str(status))
        script = (
            f"{{\n{command}\n}} </dev/null\n"
            f"__docs_status=$?; echo $__docs_status > {part}; mv {part} {final}\n"
        )
        assert self._bash.stdin is not None
        self._bash.stdin.write(script.encode())
        self._bash.stdin.flush()
        return typed

    def run(self, command: str, *, timeout: float = COMMAND_TIMEOUT_S) -> Result:
        """Type ``command`` and wait until it is done."""
        return self.wait(self.type(command), timeout=timeout)

    def done(self, typed: Typed) -> bool:
        """Whether ``typed`` has finished."""
        return typed.status_file.exists()

    def wait(self, typed: Typed, *, timeout: float = COMMAND_TIMEOUT_S) -> Result:
        """Wait until ``typed`` is done; its status and output."""
        deadline = time.monotonic() + timeout
        while not self.done(typed):
            if self._bash.poll() is not None:
                pytest.fail(f"bash exited while running {typed.command!r}:\n{self.transcript()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{typed.command!r} still runs after {timeout} s:\n{self.transcript()}")
            time.sleep(0.05)
        status = int(typed.status_file.read_text())
        return Result(typed.command, status, self.out_since(typed), self.err_since(typed))

    def interrupt(self, typed: Typed, *, timeout: float = STOP_TIMEOUT_S) -> Result:
        """Ctrl-C: SIGINT to the command running in the foreground; wait for it."""
        pid = self._bash.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGINT)
        return self.wait(typed, timeout=timeout)

    def out_since(self, typed: Typed) -> str:
        """Standard output since ``typed`` was typed."""
        return self._out.read_bytes()[typed.out_at :].decode(errors="replace")

    def err_since(self, typed: Typed) -> str:
        """Standard error since ``typed`` was typed."""
        return self._err.read_bytes()[typed.err_at :].decode(errors="replace")

    def transcript(self) -> str:
        """The end of everything this terminal printed."""
        out = self._out.read_text(errors="replace")[-4000:]
        err = self._err.read_text(errors="replace")[-4000:]
        return f"stdout:\n{out}\nstderr:\n{err}"

    def close(self) -> None:
        """Exit the shell; whatever still runs in it gets SIGTERM, then SIGKILL."""
        if self._bash.poll() is None:
            with contextlib.suppress(OSError):
                assert self._bash.stdin is not None
                self._bash.stdin.write(b"exit\n")
                self._bash.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._bash.wait(2)
        for sig, grace in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self._bash.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(self._bash.pid):
                time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._bash.wait(5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def open_terminals(logs: Path) -> Iterator[Callable[[Path, dict[str, str]], Terminal]]:
    """A function ``(cwd, env) -> Terminal`` whose terminals are all closed at the end."""
    opened: list[Terminal] = []

    def open_terminal(cwd: Path, env: dict[str, str]) -> Terminal:
        terminal = Terminal(cwd, env, logs, f"t{len(opened)}")
        opened.append(terminal)
        return terminal

    try:
        yield open_terminal
    finally:
        for terminal in opened:
            terminal.close()


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[Callable[[Path, dict[str, str]], Terminal]]:
    """Open terminals with ``terminals(cwd, env)``; all are closed after the test."""
    with open_terminals(tmp_path / "terminals") as open_terminal:
        yield open_terminal


# --------------------------------------------------------------------------- servers


def call(
    port: int, ca: Path, method: str, path: str, *, key: str | None = None, body: object = None
) -> tuple[int, bytes]:
    """One HTTPS request to the server on ``port``, trusting only ``ca``."""
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(HOST, port, context=context, timeout=10)
    try:
        headers = {} if body is None else {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _answers(port: int, ca: Path) -> bool:
    try:
        return call(port, ca, "GET", "/healthz")[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def wait_for_server(
    terminal: Terminal,
    typed: Typed,
    port: int,
    *,
    ca: Path | None = None,
    timeout: float = READY_TIMEOUT_S,
) -> tuple[Path, str | None]:
    """Wait until the server ``typed`` started answers /healthz on ``port``.

    Without ``ca`` it is a ``--dev`` server: its CA and key come from the banner it
    prints. Returns the CA and the key (None without ``--dev``).
    """
    deadline = time.monotonic() + timeout
    key = None
    while time.monotonic() < deadline:
        if terminal.done(typed):
            pytest.fail(f"{typed.command!r} ended:\n{terminal.transcript()}")
        trusted = ca
        if ca is None:
            banner = dev_banner(terminal.err_since(typed))
            if banner is not None:
                trusted, key = banner
        if trusted is not None and _answers(port, trusted):
            return trusted, key
        time.sleep(0.1)
    pytest.fail(f"{typed.command!r} did not answer within {timeout} s:\n{terminal.transcript()}")


def stop(terminal: Terminal, typed: Typed) -> Result:
    """Ctrl-C the server ``typed`` started; it must shut down on it."""
    result = terminal.interrupt(typed)
    assert result.status in {0, 130}, result  # 130: ended by SIGINT, as after Ctrl-C
    return result


def make_checkout(base: Path, *, iris: bool = False) -> Path:
    """A stand-in for the clone after ``scripts/quickstart``: its ``.venv``, and examples/iris."""
    assert (VENV / "bin" / "activate").is_file(), f"run the tests from a virtual env, not {VENV}"
    checkout = base / "secureserve"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(VENV)
    if iris:
        copy_iris(checkout / "examples" / "iris")
    return checkout


def quickstart_serve_step() -> tuple[str, str]:
    """The folder ``scripts/quickstart`` serves from and its serve command, as written there."""
    lines = [line.strip() for line in (ROOT / "scripts" / "quickstart").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    folders = [line.removeprefix("cd ") for line in lines if line.startswith("cd examples/")]
    assert len(folders) == 1, lines
    assert lines[-1].startswith("exec "), lines
    assert lines[-1].endswith(' "$@"'), lines
    return folders[0], lines[-1].removeprefix("exec ").removesuffix(' "$@"')


def merged_toml(base: str, snippet: str) -> str:
    """The settings ``base`` with the tables and keys of ``snippet`` set over them."""

    def merge(into: dict[str, object], values: dict[str, object]) -> None:
        for name, value in values.items():
            if isinstance(value, dict) and isinstance(into.get(name), dict):
                merge(into[name], value)  # type: ignore[arg-type]
            else:
                into[name] = value

    def dump(table: dict[str, object], prefix: str) -> list[str]:
        lines = [f"[{prefix}]"] if prefix else []
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for name, value in table.items():
            if isinstance(value, dict):
                lines += dump(value, f"{prefix}.{name}" if prefix else name)
        return lines

    settings = tomllib.loads(base)
    merge(settings, tomllib.loads(snippet))
    return "\n".join(dump(settings, "")) + "\n"


# --------------------------------------------------------------------------- the inventory


def test_fences_have_known_languages():
    """Every fence's info string is one this file knows, so no shell block goes unseen."""
    unknown = {
        f"{b}: {b.language!r}"
        for path in documents()
        for b in fenced_blocks(path)
        if b.language not in KNOWN_LANGUAGES
    }
    assert not unknown, f"add the language to KNOWN_LANGUAGES (or SHELL_LANGUAGES): {unknown}"


def test_every_shell_block_is_run_or_excused():
    """Each shell block is in RUN or in NOT_RUN (never both), and each entry names a block."""
    found = [b.key for path in documents() for b in shell_blocks(path)]
    assert len(found) == len(set(found)), "two shell blocks of one file start alike"
    assert not set(RUN) & set(NOT_RUN)
    unlisted = [b for path in documents() for b in shell_blocks(path) if b.key not in RUN | NOT_RUN]
    assert not unlisted, "run these blocks in a test, or add them to NOT_RUN with a reason: " + (
        "; ".join(f"{b} {b.first!r}" for b in unlisted)
    )
    assert not (set(RUN) | set(NOT_RUN)) - set(found), "entries that name no block"


def test_generated_readmes_have_the_same_shell_blocks():
    """Both templates render the same shell blocks, so running one template's runs both."""
    onnx = [b.text for b in shell_blocks(ROOT / GENERATED_README)]
    safetensors = [b.text for b in shell_blocks(ROOT / "templates" / "safetensors" / "README.md")]
    assert onnx == safetensors


def test_readme_test_command_is_what_ci_runs():
    """README's ``scripts/test`` is a command CI's .ci/run executes, as written.

    CI then runs the README's quick start from a fresh copy (the opt-in test below).
    """
    [command] = block("README.md", "scripts/test").commands()
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in lines
    ci = (ROOT / ".ci" / "run").read_text()
    assert "SECURESERVE_DOCS_INSTALL=1" in ci
    assert "test_readme_quickstart_from_a_fresh_copy" in ci


# --------------------------------------------------------------------------- README


@pytest.mark.slow
def test_readme_quickstart_serve_step(tmp_path, terminals):
    """The quick start, served: scripts/quickstart's serve step, then the README's curl.

    The serve step is the script's own last line, typed in the folder it serves from
    (the install before it is what ``scripts/test`` runs too). The README's curl, typed
    in the clone with the printed key, and docs/quickstart.md's with ``KEY``, answer
    what they show; the CA path they name is where the server put its CA.
    """
    checkout = make_checkout(tmp_path, iris=True)
    folder, serve = quickstart_serve_step()
    port = free_port()
    server = terminals(checkout / folder, user_env(SECURESERVE_SERVER__PORT=str(port)))
    typed = server.type(serve)
    ca, key = wait_for_server(server, typed, port)
    assert key is not None
    assert ca == checkout / "examples" / "iris" / ".secureserve" / "ca.pem"

    you = terminals(checkout, user_env(KEY=key))
    readme = block("README.md", "curl --cacert examples/iris/.secureserve/ca.pem")
    [command] = readme.commands()
    result = you.run(fill(command, {"ss_...": key, "8443": str(port)}))
    assert result.status == 0, result
    assert result.out.strip() == readme.output()
    guide = block("docs/quickstart.md", "curl --cacert examples/iris/.secureserve/ca.pem")
    [command] = guide.commands()
    result = you.run(fill(command, {"8443": str(port)}))
    assert result.status == 0, result
    assert json.loads(result.out) == json.loads(next_block(guide).text)

    stop(server, typed)
    assert ca.is_file()  # a run that started keeps its development CA


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
@pytest.mark.skipif(
    os.environ.get("SECURESERVE_DOCS_INSTALL") != "1",
    reason="opt-in (SECURESERVE_DOCS_INSTALL=1): scripts/quickstart installs from the "
    "package index into a fresh .venv, which takes minutes",
)
def test_readme_quickstart_from_a_fresh_copy(tmp_path, terminals):
    """README's quick start, all of it as written, in a copy of the checkout.

    The copy holds what a clone would (git's tracked and not-ignored files, without
    .venv): ``scripts/quickstart`` installs, serves and says how to reach
    ``secureserve``; the README's curl gets the answer it shows.
    """
    clone = tmp_path / "secureserve"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():  # not a file deleted in the work tree
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    port = free_port()
    user = terminals(clone, user_env(SECURESERVE_SERVER__PORT=str(port)))
    [command] = block("README.md", "scripts/quickstart").commands()
    typed = user.type(command)
    _, key = wait_for_server(user, typed, port, timeout=INSTALL_TIMEOUT_S)
    assert key is not None
    assert ". .venv/bin/activate" in user.err_since(typed)
    readme = block("README.md", "curl --cacert examples/iris/.secureserve/ca.pem")
    [curl] = readme.commands()
    result = terminals(clone, user_env()).run(fill(curl, {"ss_...": key, "8443": str(port)}))
    assert result.status == 0, result
    assert result.out.strip() == readme.output()
    stop(user, typed)


@pytest.mark.slow
def test_readme_new_project(tmp_path, terminals):
    """README's generated-project block, then the generated README's, and docs/doctor.md's.

    From a terminal where ``secureserve`` is not on the PATH, in the clone: activate
    .venv, ``secureserve new``, the project's tests and ``run --dev``. Against that
    server, from another terminal in the project: the generated README's curl (its
    output as shown), its ``doctor``, and docs/doctor.md's three. After Ctrl-C: the
    README's last line, then the generated README's profile, lock and sign, which give
    back the released files byte for byte.
    """
    checkout = make_checkout(tmp_path)
    port = free_port()
    you = terminals(checkout, user_env(SECURESERVE_SERVER__PORT=str(port)))
    assert you.run("command -v secureserve").status != 0  # a new terminal: not on the PATH
    activate, new, serve, doctor = block("README.md", ". .venv/bin/activate").commands()
    assert you.run(activate).status == 0
    result = you.run(new)
    assert result.status == 0, result
    project = tmp_path / "fraud_score"
    assert (project / "secureserve.lock.sig").is_file()
    typed = you.type(serve)
    _, key = wait_for_server(you, typed, port)
    assert key is not None
    assert "3 passed" in you.out_since(typed)

    readme = project / "README.md"
    other = terminals(project, activated_env(KEY=key))
    run_readme_curl(other, readme, port)
    [check] = block(GENERATED_README, "secureserve doctor", file=readme).commands()
    result = other.run(check)
    assert result.status == 0, result  # no error: the dev key is a warning
    assert "keys-dev-key" in result.out

    own, other_path, strict = block("docs/doctor.md", "secureserve doctor").commands()
    assert other.run(own).status == 0
    result = other.run(fill(other_path, {"path/to/project": str(project)}))
    assert result.status == 0, result
    report = json.loads(result.out)
    warned = [f for f in report["findings"] if f["severity"] == "warning"]
    assert [f for f in report["findings"] if f["severity"] == "error"] == []
    assert "keys-dev-key" in {f["code"] for f in warned}
    assert other.run(strict).status == 1  # --strict: the dev key's warning fails it

    stop(you, typed)
    result = you.run(doctor)  # in ../fraud_score, where the block's cd left the shell
    assert result.status == 0, result
    assert f"secureserve doctor: {project}" in result.out

    released = ("models/profile.json", "secureserve.lock", "secureserve.lock.sig")
    before = {name: (project / name).read_bytes() for name in released}
    for command in block(
        GENERATED_README, "secureserve profile data/train.jsonl", file=readme
    ).commands():
        result = you.run(command)
        assert result.status == 0, result
    assert {name: (project / name).read_bytes() for name in released} == before


def _key_id_and_secret(result: Result) -> tuple[str, str]:
    """The id and the secret ``keys create`` printed."""
    found = KEY_RE.search(result.out)
    assert result.status == 0, result
    assert found is not None, result
    return found.group(1), found.group(0)


def _refused_soon(port: int, ca: Path, secret: str) -> bool:
    """Whether predict with ``secret`` turns 401 within REVOKED_WITHIN_S."""
    deadline = time.monotonic() + REVOKED_WITHIN_S
    while time.monotonic() < deadline:
        if call(port, ca, "POST", "/v1/models/iris:predict", key=secret, body=SETOSA)[0] == 401:
            return True
        time.sleep(0.1)
    return False


def _keys_md(shell: Terminal, port: int, ca: Path) -> None:
    """docs/keys.md's block against the running server: each key gets what it says."""
    checkout, batch, ops, listing, revoke = block(
        "docs/keys.md", "secureserve keys create --name checkout --role predict"
    ).commands()
    checkout_id, checkout_key = _key_id_and_secret(shell.run(checkout))
    _, batch_key = _key_id_and_secret(shell.run(batch))
    _, ops_key = _key_id_and_secret(shell.run(ops))
    predict = "/v1/models/iris:predict"
    assert call(port, ca, "POST", predict, key=batch_key, body=SETOSA)[0] == 200
    assert call(port, ca, "GET", "/metrics", key=ops_key)[0] == 200
    assert call(port, ca, "POST", predict, key=ops_key, body=SETOSA)[0] == 403
    result = shell.run(listing)
    assert result.status == 0, result
    assert all(name in result.out for name in ("checkout", "batch-job", "ops"))
    assert call(port, ca, "POST", predict, key=checkout_key, body=SETOSA)[0] == 200
    result = shell.run(fill(revoke, {"3f9c0a1b2c3d": checkout_id}))
    assert result.status == 0, result
    assert _refused_soon(port, ca, checkout_key)


def _audit_md(shell: Terminal, project: Path) -> None:
    """docs/audit.md's blocks: verify the log the server wrote, make a second digest key."""
    [verify] = block("docs/audit.md", "secureserve audit verify audit/audit.jsonl").commands()
    result = shell.run(verify)
    assert result.status == 0, result
    assert re.match(r"OK: \d+ audit records verified from the start of the chain", result.out)
    [new_key] = block("docs/audit.md", "secureserve audit key new secrets/audit.key").commands()
    result = shell.run(new_key)
    assert result.status == 0, result
    written = project / "secrets" / "audit.key"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert len(base64.b64decode(written.read_text().strip(), validate=True)) >= 32


@pytest.mark.slow
def test_quickstart_production(tmp_path, terminals):
    """docs/quickstart.md's production section, keys.md and audit.md, on the iris example.

    The digest key block and the settings as shown (certificate paths filled in) make
    the first ``secureserve run`` start. The keys it creates predict; a revoked key is
    refused while the server runs; keys.md's keys get what their roles and models say;
    audit.md verifies the log those requests wrote and makes a second digest key.
    """
    project = copy_iris(tmp_path / "iris")
    certs = ensure_dev_certificates(tmp_path / "certs")
    shell = terminals(project, activated_env())

    digest = block("docs/quickstart.md", "secureserve audit key new secrets/audit-digest.key")
    [command] = digest.commands()
    result = shell.run(command)
    assert result.status == 0, result
    assert stat.S_IMODE((project / "secrets" / "audit-digest.key").stat().st_mode) == 0o600
    settings = next_block(digest)
    assert settings.language == "toml"
    filled = fill(
        settings.text,
        {"/run/secrets/tls/tls.crt": str(certs.cert), "/run/secrets/tls/tls.key": str(certs.key)},
    )
    toml = project / "secureserve.toml"
    toml.write_text(merged_toml(toml.read_text(), filled))

    create, listing, revoke = block(
        "docs/quickstart.md",
        "secureserve keys create --name checkout-service --role predict --model iris",
    ).commands()
    key_id, secret = _key_id_and_secret(shell.run(create))

    port = free_port()
    server = terminals(project, activated_env(SECURESERVE_SERVER__PORT=str(port)))
    typed = server.type("secureserve run")  # "Then `secureserve run`."
    ca, _ = wait_for_server(server, typed, port, ca=certs.ca_cert)
    assert call(port, ca, "POST", "/v1/models/iris:predict", key=secret, body=SETOSA)[0] == 200
    result = shell.run(listing)
    assert result.status == 0, result
    assert "checkout-service" in result.out
    assert secret not in result.out
    result = shell.run(fill(revoke, {"3f9c0a1b2c3d": key_id}))
    assert result.status == 0, result
    assert _refused_soon(port, ca, secret)

    _keys_md(shell, port, ca)
    _audit_md(shell, project)
    stop(server, typed)


# --------------------------------------------------------------------------- docs/


def test_scaffolding_new(tmp_path, terminals):
    """docs/scaffolding.md: both ``new`` lines make their project, in their folder."""
    work = tmp_path / "work"
    work.mkdir()
    shell = terminals(work, activated_env())
    onnx, safetensors = block("docs/scaffolding.md", "secureserve new fraud_score").commands()
    for command in (onnx, safetensors):
        result = shell.run(command)
        assert result.status == 0, result
    assert (work / "fraud_score" / "models" / "model.onnx").is_file()
    assert (tmp_path / "churn" / "models" / "model.safetensors").is_file()


def test_defenses_profile_of_the_digits_example(tmp_path, terminals):
    """docs/defenses.md's profile and lock, in the digits example: its released files again."""
    project = tmp_path / "digits"
    shutil.copytree(
        ROOT / "examples" / "digits-safetensors",
        project,
        ignore=shutil.ignore_patterns("tests", "__pycache__"),
    )
    released = ("models/profile.json", "secureserve.lock")
    before = {name: (project / name).read_bytes() for name in released}
    (project / "models" / "profile.json").unlink()
    shell = terminals(project, activated_env())
    for command in block(
        "docs/defenses.md", "secureserve profile data/train.npy --out models/profile.json"
    ).commands():
        result = shell.run(command)
        assert result.status == 0, result
    assert {name: (project / name).read_bytes() for name in released} == before


def _release_project(parent: Path, name: str) -> Path:
    """A project as ``secureserve new`` makes it, without its signing keys and signature."""
    project = create_project(name, parent=parent).path
    for released in ("secrets/signing-key.pem", "signing-key.pub.pem", "secureserve.lock.sig"):
        (project / released).unlink()
    return project


def test_model_files_release(tmp_path, terminals):
    """docs/model-files.md's release workflow: key pair, encrypt, lock, sign, verify.

    Its encrypt line needs the model key the next section makes: that section's first
    line runs first.
    """
    project = _release_project(tmp_path, "release")
    shell = terminals(project, activated_env())
    [make_key, *_] = block(
        "docs/model-files.md", "secureserve encryption-key new secrets/model.key"
    ).commands()
    assert shell.run(make_key).status == 0
    commands = block(
        "docs/model-files.md",
        "secureserve signing-key new --private-key secrets/signing-key.pem "
        "--public-key signing-key.pub.pem",
    ).commands()
    for command in commands:
        result = shell.run(command)
        assert result.status == 0, result
    assert stat.S_IMODE((project / "secrets" / "signing-key.pem").stat().st_mode) == 0o600
    lock = json.loads((project / "secureserve.lock").read_text())
    assert {"model.onnx", "model.onnx.enc"} <= set(lock["files"])
    assert (project / "secureserve.lock.sig").is_file()
    verify = commands[-1]
    assert verify.startswith("secureserve verify")
    (project / "models" / "labels.json").write_text('["x", "y"]\n')  # changed after the release
    assert shell.run(verify).status != 0


def test_model_files_encryption(tmp_path, terminals):
    """docs/model-files.md's encryption at rest, on a new project.

    The lock records only the encrypted file, and ``decrypt`` gives back the model's
    bytes (written into this test's folder instead of the block's /tmp/model.onnx).
    """
    project = create_project("vault", parent=tmp_path).path
    original = (project / "models" / "model.onnx").read_bytes()
    shell = terminals(project, activated_env())
    decrypted = tmp_path / "model.onnx"
    make_key, encrypt, relock, decrypt = block(
        "docs/model-files.md", "secureserve encryption-key new secrets/model.key"
    ).commands()
    placeholder = "/tmp/model.onnx"  # noqa: S108 - the block's path, replaced
    for command in (make_key, encrypt, relock, fill(decrypt, {placeholder: str(decrypted)})):
        result = shell.run(command)
        assert result.status == 0, result
    lock = json.loads((project / "secureserve.lock").read_text())
    assert "model.onnx.enc" in lock["files"]
    assert "model.onnx" not in lock["files"]
    assert original not in (project / "models" / "model.onnx.enc").read_bytes()
    assert decrypted.read_bytes() == original


def test_access_subject_is_what_openssl_prints(tmp_path, terminals):
    """docs/access.md: openssl prints a certificate's subject in the form the docs show."""
    shown = block(
        "docs/access.md", "openssl x509 -in client.pem -noout -subject -nameopt sep_comma_plus"
    )
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example GmbH"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ml"),
            x509.NameAttribute(NameOID.COMMON_NAME, "batch-scorer"),
        ]
    )
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "client.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    [command] = shown.commands()
    result = terminals(tmp_path, user_env()).run(command)
    assert result.status == 0, result
    assert result.out.strip() == shown.output()


def _ca(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    signer: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    path_length = None if issuer is None else 0
    return ca_builder(
        name, key, issuer=issuer, path_length=path_length, now=datetime.now(UTC)
    ).sign(signer, hashes.SHA256())


def _sign_request(
    csr_path: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    """What a company CA returns for the request: a server certificate with its names."""
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(names, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake between the two contexts, in memory; ``ssl.SSLError`` if refused."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    sides = {
        "client": client.wrap_bio(client_in, client_out, server_hostname=hostname),
        "server": server.wrap_bio(server_in, server_out, server_side=True),
    }
    finished: set[str] = set()
    for _ in range(20):
        for name, side in sides.items():
            try:
                side.do_handshake()
                finished.add(name)
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if finished == set(sides):
            return
    msg = "the handshake did not finish"
    raise AssertionError(msg)


def test_tls_company_ca(tmp_path, terminals):
    """docs/tls.md's company-CA path: request, look at it, chain what the CA returns.

    The key and request are written as described and openssl verifies the request;
    this test then plays the CA (a root and an intermediate). The chain the ``cat``
    line writes serves with secureserve's TLS context to a client that trusts only the
    root and checks the name; the leaf alone would not verify.
    """
    shell = terminals(tmp_path, activated_env())
    [request] = block("docs/tls.md", "secureserve certs request --name api.example.com").commands()
    result = shell.run(request)
    assert result.status == 0, result
    key, csr = (
        tmp_path / "certs" / "api.example.com.key",
        tmp_path / "certs" / "api.example.com.csr",
    )
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    [look] = block(
        "docs/tls.md", "openssl req -in certs/api.example.com.csr -noout -text -verify"
    ).commands()
    result = shell.run(look)
    assert result.status == 0, result
    assert "DNS:api.internal.example.com" in result.out
    assert "IP Address:10.0.0.5" in result.out

    root_key, intermediate_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = _ca("Example Root CA", root_key, None, root_key)
    intermediate = _ca("Example Issuing CA", intermediate_key, root, root_key)
    leaf = _sign_request(csr, intermediate, intermediate_key)
    pem = serialization.Encoding.PEM
    (tmp_path / "api.example.com.crt").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "intermediate.crt").write_bytes(intermediate.public_bytes(pem))
    [chain] = block(
        "docs/tls.md", "cat api.example.com.crt intermediate.crt > certs/api.example.com.chain.pem"
    ).commands()
    result = shell.run(chain)
    assert result.status == 0, result

    (tmp_path / "root.pem").write_bytes(root.public_bytes(pem))
    client = ssl.create_default_context(cafile=str(tmp_path / "root.pem"))
    served = server_context(cert=tmp_path / "certs" / "api.example.com.chain.pem", key=key)
    _handshake(served, client, "api.example.com")
    leaf_only = server_context(cert=tmp_path / "api.example.com.crt", key=key)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(leaf_only, client, "api.example.com")
