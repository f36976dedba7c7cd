"""Fixtures that load this example's ``app.py`` and ``train.py`` as uniquely named modules.

Both examples have an ``app.py`` and a ``train.py``; loading them by file under
``digits_app`` / ``digits_train`` keeps them apart when pytest collects every example
in one session. They are loaded lazily so that the model-level tests run even
where the web stack or scikit-learn is missing.
"""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[1]


def load_module(name: str, path: Path) -> ModuleType:
    """Import ``path`` as module ``name`` once per session (msgspec needs it in sys.modules)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture(scope="session")
def project_dir() -> Path:
    """Return the example's folder (``secureserve.toml``, ``models/``, ``app.py``)."""
    return PROJECT_DIR


@pytest.fixture(scope="session")
def digits_app() -> ModuleType:
    """Import the handler module ``app.py`` (needs the secureserve core)."""
    return load_module("digits_app", PROJECT_DIR / "app.py")


@pytest.fixture(scope="session")
def digits_train() -> ModuleType:
    """Import ``train.py``; skip when scikit-learn (a dev dependency) is absent."""
    pytest.importorskip("sklearn")
    return load_module("digits_train", PROJECT_DIR / "train.py")
