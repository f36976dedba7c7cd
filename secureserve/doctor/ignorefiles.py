"""Would git commit a file, would ``docker build`` send it? Asked of ignore files.

Inside a git repository the answer comes from ``git check-ignore`` itself, which
knows nested ``.gitignore`` files, global excludes and files already tracked (a
tracked file is committed whatever ``.gitignore`` says). Without git, the project's
own ``.gitignore`` is read with the common subset of its syntax. ``.dockerignore``
(or ``<Dockerfile>.dockerignore``, which BuildKit prefers) is read the way Docker
cleans its patterns: surrounding spaces trimmed, also after ``!``, paths normalised,
a leading ``/`` dropped, every pattern matched from the root of the build context.
"""

from __future__ import annotations

import functools
import posixpath
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from secureserve.doctor._read import read_text

__all__ = ["GitView", "docker_excluded", "git_view", "ignored"]

_GIT_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class GitView:
    """Which of the asked paths git would leave out, and how that was decided."""

    #: The paths (relative, POSIX) that are ignored and not tracked.
    ignored: frozenset[str]
    #: False when there is neither a repository nor a ``.gitignore``: nothing to judge.
    known: bool
    #: True when the project is in a repository but has no ignore rules of its own.
    repository_without_rules: bool = False


def git_view(project: Path, relatives: list[str]) -> GitView:
    """Ask git (or, outside a repository, the project's ``.gitignore``) about ``relatives``."""
    rules = read_text(project / ".gitignore")
    repository = _repository_root(project)
    if repository is not None and relatives:
        answer = _check_ignore(project, relatives)
        if answer is not None:
            return GitView(answer, known=True, repository_without_rules=rules is None)
    if rules is None:
        return GitView(frozenset(), known=repository is not None, repository_without_rules=True)
    patterns = [p for p in (line.rstrip() for line in rules.splitlines()) if p and p[0] != "#"]
    chosen = frozenset(r for r in relatives if ignored(r, patterns, anchored=False))
    return GitView(chosen, known=True)


def docker_excluded(project: Path, relatives: Iterable[str], dockerfile: str) -> frozenset[str]:
    """Those of ``relatives`` that the build context of ``dockerfile`` leaves out."""
    rules = read_text(project / f"{dockerfile}.dockerignore")
    if rules is None:
        rules = read_text(project / ".dockerignore")
    if rules is None:
        return frozenset()
    patterns: list[str] = []
    for raw in rules.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        body = posixpath.normpath(line[1:].strip() if negate else line).lstrip("/")
        if body and body != ".":
            patterns.append(("!" if negate else "") + body)
    return frozenset(r for r in relatives if ignored(r, patterns, anchored=True))


def ignored(relative: str, patterns: list[str], *, anchored: bool) -> bool:
    """Whether ``relative`` (a POSIX path) is excluded by ``patterns``, in file order.

    ``anchored`` gives Docker's rule (every pattern is matched from the root); git
    matches a pattern without a slash against the name at any depth. A path is also
    excluded when one of its parent folders is. ``*`` and ``?`` stay within one path
    component and ``**`` spans several; character classes are not supported.
    """
    parts = relative.split("/")
    excluded = False
    for line in patterns:
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        folder_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
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


def _repository_root(project: Path) -> Path | None:
    for folder in (project, *project.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _check_ignore(project: Path, relatives: list[str]) -> frozenset[str] | None:
    """``git check-ignore`` over ``relatives``; None when git is missing or fails."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments, paths on stdin
            [git, "-C", str(project), "check-ignore", "--stdin", "-z"],
            input="\0".join(relatives).encode("utf-8", "surrogateescape") + b"\0",
            capture_output=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode not in {0, 1}:  # 1: none of them is ignored
        return None
    names = done.stdout.decode("utf-8", "surrogateescape").split("\0")
    return frozenset(name for name in names if name)
