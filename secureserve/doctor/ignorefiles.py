r"""Would git commit a file, would ``docker build`` send it? Asked of ignore files.

Inside a git repository the answer comes from ``git check-ignore`` itself, which
knows nested ``.gitignore`` files, global excludes and files already tracked (a
tracked file is committed whatever ``.gitignore`` says). git is run with the
repository's file-system monitor and untracked cache switched off, so a hostile
``.git/config`` cannot make the doctor run a command; if git fails inside a
repository, that is an error, never a quiet fallback. Without a repository (or
without git installed) the project's own ``.gitignore`` is read with the common
subset of its syntax.

``.dockerignore`` (or ``<Dockerfile>.dockerignore``, which BuildKit prefers) is read
as Docker reads it: lines split at ``\n`` (a trailing ``\r`` dropped), a line that
starts with ``#`` is a comment before anything is trimmed, then Go's notion of
white space is trimmed (also after ``!``), the path is cleaned and a leading ``/``
dropped; every pattern is matched from the root of the build context.

Patterns are matched one path component at a time with :func:`fnmatch.fnmatchcase`
(``**`` spans components), which takes time linear in the pattern and path, so a
hostile pattern cannot stall the doctor.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import posixpath
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from secureserve.doctor._read import read_text

__all__ = ["GitFailed", "GitView", "docker_excluded", "git_view", "ignored"]

_GIT_TIMEOUT_S: Final = 10.0
#: What Go's ``strings.TrimSpace`` trims (``unicode.IsSpace``); Python's ``str.strip``
#: also trims \x1c-\x1f, which Docker keeps as part of the pattern.
_GO_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
#: git settings that would run a command or trust cached state while answering.
_SAFE_GIT: Final = ("-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false")


class GitFailed(Exception):  # noqa: N818 - a condition the caller reports, not a bug
    """git is installed and the project is in a repository, but git could not answer."""


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
    git = shutil.which("git")
    if repository is not None and git is not None:
        answer = _check_ignore(git, project, relatives) if relatives else frozenset()
        return GitView(answer, known=True, repository_without_rules=rules is None)
    if rules is None:
        return GitView(frozenset(), known=repository is not None, repository_without_rules=True)
    patterns = [p for p in (line.rstrip(" ") for line in _lines(rules)) if p and p[0] != "#"]
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
    for raw in _lines(rules.removeprefix("\ufeff")):
        if raw.startswith("#"):
            continue  # a comment before anything is trimmed, as Docker reads it
        line = raw.strip(_GO_SPACE)
        negate = line.startswith("!")
        body = line[1:].strip(_GO_SPACE) if negate else line
        if not body:
            continue
        body = posixpath.normpath(body)
        body = body[1:] if len(body) > 1 and body.startswith("/") else body
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
    last = len(parts) - 1 if folder_only else len(parts)
    if not rooted:
        return any(fnmatch.fnmatchcase(parts[end - 1], pattern) for end in range(1, last + 1))
    words = tuple(pattern.split("/"))
    return any(_match_words(words, tuple(parts[:end])) for end in range(1, last + 1))


@functools.lru_cache(maxsize=4096)
def _match_words(words: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Component-wise match; ``**`` matches any number of components (memoised, so linear)."""
    if not words:
        return not parts
    if words[0] == "**":
        return _match_words(words[1:], parts) or (bool(parts) and _match_words(words, parts[1:]))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], words[0])
        and _match_words(words[1:], parts[1:])
    )


def _lines(text: str) -> list[str]:
    """Lines as Go's line scanner gives them: split at LF, a trailing CR removed."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _repository_root(project: Path) -> Path | None:
    for folder in (project, *project.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _check_ignore(git: str, project: Path, relatives: list[str]) -> frozenset[str]:
    """The paths among ``relatives`` that git ignores (tracked files never are)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments, paths on stdin
            [git, *_SAFE_GIT, "-C", str(project), "check-ignore", "--stdin", "-z"],
            input="\0".join(relatives).encode("utf-8", "surrogateescape") + b"\0",
            capture_output=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitFailed(f"git did not answer ({type(exc).__name__})") from None
    if done.returncode not in {0, 1}:  # 1: none of them is ignored
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        raise GitFailed(f"git check-ignore failed: {reason[0] if reason else done.returncode}")
    names = done.stdout.decode("utf-8", "surrogateescape").split("\0")
    return frozenset(name for name in names if name)
