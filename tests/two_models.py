"""A throw-away project serving both examples from one secureserve.toml.

``copy_two_models`` lays out ``[models.iris]`` and ``[models.digits]`` tables over
copies of examples/iris and examples/digits-safetensors: their handlers as
``iris_app.py`` and ``digits_app.py`` (two modules, so both import in one process),
their files under ``models/iris`` and ``models/digits``, and no lock yet. The handler
modules are forgotten after the test and ``sys.path`` is restored, as conftest's
``copy_example`` does for ``app``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES

#: Served name -> (example folder, handler module, handler class).
MODELS = {
    "iris": ("iris", "iris_app", "Iris"),
    "digits": ("digits-safetensors", "digits_app", "Digits"),
}

TOML = """\
[models.iris]
handler = "iris_app:Iris"
dir = "models/iris"

[models.iris.output]
policy = "label_only"

[models.digits]
handler = "digits_app:Digits"
dir = "models/digits"

[models.digits.output]
policy = "top_k"
top_k = 3

[auth]
keys_file = "secrets/api_keys.toml"
"""


def copy_two_models(target: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project at ``target`` with the iris and digits examples as two served models."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    for _, module, _ in MODELS.values():
        # Recorded as absent (setitem, then delitem): removed again after the test.
        monkeypatch.setitem(sys.modules, module, None)
        monkeypatch.delitem(sys.modules, module)
    target.mkdir(parents=True)
    for name, (example, module, _) in MODELS.items():
        shutil.copy(EXAMPLES / example / "app.py", target / f"{module}.py")
        shutil.copytree(EXAMPLES / example / "models", target / "models" / name)
    (target / "secureserve.toml").write_text(TOML)
    return target
