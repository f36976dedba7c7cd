"""No exception instance is raised twice: statically over the package, and by measurement.

An exception object kept in a module or an attribute and raised on every refusal keeps
each raise's traceback (the frames are chained onto it) and is shared by concurrent
requests: about 10 KB per request stayed alive before this was fixed. These tests keep
the whole class of bug out, not only the sites that had it.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import gc
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from app_helpers import build_app, json_logs, unlimited_iris_settings
from conftest import ROOT
from test_middleware import ADMIN_KEY, PREDICT_KEY, RECORDS, Iris

from secureserve import errors
from secureserve.keys import mint_key
from secureserve.middleware import context

PACKAGE = ROOT / "secureserve"
REPEATS = 1_000
OTHER_MODEL_KEY = mint_key(name="elsewhere", roles=("predict",), models=("other",))


def _exception_names() -> set[str]:
    """Names of exception classes: builtins and every class in the package deriving from one."""
    names = {name for name, value in vars(builtins).items() if _is_exception_class(value)}
    names |= {"SecureServeError", "ConfigError", "ArtifactError", "ModelError", "RequestRejected"}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and (base.id in names or base.id.endswith("Error"))
                for base in node.bases
            ):
                names.add(node.name)
    return names


def _is_exception_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


def _bound_in_function(function: ast.AST, name: str) -> bool:
    """Whether ``name`` is an ``except ... as name`` or is assigned a new object in ``function``."""
    for node in ast.walk(function):
        if isinstance(node, ast.ExceptHandler) and node.name == name:
            return True
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call | ast.Name)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
        ):
            return True
    return False


def _findings(path: Path, exception_names: set[str], root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text())
    found: list[str] = []
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for function in functions:
        for node in ast.walk(function):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            exc = node.exc
            if isinstance(exc, ast.Call):
                continue
            if isinstance(exc, ast.Name) and (
                exc.id in exception_names or _bound_in_function(function, exc.id)
            ):
                continue
            found.append(f"{path.relative_to(root)}:{node.lineno}: raise {ast.unparse(exc)}")
    for node in ast.walk(tree):  # an instance built once and kept: module constants, attributes
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            func = node.value.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            kept = any(
                isinstance(t, ast.Attribute) or (isinstance(t, ast.Name) and t.id.isupper())
                for t in targets
            )
            if called in exception_names and kept:
                found.append(f"{path.relative_to(root)}:{node.lineno}: keeps a {called}")
    return found


def test_errors_no_exception_instance_is_kept_to_be_raised_again():
    """Every ``raise`` in the package raises a new exception, or one it has just caught."""
    names = _exception_names()
    findings = [f for path in sorted(PACKAGE.rglob("*.py")) for f in _findings(path, names)]
    assert findings == []


def test_errors_the_static_check_finds_a_kept_rejection(tmp_path):
    """The check above flags both shapes of the bug it guards against (it can fail)."""
    source = tmp_path / "bad.py"
    source.write_text(
        "from secureserve.errors import RequestRejected\n"
        "_GONE = RequestRejected(404, 'not-found', 'Not found')\n"
        "class Busy:\n"
        "    def __init__(self):\n"
        "        self.busy = RequestRejected(503, 'overloaded', 'Server is busy')\n"
        "    def __call__(self):\n"
        "        raise self.busy\n"
        "def gone():\n"
        "    raise _GONE\n"
    )
    found = _findings(source, _exception_names(), tmp_path)
    assert sorted(found) == [
        "bad.py:2: keeps a RequestRejected",
        "bad.py:5: keeps a RequestRejected",
        "bad.py:7: raise self.busy",
        "bad.py:9: raise _GONE",
    ]


# ---- measured through the app -------------------------------------------------------------


def _app(**server: Any):
    # limits are off: they are counted in bounded windows of their own, tested elsewhere
    return build_app(Iris, unlimited_iris_settings(**server), OTHER_MODEL_KEY, records=RECORDS)


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]], scheme: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8443),
    }


async def _call(app, scope: dict, body: bytes) -> int:
    """One request straight into the ASGI app; returns the status."""
    sent = False
    status = 0

    async def receive() -> dict:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def _bearer(key) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {key.secret}".encode())


JSON = (b"content-type", b"application/json")
VALID = b'{"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]}'
# (name, method, path, headers, body, scheme, expected status)
REFUSALS = [
    (
        "unknown model",
        "POST",
        "/v1/models/other:predict",
        [_bearer(PREDICT_KEY), JSON],
        VALID,
        "https",
        404,
    ),
    (
        "model of no concern",
        "POST",
        "/v1/models/iris:predict",
        [_bearer(OTHER_MODEL_KEY), JSON],
        VALID,
        "https",
        404,
    ),
    ("no credentials", "POST", "/v1/models/iris:predict", [JSON], VALID, "https", 401),
    ("wrong role", "GET", "/v1/models/iris", [_bearer(PREDICT_KEY)], b"", "https", 403),
    (
        "plaintext",
        "POST",
        "/v1/models/iris:predict",
        [_bearer(PREDICT_KEY), JSON],
        VALID,
        "http",
        403,
    ),
    ("media type", "POST", "/v1/models/iris:predict", [_bearer(PREDICT_KEY)], VALID, "https", 415),
    (
        "invalid body",
        "POST",
        "/v1/models/iris:predict",
        [_bearer(PREDICT_KEY), JSON],
        b"{",
        "https",
        400,
    ),
    (
        "schema",
        "POST",
        "/v1/models/iris:predict",
        [_bearer(PREDICT_KEY), JSON],
        b'{"instances": [{"features": [1]}]}',
        "https",
        422,
    ),
    ("no route", "GET", "/nowhere", [_bearer(ADMIN_KEY)], b"", "https", 404),
    ("wrong method", "GET", "/v1/models/iris:predict", [_bearer(PREDICT_KEY)], b"", "https", 405),
]


def _depth(exc: BaseException) -> int:
    depth, tb = 0, exc.__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    return depth


@pytest.fixture
def quiet_logs():
    """JSON logs to /dev/null for the test (captured output would grow with every line)."""
    with Path(os.devnull).open("wb") as sink, json_logs(sink):
        yield


@pytest.mark.parametrize("refusal", [pytest.param(row[1:], id=row[0]) for row in REFUSALS])
def test_errors_refusals_repeated_keep_memory_and_tracebacks_flat(monkeypatch, quiet_logs, refusal):
    """1,000 identical refusals: every traceback as short as the first, memory flat."""
    method, path, headers, body, scheme, status = refusal
    depths: list[int] = []
    as_rejection = context.as_rejection

    def spy(exc: BaseException) -> errors.RequestRejected:
        depths.append(_depth(exc))
        return as_rejection(exc)

    monkeypatch.setattr(context, "as_rejection", spy)  # every error, the router's 404/405 too
    app = _app()

    async def scenario() -> tuple[int, int]:
        scope = _scope(method, path, headers, scheme)
        for _ in range(50):  # warm-up: caches, first-use allocations
            assert await _call(app, dict(scope), body) == status
            await asyncio.sleep(0)  # a server's loop turns between requests (access log flush)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(REPEATS):
            await _call(app, dict(scope), body)
            await asyncio.sleep(0)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        return grown, len(depths)

    grown, count = asyncio.run(scenario())
    assert count == 50 + REPEATS
    assert max(depths) == depths[0], f"tracebacks grew from {depths[0]} to {max(depths)} frames"
    assert grown < 256 * 1024, f"{grown} bytes still allocated after {REPEATS} refusals"


def test_errors_busy_refusal_is_new_every_time():
    """The 503 at max_in_flight: a new exception each time, its traceback never growing."""
    from secureserve.middleware.inflight import InFlightLimit

    async def inner(scope, receive, send) -> None:  # pragma: no cover - never admitted
        raise AssertionError

    limit = InFlightLimit(inner, limit=1)
    limit.current = 1
    seen: list[errors.RequestRejected] = []

    async def scenario() -> None:
        for _ in range(REPEATS):
            try:
                await limit({"type": "http", "path": "/v1/models"}, None, None)
            except errors.RequestRejected as exc:
                seen.append(exc)

    asyncio.run(scenario())
    assert len({id(exc) for exc in seen}) == REPEATS
    assert {_depth(exc) for exc in seen} == {_depth(seen[0])}
    assert all(exc.status == 503 and exc.headers["Retry-After"] for exc in seen)
