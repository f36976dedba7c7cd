"""Shared fixtures: the hostile-fixture folder (when present) and throw-away projects."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


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
