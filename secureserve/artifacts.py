"""``Artifacts``: the only way a model handler reaches its files.

Every file is opened inside the model folder without following a symlink out of it,
read once into memory, hashed (sha256 over those exact bytes, recorded in
:attr:`Artifacts.opened`), sniffed by content and parsed from the same bytes: there is
no check-then-reopen. Weights come as safetensors (a dict of numpy arrays) or ONNX (a
hardened ``onnxruntime.InferenceSession``); nothing is ever unpickled.

Every refusal is an :class:`~secureserve.errors.ArtifactError` naming the file, with a
reason code (``"pickle"``, ``"path-escape"``, ``"onnx-custom-domain"``, ...) and a
message that says what to do.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import msgspec
import onnxruntime
import safetensors.numpy
from onnx import ModelProto

from secureserve.encryption import KEY_ENV, decrypt
from secureserve.errors import ArtifactError
from secureserve.formats import (
    NEVER_LOADED,
    Format,
    FormatError,
    detect_format,
    numpy_has_objects,
    validate_safetensors_header,
)
from secureserve.lockfile import Lock
from secureserve.onnx_checks import (
    STANDARD_ONNX_DOMAINS,
    check_model,
    inline_external_data,
    session_options,
)
from secureserve.providers import CPU

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np

__all__ = ["STANDARD_ONNX_DOMAINS", "ArtifactRecord", "Artifacts"]

#: Cap on ``json()`` and ``text()`` files: they are metadata, not weights.
MAX_METADATA_BYTES = 16 * 1024 * 1024

ENCRYPTED_SUFFIX = ".enc"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY

_CONVERT_PICKLE = (
    "pickles can run code when loaded and secureserve never unpickles. Convert it in a "
    "trusted environment with safetensors.torch.save_file(model.state_dict(), ...) "
    "(or export the model to ONNX)"
)
_FIXES: dict[Format, str] = {
    Format.PICKLE: _CONVERT_PICKLE,
    Format.TORCH_ZIP: "PyTorch's loader unpickles its data.pkl and can run code; secureserve never "
    "unpickles. In a trusted environment load it and save the weights with "
    "safetensors.torch.save_file(model.state_dict(), 'model.safetensors') (or export to ONNX)",
    Format.TORCH_LEGACY: _CONVERT_PICKLE,
    Format.JOBLIB: "joblib files are pickles and can run code when loaded; secureserve never "
    "unpickles. Export the estimator to ONNX (skl2onnx) or save its arrays with "
    "safetensors.numpy.save_file(...) in a trusted environment",
    Format.NUMPY: "secureserve does not load .npy files (object arrays are pickles). Save the "
    "arrays with safetensors.numpy.save_file({'name': array}, 'model.safetensors')",
    Format.NUMPY_ZIP: "secureserve does not load .npz archives (object arrays are pickles). Save "
    "the arrays with safetensors.numpy.save_file(dict(npz), 'model.safetensors')",
    Format.HDF5: "secureserve does not load HDF5/Keras files (Lambda layers can run code). "
    "Export the model to ONNX (tf2onnx) or save its weights as safetensors",
    Format.KERAS: "secureserve does not load Keras archives (Lambda layers can run code). "
    "Export the model to ONNX (tf2onnx) or save its weights as safetensors",
    Format.ZIP: "secureserve does not open archives; store safetensors or ONNX files directly",
    Format.GGUF: "secureserve serves safetensors and ONNX only; convert the weights to safetensors",
    Format.COMPRESSED: "decompress it; if it holds a pickle or joblib dump, convert it to "
    "safetensors or ONNX in a trusted environment",
    Format.ENCRYPTED: "name the plaintext artifact (e.g. 'model.onnx'): secureserve finds "
    "'model.onnx.enc' and decrypts it in memory",
    Format.EMPTY: "the file is empty; copy the real file again",
    Format.UNKNOWN: "store the weights as safetensors or ONNX",
    Format.SAFETENSORS: "load it with artifacts.safetensors(...)",
    Format.ONNX: "load it with artifacts.onnx(...)",
}


#: An unlisted file up to this size is sniffed whole, a larger one by this many first
#: bytes: enough for every signature but those of zip-based formats (their directory is at
#: the end) and of protocol 0/1 pickles (their last byte); those keep "not listed".
_SNIFF_BYTES: Final = 64 * 1024 * 1024


def _refuse_never_loaded(name: str, fd: int, size: int, unlisted: ArtifactError) -> None:
    """An unlisted file of a format never loaded: say that, not "run secureserve lock".

    The file is sniffed as every artifact is (signatures, a zip's member names), never
    unpickled or parsed; any other format returns, and the "not listed" refusal stands.
    """
    found = detect_format(os.pread(fd, min(size, _SNIFF_BYTES), 0))
    if found in NEVER_LOADED:
        raise ArtifactError(
            name,
            found.value,
            f"is {found.description}, which secureserve never loads (locking it would not "
            f"help); {_FIXES[found]}",
        ) from unlisted


@dataclass(frozen=True)
class ArtifactRecord:
    """One file read through :class:`Artifacts`: what was read, exactly."""

    name: str
    sha256: str
    size: int
    format: str


class Artifacts:
    """Read-only, hash-recording access to the files of one model folder.

    ``model_dir`` is resolved once; names are relative POSIX paths inside it.
    ``onnx_allowed_domains`` adds operator domains to the standard ones,
    ``max_file_bytes`` caps any single file and ``max_onnx_nodes`` the nodes of a graph
    (subgraphs and functions included).

    ``lock``: every file read must be listed in it with the same size (checked before
    reading) and sha256 (checked on the bytes that are then parsed). The server always
    passes one (``MISSING_LOCK`` when the project has none, which refuses every file);
    ``None`` records hashes without checking them, which is what ``secureserve lock``
    needs to write a lock in the first place.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        onnx_threads: int = 1,
        onnx_allowed_domains: Sequence[str] = (),
        max_file_bytes: int = 2 * 1024**3,
        max_onnx_nodes: int = 100_000,
        onnx_optimization: str = "all",
        onnx_providers: Sequence[str] = (CPU,),
        lock: Lock | None = None,
        decryption_key: bytes | None = None,
    ) -> None:
        self._root = Path(os.path.realpath(model_dir))
        self._onnx_threads = onnx_threads
        self._domains = STANDARD_ONNX_DOMAINS | frozenset(onnx_allowed_domains)
        self._max_file_bytes = max_file_bytes
        self._max_onnx_nodes = max_onnx_nodes
        self._opened: dict[str, ArtifactRecord] = {}
        self._lock = lock
        self._onnx_optimization = onnx_optimization
        self._onnx_providers = list(onnx_providers)
        self._session_providers: dict[str, tuple[str, ...]] = {}
        self._decryption_key = decryption_key

    @property
    def session_providers(self) -> Mapping[str, tuple[str, ...]]:
        """The execution providers of each ONNX session made, by file name."""
        return MappingProxyType(self._session_providers)

    @property
    def opened(self) -> Mapping[str, ArtifactRecord]:
        """Every file read so far (ONNX external-data files included), by canonical name."""
        return MappingProxyType(self._opened)

    # ------------------------------------------------------------------ loaders

    def safetensors(self, name: str) -> dict[str, np.ndarray]:
        """Load a safetensors file as a dict of numpy arrays (never a pickle)."""
        data, record = self._load(name)
        self._require(name, record, Format.SAFETENSORS, data)
        try:
            validate_safetensors_header(data)
        except FormatError as exc:
            raise ArtifactError(name, exc.reason, f"not a valid safetensors file: {exc}") from exc
        try:
            return safetensors.numpy.load(data)
        except Exception as exc:  # any library failure is a refusal
            raise ArtifactError(
                name, "safetensors-invalid", "the safetensors library refused the file"
            ) from exc

    def onnx(self, name: str) -> onnxruntime.InferenceSession:
        """Load an ONNX model into a hardened ``InferenceSession`` on the chosen providers."""
        data, record = self._load(name)
        self._require(name, record, Format.ONNX, data)
        try:
            model = ModelProto.FromString(data)
        except Exception as exc:  # protobuf errors vary by backend
            raise ArtifactError(name, "onnx-invalid", "the ONNX model could not be parsed") from exc
        check_model(name, model, allowed_domains=self._domains, max_nodes=self._max_onnx_nodes)
        inline_external_data(name, model, self._read_external)
        try:
            model_bytes = model.SerializeToString()
            # enable_fallback=0: no retry with other providers and no print() to stdout;
            # read_config_from_model=0: ignore ORT_LOAD_CONFIG_FROM_MODEL, so session
            # options never come from the (untrusted) model's metadata.
            session = onnxruntime.InferenceSession(
                model_bytes,
                session_options(self._onnx_threads, self._onnx_optimization),
                providers=self._onnx_providers,
                enable_fallback=0,
                read_config_from_model=0,
            )
        except Exception as exc:  # onnxruntime raises many unrelated types
            raise ArtifactError(
                name, "onnx-invalid", "onnxruntime refused the model (details in the cause)"
            ) from exc
        self._session_providers[name] = tuple(session.get_providers())
        return session

    def json(self, name: str) -> Any:
        """Decode a small JSON metadata file strictly (UTF-8, no NaN, no trailing data)."""
        data = self._read_metadata(name)
        try:
            return msgspec.json.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            # ValidationError: a number JSON allows but a float cannot hold, such as 1e400
            raise ArtifactError(name, "json-invalid", "not valid JSON") from exc

    def inspect(self, name: str) -> ArtifactRecord:
        """Read ``name`` through the same checks, record and return its hash; parse nothing."""
        _, record = self._read(name)
        return record

    def text(self, name: str) -> str:
        """Read a small UTF-8 text file."""
        data = self._read_metadata(name)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ArtifactError(name, "text-invalid", "not valid UTF-8 text") from exc

    # ------------------------------------------------------------------ the choke point

    def _read(self, name: str, *, limit: int | None = None) -> tuple[bytes, ArtifactRecord]:
        """Open ``name`` safely, read it once, hash it and record it."""
        relative = self._check_name(name)
        cap = self._max_file_bytes if limit is None else min(limit, self._max_file_bytes)
        fd = self._open(name, relative)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ArtifactError(name, "not-a-file", "is not a regular file")
            if info.st_size > cap:
                raise ArtifactError(
                    name, "too-large", f"is {info.st_size} bytes, over the {cap}-byte limit"
                )
            if self._lock is not None:  # a wrong size is refused before reading anything
                try:
                    self._lock.check(relative.as_posix(), size=info.st_size)
                except ArtifactError as exc:
                    if exc.reason == "not-locked":
                        _refuse_never_loaded(name, fd, info.st_size, exc)
                    raise
            with os.fdopen(fd, "rb", closefd=False) as stream:
                data = stream.read(info.st_size + 1)
        finally:
            os.close(fd)
        if len(data) != info.st_size:
            raise ArtifactError(name, "changed", "changed while it was being read; try again")
        canonical = relative.as_posix()
        sha256 = hashlib.sha256(data).hexdigest()
        if self._lock is not None:
            self._lock.check(canonical, size=len(data), sha256=sha256)
        record = ArtifactRecord(
            name=canonical,
            sha256=sha256,
            size=len(data),
            format=detect_format(data).value,
        )
        self._opened[canonical] = record
        return data, record

    def _check_name(self, name: str) -> PurePosixPath:
        problem = None
        if not name:
            problem = "is empty"
        elif "\x00" in name or "\\" in name:
            problem = "contains a NUL byte or a backslash"
        elif name.startswith("/"):
            problem = "is absolute"
        elif ".." in PurePosixPath(name).parts:
            problem = "contains a '..' component"
        if problem is None and PurePosixPath(name).parts in ((), (".",)):
            problem = "names the model folder itself"
        if problem is not None:
            raise ArtifactError(
                name,
                "name-invalid",
                f"artifact name {problem}; use a relative POSIX path inside the model folder",
            )
        return PurePosixPath(name)

    def _open(self, name: str, relative: PurePosixPath) -> int:
        """Open the file with no symlink anywhere on the way (after a realpath check)."""
        real = Path(os.path.realpath(self._root / relative))
        if not real.is_relative_to(self._root):
            raise ArtifactError(
                name, "path-escape", "resolves outside the model folder (a symlink leaves it)"
            )
        parts = real.relative_to(self._root).parts
        if not parts:
            raise ArtifactError(name, "not-a-file", "is not a regular file")
        try:
            dir_fd = os.open(self._root, _DIR_FLAGS)
        except OSError as exc:
            raise ArtifactError(name, "missing", "the model folder cannot be opened") from exc
        try:
            for part in parts[:-1]:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = next_fd
            return os.open(parts[-1], _OPEN_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError as exc:
            raise ArtifactError(name, "missing", "no such file in the model folder") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ArtifactError(
                    name, "path-escape", "a path component changed into a symlink while opening"
                ) from exc
            if exc.errno == errno.ENOTDIR:
                raise ArtifactError(name, "not-a-file", "a path component is not a folder") from exc
            raise ArtifactError(name, "unreadable", "cannot be opened") from exc
        finally:
            os.close(dir_fd)

    def _read_external(self, name: str) -> bytes:
        data, _ = self._load(name)
        return data

    def _read_metadata(self, name: str) -> bytes:
        data, _ = self._load(name, limit=MAX_METADATA_BYTES)
        return data

    def _load(self, name: str, *, limit: int | None = None) -> tuple[bytes, ArtifactRecord]:
        """The plaintext of ``name``: the file itself, or ``name.enc`` decrypted in memory.

        The lock (and ``opened``) hold the encrypted file's hash; the plaintext never
        touches the disk.
        """
        try:
            return self._read(name, limit=limit)
        except ArtifactError as exc:
            if exc.reason != "missing":
                raise
            missing = exc
        try:
            data, record = self._read(name + ENCRYPTED_SUFFIX)
        except ArtifactError as exc:
            if exc.reason == "missing":
                raise missing from None
            raise
        if Format(record.format) is not Format.ENCRYPTED:
            raise ArtifactError(
                record.name,
                "encrypted-malformed",
                "ends in .enc but is not encrypted by secureserve",
            )
        if self._decryption_key is None:
            raise ArtifactError(
                record.name,
                "no-decryption-key",
                "is encrypted, but no key is configured: set [model] encryption_key_file "
                f"(a 0600 file) or {KEY_ENV}",
            )
        plain = decrypt(data, self._decryption_key, name=record.name)
        if limit is not None and len(plain) > limit:
            raise ArtifactError(
                record.name, "too-large", f"decrypts to more than the {limit}-byte limit"
            )
        record = dataclasses.replace(record, format=detect_format(plain).value)
        self._opened[record.name] = record
        return plain, record

    def _require(self, name: str, record: ArtifactRecord, wanted: Format, data: bytes) -> None:
        found = Format(record.format)
        if found is wanted:
            return
        reason = found.value
        if found is Format.NUMPY and numpy_has_objects(data):
            reason = "numpy-object"
        elif found in (Format.SAFETENSORS, Format.ONNX):
            reason = "wrong-format"
        raise ArtifactError(
            name,
            reason,
            f"this is {found.description}, not {wanted.description}; {_FIXES[found]}",
        )
