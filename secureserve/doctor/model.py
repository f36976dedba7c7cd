"""Doctor checks on the models: their files, lock and signature, and who may change them.

The lock and signature are checked with the server's own ``verify_project``; the
doctor adds what the server accepts but is weaker than the defaults (an unsigned lock,
files the lock does not list) and what the server cannot see: the handlers, settings,
model files, lock, signature and public key writable by other users. With several
models (``[models.<name>]``) every model and every model folder is checked, and the
findings name its table (``[models.iris] dir``).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from secureserve.config import CONFIG_FILENAME, Settings
from secureserve.doctor.findings import FIX_SEE_MESSAGE, Finding, error, info, warning
from secureserve.encryption import load_key
from secureserve.errors import ArtifactError, ConfigError
from secureserve.lockfile import LOCK_FILENAME, SIGNATURE_FILENAME
from secureserve.release import model_files, model_folders, signing_public_key, verify_project
from secureserve.settings import ModelSettings

__all__ = ["check"]

#: How many file names a finding lists before "and N more".
_SAMPLE: Final = 10
#: Model files checked for write permission (a model folder, not a disk).
_MAX_CHECKED_FILES: Final = 10_000
_FIX_RELOCK: Final = (
    "if the change is intended, run `secureserve lock` and `secureserve sign` where "
    "releases are made; otherwise restore the released files."
)


def check(settings: Settings, *, config_file: Path | None) -> Iterator[Finding]:
    """Every model and served-file finding for ``settings``."""
    yield from _check_model(settings)
    yield from _check_writable(settings, config_file)


def _check_model(settings: Settings) -> Iterator[Finding]:
    for name, model in settings.served().items():
        yield from _check_keys(model, settings.table(name))
    yield from _check_artifacts(settings)


def _check_keys(model: ModelSettings, table: str) -> Iterator[Finding]:
    """One model's encryption key file and custom ONNX domains."""
    if model.encryption_key_file is not None:
        if model.encryption_key_file.exists():
            try:
                load_key(key_file=model.encryption_key_file)
            except ConfigError as exc:
                yield error(
                    "key-file-invalid", f"{table} encryption_key_file", str(exc), FIX_SEE_MESSAGE
                )
        else:
            yield info(
                "key-file-missing",
                f"{table} encryption_key_file",
                f"{model.encryption_key_file} does not exist here.",
                "make sure it is mounted where the server runs.",
            )
    if model.onnx_allowed_domains:
        yield warning(
            "onnx-custom-domains",
            f"{table} onnx_allowed_domains",
            f"ONNX operators from {', '.join(model.onnx_allowed_domains)} are accepted: "
            "custom operators are native code outside onnxruntime's own.",
            "allow only the domains your models need, and only from libraries you trust.",
        )


def _check_artifacts(settings: Settings) -> Iterator[Finding]:
    """Each model folder against the one lock: present, locked, then signed and matching."""
    try:
        folders = model_folders(settings)
    except ConfigError as exc:  # a folder the lock cannot name
        yield error("model-verify-failed", "[models] dir", str(exc), FIX_SEE_MESSAGE)
        return
    count = 0
    missing = False
    for folder in folders:
        try:
            count += len(model_files(folder.path, owner=folder.owner))
        except ConfigError as exc:
            missing = True
            yield error(
                "model-dir-missing",
                f"{folder.owner} {folder.path}",
                str(exc),
                f"create it or fix {folder.owner}.",
            )
    if missing:
        return
    if (settings.project_dir / LOCK_FILENAME).exists():
        yield from _check_lock(settings)
    elif count:
        yield error(
            "model-unlocked",
            LOCK_FILENAME,
            f"{count} model file(s) but no {LOCK_FILENAME}: the server refuses "
            "every artifact that no lock lists.",
            "run `secureserve lock`, then sign the lock with `secureserve sign`.",
        )


def _check_lock(settings: Settings) -> Iterator[Finding]:
    """The lock's signature (or its absence), and every folder against its section."""
    public_key = signing_public_key(settings)
    if public_key is None:
        yield warning(
            "model-unsigned",
            f"{'[models.*]' if settings.models else '[model]'} signing_public_key",
            f"{LOCK_FILENAME} is not checked against a signature: whoever can write the "
            "model folder and the lock can swap the model unnoticed.",
            "sign releases (`secureserve sign --private-key KEY`) and set "
            "signing_public_key to the public key.",
        )
    try:
        report = verify_project(settings, public_key)
    except (ConfigError, ArtifactError) as exc:
        yield error("model-verify-failed", LOCK_FILENAME, str(exc), _FIX_RELOCK)
        return
    for problem in report.problems:
        yield error("model-verify-failed", LOCK_FILENAME, problem, _FIX_RELOCK)
    for found in report.folders:
        if found.unlisted:
            sample = ", ".join(found.unlisted[:_SAMPLE])
            extra = len(found.unlisted) - _SAMPLE
            more = f" and {extra} more" if extra > 0 else ""
            yield warning(
                "model-unlisted",
                f"{found.folder.owner} {found.folder.path}",
                f"not in {LOCK_FILENAME}, so never loaded: {sample}{more}.",
                "remove them, or lock and sign again if they belong to the model (a pickle "
                "or another format never loaded cannot be locked: convert it to safetensors "
                "or ONNX).",
            )


def _check_writable(settings: Settings, config_file: Path | None) -> Iterator[Finding]:
    """What the server runs and trusts must not be writable by other users, or by it."""
    shared: list[Path] = []
    writable = False
    for path in _served_paths(settings, config_file):
        try:
            status = path.stat()  # a link's target is what the server reads
        except OSError:
            continue
        if _writable_by_others(status):
            shared.append(path)
        writable = writable or os.access(path, os.W_OK)
    if shared:
        sample = ", ".join(str(p) for p in shared[:_SAMPLE])
        more = f" and {len(shared) - _SAMPLE} more" if len(shared) > _SAMPLE else ""
        yield error(
            "files-shared-writable",
            str(settings.project_dir),
            f"writable by other users: {sample}{more}. Whoever can write the handler, the "
            "settings, the model files, the lock or the keys that check it controls what "
            "is served.",
            "remove group and other write permission (`chmod go-w`).",
        )
    elif writable:
        yield info(
            "files-writable",
            str(settings.project_dir),
            f"the handler, settings and model files are writable by this user (uid "
            f"{os.getuid()}); if the server runs as this user, a compromised server can "
            "change what it serves.",
            "in production let another user own them (the generated Dockerfile copies "
            "them as root and runs the server as uid 10001).",
        )


def _writable_by_others(status: os.stat_result) -> bool:
    """Other users may write it: world-writable, or group-writable by a shared group.

    Group write is harmless in a user private group (the owner's primary group, with no
    other members), which is what a umask of 002 gives on many systems.
    """
    mode = stat.S_IMODE(status.st_mode)
    if mode & stat.S_IWOTH:
        return True
    if not mode & stat.S_IWGRP:
        return False
    try:
        owner = pwd.getpwuid(status.st_uid)
        group = grp.getgrgid(status.st_gid)
    except KeyError:
        return True  # an unknown owner or group: assume shared
    return not (owner.pw_gid == status.st_gid and not group.gr_mem)


def _served_paths(settings: Settings, config_file: Path | None) -> list[Path]:
    """The project folder, handler code, settings, lock, signature, public key, models."""
    project = settings.project_dir
    paths = [project, project / "__pycache__", project / LOCK_FILENAME]
    paths += [project / SIGNATURE_FILENAME]
    paths.append(config_file if config_file is not None else project / CONFIG_FILENAME)
    for model in settings.served().values():
        if model.handler:
            paths += _handler_paths(project, model.handler)
        if model.signing_public_key is not None:
            paths.append(model.signing_public_key)
        paths.append(model.dir)
        paths.extend(_model_paths(model.dir))
    return list(dict.fromkeys(paths))  # once each, when models share code or a folder


def _handler_paths(project: Path, handler: str) -> list[Path]:
    """Where ``module:Class`` may be imported from: each package's folder, the module."""
    paths: list[Path] = []
    folder = project
    parts = handler.partition(":")[0].split(".")
    for part in parts[:-1]:  # packages: each folder, __init__.py and cache
        folder /= part
        paths += [folder, folder / "__init__.py", folder / "__pycache__"]
    return [
        *paths,
        folder / f"{parts[-1]}.py",
        folder / parts[-1],
        folder / parts[-1] / "__init__.py",
    ]


def _model_paths(model_dir: Path) -> Iterator[Path]:
    """Folders and files under the model folder, at most ``_MAX_CHECKED_FILES``."""
    count = 0
    for root, dirs, files in os.walk(model_dir):
        for name in (*dirs, *files):
            count += 1
            if count > _MAX_CHECKED_FILES:
                return
            yield Path(root) / name
