"""Fixtures that load this example's ``app.py`` under a name of its own (``iris_tensor_app``).

Every example has an ``app.py``; a unique module name keeps them apart when pytest
collects every example in one session.
"""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_dir() -> Path:
    """The example's folder (``secureserve.toml``, ``models/``, ``app.py``)."""
    return PROJECT_DIR


@pytest.fixture(scope="session")
def tensor_app() -> ModuleType:
    """Import ``app.py`` as ``iris_tensor_app`` once per session."""
    name = "iris_tensor_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PROJECT_DIR / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
