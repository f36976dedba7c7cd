"""Start ``secureserve run`` as a real process and talk to it over real TLS sockets.

``running_server(project, ...)`` is the entry point: a context manager that starts
the server on a free port in ``project`` (its working directory), waits until
``/healthz`` answers over TLS, and always stops the process on the way out (SIGTERM,
then SIGKILL). Its output goes to files (never a pipe that could fill up), so a
test can read stdout (the JSON logs) and stderr (the ``--dev`` banner) at any time.

Also here: throw-away projects (a copy of examples/iris, a slow handler, an iris
project set up as in production with ``production_iris``), editing
``secureserve.toml``, ``NO_LIMITS`` (the rate limits off, through the environment),
certificates made with ``cryptography`` (a client CA with a client certificate for
mTLS, an expired server certificate), and private ``redis-server`` processes
(``OwnRedis``; conftest's ``own_redis`` fixture starts one).

In-process apps (``create_app`` and a test client, no process) are in app_helpers.py.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secureserve.audit import generate_digest_key
from secureserve.devcerts import DevCertificates, ensure_dev_certificates
from secureserve.keys import ApiKey, create_key

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0
IO_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
CLI = (sys.executable, "-m", "secureserve.cli")
_BANNER_CA = re.compile(r"^\s*CA:\s+(\S+)\s*$", re.MULTILINE)
_BANNER_KEY = re.compile(r"^\s*API key:\s+(ss_\S+)", re.MULTILINE)
REDIS_START_TIMEOUT_S = 5.0
#: ``[limits]`` off through the environment, for servers that take many requests (and
#: refused credentials) from one address on purpose: limits have tests of their own.
NO_LIMITS = {
    "SECURESERVE_LIMITS__PER_PRINCIPAL": "null",
    "SECURESERVE_LIMITS__QUOTA": "null",
    "SECURESERVE_LIMITS__AUTH_FAILURES_PER_IP": "null",
}


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, then close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment without any ``SECURESERVE_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURESERVE_")}
    env.update(extra or {})
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m secureserve.cli ARGS`` in ``cwd`` to completion (text output)."""
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Reply:
    """One HTTP response: status, headers (lower-case names), body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclass
class ServerProcess:
    """A ``secureserve run`` process, its port, CA and (under ``--dev``) its API key."""

    process: subprocess.Popen[bytes]
    port: int
    project: Path
    stdout_path: Path
    stderr_path: Path
    ca: Path | None = None
    key: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    # ---- output

    def stdout(self) -> str:
        """Everything the process wrote to stdout so far (JSON log lines)."""
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, object]]:
        """Stdout's complete lines parsed as JSON (a line that is not JSON raises).

        A last line without its newline is still being written (a long line may reach
        the file in pieces): it is left for the next read.
        """
        text = self.stdout()
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def rss_kib(self) -> int:
        """The process's resident set size (VmRSS from /proc), in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        msg = "no VmRSS line"
        raise RuntimeError(msg)

    # ---- TLS clients

    def client_context(
        self, *, cert: Path | None = None, key: Path | None = None
    ) -> ssl.SSLContext:
        """A strict client: trusts only the server's CA, checks the host name."""
        if self.ca is None:
            msg = "no CA known for this server"
            raise RuntimeError(msg)
        context = ssl.create_default_context(cafile=str(self.ca))
        if cert is not None:
            context.load_cert_chain(cert, key)
        return context

    def connect(
        self, context: ssl.SSLContext | None = None, *, source: str | None = None
    ) -> ssl.SSLSocket:
        """A TLS connection to the server (hostname 127.0.0.1, checked against the SANs).

        ``source`` is the local address to connect from (one of 127.0.0.0/8).
        """
        raw = socket.create_connection(
            (HOST, self.port),
            timeout=IO_TIMEOUT_S,
            source_address=(source, 0) if source else None,
        )
        try:
            return (context or self.client_context()).wrap_socket(raw, server_hostname=HOST)
        except BaseException:
            raw.close()
            raise

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> Reply:
        """One request with ``http.client`` (a bearer ``key`` is added when given)."""
        conn = http.client.HTTPSConnection(
            HOST, self.port, context=context or self.client_context(), timeout=IO_TIMEOUT_S
        )
        try:
            sent = dict(headers or {})
            if key is not None:
                sent["Authorization"] = f"Bearer {key}"
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
            return Reply(response.status, _lower(response.getheaders()), data)
        finally:
            conn.close()

    def predict(self, payload: object, *, key: str | None = None, model: str = "iris") -> Reply:
        """POST a JSON payload to ``/v1/models/{model}:predict`` with the server's key."""
        return self.request(
            "POST",
            f"/v1/models/{model}:predict",
            body=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            key=key or self.key,
        )

    def exchange(
        self,
        head: bytes,
        body: Iterable[bytes] = (),
        *,
        context: ssl.SSLContext | None = None,
    ) -> Reply:
        """Send raw request bytes over TLS and read one response.

        ``body`` is sent piece by piece; before each piece the socket is checked for
        an early answer (a 413 arrives before the body is read), and sending stops as
        soon as one is there or the server has closed its side.
        """
        with self.connect(context) as tls:
            tls.sendall(head)
            early = b""
            for piece in body:
                early = _early_answer(tls)
                if early:
                    break
                try:
                    tls.sendall(piece)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    break
            return read_reply(tls, prefix=early)

    # ---- life cycle

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return int(self.process.returncode)


def read_reply(tls: ssl.SSLSocket, *, prefix: bytes = b"") -> Reply:
    """Read one HTTP/1.1 response (status line, headers, Content-Length body) from ``tls``.

    ``prefix`` is response data already received. Nothing past the body is read, so
    the caller can go on to check what the connection does next.
    """
    buffer = bytearray(prefix)

    def fill() -> None:
        data = tls.recv(65536)
        if not data:
            msg = f"connection closed after {len(buffer)} bytes of a response"
            raise ConnectionError(msg)
        buffer.extend(data)

    while b"\r\n\r\n" not in buffer:
        fill()
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    if not version.startswith("HTTP/1."):
        msg = f"not an HTTP response: {status_line!r}"
        raise ConnectionError(msg)
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    buffer = bytearray(rest)
    while len(buffer) < length:
        fill()
    return Reply(int(status), headers, bytes(buffer[:length]))


def _early_answer(tls: ssl.SSLSocket) -> bytes:
    """Response bytes the server has already sent, without waiting (b"" if none).

    A readable socket is not enough: TLS 1.3 session tickets arrive after the
    handshake and make it readable with no application data behind them.
    """
    ready, _, _ = select.select([tls], [], [], 0)
    if not (ready or tls.pending()):
        return b""
    tls.setblocking(False)
    try:
        return tls.recv(65536)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return b""
    except (ConnectionResetError, ssl.SSLError):
        return b""
    finally:
        tls.settimeout(IO_TIMEOUT_S)


def request_head(
    method: str,
    path: str,
    *,
    key: str | None = None,
    content_type: str | None = "application/json",
    content_length: int | None = None,
    chunked: bool = False,
    extra: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The request line and headers of a raw HTTP/1.1 request, ending with the blank line."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines.extend(f"{name}: {value}" for name, value in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """``data`` in slices of ``size`` bytes."""
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def chunked(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """``data`` in HTTP/1.1 chunked transfer coding, with the final zero chunk."""
    for piece in pieces(data, size):
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def _lower(pairs: list[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in pairs}


def _start(
    project: Path,
    *,
    dev: bool,
    ca: Path | None,
    env: dict[str, str] | None,
    args: Iterable[str],
) -> ServerProcess:
    port = free_port()
    logs = project / ".test-logs"
    logs.mkdir(exist_ok=True)
    stdout_path = logs / f"stdout-{port}.txt"
    stderr_path = logs / f"stderr-{port}.txt"
    command = [*CLI, "run", *(["--dev"] if dev else []), "--port", str(port), *args]
    env = dict(env or {})
    # tests read stdout as JSON lines; --dev alone would write console lines
    env.setdefault("SECURESERVE_LOGGING__FORMAT", "json")
    if not dev and "SECURESERVE_AUDIT__DIGEST_KEY_FILE" not in env:
        # production runs need a digest key for the audit log: one per project
        digest_key = project / "secrets" / "audit-digest.key"
        if not digest_key.exists():
            digest_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            generate_digest_key(digest_key)
        env["SECURESERVE_AUDIT__DIGEST_KEY_FILE"] = str(digest_key)
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(command, cwd=project, env=clean_env(env), stdout=out, stderr=err)
    return ServerProcess(
        process, port, project, stdout_path, stderr_path, ca=ca, extra_env=dict(env or {})
    )


def dev_banner(stderr: str) -> tuple[Path, str] | None:
    """The CA path and API key that ``secureserve run --dev`` printed, once both are there."""
    ca, key = _BANNER_CA.search(stderr), _BANNER_KEY.search(stderr)
    if ca is None or key is None:
        return None
    return Path(ca.group(1)), key.group(1)


def _wait_ready(server: ServerProcess, dev: bool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if not server.alive():
            msg = (
                f"secureserve exited with {server.process.returncode} before answering:\n"
                f"stderr:\n{server.stderr()}\nstdout:\n{server.stdout()}"
            )
            raise RuntimeError(msg)
        if dev and server.key is None:
            banner = dev_banner(server.stderr())
            if banner is None:
                time.sleep(0.05)
                continue
            server.ca, server.key = banner
        try:
            if server.request("GET", "/healthz").status == 200:
                return
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(0.1)
    msg = f"secureserve did not answer /healthz within {timeout} s ({last!r}):\n{server.stderr()}"
    raise RuntimeError(msg)


@contextlib.contextmanager
def running_server(
    project: Path,
    *,
    dev: bool = True,
    ca: Path | None = None,
    key: str | None = None,
    env: dict[str, str] | None = None,
    args: Iterable[str] = (),
    timeout: float = READY_TIMEOUT_S,
) -> Iterator[ServerProcess]:
    """Run ``secureserve run [--dev]`` in ``project`` until the block ends.

    Without ``dev``, pass the ``ca`` that issued the configured certificate and the
    API ``key`` to use. ``env`` adds ``SECURESERVE_*`` settings; any such variable of
    the test process itself is dropped. The process is stopped however the block ends.
    """
    server = _start(project, dev=dev, ca=ca, env=env, args=args)
    server.key = key
    try:
        _wait_ready(server, dev, timeout)
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- projects


def copy_iris(target: Path) -> Path:
    """A copy of examples/iris (handler, models, secureserve.toml) at ``target``."""
    target.mkdir(parents=True)
    shutil.copy(EXAMPLES / "iris" / "app.py", target / "app.py")
    shutil.copy(EXAMPLES / "iris" / "secureserve.toml", target / "secureserve.toml")
    shutil.copy(EXAMPLES / "iris" / "secureserve.lock", target / "secureserve.lock")
    shutil.copytree(EXAMPLES / "iris" / "models", target / "models")
    return target


SLOW_APP = '''\
"""A handler whose predict takes a second, to have a request in flight."""

import time

import msgspec

import secureserve as ss


class Number(msgspec.Struct, forbid_unknown_fields=True):
    x: float


class Echo(msgspec.Struct):
    y: float


class Slow(ss.Model[Number, Echo]):
    name = "slow"
    version = "1"

    def predict(self, batch):
        time.sleep(1.0)
        return [Echo(y=item.x) for item in batch]
'''


@dataclass(frozen=True)
class ProductionIris:
    """An iris project set up as in production: its folder, certificates and API key."""

    project: Path
    certs: DevCertificates
    key: ApiKey

    def tls_env(self) -> dict[str, str]:
        """``[tls] cert`` and ``key`` set through the environment."""
        return {
            "SECURESERVE_TLS__CERT": str(self.certs.cert),
            "SECURESERVE_TLS__KEY": str(self.certs.key),
        }

    def running(
        self, env: dict[str, str] | None = None
    ) -> contextlib.AbstractContextManager[ServerProcess]:
        """``running_server`` without ``--dev``: clients trust the dev CA and use ``key``."""
        return running_server(
            self.project, dev=False, ca=self.certs.ca_cert, key=self.key.secret, env=env
        )


def production_iris(base: Path, key_name: str) -> ProductionIris:
    """A copy of examples/iris in ``base/iris``, set up as in production.

    Its certificates come from a development CA in ``base/certs`` (not configured: put
    them in ``[tls]`` with ``set_toml`` or pass ``tls_env()``), and its API key
    ``key_name`` (role predict) is made with ``create_key`` in ``secrets/api_keys.toml``.
    """
    project = copy_iris(base / "iris")
    certs = ensure_dev_certificates(base / "certs")
    key = create_key(project / "secrets" / "api_keys.toml", name=key_name, roles=("predict",))
    return ProductionIris(project, certs, key)


def write_slow_project(target: Path) -> Path:
    """A project whose ``slow`` model sleeps 1 s in ``predict`` and loads no artifact."""
    target.mkdir(parents=True)
    (target / "models").mkdir()
    (target / "app.py").write_text(SLOW_APP)
    (target / "secureserve.toml").write_text('[model]\nhandler = "app:Slow"\n')
    return target


def toml_value(value: object) -> str:
    """A string, number or boolean written as TOML (JSON's escapes are valid TOML)."""
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value)


def set_toml(project: Path, section: str, **values: object) -> None:
    """Add ``values`` to ``[section]`` of the project's secureserve.toml.

    The keys must not be set in that section already (TOML refuses duplicates).
    """
    path = project / "secureserve.toml"
    text = path.read_text()
    lines = "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
    header = f"[{section}]\n"
    if header in text:
        text = text.replace(header, header + lines, 1)
    else:
        text += f"\n{header}{lines}"
    path.write_text(text)


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class ClientPKI:
    """A client CA and one client certificate it issued (PEM paths)."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_pem(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ca_builder(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: x509.Certificate | None = None,
    path_length: int | None = 0,
    now: datetime,
) -> x509.CertificateBuilder:
    """A CA certificate named ``name`` for ``key``, to extend and sign.

    Issued by ``issuer`` (default: itself), valid from 5 minutes before ``now`` for 30
    days, for signing certificates and CRLs only.
    """
    subject = _name(name)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


def make_client_pki(directory: Path, label: str, common_name: str) -> ClientPKI:
    """Write ``{label}-ca.pem`` and a client certificate for ``common_name`` it signed."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        ca_builder(f"{label} client CA", ca_key, now=now)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ClientPKI(
        ca=_write_pem(
            directory / f"{label}-ca.pem", ca.public_bytes(serialization.Encoding.PEM), 0o644
        ),
        cert=_write_pem(
            directory / f"{label}-client.pem",
            client.public_bytes(serialization.Encoding.PEM),
            0o644,
        ),
        key=_write_pem(directory / f"{label}-client-key.pem", _key_pem(client_key), 0o600),
    )


def write_server_certificate(
    cert: Path, key: Path, *, not_before: datetime, not_after: datetime
) -> None:
    """A self-signed EC P-256 ``localhost``/127.0.0.1 certificate valid in the given window."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(_name("localhost"))
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .sign(private_key, hashes.SHA256())
    )
    _write_pem(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_pem(key, _key_pem(private_key), 0o600)


# --------------------------------------------------------------------------- Redis


def need_redis(reason: str) -> NoReturn:
    """Skip for ``reason``, or fail when SECURESERVE_REQUIRE_REDIS=1 (CI)."""
    if os.environ.get("SECURESERVE_REQUIRE_REDIS") == "1":
        pytest.fail(f"{reason}, and SECURESERVE_REQUIRE_REDIS=1 requires it", pytrace=False)
    pytest.skip(reason)


def redis_answers(port: int, host: str = HOST) -> bool:
    """Whether a Redis server on ``host:port`` answers PING."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class OwnRedis:
    """A private ``redis-server`` on a free port that a test kills and restarts.

    Its output goes to ``redis-{port}.txt`` in ``logs``.
    """

    def __init__(self, binary: str, logs: Path) -> None:
        self.binary = binary
        self.logs = logs
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start it on ``self.port`` (no persistence) and wait until it answers PING."""
        command = [self.binary, "--port", str(self.port), "--bind", HOST]
        command += ["--save", "", "--appendonly", "no"]
        with (self.logs / f"redis-{self.port}.txt").open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while not redis_answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL this redis-server (no other) and reap it; a no-op when not running."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(5)
            self.process = None
