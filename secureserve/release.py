"""Release steps for model files: lock the folder, verify a folder against its lock.

These are the library functions behind ``secureserve lock`` and ``secureserve
verify``; a release pipeline runs ``lock``, then ``sign`` (``secureserve.signing``),
in a trusted environment, and the server checks both at every start and reload.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from secureserve.artifacts import Artifacts
from secureserve.config import Settings
from secureserve.errors import ArtifactError, ConfigError
from secureserve.formats import Format
from secureserve.lockfile import (
    LOCK_FILENAME,
    SIGNATURE_FILENAME,
    LockEntry,
    build_lock,
    read_lock,
    write_lock,
)
from secureserve.signing import read_signature, verify

__all__ = ["LockReport", "VerifyReport", "lock_project", "verify_project"]

#: Formats that are never loaded: locking them would only dress them up as released.
_NEVER_LOADED: Final = frozenset(
    {
        Format.PICKLE,
        Format.TORCH_ZIP,
        Format.TORCH_LEGACY,
        Format.JOBLIB,
        Format.NUMPY,
        Format.NUMPY_ZIP,
        Format.HDF5,
        Format.KERAS,
    }
)


@dataclass(frozen=True)
class LockReport:
    """What ``lock_project`` wrote."""

    path: Path
    files: dict[str, LockEntry]
    stale_signature: Path | None


@dataclass
class VerifyReport:
    """What ``verify_project`` found; ``ok`` when there are no problems."""

    key_id: str | None = None
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the signature (if checked) and every listed file match."""
        return not self.problems


def model_files(model_dir: Path) -> list[str]:
    """Every file under the model folder, as sorted POSIX names relative to it."""
    if not model_dir.is_dir():
        raise ConfigError(f"model folder {model_dir} does not exist; check [model] dir.")
    names: list[str] = []
    for root, dirs, files in os.walk(model_dir):
        dirs.sort()
        base = Path(root).relative_to(model_dir)
        names.extend((base / name).as_posix() for name in files)
    return sorted(names)


def lock_project(settings: Settings) -> LockReport:
    """Hash every file under ``[model] dir`` and write ``secureserve.lock`` beside the config."""
    model_dir = settings.model.dir
    artifacts = Artifacts(model_dir, max_file_bytes=settings.model.max_artifact_bytes)
    entries: dict[str, LockEntry] = {}
    refused: list[str] = []
    for name in model_files(model_dir):
        record = artifacts.inspect(name)
        if Format(record.format) in _NEVER_LOADED:
            refused.append(f"{name} ({Format(record.format).description})")
        entries[record.name] = LockEntry(
            sha256=record.sha256, size=record.size, format=record.format
        )
    if refused:
        raise ConfigError(
            f"{model_dir} holds files secureserve will never load: {', '.join(refused)}. "
            "Remove them, or convert them to safetensors or ONNX in a trusted environment, "
            "then lock again."
        )
    path = settings.project_dir / LOCK_FILENAME
    write_lock(path, build_lock(entries))
    signature = path.with_name(SIGNATURE_FILENAME)
    return LockReport(path, entries, signature if signature.exists() else None)


def verify_project(settings: Settings, public_key: Path | None) -> VerifyReport:
    """Check the lock's signature (when a key is given) and every listed file's hash."""
    path = settings.project_dir / LOCK_FILENAME
    lock, data = read_lock(path)
    report = VerifyReport()
    if public_key is not None:
        try:
            signature = read_signature(path.with_name(SIGNATURE_FILENAME))
        except FileNotFoundError:
            report.problems.append(f"{SIGNATURE_FILENAME} does not exist: the lock is unsigned")
        else:
            try:
                report.key_id = verify(data, signature, public_key)
            except ArtifactError as exc:
                report.problems.append(str(exc))
    artifacts = Artifacts(
        settings.model.dir, max_file_bytes=settings.model.max_artifact_bytes, lock=lock
    )
    for name in sorted(lock.files):
        try:
            artifacts.inspect(name)
        except ArtifactError as exc:
            report.problems.append(str(exc))
        else:
            report.checked += 1
    present = set(model_files(settings.model.dir)) if settings.model.dir.is_dir() else set()
    report.unlisted = sorted(present - set(lock.files))
    return report
