"""``secureserve.lock``: the sha256 and size of every file under the model folders.

The lock is canonical JSON (sorted keys, two-space indent, LF, a final newline;
POSIX paths), so the same folders always give the same bytes and a detached
signature (``secureserve.lock.sig``) covers them exactly. A project with one model
(``[model]``) has a ``secureserve-lock/v1`` lock, its names relative to ``[model] dir``::

    {
      "files": {
        "iris.onnx": {"format": "onnx", "sha256": "975a...", "size": 324}
      },
      "format": "secureserve-lock/v1"
    }

A project with several models (``[models.<name>]``) has one ``secureserve-lock/v2``
lock with one section per model folder, keyed by the folder's POSIX path relative to
the project folder, each section holding ``files`` exactly as v1 does (two models
that share a folder share its section)::

    {
      "folders": {
        "models/digits": {"files": {"digits.safetensors": {...}}},
        "models/iris": {"files": {"iris.onnx": {...}, "labels.json": {...}}}
      },
      "format": "secureserve-lock/v2"
    }

When serving, every file a handler opens must be listed in its folder's ``Lock`` with
a matching size (checked before reading) and sha256 (computed over the very bytes that
are then parsed); see ``Artifacts``. Reading the lock is strict: unknown fields,
duplicate keys, bad hashes and unsafe paths (file names and section names) are refused.

``parse_lock`` and ``read_lock`` read a v1 lock only; ``parse_lock_file`` and
``read_lock_file`` read either, ``check_layout`` refuses the wrong one for the
settings, and ``folder_lock`` gives the ``Lock`` of one folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Final, NoReturn, TypeVar

import msgspec

from secureserve.atomic import write_atomically
from secureserve.errors import ArtifactError, ConfigError
from secureserve.secretfiles import read_regular
from secureserve.strict_json import find_duplicate_key

__all__ = [
    "FOLDERS_LOCK_FORMAT",
    "LOCK_FILENAME",
    "LOCK_FORMAT",
    "MISSING_LOCK",
    "SIGNATURE_FILENAME",
    "FoldersLock",
    "Lock",
    "LockEntry",
    "LockedFolder",
    "build_folders_lock",
    "build_lock",
    "check_layout",
    "encode_lock",
    "folder_lock",
    "parse_lock",
    "parse_lock_file",
    "read_lock",
    "read_lock_file",
    "write_lock",
]

LOCK_FILENAME: Final = "secureserve.lock"
SIGNATURE_FILENAME: Final = "secureserve.lock.sig"
#: One model: ``files`` relative to ``[model] dir``.
LOCK_FORMAT: Final = "secureserve-lock/v1"
#: Several models: ``folders``, one section per model folder (relative to the project).
FOLDERS_LOCK_FORMAT: Final = "secureserve-lock/v2"
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_MAX_LOCK_BYTES: Final = 16 * 1024 * 1024
_FIX: Final = "regenerate it with `secureserve lock`"


class LockEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one file must be: its exact size and sha256, and the format it was seen as."""

    sha256: str
    size: Annotated[int, msgspec.Meta(ge=0)]
    format: str


class Lock(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The files of one model folder: a whole v1 lock, or one section of a v2 lock."""

    format: str
    files: dict[str, LockEntry]

    def check(self, name: str, *, size: int, sha256: str | None = None) -> None:
        """Refuse ``name`` unless it is listed with this size (and sha256, once known)."""
        entry = self.files.get(name)
        if entry is None:
            raise ArtifactError(
                name,
                "not-locked",
                f"is not listed in {LOCK_FILENAME}; after adding or changing model files run "
                "`secureserve lock` (and `secureserve sign`) in a trusted environment",
            )
        if entry.size != size or (sha256 is not None and entry.sha256 != sha256):
            what = f"size {size}" if entry.size != size else f"sha256 {sha256}"
            expected = entry.size if entry.size != size else entry.sha256
            raise ArtifactError(
                name,
                "lock-mismatch",
                f"does not match {LOCK_FILENAME} ({what}, expected {expected}): the file changed "
                "after the lock was written. Restore the released file, or re-lock and re-sign "
                "if the change is intended",
            )


class LockedFolder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One section of a v2 lock: the files of one model folder, as v1 lists them."""

    files: dict[str, LockEntry]


class FoldersLock(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole v2 lock: one section per model folder, by its path in the project."""

    format: str
    folders: dict[str, LockedFolder]


class _Header(msgspec.Struct, frozen=True):
    """The one field that says how to read the rest (other fields are left for later)."""

    format: str


_encoder: Final = msgspec.json.Encoder(order="sorted")
_decoder: Final = msgspec.json.Decoder(Lock)
_folders_decoder: Final = msgspec.json.Decoder(FoldersLock)
_header_decoder: Final = msgspec.json.Decoder(_Header)
_Document = TypeVar("_Document", Lock, FoldersLock)


def encode_lock(lock: Lock | FoldersLock) -> bytes:
    """The canonical bytes of ``lock``."""
    return msgspec.json.format(_encoder.encode(lock), indent=2) + b"\n"


def build_lock(records: dict[str, LockEntry]) -> bytes:
    """Canonical v1 lock bytes for these entries (names are POSIX paths in the model folder)."""
    for name in records:
        _check_name(name)
    return encode_lock(Lock(format=LOCK_FORMAT, files=dict(sorted(records.items()))))


def build_folders_lock(folders: Mapping[str, Mapping[str, LockEntry]]) -> bytes:
    """Canonical v2 lock bytes: the entries of each model folder, by the folder's path.

    Folder keys are POSIX paths relative to the project folder (``models/iris``); file
    names are relative to their folder, as in v1.
    """
    sections: dict[str, LockedFolder] = {}
    for folder, records in sorted(folders.items()):
        if _unsafe_folder(folder):
            raise ConfigError(
                f"model folder {folder!r} cannot name a section of {LOCK_FILENAME}: it must "
                "be a relative POSIX path inside the project folder, such as models/iris."
            )
        for name in records:
            _check_name(name)
        sections[folder] = LockedFolder(files=dict(sorted(records.items())))
    return encode_lock(FoldersLock(format=FOLDERS_LOCK_FORMAT, folders=sections))


def write_lock(path: Path, data: bytes) -> None:
    """Atomically replace the lock file (temp file in the same folder, then rename)."""
    write_atomically(path, data)


def read_lock(path: Path) -> tuple[Lock, bytes]:
    """Parse a v1 lock strictly; return it with the exact bytes read (for the signature)."""
    data = _read(path)
    return parse_lock(data, source=str(path)), data


def read_lock_file(path: Path) -> tuple[Lock | FoldersLock, bytes]:
    """Parse a v1 or v2 lock strictly; return it with the exact bytes read."""
    data = _read(path)
    return parse_lock_file(data, source=str(path)), data


def _read(path: Path) -> bytes:
    try:
        # One byte over the limit still reaches the parser, which names the problem.
        return read_regular(path, max_bytes=_MAX_LOCK_BYTES + 1, source=str(path))
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist: run `secureserve lock` to record the model files "
            "(every file a model opens must be listed with its sha256)."
        ) from None


def parse_lock(data: bytes, *, source: str = LOCK_FILENAME) -> Lock:
    """Decode and validate v1 lock bytes; any problem is a ``ConfigError`` naming ``source``."""
    lock = _decode(data, _decoder, LOCK_FORMAT, source)
    problem = _files_problem(lock.files)
    if problem is not None:
        _fail(source, problem)
    return lock


def parse_lock_file(data: bytes, *, source: str = LOCK_FILENAME) -> Lock | FoldersLock:
    """Decode and validate a v1 or v2 lock, told apart by its ``format``.

    Any problem is a ``ConfigError`` naming ``source``: every v1 rule holds in each
    section of a v2 lock, and section names must be safe relative POSIX paths too.
    """
    if len(data) > _MAX_LOCK_BYTES:
        _fail(source, f"is larger than {_MAX_LOCK_BYTES} bytes")
    try:
        header = _header_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        _fail(source, f"is not a valid lock file ({exc})")
    if header.format == LOCK_FORMAT:
        return parse_lock(data, source=source)
    if header.format != FOLDERS_LOCK_FORMAT:
        _fail(
            source,
            f"has format {header.format!r}, expected {LOCK_FORMAT!r} (one model) or "
            f"{FOLDERS_LOCK_FORMAT!r} (several models)",
        )
    lock = _decode(data, _folders_decoder, FOLDERS_LOCK_FORMAT, source)
    for folder, section in lock.folders.items():
        if _unsafe_folder(folder):
            _fail(source, f"has a section for an unsafe path {folder!r}")
        problem = _files_problem(section.files)
        if problem is not None:
            _fail(source, f"{problem} in section {folder!r}")
    return lock


def check_layout(lock: Lock | FoldersLock, *, several: bool, source: str) -> None:
    """Refuse a lock of the other layout: v1 for one model, v2 for ``several``."""
    if several and isinstance(lock, Lock):
        raise ConfigError(
            f"{source} is the lock of a single model folder ({LOCK_FORMAT}), but the settings "
            "serve [models.<name>] tables: run `secureserve lock` (and `secureserve sign`) "
            "to write one section per model folder."
        )
    if not several and isinstance(lock, FoldersLock):
        raise ConfigError(
            f"{source} lists several model folders ({FOLDERS_LOCK_FORMAT}), but the settings "
            "serve one model with [model]: run `secureserve lock` (and `secureserve sign`) "
            "again for this layout."
        )


def folder_lock(lock: Lock | FoldersLock, folder: str | None, *, source: str, owner: str) -> Lock:
    """The ``Lock`` of one model folder (what ``Artifacts`` checks files against).

    ``folder`` is the folder's section in a v2 lock, or None for a project of one model
    (whose lock must then be v1); ``owner`` names the settings that use the folder
    (``[models.iris] dir``) in messages. A lock of the other layout, or without a
    section for the folder, is a ``ConfigError`` saying to run ``secureserve lock``.
    """
    check_layout(lock, several=folder is not None, source=source)
    if isinstance(lock, Lock):
        return lock
    section = lock.folders.get(folder) if folder is not None else None
    if section is None:
        raise ConfigError(
            f"{source} has no section for the model folder {folder} ({owner}): run "
            "`secureserve lock` (and `secureserve sign`) after adding or moving a model."
        )
    return Lock(format=FOLDERS_LOCK_FORMAT, files=section.files)


def _decode(
    data: bytes, decoder: msgspec.json.Decoder[_Document], fmt: str, source: str
) -> _Document:
    """Decode one layout strictly: size, syntax and types, no repeated key, its format."""
    if len(data) > _MAX_LOCK_BYTES:
        _fail(source, f"is larger than {_MAX_LOCK_BYTES} bytes")
    try:
        lock = decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        _fail(source, f"is not a valid lock file ({exc})")
    if find_duplicate_key(data):
        _fail(source, "repeats a key")
    if lock.format != fmt:
        _fail(source, f"has format {lock.format!r}, expected {fmt!r}")
    return lock


def _fail(source: str, problem: str) -> NoReturn:
    """Refuse the lock: a ``ConfigError`` naming ``source``, the problem and the fix."""
    raise ConfigError(f"{source} {problem}; {_FIX}.")


def _files_problem(files: Mapping[str, LockEntry]) -> str | None:
    for name, entry in files.items():
        if _unsafe(name):
            return f"lists an unsafe path {name!r}"
        if not _SHA256.fullmatch(entry.sha256):
            return f"has a malformed sha256 for {name!r}"
    return None


def _unsafe(name: str) -> bool:
    """Whether ``name`` is not a clean relative POSIX path (no ``..``, backslash, NUL, ``//``)."""
    path = PurePosixPath(name)
    return (
        not name
        or "\x00" in name
        or "\\" in name
        or path.is_absolute()
        or ".." in path.parts
        or path.as_posix() != name
    )


def _unsafe_folder(folder: str) -> bool:
    """A section name must be a clean relative path below the project folder (not itself)."""
    return _unsafe(folder) or folder == "."


def _check_name(name: str) -> None:
    if _unsafe(name):
        raise ArtifactError(
            name, "name-invalid", "is not a relative POSIX path in the model folder"
        )


class _MissingLock(Lock, frozen=True):
    """Stands in when there is no lock file: every artifact is refused, with the fix."""

    def check(self, name: str, *, size: int, sha256: str | None = None) -> None:  # noqa: ARG002
        """Refuse: nothing is verified without a lock."""
        raise ArtifactError(
            name,
            "no-lock",
            f"cannot be verified: there is no {LOCK_FILENAME} beside secureserve.toml. Run "
            "`secureserve lock` (and `secureserve sign`) where the model files are released",
        )


#: The lock used when the project has none: refuses every artifact with the fix.
MISSING_LOCK: Final[Lock] = _MissingLock(format=LOCK_FORMAT, files={})
