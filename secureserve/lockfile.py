"""``secureserve.lock``: the sha256 and size of every file under the model folder.

The lock is canonical JSON (sorted keys, two-space indent, LF, a final newline;
POSIX paths relative to ``[model] dir``), so the same folder always gives the same
bytes and a detached signature (``secureserve.lock.sig``) covers them exactly::

    {
      "files": {
        "iris.onnx": {"format": "onnx", "sha256": "975a...", "size": 324}
      },
      "format": "secureserve-lock/v1"
    }

When serving, every file a handler opens must be listed with a matching size
(checked before reading) and sha256 (computed over the very bytes that are then
parsed); see ``Artifacts``. Reading the lock is strict: unknown fields, duplicate
keys, bad hashes and unsafe paths are refused.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Final

import msgspec

from secureserve.atomic import write_atomically
from secureserve.errors import ArtifactError, ConfigError
from secureserve.secretfiles import read_regular
from secureserve.strict_json import find_duplicate_key

__all__ = [
    "LOCK_FILENAME",
    "LOCK_FORMAT",
    "MISSING_LOCK",
    "SIGNATURE_FILENAME",
    "Lock",
    "LockEntry",
    "build_lock",
    "encode_lock",
    "parse_lock",
    "read_lock",
    "write_lock",
]

LOCK_FILENAME: Final = "secureserve.lock"
SIGNATURE_FILENAME: Final = "secureserve.lock.sig"
LOCK_FORMAT: Final = "secureserve-lock/v1"
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_MAX_LOCK_BYTES: Final = 16 * 1024 * 1024


class LockEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one file must be: its exact size and sha256, and the format it was seen as."""

    sha256: str
    size: Annotated[int, msgspec.Meta(ge=0)]
    format: str


class Lock(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole lock file."""

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


_encoder: Final = msgspec.json.Encoder(order="sorted")
_decoder: Final = msgspec.json.Decoder(Lock)


def encode_lock(lock: Lock) -> bytes:
    """The canonical bytes of ``lock``."""
    return msgspec.json.format(_encoder.encode(lock), indent=2) + b"\n"


def build_lock(records: dict[str, LockEntry]) -> bytes:
    """Canonical lock bytes for these entries (names are POSIX paths in the model folder)."""
    for name in records:
        _check_name(name)
    return encode_lock(Lock(format=LOCK_FORMAT, files=dict(sorted(records.items()))))


def write_lock(path: Path, data: bytes) -> None:
    """Atomically replace the lock file (temp file in the same folder, then rename)."""
    write_atomically(path, data)


def read_lock(path: Path) -> tuple[Lock, bytes]:
    """Parse the lock strictly; return it with the exact bytes read (for the signature check)."""
    try:
        # One byte over the limit still reaches parse_lock, which names the problem.
        data = read_regular(path, max_bytes=_MAX_LOCK_BYTES + 1, source=str(path))
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist: run `secureserve lock` to record the model files "
            "(every file a model opens must be listed with its sha256)."
        ) from None
    return parse_lock(data, source=str(path)), data


def parse_lock(data: bytes, *, source: str = LOCK_FILENAME) -> Lock:
    """Decode and validate lock bytes; any problem is a ``ConfigError`` naming ``source``."""
    problem = None
    if len(data) > _MAX_LOCK_BYTES:
        problem = f"is larger than {_MAX_LOCK_BYTES} bytes"
    else:
        try:
            lock = _decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            problem = f"is not a valid lock file ({exc})"
        else:
            if find_duplicate_key(data):
                problem = "repeats a key"
            elif lock.format != LOCK_FORMAT:
                problem = f"has format {lock.format!r}, expected {LOCK_FORMAT!r}"
            else:
                problem = _entries_problem(lock)
    if problem is not None:
        raise ConfigError(f"{source} {problem}; regenerate it with `secureserve lock`.")
    return lock


def _entries_problem(lock: Lock) -> str | None:
    for name, entry in lock.files.items():
        try:
            _check_name(name)
        except ArtifactError:
            return f"lists an unsafe path {name!r}"
        if not _SHA256.fullmatch(entry.sha256):
            return f"has a malformed sha256 for {name!r}"
    return None


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or path.is_absolute()
        or ".." in path.parts
        or path.as_posix() != name
    ):
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
