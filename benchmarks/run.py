"""secureserve vs a bare Starlette + onnxruntime app: throughput, latency, cold start, RSS.

One command runs everything and prints a markdown report::

    .venv/bin/python benchmarks/run.py --rounds 3 --duration 10

What it does (see benchmarks/README.md and docs/performance.md):

1. copies examples/iris into a temporary folder, makes TLS certificates there with
   ``secureserve.devcerts.ensure_dev_certificates`` and an API key (role ``predict``)
   with ``secureserve.keys.create_key``;
2. measures cold start (process spawn -> first 200 on ``GET /readyz``, polled every
   2 ms) and idle RSS (``VmRSS`` of the server process once ready), alternating
   secureserve and bare, ``--cold-runs`` times each;
3. starts both servers (``secureserve run`` with its JSON access log on stdout going
   to a file, and benchmarks/bare_app.py), pinned to CPU 0 with ``taskset``;
4. drives them with ``wrk`` (one thread, pinned to CPU 1) at each connection count,
   ``--warmup`` s discarded then ``--duration`` s measured, alternating the two
   servers and flipping which goes first every round; reports medians over rounds;
5. optionally (``--profile S``) records the secureserve process with py-spy for S
   seconds under 32 connections and prints the top functions.

Only 127.0.0.1 is ever contacted. Every load run is bounded by ``wrk -d`` and a
subprocess timeout.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
EXAMPLE = ROOT / "examples" / "iris"
LUA = BENCH_DIR / "predict.lua"
PATH = "/v1/models/iris:predict"
BODY = b'{"instances":[{"features":[5.1,3.5,1.4,0.2]}]}'
SS, BARE = "secureserve", "bare"


# --------------------------------------------------------------------------- setup


@dataclass
class Setup:
    workdir: Path
    project: Path
    ca: Path
    cert: Path
    key: Path
    keys_file: Path
    token: str
    log_path: Path | None  # secureserve's stdout (access log); None = /dev/null
    pin: bool
    ss_port: int
    bare_port: int
    python: str = sys.executable
    secureserve_bin: str = field(default_factory=lambda: _secureserve_bin())  # noqa: PLW0108
    core: Path | None = None  # run secureserve from this source tree (no access settings)
    extra_env: dict[str, str] = field(default_factory=dict)

    def env_ss(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECURESERVE_")}
        env.update(
            SECURESERVE_TLS__CERT=str(self.cert),
            SECURESERVE_TLS__KEY=str(self.key),
            SECURESERVE_AUTH__KEYS_FILE=str(self.keys_file),
            SECURESERVE_SERVER__PORT=str(self.ss_port),
            SECURESERVE_SERVER__HOST="127.0.0.1",
        )
        if self.core is not None:
            env["PYTHONPATH"] = str(self.core)
            return env
        # Limits stay on (every request is counted) but high enough never to refuse the
        # load; the audit log is written as in production, with a digest key.
        env.update(
            SECURESERVE_AUDIT__PATH=str(self.workdir / "audit" / "audit.jsonl"),
            SECURESERVE_AUDIT__DIGEST_KEY_FILE=str(self.workdir / "secrets" / "audit.key"),
            SECURESERVE_AUDIT__MAX_BYTES=str(1 << 40),
            SECURESERVE_LIMITS__PER_PRINCIPAL="1000000/second",
            SECURESERVE_LIMITS__QUOTA="1000000000/day",
        )
        env.update(self.extra_env)
        return env

    def command(self, which: str) -> list[str]:
        if which == SS:
            cmd = (
                [self.python, "-m", "secureserve.cli", "run"]
                if self.core is not None
                else [self.secureserve_bin, "run"]
            )
        else:
            cmd = [
                self.python,
                str(BENCH_DIR / "bare_app.py"),
                "--cert", str(self.cert),
                "--key", str(self.key),
                "--port", str(self.bare_port),
                "--model", str(self.project / "models"),
            ]  # fmt: skip
        return (["taskset", "-c", "0"] if self.pin else []) + cmd

    def port(self, which: str) -> int:
        return self.ss_port if which == SS else self.bare_port


def _secureserve_bin() -> str:
    candidate = Path(sys.executable).with_name("secureserve")
    return str(candidate) if candidate.exists() else (shutil.which("secureserve") or "secureserve")


def copy_example(project: Path) -> None:
    """examples/iris at ``project``, without its state, secrets, certificates and tests."""
    shutil.copytree(
        EXAMPLE,
        project,
        ignore=shutil.ignore_patterns(
            ".secureserve", "secrets", "certs", "tests", "audit", "__pycache__", "*.pyc"
        ),
    )


def make_setup(args: argparse.Namespace) -> Setup:
    from secureserve.devcerts import ensure_dev_certificates
    from secureserve.keys import create_key

    workdir = Path(tempfile.mkdtemp(prefix="secureserve-bench-"))
    project = workdir / "iris"
    copy_example(project)
    certs = ensure_dev_certificates(workdir / "tls")
    keys_file = workdir / "secrets" / "api_keys.toml"
    # analyst: the iris example's output policy shows this role the score (rounded to 2
    # decimals), so both servers send the same bytes and secureserve pays for the policy
    key = create_key(keys_file, name="bench", roles=("predict", "analyst"))
    if args.core is None:
        from secureserve.audit import generate_digest_key

        generate_digest_key(workdir / "secrets" / "audit.key")
    return Setup(
        workdir=workdir,
        project=project,
        ca=certs.ca_cert,
        cert=certs.cert,
        key=certs.key,
        keys_file=keys_file,
        token=str(key.secret),
        log_path=None if args.log == "devnull" else workdir / "secureserve-access.jsonl",
        pin=args.pin,
        ss_port=args.ss_port,
        bare_port=args.bare_port,
        core=args.core,
        extra_env=dict(item.split("=", 1) for item in args.ss_env),
    )


# --------------------------------------------------------------------------- servers


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def ready_once(port: int, ctx: ssl.SSLContext) -> bool:
    """One ``GET /readyz``; True on 200. Connection refused and the like are False."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return tls.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@contextlib.contextmanager
def server(
    setup: Setup, which: str, *, timeout: float = 60.0
) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """Start one server, wait for readiness; yield (process, seconds from spawn to ready)."""
    ctx = client_context(setup.ca)
    if which == SS:
        out: Any = setup.log_path.open("ab") if setup.log_path else subprocess.DEVNULL
        env, cwd = setup.env_ss(), setup.project
    else:
        out, env, cwd = subprocess.DEVNULL, dict(os.environ), setup.project
    err_path = setup.workdir / f"{which}.stderr"
    err = err_path.open("ab")
    start = time.perf_counter()
    proc = subprocess.Popen(setup.command(which), cwd=cwd, env=env, stdout=out, stderr=err)
    try:
        while not ready_once(setup.port(which), ctx):
            if proc.poll() is not None:
                raise RuntimeError(f"{which} exited with {proc.returncode}; see {err_path}")
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"{which} not ready after {timeout} s")
            time.sleep(0.002)
        yield proc, time.perf_counter() - start
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for f in (out, err):
            if hasattr(f, "close"):
                f.close()


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` plus any children (uvicorn may fork), in KiB."""
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` (all its threads) and its children, in seconds."""
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        kids = [int(x) for x in text.split()]
        return kids + [g for k in kids for g in _children(k)]
    return []


def check_same_answer(setup: Setup) -> dict[str, bytes]:
    """Both servers answer the benchmark body with 200 and the same predictions."""
    ctx = client_context(setup.ca)
    bodies = {}
    for which in (SS, BARE):
        conn = http.client.HTTPSConnection("localhost", setup.port(which), context=ctx, timeout=5)
        headers = {"Content-Type": "application/json"}
        if which == SS:
            headers["Authorization"] = f"Bearer {setup.token}"
        conn.request("POST", PATH, body=BODY, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{which} answered {resp.status}: {body[:200]!r}")
        bodies[which] = body
    if json.loads(bodies[SS]) != json.loads(bodies[BARE]):
        raise RuntimeError(f"the two servers disagree: {bodies}")
    return bodies


# --------------------------------------------------------------------------- load


def wrk(setup: Setup, which: str, connections: int, duration: float) -> dict[str, Any]:
    cmd = (["taskset", "-c", "1"] if setup.pin else []) + [
        "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s",
        "-s", str(LUA), f"https://127.0.0.1:{setup.port(which)}{PATH}",
    ]  # fmt: skip
    env = dict(os.environ, BENCH_TOKEN=setup.token if which == SS else "")
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=duration + 30, check=False
    )
    match = re.search(r"^BENCH_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(v for k, v in result.items() if k.startswith("err_"))
    return result


def load_rounds(
    setup: Setup, args: argparse.Namespace, pids: dict[str, int]
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    runs: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    for r in range(args.rounds):
        for c in args.connections:
            order = (SS, BARE) if (r % 2 == 0) else (BARE, SS)
            for which in order:
                if args.warmup > 0:
                    wrk(setup, which, c, args.warmup)
                cpu_before = cpu_seconds(pids[which])
                result = wrk(setup, which, c, args.duration)
                cpu = cpu_seconds(pids[which]) - cpu_before
                result["cpu_us"] = cpu * 1e6 / max(1, result["requests"])
                result["rss_kib"] = rss_kib(pids[which])
                runs[(which, c)].append(result)
                _progress(
                    f"round {r + 1}/{args.rounds} c={c:<3} {which:<11} "
                    f"{result['rps']:9.0f} req/s  p50 {result['p50']:6d} us  "
                    f"p99 {result['p99']:6d} us  errors {result['errors']}"
                )
    return runs


# --------------------------------------------------------------------------- profile


def profile(setup: Setup, args: argparse.Namespace, which: str, pid: int) -> str:
    """py-spy one server under the highest connection count; return a markdown summary.

    wrk runs for ``args.profile + 4`` s; py-spy samples ``args.profile`` s from the
    second one on. Shares are also turned into microseconds per request, from
    wrk's request rate (py-spy pauses the process to sample, so the rate under
    profiling is somewhat lower than in the load table).
    """
    pyspy = Path(sys.executable).with_name("py-spy")
    exe = str(pyspy) if pyspy.exists() else shutil.which("py-spy")
    if exe is None:
        return "py-spy not found: `pip install py-spy` into the venv to profile.\n"
    raw = setup.workdir / f"profile-{which}.txt"
    rate = 200
    cmd = (["taskset", "-c", "1"] if setup.pin else []) + [
        exe, "record", "-p", str(pid), "-r", str(rate), "-d", str(args.profile),
        "-f", "raw", "-o", str(raw), "--threads",
    ]  # fmt: skip
    cmd += ["--gil"] if args.profile_gil else []
    cmd += ["--native"] if args.profile_native else []
    conns = max(args.connections)
    load = subprocess.Popen(
        (["taskset", "-c", "1"] if setup.pin else [])
        + ["wrk", "-t1", f"-c{conns}", f"-d{args.profile + 4}s", "-s", str(LUA),
           f"https://127.0.0.1:{setup.port(which)}{PATH}"],
        env=dict(os.environ, BENCH_TOKEN=setup.token if which == SS else ""),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        time.sleep(1)
        subprocess.run(cmd, capture_output=True, timeout=args.profile + 60, check=True)
    finally:
        stdout, _ = load.communicate(timeout=args.profile + 30)
    match = re.search(r"^BENCH_JSON (\{.*\})$", stdout, re.MULTILINE)
    rps = None
    if match:
        result = json.loads(match.group(1))
        rps = result["requests"] / (result["duration_us"] / 1e6)
    per_request = (1e6 / rate) / (rps * args.profile) if rps else None
    mode = (
        "--gil: samples only while a thread holds the GIL"
        if args.profile_gil
        else "all non-idle threads"
    )
    head = (
        f"### {which}: py-spy {rate} Hz for {args.profile} s, c={conns} ({mode}"
        f"{', --native' if args.profile_native else ''}); "
        f"{f'{rps:.0f} req/s while profiled' if rps else 'rate unknown'}\n\n"
    )
    keep = f"\nraw stacks: {raw}\n" if args.keep else ""
    return (
        head
        + summarize_profile(raw.read_text(), top=args.profile_top, per_request=per_request)
        + keep
    )


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "/secureserve/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({file})"


def summarize_profile(text: str, *, top: int = 10, per_request: float | None = None) -> str:
    """Self and inclusive sample shares per function, all threads, from py-spy raw output."""
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    thread_c: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread (", "process ")):
            thread_c[frames[0]] += n
            frames = frames[1:]
        frames = [_short(f) for f in frames]
        total += n
        if frames:
            self_c[frames[-1]] += n
        for f in set(frames):
            incl_c[f] += n
    if not total:
        return "py-spy recorded no samples.\n"

    def us(n: int) -> str:
        return f"{n * per_request:.1f}" if per_request else "?"

    out = [
        f"{total} samples"
        + (f", {us(total)} µs of sampled time per request" if per_request else "")
        + "\n"
    ]
    out.append("| thread | share | µs/request |\n| --- | ---: | ---: |")
    out += [f"| {t} | {n / total:.1%} | {us(n)} |" for t, n in thread_c.most_common(6)]
    out.append(
        f"\nTop {top} by self time:\n\n| function | self | self µs/req | inclusive |\n"
        "| --- | ---: | ---: | ---: |"
    )
    out += [
        f"| `{f}` | {n / total:.1%} | {us(n)} | {incl_c[f] / total:.1%} |"
        for f, n in self_c.most_common(top)
    ]
    out.append(
        f"\nTop {top * 2} by inclusive time:\n\n| function | inclusive | incl. µs/req | self |\n"
        "| --- | ---: | ---: | ---: |"
    )
    out += [
        f"| `{f}` | {n / total:.1%} | {us(n)} | {self_c[f] / total:.1%} |"
        for f, n in incl_c.most_common(top * 2)
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    import msgspec
    import onnxruntime
    import starlette
    import uvicorn
    import uvloop

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    try:
        from importlib.metadata import version

        ss_version = version("secureserve")
        httptools_version = version("httptools")
    except Exception:
        ss_version = httptools_version = "?"
    return {
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "secureserve": ss_version,
        "uvicorn": uvicorn.__version__,
        "starlette": starlette.__version__,
        "uvloop": uvloop.__version__,
        "httptools": httptools_version,
        "msgspec": msgspec.__version__,
        "onnxruntime": onnxruntime.__version__,
        "wrk": (wrk_version.stdout or wrk_version.stderr).splitlines()[0].strip(),
    }


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _range(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(min(values))}\u2013{fmt.format(max(values))}"


def report(
    *,
    args: argparse.Namespace,
    setup: Setup,
    info: dict[str, str],
    runs: dict[tuple[str, int], list[dict[str, Any]]],
    cold: dict[str, list[float]],
    rss: dict[str, list[int]],
    log_bytes: int | None,
    total_requests: int,
) -> str:
    lines = ["## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [
        "",
        (
            f"- load: wrk, 1 thread, {args.warmup:g} s warm-up (discarded) + "
            f"{args.duration:g} s measured per run, {args.rounds} rounds, secureserve/bare "
            "alternated (first one flipped every round); medians over rounds, range in brackets"
        ),
        f"- pinning: {'servers on CPU 0, wrk on CPU 1 (taskset)' if setup.pin else 'none'}",
        (
            "- secureserve stdout (JSON access log, one line per request): "
            f"{setup.log_path or '/dev/null'}"
        ),
        "",
        "## Throughput and latency",
        "",
        (
            "| conns | server | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | errors "
            "| RSS after (MiB) | server CPU µs/req |"
        ),
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in args.connections:
        for which in (SS, BARE):
            rs = runs[(which, c)]
            rps = [r["rps"] for r in rs]
            p50 = [r["p50"] for r in rs]
            p99 = [r["p99"] for r in rs]
            lines.append(
                f"| {c} | {which} | {_med(rps):.0f} ({_range(rps)}) "
                f"| {_med(p50):.0f} ({_range(p50)}) "
                f"| {_med([r['p90'] for r in rs]):.0f} | {_med(p99):.0f} ({_range(p99)}) "
                f"| {_med([r['p999'] for r in rs]):.0f} | {sum(r['errors'] for r in rs)} "
                f"| {max(r['rss_kib'] for r in rs) / 1024:.1f} "
                f"| {_med([r['cpu_us'] for r in rs]):.0f} |"
            )
    lines += [
        "",
        "## secureserve vs bare",
        "",
        (
            "| conns | req/s ratio | target | p50 overhead µs | p99 overhead µs "
            "| per-request cost µs (1/rps diff) |"
        ),
        "| ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for c in args.connections:
        ss, bare = runs[(SS, c)], runs[(BARE, c)]
        ratio = _med([r["rps"] for r in ss]) / _med([r["rps"] for r in bare])
        d50 = _med([r["p50"] for r in ss]) - _med([r["p50"] for r in bare])
        d99 = _med([r["p99"] for r in ss]) - _med([r["p99"] for r in bare])
        cost = 1e6 / _med([r["rps"] for r in ss]) - 1e6 / _med([r["rps"] for r in bare])
        if c == max(args.connections):
            target = f"\u2265 0.80x: {'met' if ratio >= 0.8 else 'MISSED'}"
        elif c == 1:
            target = f"p50 +≤ 100 µs: {'met' if d50 <= 100 else 'MISSED'}"
        else:
            target = ""
        lines.append(f"| {c} | {ratio:.3f}x | {target} | {d50:+.0f} | {d99:+.0f} | {cost:+.1f} |")
    if args.cold_runs:
        lines += [
            "",
            "## Cold start and idle memory",
            "",
            (
                f"Spawn \u2192 first 200 on `GET /readyz` (polled every 2 ms), {args.cold_runs} "
                "runs each, alternating; RSS is `VmRSS` of the server process 0.5 s after ready."
            ),
            "",
            "| server | cold start median (range) | idle RSS median (range) |",
            "| --- | ---: | ---: |",
        ]
        for which in (SS, BARE):
            cs, rs = cold[which], rss[which]
            lines.append(
                f"| {which} | {_med(cs) * 1000:.0f} ms ({_range([x * 1000 for x in cs])} ms) "
                f"| {_med(rs) / 1024:.1f} MiB ({_range([x / 1024 for x in rs], '{:.1f}')} MiB) |"
            )
        lines.append(
            f"\ncold start difference: {(_med(cold[SS]) - _med(cold[BARE])) * 1000:+.0f} ms; "
            f"idle RSS difference: {(_med(rss[SS]) - _med(rss[BARE])) / 1024:+.1f} MiB"
        )
    if log_bytes is not None and total_requests:
        lines.append(
            f"\naccess log written: {log_bytes / 1e6:.1f} MB for ~{total_requests} requests "
            f"({log_bytes / total_requests:.0f} bytes per request)"
        )
    return "\n".join(lines) + "\n"


def cold_starts(setup: Setup, runs: int) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Spawn-to-ready seconds and idle RSS (KiB) per server, alternating the order."""
    cold: dict[str, list[float]] = {SS: [], BARE: []}
    rss: dict[str, list[int]] = {SS: [], BARE: []}
    for i in range(runs):
        for which in (SS, BARE) if i % 2 == 0 else (BARE, SS):
            with server(setup, which) as (proc, seconds):
                time.sleep(0.5)  # let start-up allocations settle
                cold[which].append(seconds)
                rss[which].append(rss_kib(proc.pid))
            _progress(
                f"cold start {which:<11} {seconds * 1000:7.0f} ms  "
                f"RSS {rss[which][-1] / 1024:.1f} MiB"
            )
    return cold, rss


def print_results(
    *,
    args: argparse.Namespace,
    setup: Setup,
    info: dict[str, str],
    runs: dict[tuple[str, int], list[dict[str, Any]]],
    cold: dict[str, list[float]],
    rss: dict[str, list[int]],
) -> None:
    log_bytes = setup.log_path.stat().st_size if setup.log_path else None
    total = sum(r["requests"] for rs in runs.values() for r in rs)
    if not args.skip_load:
        # warm-up requests are logged too; count them approximately via the log's lines
        if setup.log_path:
            with setup.log_path.open("rb") as f:
                total = sum(1 for _ in f)
        print(
            report(
                args=args,
                setup=setup,
                info=info,
                runs=runs,
                cold=cold,
                rss=rss,
                log_bytes=log_bytes,
                total_requests=total,
            )
        )
    else:
        print("\n".join(f"- {k}: {v}" for k, v in info.items()))
        for which in (SS, BARE):
            print(
                f"{which}: cold start {_med(cold[which]) * 1000:.0f} ms, "
                f"idle RSS {_med(rss[which]) / 1024:.1f} MiB"
            )


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark secureserve against a bare Starlette + onnxruntime app."
    )
    parser.add_argument("--rounds", type=int, default=3, help="load rounds (default 3)")
    parser.add_argument("--duration", type=float, default=10, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2, help="seconds discarded before each run")
    parser.add_argument(
        "--connections", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32]
    )
    parser.add_argument("--cold-runs", type=int, default=5, help="cold starts per server")
    parser.add_argument(
        "--log", choices=("file", "devnull"), default="file",
        help="where secureserve's stdout (the access log) goes (default: a file)",
    )  # fmt: skip
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    parser.add_argument("--ss-port", type=int, default=18443)
    parser.add_argument("--bare-port", type=int, default=18444)
    parser.add_argument("--profile", type=int, default=0, metavar="S", help="py-spy for S seconds")
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native")
    parser.add_argument(
        "--profile-all-threads", dest="profile_gil", action="store_false",
        help="sample every non-idle thread (default: py-spy --gil, only the thread holding "
        "the GIL, which approximates where the interpreter's CPU goes)",
    )  # fmt: skip
    parser.add_argument("--profile-top", type=int, default=10)
    parser.add_argument("--skip-load", action="store_true", help="only cold start (and profile)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--ss-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for secureserve, e.g. "
        "SECURESERVE_LIMITS__STORAGE=redis://127.0.0.1:6379/14",
    )  # fmt: skip
    parser.add_argument(
        "--core", type=Path, metavar="DIR",
        help="serve with the secureserve source tree in DIR (a git worktree of an older "
        "commit) instead of the installed one; no access-control settings are passed",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk not found: apt-get install -y wrk")
    args.pin = args.pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    setup = make_setup(args)
    _progress(f"work folder: {setup.workdir}")
    info = machine()
    try:
        cold, rss = cold_starts(setup, args.cold_runs)
        if setup.log_path:
            setup.log_path.write_bytes(b"")  # count only the load runs' lines

        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        prof = ""
        with server(setup, SS) as (ss_proc, _), server(setup, BARE) as (bare_proc, _):
            check_same_answer(setup)
            pids = {SS: ss_proc.pid, BARE: bare_proc.pid}
            if not args.skip_load:
                runs = load_rounds(setup, args, pids)
            if args.profile:
                for which in (SS, BARE):
                    _progress(f"profiling {which} for {args.profile} s under load ...")
                    prof += profile(setup, args, which, pids[which]) + "\n"
        print_results(args=args, setup=setup, info=info, runs=runs, cold=cold, rss=rss)
        if prof:
            print("## Profiles under load\n")
            print(prof)
        if args.json:
            raw = {
                "machine": info,
                "args": {k: str(v) for k, v in vars(args).items()},
                "runs": {f"{w}@{c}": rs for (w, c), rs in runs.items()},
                "cold_start_s": cold,
                "idle_rss_kib": rss,
            }
            args.json.write_text(json.dumps(raw, indent=1))
    finally:
        if args.keep:
            _progress(f"kept {setup.workdir}")
        else:
            shutil.rmtree(setup.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
