"""Doctor checks on the project's files: keys and secrets, Dockerfile, Kubernetes manifests.

The project folder is walked once, without following symbolic links, over a bounded
number of entries; every regular file up to 16 MiB is read in overlapping chunks
(larger ones are weights or data, not keys). A file is a private key when it holds a
PEM ``PRIVATE KEY`` block, is named ``*.key``, or is a key file the settings name.
One that sits in the model folder, in the Docker build context, or where git would
commit it is an error: it would be shipped, baked into an image, or pushed. API keys
(``ss_<id>_<secret>``) and model encryption keys written into files are errors too:
a secret in a file is a secret that gets copied.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from secureserve.config import Settings
from secureserve.doctor._read import read_text
from secureserve.doctor.dockerfile import Image, parse_dockerfile, read_dockerfile
from secureserve.doctor.findings import Finding, error, info, warning
from secureserve.doctor.ignorefiles import GitFailed, docker_excluded, git_view
from secureserve.doctor.settings import has_password
from secureserve.errors import ConfigError

__all__ = ["check", "image_environment", "manifest_environment"]

#: Folders never searched: environments, caches and version control.
_SKIPPED_DIRS: Final = frozenset(
    {".git", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".nox"}
    | {".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
#: At most this many files and folders are looked at (a project, not a disk).
_MAX_ENTRIES: Final = 20_000
#: Files larger than this are not searched (weights and data, not keys).
_MAX_SCANNED_BYTES: Final = 16 * 1024 * 1024
_CHUNK: Final = 1024 * 1024
#: Chunks overlap by this much, so that no match is cut in two.
_OVERLAP: Final = 512
_PEM_PRIVATE: Final = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_API_KEY: Final = re.compile(rb"ss_([0-9a-f]{12})_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
#: The variable's name followed closely by a base64 32-byte key, in whatever syntax
#: (``NAME=key``, ``ENV NAME key``, ``name: NAME`` then ``value: "key"``, Python).
_ENCRYPTION_KEY: Final = re.compile(
    rb"SECURESERVE_MODEL__ENCRYPTION_KEY.{0,120}?(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=",
    re.DOTALL,
)
_LIMITS_STORAGE_ENV: Final = "SECURESERVE_LIMITS__STORAGE"
#: Kubernetes manifests read under k8s/ (a deployment folder, not a disk).
_MAX_MANIFESTS: Final = 200
#: ``- name: SECURESERVE_X`` then ``value: ...`` (block style), or on one line (flow).
_ENV_BLOCK: Final = re.compile(
    r"name:\s*[\"']?(SECURESERVE_[A-Z0-9_]+)[\"']?\s*\n\s*value:[ \t]*([^\n]*)"
)
_ENV_FLOW: Final = re.compile(
    r"\{\s*name:\s*[\"']?(SECURESERVE_[A-Z0-9_]+)[\"']?\s*,\s*value:[ \t]*([^}\n]*)"
)


@dataclass
class _Scan:
    keys: list[Path] = field(default_factory=list)
    #: (file, line number, what) for each secret written in a file.
    secrets: list[tuple[Path, int, str]] = field(default_factory=list)
    truncated: bool = False


def check(project: Path, settings: Settings | None) -> Iterator[Finding]:
    """File findings for ``project``; ``settings`` is None when they did not load."""
    scan = _scan(project, settings)
    if scan.truncated:
        yield warning(
            "doctor-scan-truncated",
            str(project),
            f"the project holds more than {_MAX_ENTRIES} files and folders; only the first "
            "were searched for keys and secrets.",
            "run the doctor on the folder that is deployed, without data or environments.",
        )
    image_name: str | None
    try:
        dockerfile = read_dockerfile(project)
    except ConfigError as exc:
        yield error(
            "dockerfile-unreadable",
            "Dockerfile",
            f"{exc} The image it builds could not be checked.",
            "make it a readable regular file (under 1 MiB) and run the doctor again.",
        )
        dockerfile, image_name = None, "Dockerfile"
    else:
        image_name = dockerfile[0].name if dockerfile is not None else None
    yield from _check_keys(project, settings, scan.keys, image_name)
    yield from _check_secrets(project, scan.secrets)
    if dockerfile is not None:
        image = parse_dockerfile(dockerfile[1])
        yield from _check_image(dockerfile[0].name, image)
        yield from _check_image_secrets(dockerfile[0].name, image)
    if settings is not None and settings.limits.storage.startswith("memory://"):
        yield from _check_replicas(project)


def image_environment(project: Path) -> dict[str, str]:
    """The ``SECURESERVE_*`` variables the project's Dockerfile sets in its final image."""
    try:
        dockerfile = read_dockerfile(project)
    except ConfigError:
        return {}  # reported by check()
    if dockerfile is None:
        return {}
    env = parse_dockerfile(dockerfile[1]).env
    return {key: value for key, value in env.items() if key.startswith("SECURESERVE_")}


def manifest_environment(project: Path) -> dict[str, str]:
    """``SECURESERVE_*`` variables given literal values in the ``k8s/`` manifests.

    Values from ``valueFrom`` (secrets, fields) are unknown here and left out, and so is
    the encryption key, which must never be written in a manifest.
    """
    manifests = _manifest_text(project / "k8s")
    if manifests is None:
        return {}
    found: dict[str, str] = {}
    for name, raw in _ENV_BLOCK.findall(manifests) + _ENV_FLOW.findall(manifests):
        if name != "SECURESERVE_MODEL__ENCRYPTION_KEY":
            found[name] = _yaml_scalar(raw)
    return found


def _yaml_scalar(raw: str) -> str:
    """A plain or quoted one-line YAML scalar (enough for environment values)."""
    text = raw.strip().rstrip(",}").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":  # noqa: PLR2004
        return text[1:-1]
    return text


# --- the walk -------------------------------------------------------------------------


def _scan(project: Path, settings: Settings | None) -> _Scan:
    named = _named_key_files(project, settings)
    scan = _Scan()
    entries = 0
    for root, dirs, files in os.walk(project):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        entries += len(dirs) + len(files)
        if entries > _MAX_ENTRIES:
            scan.truncated = True
            return scan
        for name in sorted(files):
            path = Path(root) / name
            if name.endswith(".key") or path in named:
                if _is_regular(path):
                    scan.keys.append(path)
                continue
            _search(path, scan)
    return scan


def _named_key_files(project: Path, settings: Settings | None) -> set[Path]:
    """Key files the settings name, as paths inside ``project`` (others are not shipped)."""
    if settings is None:
        return set()
    named = (settings.audit.digest_key_file, settings.model.encryption_key_file, settings.tls.key)
    root = os.path.realpath(project)
    return {
        Path(project, os.path.relpath(os.path.realpath(p), root))
        for p in named
        if p is not None and os.path.realpath(p).startswith(root + os.sep)
    }


def _search(path: Path, scan: _Scan) -> None:
    """Look for a private key, API keys and encryption keys in one regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_size > _MAX_SCANNED_BYTES:
            return
        tail, lines = b"", 0
        while chunk := os.read(fd, _CHUNK):
            data = tail + chunk
            if _PEM_PRIVATE.search(data):
                scan.keys.append(path)
                return
            for match in _secrets_in(data, seen=len(tail)):
                line = lines + data.count(b"\n", 0, match[0]) + 1
                scan.secrets.append((path, line, match[1]))
            tail = data[-_OVERLAP:]
            lines += data.count(b"\n") - tail.count(b"\n")
    except OSError:
        return
    finally:
        os.close(fd)


def _secrets_in(data: bytes, *, seen: int) -> Iterator[tuple[int, str]]:
    """(offset, what) of each secret in ``data`` that does not end in its first ``seen`` bytes."""
    for match in _API_KEY.finditer(data):
        if match.end() > seen:
            yield match.start(), f"API key ss_{match.group(1).decode()}_..."
    for match in _ENCRYPTION_KEY.finditer(data):
        if match.end() > seen:
            yield match.start(), "model encryption key"


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


# --- keys and secrets -------------------------------------------------------------------


def _check_keys(
    project: Path,
    settings: Settings | None,
    keys: list[Path],
    image: str | None,
) -> Iterator[Finding]:
    relatives = [key.relative_to(project).as_posix() for key in keys]
    try:
        git = git_view(project, relatives)
    except GitFailed as exc:
        git = None
        yield error(
            "git-failed",
            ".gitignore",
            f"{exc}; whether git would commit the project's keys is unknown.",
            "make `git check-ignore` work in this repository (ownership, safe.directory) "
            "and run the doctor again.",
        )
    excluded = docker_excluded(project, relatives, image) if image else None
    model_dir = os.path.realpath(settings.model.dir) + os.sep if settings is not None else None
    for key, relative in zip(keys, relatives, strict=True):
        quoted = shlex.quote(relative)
        mode = stat.S_IMODE(key.lstat().st_mode)
        if mode & 0o026:
            yield error(
                "private-key-permissions",
                relative,
                f"this key can be read by every user or written by others (mode {mode:04o}).",
                f"restrict it with `chmod 600 {quoted}`.",
            )
        if model_dir is not None and os.path.realpath(key).startswith(model_dir):
            yield error(
                "private-key-in-model-dir",
                relative,
                "a key lies in the model folder, which is shipped with the model and "
                "readable by the server.",
                "move it out of [model] dir (to secrets/) and lock the folder again.",
            )
        if excluded is not None and relative not in excluded:
            yield error(
                "private-key-in-image",
                relative,
                f"a key is part of the build context of the {image}: a `COPY` can bake it "
                "into the image, where whoever pulls the image can read it.",
                f"add {quoted} (or its folder, e.g. secrets/) to .dockerignore and mount "
                "it at run time instead.",
            )
        if git is not None and git.known and relative not in git.ignored:
            yield error(
                "private-key-not-ignored",
                relative,
                "git would commit this key: it is tracked already, or no .gitignore rule "
                "excludes it.",
                f"add {quoted} (or its folder, e.g. secrets/) to .gitignore; if it is "
                f"tracked, `git rm --cached {quoted}` and replace the key.",
            )


def _check_secrets(project: Path, secrets: list[tuple[Path, int, str]]) -> Iterator[Finding]:
    for path, line, what in secrets:
        yield error(
            "secret-in-file",
            f"{path.relative_to(project).as_posix()}:{line}",
            f"a {what} is written here in plain text.",
            "remove it, treat it as leaked (revoke an API key with `secureserve keys "
            "revoke ID`, re-encrypt with a new encryption key), and pass secrets through "
            "the environment or a secret store.",
        )


# --- Dockerfile -------------------------------------------------------------------------


def _check_image(name: str, image: Image) -> Iterator[Finding]:
    user = image.user
    uid = (user or "").split(":", 1)[0].strip()
    if user is None:
        yield error(
            "docker-root",
            name,
            "the final image has no USER instruction, so the server runs as root.",
            "add `USER 10001:10001` (a numeric, non-root user) before the ENTRYPOINT.",
        )
    elif uid in {"", "root"} or (uid.isdigit() and int(uid) == 0):
        yield error(
            "docker-root",
            name,
            f"the final image runs as {user!r}, which is root.",
            "switch to a non-root user, e.g. `USER 10001:10001`.",
        )
    elif not uid.isdigit():
        yield warning(
            "docker-user-name",
            name,
            f"USER {user} is not a numeric uid: Kubernetes' runAsNonRoot can only verify a "
            "number, and a name (or an unresolved variable) can map to uid 0.",
            "use a numeric uid and gid, e.g. `USER 10001:10001`.",
        )
    if "--dev" in image.command or any(w.endswith(" --dev") for w in image.command):
        yield error(
            "docker-dev-mode",
            name,
            "the image starts `secureserve run --dev`: a development certificate, a fresh "
            "key printed to the log, and 127.0.0.1 only.",
            "start `secureserve run` and mount the certificate and keys.",
        )
    elif image.unresolved:
        unresolved = ", ".join(sorted(image.unresolved))
        yield warning(
            "docker-unresolved",
            name,
            "the user or start command depends on what the doctor cannot resolve (build "
            f"arguments, run-time variables, substitutions): {unresolved}.",
            "write the user and command literally in the final stage.",
        )
    if not image.healthcheck:
        yield info(
            "docker-no-healthcheck",
            name,
            "the image has no HEALTHCHECK, so plain Docker cannot tell a hung server.",
            "add one that requests https://127.0.0.1:8443/healthz (the generated "
            "Dockerfile has one).",
        )


def _check_image_secrets(name: str, image: Image) -> Iterator[Finding]:
    """Secrets set with ENV are baked into every layer after it and shown by `docker inspect`."""
    storage = image.env.get(_LIMITS_STORAGE_ENV)
    if storage is not None and has_password(storage):
        yield error(
            "secret-in-image",
            f"{name} ENV {_LIMITS_STORAGE_ENV}",
            "the image sets a storage URL with a password: whoever can pull the image "
            "can read it (`docker inspect`).",
            "remove the ENV line and pass the URL at run time from a secret store.",
        )


# --- Kubernetes -------------------------------------------------------------------------


def _check_replicas(project: Path) -> Iterator[Finding]:
    """Kubernetes manifests that run several replicas while limits are counted in memory."""
    manifests = _manifest_text(project / "k8s")
    if manifests is None:
        return
    quote = "[\"']?"
    autoscaled = re.search(rf"kind:\s*{quote}HorizontalPodAutoscaler\b", manifests)
    counts = re.findall(rf"^\s*replicas:\s*{quote}(\d+)", manifests, re.MULTILINE)
    storage = re.findall(
        rf"name:\s*{quote}{_LIMITS_STORAGE_ENV}\b{quote}\s*\n\s*(value(?:From)?):\s*(.*)",
        manifests,
    )
    shared = any(kind == "valueFrom" or "memory://" not in value for kind, value in storage)
    if (autoscaled or any(int(n) > 1 for n in counts)) and not shared:
        yield error(
            "limits-memory-replicas",
            "k8s/",
            "the manifests run several replicas, but [limits] storage is memory:// and no "
            f"container sets {_LIMITS_STORAGE_ENV} to shared storage: each replica counts "
            "alone, so every limit and quota is multiplied by the number of replicas.",
            f"set {_LIMITS_STORAGE_ENV} to a redis:// URL from a secretKeyRef (the "
            "generated Deployment does).",
        )


def _manifest_text(folder: Path) -> str | None:
    """Every YAML file under ``folder`` (kustomize layouts too), comments removed."""
    if not folder.is_dir() or folder.is_symlink():
        return None
    paths = sorted(p for p in folder.rglob("*") if p.suffix in {".yaml", ".yml"})
    texts = [read_text(p) or "" for p in paths[:_MAX_MANIFESTS]]
    lines = [line.split(" #", 1)[0] for text in texts for line in text.split("\n")]
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))
