"""Shared fixtures: the hostile-fixture folder (when present) and throw-away projects."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

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
    target = tmp_path / "iris"
    target.mkdir()
    shutil.copy(EXAMPLES / "iris" / "app.py", target / "app.py")
    shutil.copy(EXAMPLES / "iris" / "secureserve.toml", target / "secureserve.toml")
    shutil.copy(EXAMPLES / "iris" / "secureserve.lock", target / "secureserve.lock")
    shutil.copytree(EXAMPLES / "iris" / "models", target / "models")
    return target
