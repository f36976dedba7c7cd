"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from secureserve.config import Settings, load_settings

DEV_DIR: Final = ".secureserve"
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2


def settings_from(
    args: argparse.Namespace, overrides: dict[str, dict[str, Any]] | None = None
) -> Settings:
    """Settings for a command run in the working directory (``--config`` if given)."""
    return load_settings(args.config, project_dir=Path.cwd(), overrides=overrides)
