"""The load check: the real server, on loopback, under ``load_connections`` callers.

``secureserve run`` is started in the project folder on a free loopback port, as a
principal of its own: a temporary certificate (``secureserve.devcerts``), a key file
with one key made for the run, a temporary audit log and digest key, and no rate
limits or extraction actions. For ``[check] load_seconds``, ``load_connections``
connections each send one-instance predict requests (the first instance of
``--data``) back to back over their own kept-alive TLS connection. The figures:
requests per second, p50 and p99 latency, and the error rate (any answer but 200, or
none); judged against ``max_p99_ms`` and ``max_error_rate``. The server is always
stopped (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np

from secureserve.audit import generate_digest_key
from secureserve.check.progress import Advance, Progress
from secureserve.check.results import CheckResult, Figure
from secureserve.devcerts import ensure_dev_certificates
from secureserve.errors import ConfigError
from secureserve.keys import create_key
from secureserve.settings import CheckSettings

__all__ = ["load"]

_HOST: Final = "127.0.0.1"
_READY_S: Final = 30.0
_IO_TIMEOUT_S: Final = 10.0
_TICK_S: Final = 0.25  # how often the progress bar moves
#: Bins of the latency histogram kept in the report.
_HISTOGRAM_BINS: Final = 30


def load(
    project: Path,
    model: str,
    instance: Any,
    settings: CheckSettings,
    progress: Progress | None = None,
    *,
    config: Path | None = None,
) -> CheckResult:
    """Serve ``project`` for real and measure it under load (see the module docstring).

    ``config``: the settings file, when it is not the project's ``secureserve.toml``.
    """
    progress = progress or Progress()
    with tempfile.TemporaryDirectory(prefix="secureserve-check-load-") as temporary:
        folder = Path(temporary)
        certs = ensure_dev_certificates(folder / "certs")
        key = create_key(folder / "api_keys.toml", name="secureserve-check", roles=("predict",))
        generate_digest_key(folder / "audit.key")
        port = _free_port()
        env = {
            **os.environ,
            "SECURESERVE_SERVER__HOST": _HOST,
            "SECURESERVE_SERVER__PORT": str(port),
            "SECURESERVE_TLS__CERT": str(certs.cert),
            "SECURESERVE_TLS__KEY": str(certs.key),
            "SECURESERVE_AUTH__KEYS_FILE": str(folder / "api_keys.toml"),
            "SECURESERVE_AUDIT__PATH": str(folder / "audit" / "audit.jsonl"),
            "SECURESERVE_AUDIT__DIGEST_KEY_FILE": str(folder / "audit.key"),
            "SECURESERVE_LIMITS__PER_PRINCIPAL": "null",
            "SECURESERVE_LIMITS__PER_MODEL": "null",
            "SECURESERVE_LIMITS__QUOTA": "null",
            "SECURESERVE_MODEL__EXTRACTION__ACTION": "off",
        }
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        body = msgspec.json.encode({"instances": [instance]})
        request = (
            f"POST /v1/models/{model}:predict HTTP/1.1\r\nHost: {_HOST}\r\n"
            f"Authorization: Bearer {key.secret}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        command = [sys.executable, "-m", "secureserve.cli", "run"]
        if config is not None:  # the settings the check itself read
            command += ["--config", str(config)]
        with (folder / "server.log").open("wb") as log:
            server = subprocess.Popen(  # noqa: S603 - this interpreter, our own command
                command,
                cwd=project,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                _wait_ready(port, context, server)
                with progress.part("load", settings.load_seconds) as advance:
                    drive = _drive(port, context, request, settings, advance)
                    latencies, errors = asyncio.run(drive)
            finally:
                _stop(server)
    return _judge(latencies, errors, settings)


def _judge(latencies: list[float], errors: int, settings: CheckSettings) -> CheckResult:
    total = len(latencies) + errors
    rate = errors / total if total else 1.0
    p50 = float(np.percentile(latencies, 50)) if latencies else None
    p99 = float(np.percentile(latencies, 99)) if latencies else None
    fast = p99 is not None and p99 <= settings.max_p99_ms
    sound = rate <= settings.max_error_rate
    passed = fast and sound
    throughput = len(latencies) / settings.load_seconds
    figures = [
        Figure("p99_ms", None if p99 is None else round(p99, 2), settings.max_p99_ms, fast),
        Figure("error_rate", round(rate, 4), settings.max_error_rate, sound),
        Figure("p50_ms", None if p50 is None else round(p50, 2)),
        Figure("requests_per_second", round(throughput, 1)),
    ]
    summary = (
        f"{throughput:.0f} requests/s, p99 {p99:.1f} ms (at most {settings.max_p99_ms:g}), "
        f"errors {rate:.1%}"
        if p99 is not None
        else "no request was answered"
    )
    histogram: dict[str, list[float]] = {"edges_ms": [], "counts": []}
    if latencies:
        counts, edges = np.histogram(latencies, bins=_HISTOGRAM_BINS)
        histogram = {"edges_ms": [round(float(e), 3) for e in edges], "counts": counts.tolist()}
    return CheckResult("load", passed, summary, figures, {"latency_histogram": histogram})


async def _drive(
    port: int, context: ssl.SSLContext, request: bytes, settings: CheckSettings, advance: Advance
) -> tuple[list[float], int]:
    start = time.monotonic()
    deadline = start + settings.load_seconds
    latencies: list[float] = []
    errors = [0]

    async def caller() -> None:
        reader, writer = await asyncio.open_connection(_HOST, port, ssl=context)
        try:
            while time.monotonic() < deadline:
                sent = time.perf_counter()
                writer.write(request)
                try:
                    status = await asyncio.wait_for(_response(reader), _IO_TIMEOUT_S)
                except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                    errors[0] += 1
                    return
                if status == 200:  # noqa: PLR2004 - HTTP status
                    latencies.append((time.perf_counter() - sent) * 1000)
                else:
                    errors[0] += 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def clock() -> None:
        """Moves the progress bar on with the time driven."""
        shown = 0.0
        while (now := time.monotonic()) < deadline:
            advance(now - start - shown)
            shown = now - start
            await asyncio.sleep(_TICK_S)

    await asyncio.gather(clock(), *(caller() for _ in range(settings.load_connections)))
    return latencies, errors[0]


async def _response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next(
        (
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        ),
        0,
    )
    await reader.readexactly(length)
    return status


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((_HOST, 0))
        return int(probe.getsockname()[1])


def _wait_ready(port: int, context: ssl.SSLContext, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _READY_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ConfigError(
                "the server for the load check did not start; run `secureserve run` in the "
                "project to see why."
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection((_HOST, port), timeout=1) as raw,
            context.wrap_socket(raw, server_hostname=_HOST) as tls,
        ):
            tls.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            if b" 200 " in tls.recv(256):
                return
        time.sleep(0.05)
    raise ConfigError(f"the server for the load check was not ready within {_READY_S:g} s.")


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
