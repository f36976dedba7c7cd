"""Release steps for model files: lock the folders, verify them against the lock.

These are the library functions behind ``secureserve lock`` and ``secureserve
verify``; a release pipeline runs ``lock``, then ``sign`` (``secureserve.signing``),
in a trusted environment, and the server checks both at every start and reload
(``verified_lock``). A project of one model (``[model]``) has a v1 lock of its one
folder; a project of several (``[models.<name>]``) has one v2 lock with a section per
model folder, named by the folder's path in the project (see ``secureserve.lockfile``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from secureserve.artifacts import Artifacts
from secureserve.config import Settings
from secureserve.errors import ArtifactError, ConfigError
from secureserve.formats import NEVER_LOADED, Format
from secureserve.lockfile import (
    LOCK_FILENAME,
    MISSING_LOCK,
    SIGNATURE_FILENAME,
    FoldersLock,
    Lock,
    LockEntry,
    build_folders_lock,
    build_lock,
    check_layout,
    encode_lock,
    folder_lock,
    read_lock_file,
    write_lock,
)
from secureserve.settings import ModelSettings
from secureserve.signing import read_signature, verify

__all__ = [
    "FolderReport",
    "LockReport",
    "ModelFolder",
    "VerifyReport",
    "lock_project",
    "lock_section",
    "model_files",
    "model_folders",
    "revision_of",
    "signing_public_key",
    "unlisted_files",
    "verified_lock",
    "verify_project",
]


@dataclass(frozen=True)
class ModelFolder:
    """One model folder the lock covers, and the settings tables that serve from it."""

    section: str | None  # its section in a v2 lock; None: the one folder of a v1 lock
    path: Path
    tables: tuple[str, ...]  # "[model]", or each "[models.<name>]" whose dir it is
    max_file_bytes: int  # the largest max_artifact_bytes of those tables

    @property
    def owner(self) -> str:
        """The settings that name this folder, for messages: ``[models.iris] dir``."""
        return f"{', '.join(self.tables)} dir"

    def name(self, file: str) -> str:
        """``file`` (relative to the folder) as a report shows it: in the project with v2."""
        return file if self.section is None else f"{self.section}/{file}"


@dataclass(frozen=True)
class LockReport:
    """What ``lock_project`` wrote: the entries of each folder, by its section."""

    path: Path
    folders: dict[str | None, dict[str, LockEntry]]  # None: the one folder of a v1 lock
    stale_signature: Path | None

    @property
    def files(self) -> dict[str, LockEntry]:
        """Every locked file, named as in ``ModelFolder.name`` (with v2: ``models/iris/x``)."""
        return {
            (name if section is None else f"{section}/{name}"): entry
            for section, entries in self.folders.items()
            for name, entry in entries.items()
        }


@dataclass
class FolderReport:
    """What ``verify_project`` found in one model folder."""

    folder: ModelFolder
    checked: int = 0  # listed files that match
    unlisted: list[str] = field(default_factory=list)  # present, not listed (folder names)


@dataclass
class VerifyReport:
    """What ``verify_project`` found; ``ok`` when there are no problems and no unlisted files.

    ``problems`` holds the lock's (signature, layout, a missing section) and every
    folder's, each file named as in ``ModelFolder.name``; ``unlisted`` the files present
    in a model folder that the lock does not list (no model can open them, but they are
    not the release either); ``unused`` lists the sections of a v2 lock that no served
    model reads (harmless; the next lock drops them).
    """

    key_id: str | None = None
    problems: list[str] = field(default_factory=list)
    folders: list[FolderReport] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the signature (if checked) and every listed file match, none unlisted."""
        return not self.problems and not any(folder.unlisted for folder in self.folders)

    @property
    def checked(self) -> int:
        """How many listed files match, in every folder."""
        return sum(folder.checked for folder in self.folders)

    @property
    def unlisted(self) -> list[str]:
        """Files present but not listed (so never loaded), in every folder."""
        return [f.folder.name(name) for f in self.folders for name in f.unlisted]


def model_files(model_dir: Path, *, owner: str = "[model] dir") -> list[str]:
    """Every file under the model folder, as sorted POSIX names relative to it."""
    if not model_dir.is_dir():
        raise ConfigError(f"model folder {model_dir} does not exist; check {owner}.")
    names: list[str] = []
    for root, dirs, files in os.walk(model_dir):
        dirs.sort()
        base = Path(root).relative_to(model_dir)
        names.extend((base / name).as_posix() for name in files)
    return sorted(names)


def unlisted_files(model_dir: Path, lock: Lock) -> list[str]:
    """The files under ``model_dir`` that ``lock`` does not list, sorted (none: no folder).

    The folder is walked as ``lock_project`` walks it (``model_files``: every file,
    hidden ones included), so a folder that was just locked has none.
    """
    if not model_dir.is_dir():
        return []
    listed = lock.files
    return [name for name in model_files(model_dir) if name not in listed]


def lock_section(settings: Settings, model: ModelSettings) -> str | None:
    """The lock section of ``model``'s folder: its POSIX path in the project folder.

    None for a project of one model (``[model]``, a v1 lock without sections). With
    several models a folder outside the project folder cannot be named and is a
    ``ConfigError``.
    """
    if not settings.models:
        return None
    project = settings.project_dir
    for candidate in (Path(os.path.normpath(model.dir)), model.dir.resolve()):
        if candidate != project and candidate.is_relative_to(project):
            return candidate.relative_to(project).as_posix()
    raise ConfigError(
        f"{_tables_of(settings, model)} dir {model.dir} is not inside the project folder "
        f"{project}: with several models, {LOCK_FILENAME} names each model folder by its "
        "path in the project folder. Move the folder under the project (such as "
        "models/<name>) and point dir at it."
    )


def model_folders(settings: Settings) -> list[ModelFolder]:
    """Each model folder of the served models, once, sorted by section.

    Served models that share a folder share its entry (and its lock section).
    """
    found: dict[str | None, ModelFolder] = {}
    for name, model in settings.served().items():
        section = lock_section(settings, model)
        known = found.get(section)
        if known is None:
            found[section] = ModelFolder(
                section, model.dir, (settings.table(name),), model.max_artifact_bytes
            )
        else:
            found[section] = ModelFolder(
                section,
                known.path,
                (*known.tables, settings.table(name)),
                max(known.max_file_bytes, model.max_artifact_bytes),
            )
    return [found[key] for key in sorted(found, key=lambda key: key or "")]


def signing_public_key(settings: Settings) -> Path | None:
    """The key the lock's signature is checked with (every model has the same one)."""
    return next(iter(settings.served().values())).signing_public_key


def lock_project(settings: Settings) -> LockReport:
    """Hash every file under each model folder and write ``secureserve.lock`` beside the config.

    One model: a v1 lock of ``[model] dir``. Several: a v2 lock with a section per
    folder. A folder holding a format secureserve never loads (pickle, ...) stops it,
    naming every such file, and leaves the existing lock as it was.
    """
    folders: dict[str | None, dict[str, LockEntry]] = {}
    refused: list[str] = []
    for folder in model_folders(settings):
        artifacts = Artifacts(folder.path, max_file_bytes=folder.max_file_bytes)
        entries: dict[str, LockEntry] = {}
        for name in model_files(folder.path, owner=folder.owner):
            record = artifacts.inspect(name)
            if Format(record.format) in NEVER_LOADED:
                refused.append(f"{folder.name(name)} ({Format(record.format).description})")
            entries[record.name] = LockEntry(
                sha256=record.sha256, size=record.size, format=record.format
            )
        folders[folder.section] = entries
    if refused:
        where = settings.model.dir if not settings.models else "the model folders"
        raise ConfigError(
            f"{where} holds files secureserve will never load: {', '.join(refused)}. "
            "Remove them, or convert them to safetensors or ONNX in a trusted environment, "
            "then lock again."
        )
    if settings.models:
        data = build_folders_lock({key: value for key, value in folders.items() if key is not None})
    else:
        data = build_lock(folders[None])
    path = settings.project_dir / LOCK_FILENAME
    write_lock(path, data)
    signature = path.with_name(SIGNATURE_FILENAME)
    return LockReport(path, folders, signature if signature.exists() else None)


def verify_project(settings: Settings, public_key: Path | None) -> VerifyReport:
    """Check the lock's signature (when a key is given) and every listed file's hash.

    Every served model folder is checked against its section; a folder without one is
    a problem naming it. A missing or unreadable lock, or one of the other layout, is a
    ``ConfigError``.
    """
    path = settings.project_dir / LOCK_FILENAME
    lock_file, data = read_lock_file(path)
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
    check_layout(lock_file, several=bool(settings.models), source=str(path))
    folders = model_folders(settings)
    for folder in folders:
        try:
            lock = folder_lock(lock_file, folder.section, source=str(path), owner=folder.owner)
        except ConfigError as exc:  # no section for this folder
            report.problems.append(str(exc))
            continue
        report.folders.append(_verify_folder(folder, lock, report.problems))
    if isinstance(lock_file, FoldersLock):
        served = {folder.section for folder in folders}
        report.unused = sorted(set(lock_file.folders) - served)
    return report


def _verify_folder(folder: ModelFolder, lock: Lock, problems: list[str]) -> FolderReport:
    """Check each file ``lock`` lists in ``folder``; add what fails to ``problems``."""
    result = FolderReport(folder)
    artifacts = Artifacts(folder.path, max_file_bytes=folder.max_file_bytes, lock=lock)
    for name in sorted(lock.files):
        try:
            artifacts.inspect(name)
        except ArtifactError as exc:  # its message starts with the name: prefix the folder
            problems.append(str(exc) if folder.section is None else f"{folder.section}/{exc}")
        else:
            result.checked += 1
    result.unlisted = unlisted_files(folder.path, lock)
    return result


def verified_lock(settings: Settings, model: ModelSettings) -> tuple[Lock, str | None]:
    """The lock of ``model``'s folder, its signature verified when a signing key is set.

    The signature is checked over the exact bytes that are then parsed. Without a lock
    file every artifact is refused (``MISSING_LOCK``), unless ``signing_public_key`` is
    set, in which case the missing lock is an error right away; so is a lock of the
    other layout, or one with no section for the folder. Also returns the sha256 of the
    whole lock file's bytes (None without a lock).
    """
    path = settings.project_dir / LOCK_FILENAME
    public_key = model.signing_public_key
    if not path.exists() and public_key is None:
        return MISSING_LOCK, None
    lock_file, data = read_lock_file(path)
    tables = _tables_of(settings, model)
    if public_key is not None:
        signature_path = path.with_name(SIGNATURE_FILENAME)
        try:
            signature = read_signature(signature_path)
        except FileNotFoundError:
            raise ConfigError(
                f"{signature_path} does not exist, but {tables} signing_public_key requires a "
                "signed lock: run `secureserve sign --private-key KEY` where the model is "
                "released."
            ) from None
        verify(data, signature, public_key)
    section = lock_section(settings, model)
    lock = folder_lock(lock_file, section, source=str(path), owner=f"{tables} dir")
    return lock, hashlib.sha256(data).hexdigest()


def _tables_of(settings: Settings, model: ModelSettings) -> str:
    """The tables that serve from ``model``'s folder, for messages."""
    if not settings.models:
        return "[model]"
    names = [name for name, other in settings.models.items() if other.dir == model.dir]
    return ", ".join(map(settings.table, names)) or "[models.<name>]"


def revision_of(lock: Lock, lock_sha256: str | None) -> str:
    """Which release of a model's files serves: 12 hex digits of its section's sha256.

    The section is the model's own folder (its canonical v1 encoding), so re-locking
    for one model of several changes that model's revision alone; with one model it is
    the lock file's own sha256. ``"unlocked"`` without a lock.
    """
    if lock_sha256 is None:
        return "unlocked"
    return hashlib.sha256(encode_lock(lock)).hexdigest()[:12]
