"""The digits example as the model the defense tests attack: data, profile, handler, app.

``digits_rows()`` are the training images the committed profile was made from
(``examples/digits-safetensors/data/train.npy``); ``digits_profile()`` is that profile;
``digits_app(...)`` serves the example in-process with its settings, the audit log in
a fresh folder and the given ``[model.*]`` sub-tables replaced.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from app_helpers import build_app, replaced
from conftest import EXAMPLES, load_handler

from secureserve.config import Settings, load_settings
from secureserve.keys import ApiKey
from secureserve.profile import Profile

DIGITS = EXAMPLES / "digits-safetensors"
PREDICT = "/v1/models/digits:predict"
DRIFT = "/v1/models/digits/drift"


def digits_rows() -> npt.NDArray[np.float64]:
    """The 1,438 training images, one row of 64 pixels each."""
    return np.load(DIGITS / "data" / "train.npy", allow_pickle=False).astype(np.float64)


def digits_profile() -> Profile:
    return msgspec.json.decode((DIGITS / "models" / "profile.json").read_bytes(), type=Profile)


def digits_handler() -> type:
    """The Digits class of examples/digits-safetensors/app.py, imported once."""
    return load_handler("digits-safetensors", "Digits")


def digits_settings(**model: dict[str, Any]) -> Settings:
    """The example's settings, rate limits off, audit log fresh; ``model`` replaces sub-tables.

    ``digits_settings(guard={"mode": "refuse"})`` changes ``[model.guard] mode`` only.
    """
    settings = load_settings(project_dir=DIGITS)
    audit = Path(tempfile.mkdtemp(prefix="ss-audit-")) / "audit.jsonl"
    tables = {
        name: msgspec.structs.replace(getattr(settings.model, name), **values)
        for name, values in model.items()
    }
    settings = replaced(
        settings,
        audit={"path": audit},
        limits={"per_principal": None, "quota": None, "auth_failures_per_ip": None},
    )
    return msgspec.structs.replace(
        settings, model=msgspec.structs.replace(settings.model, **tables)
    )


def digits_app(settings: Settings, *keys: ApiKey) -> Any:
    return build_app(digits_handler(), settings, *keys)


def instances(rows: npt.NDArray[np.float64]) -> dict[str, Any]:
    """A predict body for ``rows`` (pixels clipped to the schema's 0..16)."""
    return {"instances": [{"pixels": np.clip(row, 0, 16).tolist()} for row in rows]}


def shifted(rows: npt.NDArray[np.float64], feature: int, by: float) -> npt.NDArray[np.float64]:
    out = rows.copy()
    out[:, feature] += by
    return out


def audit_lines(settings: Settings) -> list[dict[str, Any]]:
    path = settings.audit.path
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]
