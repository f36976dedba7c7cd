"""Shared fixtures: the hostile-fixture folder (when present), throw-away projects, Redis.

``iris_project`` is a copy of examples/iris in a temporary folder; ``own_redis`` a
private ``redis-server`` a test may kill and restart. Plain helper functions are in
app_helpers.py (in-process apps) and server_helpers.py (real server processes).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import OwnRedis, copy_iris, need_redis

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_handler(example: str, class_name: str) -> type:
    """A handler class of examples/<example>/app.py, imported once under a unique name."""
    name = f"secureserve_tests_{example.replace('-', '_')}_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / example / "app.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return getattr(sys.modules[name], class_name)  # type: ignore[no-any-return]


def load_iris() -> type:
    """The Iris handler class of examples/iris/app.py."""
    return load_handler("iris", "Iris")


def copy_example(example: str, target: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of examples/<example> (without its tests) at ``target``, ready to import.

    Its handler module is ``app``, as in every project: any other project's ``app`` is
    forgotten, and ``sys.path`` is restored after the test.
    """
    monkeypatch.delitem(sys.modules, "app", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    shutil.copytree(
        EXAMPLES / example, target, ignore=shutil.ignore_patterns("tests", "__pycache__")
    )
    return target


def shared_fixtures() -> Path | None:
    """``../shared/fixtures`` beside the checkout (CI), or ``$SECURESERVE_FIXTURES``; else None."""
    candidate = Path(os.environ.get("SECURESERVE_FIXTURES") or ROOT.parent / "shared" / "fixtures")
    return candidate if (candidate / "manifest.json").is_file() else None


@pytest.fixture
def iris_project(tmp_path: Path) -> Path:
    """A copy of examples/iris (handler, models, secureserve.toml) in a temporary folder."""
    return copy_iris(tmp_path / "iris")


@pytest.fixture
def audit_looked_at_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """No look at the audit file is trusted for its usual 10 ms: every check looks again.

    For tests of what the very next request does once the file was damaged.
    """
    from secureserve.audit import chainfile

    monkeypatch.setattr(chainfile, "_RECHECK_S", 0.0)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A started private redis-server (output in ``tmp_path``), always killed at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        need_redis("redis-server is not installed")
    server = OwnRedis(binary, tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()
