"""The whole secureserve app in process: CPU µs per predict request, for A/B comparisons.

``benchmarks/run.py`` measures what a client sees (TLS, uvicorn, the kernel), but on a
shared 2-core VM its throughput moves by 10 % from one run to the next, more than most
single changes to the request path. This measures only the ASGI app that ``secureserve
run`` serves, every middleware included (request id, authentication with a real API
key, limits, decoding, model defenses, the inference thread, output policy, audit
record, access line, metrics), called directly on a uvloop event loop: no sockets,
no TLS, no HTTP parsing. Its figures move by 1-3 % between runs, so two versions of
the code can be told apart::

    .venv/bin/python benchmarks/app_cpu.py --rounds 5
    git worktree add /tmp/before HEAD~1
    .venv/bin/python benchmarks/app_cpu.py --core /tmp/before --rounds 5
    .venv/bin/python benchmarks/app_cpu.py --env SECURESERVE_MODEL__EXTRACTION__ACTION=off

Each variant runs in a fresh process pinned to CPU 0 (``taskset``; the inference
thread shares that core, as in run.py's pinned mode) with ``PYTHONHASHSEED=0``; the
variants alternate ``--rounds`` times. Each process warms up, then times ``--requests``
one-instance iris predictions at each concurrency (``--concurrency 1,32``: that many
tasks calling the app at once) three times and reports its fastest; the table gives
the median of those over rounds, with the range. CPU is ``time.process_time()`` (all
threads of the process), divided by the number of requests.

The iris example is copied to a temporary folder with an API key (roles predict and
analyst, as in run.py), an audit digest key and limits high enough never to refuse.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from run import BODY, PATH, copy_example  # benchmarks/run.py, beside this file


def prepare(workdir: Path) -> tuple[Path, dict[str, str], str]:
    """The copied project, the settings as environment variables, and the API key."""
    from secureserve.audit import generate_digest_key
    from secureserve.keys import create_key

    project = workdir / "iris"
    copy_example(project)
    keys_file = workdir / "secrets" / "api_keys.toml"
    key = create_key(keys_file, name="bench", roles=("predict", "analyst"))
    generate_digest_key(workdir / "secrets" / "audit.key")
    env = {
        "SECURESERVE_AUTH__KEYS_FILE": str(keys_file),
        "SECURESERVE_AUDIT__PATH": str(workdir / "audit" / "audit.jsonl"),
        "SECURESERVE_AUDIT__DIGEST_KEY_FILE": str(workdir / "secrets" / "audit.key"),
        "SECURESERVE_AUDIT__MAX_BYTES": str(1 << 40),
        "SECURESERVE_LIMITS__PER_PRINCIPAL": "1000000/second",
        "SECURESERVE_LIMITS__QUOTA": "1000000000/day",
    }
    return project, env, str(key.secret)


# --------------------------------------------------------------------------- child


def child(project: Path, token: str, concurrency: list[int], requests: int) -> None:
    """Serve the app in this process and print one JSON line: µs of CPU per request."""
    import uvloop

    from secureserve.app import create_app
    from secureserve.cli._common import import_handler
    from secureserve.config import load_settings
    from secureserve.logs import configure_logging

    settings = load_settings(project_dir=project)
    with (project.parent / "access.jsonl").open("wb") as log:
        configure_logging("info", log_format="json", stream=log)
        app = create_app(import_handler(settings.model.handler, project), config=settings)
        headers = [
            (b"host", b"127.0.0.1"),
            (b"authorization", b"Bearer " + token.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ]

        async def predict() -> None:
            status = 0

            async def receive() -> MutableMapping[str, Any]:
                return {"type": "http.request", "body": BODY, "more_body": False}

            async def send(message: MutableMapping[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "scheme": "https",
                "method": "POST",
                "path": PATH,
                "raw_path": PATH.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 443),
                "extensions": {},
            }
            await app(scope, receive, send)
            if status != 200:
                raise RuntimeError(f"predict answered {status}")

        async def load(tasks: int, total: int) -> None:
            async def worker(n: int) -> None:
                for _ in range(n):
                    await predict()

            await asyncio.gather(*(worker(total // tasks) for _ in range(tasks)))

        async def main() -> dict[str, float]:
            inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
            outbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()

            async def outgoing(message: MutableMapping[str, Any]) -> None:
                await outbox.put(message)

            lifespan = asyncio.ensure_future(
                app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outgoing)
            )
            await inbox.put({"type": "lifespan.startup"})
            started = await outbox.get()
            if started["type"] != "lifespan.startup.complete":
                raise RuntimeError(f"start-up failed: {started}")
            results = {}
            for tasks in concurrency:
                await load(tasks, max(tasks, requests // 5))  # warm-up
                runs = []
                for _ in range(3):
                    gc.collect()
                    total = requests // tasks * tasks
                    before = time.process_time()
                    await load(tasks, total)
                    runs.append((time.process_time() - before) / total * 1e6)
                results[str(tasks)] = min(runs)
            await inbox.put({"type": "lifespan.shutdown"})
            await lifespan
            return results

        print("APP_CPU " + json.dumps(uvloop.run(main())), file=sys.__stdout__, flush=True)


# --------------------------------------------------------------------------- parent


def run_variant(
    args: argparse.Namespace, workdir: Path, env: dict[str, str], token: str, core: str | None
) -> dict[str, float]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SECURESERVE_")}
    child_env.update(env, PYTHONHASHSEED="0")
    child_env.update(dict(item.split("=", 1) for item in args.env))
    if core is not None:
        child_env["PYTHONPATH"] = core
    cmd = [sys.executable, __file__, "--child", str(workdir / "iris"), "--token", token]
    cmd += ["--concurrency", args.concurrency, "--requests", str(args.requests)]
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        cmd = ["taskset", "-c", "0", *cmd]
    done = subprocess.run(
        cmd, env=child_env, capture_output=True, text=True, timeout=600, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("APP_CPU "):
            result: dict[str, float] = json.loads(line.removeprefix("APP_CPU "))
            return result
    raise RuntimeError(f"the child failed ({done.returncode}):\n{done.stderr[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="processes per variant")
    parser.add_argument("--requests", type=int, default=3000, help="per timed run")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated task counts")
    parser.add_argument(
        "--core",
        action="append",
        default=[],
        help="also measure the secureserve source tree in DIR (e.g. a git worktree); repeat",
    )
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for every variant's settings"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.child is not None:
        child(args.child, args.token, concurrency, args.requests)
        return 0
    variants: list[str | None] = [None, *args.core]
    names = {None: "this tree", **{c: c for c in args.core}}
    results: dict[str | None, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="secureserve-app-cpu-") as tmp:
        workdir = Path(tmp)
        _, env, token = prepare(workdir)
        for r in range(args.rounds):
            for variant in variants if r % 2 == 0 else list(reversed(variants)):
                results[variant].append(run_variant(args, workdir, env, token, variant))
                print(f"round {r + 1}: {names[variant]} {results[variant][-1]}", file=sys.stderr)
    extra = f" ({', '.join(args.env)})" if args.env else ""
    print(f"CPU µs per one-instance predict request, whole app in process{extra}\n")
    print("| code | " + " | ".join(f"concurrency {c}" for c in concurrency) + " |")
    print("| --- | " + " | ".join("---:" for _ in concurrency) + " |")
    for variant in variants:
        cells = []
        for c in concurrency:
            values = [run[str(c)] for run in results[variant]]
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"| {names[variant]} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
