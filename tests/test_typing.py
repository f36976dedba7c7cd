"""A user's Model subclass type-checks under mypy --strict (msgspec/structlog do the same)."""

from __future__ import annotations

from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")


def test_typing_user_model_passes_mypy_strict(tmp_path):
    """The handler of DESIGN.md, sync and async, is accepted by mypy --strict without ignores."""
    sample = Path(__file__).with_name("typing_user_model.py")
    stdout, stderr, status = api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(sample)]
    )
    assert status == 0, stdout + stderr
