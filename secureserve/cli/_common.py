"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Final

from secureserve.config import CONFIG_FILENAME, Settings, load_settings
from secureserve.errors import ConfigError
from secureserve.model import Model
from secureserve.tensor_model import TensorModel

DEV_DIR: Final = ".secureserve"
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2


def settings_from(
    args: argparse.Namespace, overrides: dict[str, dict[str, Any]] | None = None
) -> Settings:
    """Settings for a command run in the working directory (``--config`` if given)."""
    return load_settings(args.config, project_dir=Path.cwd(), overrides=overrides)


def import_handler(spec: str | None, project_dir: Path) -> type[Model[Any, Any]]:
    """The handler class ``module:Class``, imported with the project folder on ``sys.path``."""
    if not spec:
        where = (
            ""
            if (project_dir / CONFIG_FILENAME).exists()
            else f" There is no {CONFIG_FILENAME} in {project_dir}: run from a project "
            "folder (e.g. examples/iris), or pass --config."
        )
        raise ConfigError(
            "no model handler: pass APP as module:Class (e.g. app:Iris) or set "
            f"[model] handler in {CONFIG_FILENAME}.{where}"
        )
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name.isidentifier():
        raise ConfigError(f"handler {spec!r} must look like module:Class, e.g. app:Iris.")
    if str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"could not import {module_name!r} for handler {spec!r}: "
            f"{type(exc).__name__}: {exc}. Run with --debug for the "
            "traceback."
        ) from exc
    handler = getattr(module, class_name, None)
    if not (isinstance(handler, type) and issubclass(handler, Model | TensorModel)):
        found = sorted(
            name
            for name, value in vars(module).items()
            if isinstance(value, type)
            and issubclass(value, Model | TensorModel)
            and value.__module__ == module.__name__  # defined there, not imported
        )
        listing = f"its handlers: {', '.join(found)}" if found else "it defines no handler"
        what = (
            f"{module_name} has no {class_name!r}"
            if handler is None
            else f"{spec!r} is not a secureserve.Model or secureserve.TensorModel subclass"
        )
        raise ConfigError(f"{what} ({listing}).")
    return handler  # type: ignore[return-value]
