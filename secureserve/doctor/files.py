"""Doctor checks on the project's files: private keys, Dockerfile, Kubernetes manifests.

Private keys are found by content (a PEM ``PRIVATE KEY`` block) and by the settings
that name key files. One that sits in the model folder, in the Docker build context,
or outside ``.gitignore`` is an error: it would be shipped, baked into an image, or
committed. Ignore files are read with the common subset of their syntax (``*``,
``**``, ``?``, a leading ``/``, a trailing ``/``, ``!`` to re-include; no character
classes or escapes); a pattern outside that subset may be judged differently than git
or Docker would.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from secureserve.config import Settings
from secureserve.doctor.findings import Finding, error, info, warning

__all__ = ["check", "ignored"]

#: Folders never searched for keys: environments, caches and version control.
_SKIPPED_DIRS: Final = frozenset(
    {".git", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".nox"}
    | {".mypy_cache", ".pytest_cache", ".ruff_cache", "build", "dist"}
)
#: At most this many files are read while looking for keys (a project, not a disk).
_MAX_FILES: Final = 20_000
_MAX_KEY_FILE_BYTES: Final = 64 * 1024
_PEM_PRIVATE: Final = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_ROOT_USERS: Final = frozenset({"root", "0"})
_LIMITS_STORAGE_ENV: Final = "SECURESERVE_LIMITS__STORAGE"


def check(project: Path, settings: Settings | None) -> Iterator[Finding]:
    """File findings for ``project``; ``settings`` is None when they did not load."""
    keys = _private_keys(project, settings)
    yield from _check_key_exposure(project, settings, keys)
    dockerfile = project / "Dockerfile"
    if dockerfile.is_file():
        yield from _check_dockerfile(dockerfile)
    if settings is not None and settings.limits.storage.startswith("memory://"):
        yield from _check_replicas(project)


def ignored(relative: str, patterns: list[str], *, anchored: bool) -> bool:
    """Whether ``relative`` (a POSIX path) is excluded by ``patterns``, in file order.

    ``anchored`` gives Docker's rule (every pattern is matched from the root); git
    matches a pattern without a slash against the name at any depth. A path is also
    excluded when one of its parent folders is.
    """
    parts = relative.split("/")
    excluded = False
    for line in patterns:
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        folder_only = pattern.endswith("/")
        pattern = pattern.strip("/") if anchored else pattern.rstrip("/")
        rooted = anchored or "/" in pattern
        pattern = pattern.lstrip("/")
        if pattern and _matches(parts, pattern, rooted=rooted, folder_only=folder_only):
            excluded = not negate
    return excluded


def _matches(parts: list[str], pattern: str, *, rooted: bool, folder_only: bool) -> bool:
    """Whether ``pattern`` matches the path or one of its parent folders."""
    regex = _glob(pattern)
    last = len(parts) - 1 if folder_only else len(parts)
    for end in range(1, last + 1):
        candidate = "/".join(parts[:end]) if rooted else parts[end - 1]
        if regex.fullmatch(candidate):
            return True
    return False


@functools.cache
def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay within one path component; ``**/`` spans any number of them."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _read_patterns(path: Path) -> list[str] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _private_keys(project: Path, settings: Settings | None) -> list[Path]:
    """Files in the project that hold private keys, by content or by setting."""
    named: set[Path] = set()
    if settings is not None:
        for path in (
            settings.audit.digest_key_file,
            settings.model.encryption_key_file,
            settings.tls.key,
        ):
            if path is not None and path.is_file() and path.resolve().is_relative_to(project):
                named.add(path.resolve())
    found: list[Path] = []
    seen = 0
    for root, dirs, files in os.walk(project):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        for name in sorted(files):
            seen += 1
            if seen > _MAX_FILES:
                return sorted(set(found) | named)
            path = Path(root) / name
            if path.resolve() in named or _holds_private_key(path):
                found.append(path.resolve())
    return sorted(set(found) | named)


def _holds_private_key(path: Path) -> bool:
    try:
        info_ = path.lstat()
        if not stat.S_ISREG(info_.st_mode) or info_.st_size > _MAX_KEY_FILE_BYTES:
            return False
        return _PEM_PRIVATE.search(path.read_bytes()) is not None
    except OSError:
        return False


def _check_key_exposure(
    project: Path, settings: Settings | None, keys: list[Path]
) -> Iterator[Finding]:
    model_dir = settings.model.dir.resolve() if settings is not None else None
    gitignore = _read_patterns(project / ".gitignore")
    dockerignore = _read_patterns(project / ".dockerignore")
    has_dockerfile = (project / "Dockerfile").is_file()
    for key in keys:
        relative = key.relative_to(project).as_posix()
        mode = stat.S_IMODE(key.stat().st_mode)
        if mode & 0o004 or mode & 0o022:
            yield error(
                "private-key-permissions",
                relative,
                f"this private key can be read or written by other users (mode {mode:04o}).",
                f"restrict it with `chmod 600 {relative}`.",
            )
        if model_dir is not None and key.is_relative_to(model_dir):
            yield error(
                "private-key-in-model-dir",
                relative,
                "a private key lies in the model folder, which is shipped with the model "
                "and readable by the server.",
                "move it out of [model] dir (to secrets/) and lock the folder again.",
            )
        if has_dockerfile and not ignored(relative, dockerignore or [], anchored=True):
            yield error(
                "private-key-in-image",
                relative,
                "a private key is part of the Docker build context: a `COPY` can bake it "
                "into the image, where anyone who pulls the image can read it.",
                f"add `{relative}` (or its folder, e.g. `secrets/`) to .dockerignore and "
                "mount it at run time instead.",
            )
        yield from _check_git(project, relative, gitignore)


def _check_git(project: Path, relative: str, gitignore: list[str] | None) -> Iterator[Finding]:
    if gitignore is not None:
        if not ignored(relative, gitignore, anchored=False):
            yield error(
                "private-key-not-ignored",
                relative,
                "a private key is not git-ignored and can be committed by accident.",
                f"add `{relative}` (or its folder, e.g. `secrets/`) to .gitignore.",
            )
    elif (project / ".git").exists():
        yield error(
            "private-key-not-ignored",
            relative,
            "this repository has no .gitignore, so the private key can be committed.",
            "add a .gitignore that lists secrets/ (`secureserve new` writes one).",
        )


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, with continuation lines joined."""
    joined: list[str] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    if pending:
        joined.append(pending)
    result: list[tuple[str, str]] = []
    for line in joined:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def _check_dockerfile(dockerfile: Path) -> Iterator[Finding]:
    instructions = _instructions(dockerfile)
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    final = instructions[starts[-1] :] if starts else instructions
    users = [arguments for word, arguments in final if word == "USER"]
    if not users:
        yield error(
            "docker-root",
            "Dockerfile",
            "the final stage has no USER instruction, so the server runs as root.",
            "add `USER 10001:10001` (a numeric, non-root user) before the ENTRYPOINT.",
        )
    else:
        user = users[-1].split(":", 1)[0].strip()
        if user in _ROOT_USERS:
            yield error(
                "docker-root",
                "Dockerfile",
                f"the final stage runs as {users[-1]!r}, which is root.",
                "switch to a non-root user, e.g. `USER 10001:10001`.",
            )
        elif not user.isdigit():
            yield warning(
                "docker-user-name",
                "Dockerfile",
                f"USER {users[-1]} is a name: Kubernetes' runAsNonRoot can only verify a "
                "numeric user, and a name can map to uid 0.",
                "use a numeric uid and gid, e.g. `USER 10001:10001`.",
            )
    runs = " ".join(arguments for word, arguments in final if word in {"CMD", "ENTRYPOINT"})
    if "--dev" in runs:
        yield error(
            "docker-dev-mode",
            "Dockerfile",
            "the image starts `secureserve run --dev`: a development certificate, a fresh "
            "key printed to the log, and 127.0.0.1 only.",
            "start `secureserve run` and mount the certificate and keys.",
        )
    if not any(word == "HEALTHCHECK" for word, _ in final):
        yield info(
            "docker-no-healthcheck",
            "Dockerfile",
            "the image has no HEALTHCHECK, so plain Docker cannot tell a hung server.",
            "add one that requests https://127.0.0.1:8443/healthz (the generated "
            "Dockerfile has one).",
        )


def _check_replicas(project: Path) -> Iterator[Finding]:
    """Kubernetes manifests that run several replicas while limits are counted in memory."""
    folder = project / "k8s"
    if not folder.is_dir():
        return
    texts = [p.read_text("utf-8", errors="replace") for p in sorted(folder.glob("*.y*ml"))]
    manifests = "\n".join(texts)
    counts = re.findall(r"^\s*replicas:\s*(\d+)", manifests, re.MULTILINE)
    replicated = "kind: HorizontalPodAutoscaler" in manifests or any(int(n) > 1 for n in counts)
    if replicated and _LIMITS_STORAGE_ENV not in manifests:
        yield error(
            "limits-memory-replicas",
            "k8s/",
            "the manifests run several replicas, but [limits] storage is memory:// and no "
            f"manifest sets {_LIMITS_STORAGE_ENV}: each replica counts alone, so every "
            "limit and quota is multiplied by the number of replicas.",
            f"set {_LIMITS_STORAGE_ENV} to a redis:// URL from a secretKeyRef (the "
            "generated Deployment does).",
        )
