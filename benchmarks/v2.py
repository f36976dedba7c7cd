"""``/v2`` infer against ``/v1`` predict on the same iris model: throughput and latency.

    .venv/bin/python benchmarks/v2.py [--duration 10] [--connections 16] [--rounds 3]

Two copies of examples/iris in a temporary folder: one served as the example's
``ss.Model`` handler (``/v1/models/iris:predict``, a key with role ``analyst`` so the
answer carries the full score, as the tensor model's does), one as an ``ss.TensorModel``
over the same ONNX file (``/v2/models/iris/infer``, JSON tensors, ``policy = "full"``),
once with ``independent_rows = True`` (waiting requests share a session run) and once
without (each request runs alone).
Each is served in turn with ``secureserve run`` (TLS, a real key, the audit log with a
digest key, limits raised so nothing is refused), pinned to CPU 0, and driven by ``wrk``
pinned to CPU 1 with one-row requests. Prints a markdown table of the medians over
``--rounds`` for docs/performance.md. Needs Linux, ``wrk`` and ``taskset``; only
127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import client_context, ready_once

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("secureserve"))
TENSOR = """import secureserve as ss


class IrisTensor(ss.TensorModel):
    name = "iris"
    version = "1"
    file = "iris.onnx"
    independent_rows = INDEPENDENT
"""
LIMITS = {
    "SECURESERVE_LIMITS__PER_PRINCIPAL": "100000000/minute",
    "SECURESERVE_LIMITS__QUOTA": "1000000000/day",
}


def project(root: Path, *, tensor: bool, merge: bool = True) -> Path:
    """A locked copy of examples/iris, as its handler or as a tensor model."""
    shutil.copytree(
        ROOT / "examples" / "iris", root, ignore=shutil.ignore_patterns("tests", ".secureserve")
    )
    if tensor:
        (root / "app.py").write_text(TENSOR.replace("INDEPENDENT", str(merge)))
        text = (root / "secureserve.toml").read_text().replace("app:Iris", "app:IrisTensor")
        head = text.partition("[model.output]")[0]
        (root / "secureserve.toml").write_text(head + '\n[model.output]\npolicy = "full"\n')
    subprocess.run([CLI, "lock"], cwd=root, check=True, capture_output=True)
    return root


def serve(folder: Path, certs: Path, port: int) -> subprocess.Popen[bytes]:
    """``secureserve run`` on CPU 0 with the certificates and key made in ``certs``."""
    env = {
        **os.environ,
        **LIMITS,
        "SECURESERVE_SERVER__PORT": str(port),
        "SECURESERVE_TLS__CERT": str(certs / "server.pem"),
        "SECURESERVE_TLS__KEY": str(certs / "server-key.pem"),
        "SECURESERVE_AUTH__KEYS_FILE": str(certs / "keys.toml"),
        "SECURESERVE_AUDIT__DIGEST_KEY_FILE": str(certs / "digest.key"),
        "SECURESERVE_LOGGING__LEVEL": "warning",
    }
    proc = subprocess.Popen(
        ["taskset", "-c", "0", CLI, "run"],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ctx = client_context(certs / "ca.pem")
    deadline = time.monotonic() + 60
    while not ready_once(port, ctx):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the server in {folder} did not start")
        time.sleep(0.05)
    return proc


def drive(port: int, path: str, script: str, token: str, args: argparse.Namespace) -> dict:
    """One wrk run on CPU 1; its BENCH_JSON line."""
    done = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "--latency",
            "-s",
            str(ROOT / "benchmarks" / script),
            f"https://127.0.0.1:{port}{path}",
        ],
        env={**os.environ, "BENCH_TOKEN": token},
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON "))
    return json.loads(line.removeprefix("BENCH_JSON "))


def main() -> None:
    """Serve each form in turn for ``--rounds``; print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from secureserve.audit import generate_digest_key
    from secureserve.devcerts import ensure_dev_certificates
    from secureserve.keys import create_key

    with tempfile.TemporaryDirectory(prefix="ss-v2-bench-") as temporary:
        base = Path(temporary)
        made = ensure_dev_certificates(base / "certs")
        certs = base / "certs"
        for source, name in ((made.cert, "server.pem"), (made.key, "server-key.pem")):
            if source != certs / name:
                shutil.copy(source, certs / name)
        if made.ca_cert != certs / "ca.pem":
            shutil.copy(made.ca_cert, certs / "ca.pem")
        generate_digest_key(certs / "digest.key")
        key = create_key(certs / "keys.toml", name="bench", roles=("predict", "analyst"))
        forms = {
            "/v1 predict (ss.Model)": (
                project(base / "v1", tensor=False),
                "/v1/models/iris:predict",
                "predict.lua",
            ),
            "/v2 infer (ss.TensorModel, JSON, rows merged)": (
                project(base / "v2", tensor=True),
                "/v2/models/iris/infer",
                "predict_v2.lua",
            ),
            "/v2 infer (ss.TensorModel, JSON, each request alone)": (
                project(base / "v2-alone", tensor=True, merge=False),
                "/v2/models/iris/infer",
                "predict_v2.lua",
            ),
        }
        results: dict[str, list[dict]] = {label: [] for label in forms}
        for _ in range(args.rounds):
            for label, (folder, path, script) in forms.items():
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", 0))
                    port = probe.getsockname()[1]
                proc = serve(folder, certs, port)
                try:
                    drive(
                        port,
                        path,
                        script,
                        key.secret,
                        argparse.Namespace(duration=2, connections=args.connections),
                    )
                    results[label].append(drive(port, path, script, key.secret, args))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
    print(f"median of {args.rounds} rounds, {args.connections} connections, {args.duration} s:\n")
    print("| route | requests/s | p50 (ms) | p99 (ms) | errors |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, runs in results.items():
        rate = statistics.median(r["requests"] / (r["duration_us"] / 1e6) for r in runs)
        p50 = statistics.median(r["p50"] for r in runs) / 1000
        p99 = statistics.median(r["p99"] for r in runs) / 1000
        errors = sum(v for r in runs for k, v in r.items() if k.startswith("err_"))
        print(f"| {label} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {errors} |")


if __name__ == "__main__":
    main()
