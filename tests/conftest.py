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


def load_iris() -> type:
    """The Iris handler class of examples/iris/app.py, imported once under a unique name."""
    name = "secureserve_tests_iris_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / "iris" / "app.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].Iris  # type: ignore[no-any-return]


def shared_fixtures() -> Path | None:
    """``../shared/fixtures`` beside the checkout (CI), or ``$SECURESERVE_FIXTURES``; else None."""
    candidate = Path(os.environ.get("SECURESERVE_FIXTURES") or ROOT.parent / "shared" / "fixtures")
    return candidate if (candidate / "manifest.json").is_file() else None


@pytest.fixture
def iris_project(tmp_path: Path) -> Path:
    """A copy of examples/iris (handler, models, secureserve.toml) in a temporary folder."""
    return copy_iris(tmp_path / "iris")


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
