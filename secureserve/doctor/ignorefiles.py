r"""Would git commit a file, would ``docker build`` send it? Asked of ignore files.

This module owns those two questions. Inside a git repository the first is answered by
``git check-ignore`` itself, which knows nested ``.gitignore`` files, global excludes
and files already tracked (a tracked file is committed whatever ``.gitignore`` says).
git is run with the repository's file-system monitor and untracked cache switched
off, so a hostile ``.git/config`` cannot make the doctor run a command; if git fails
inside a repository, that is an error, never a quiet fallback. Without a repository
(or without git installed) the project's own ``.gitignore`` is read with
:class:`pathspec.GitIgnoreSpec`, with two adjustments: white space other than spaces
at the end of a line is kept, as git keeps it, and a line too complex for pathspec's
backtracking regular expressions (more than three wildcards, or more than two ``**``)
is not run: as an exclusion it ignores nothing, as a ``!`` it re-includes everything,
so that the doctor errs towards reporting a key. pathspec, unlike git, lets ``!``
re-include a file inside an excluded folder; that errs the same way.

The second question is Docker's: ``<Dockerfile>.dockerignore`` (which BuildKit
prefers) or ``.dockerignore``, matched by Docker's own rules
(:mod:`secureserve.doctor.dockerignore`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pathspec

from secureserve.doctor._read import read_text
from secureserve.doctor.dockerignore import excluded, parse_dockerignore

__all__ = ["GitFailed", "GitView", "docker_excluded", "git_view", "ignored"]

_GIT_TIMEOUT_S: Final = 10.0
#: git settings that would run a command or trust cached state while answering.
_SAFE_GIT: Final = ("-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false")
#: pathspec matches with Python's backtracking ``re``: a line with more ``*`` than this
#: (``**`` counted once, and once more for a pattern matched at any depth) can take
#: minutes on a crafted path; within these bounds, at most a fraction of a second.
_MAX_WILDCARDS: Final = 3
_MAX_GLOBSTARS: Final = 2
#: One character of a line as git reads it: an escaped pair, a lone final "\", or any.
_GIT_CHAR: Final = re.compile(r"\\.|\\$|.", re.DOTALL)


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
    spec = _gitignore_spec(_lines(rules.removeprefix("\ufeff")))
    return GitView(frozenset(r for r in relatives if spec.match_file(r)), known=True)


def docker_excluded(project: Path, relatives: Iterable[str], dockerfile: str) -> frozenset[str]:
    """Those of ``relatives`` that the build context of ``dockerfile`` leaves out."""
    rules = read_text(project / f"{dockerfile}.dockerignore")
    if rules is None:
        rules = read_text(project / ".dockerignore")
    if rules is None:
        return frozenset()
    patterns = parse_dockerignore(rules)
    return frozenset(r for r in relatives if excluded(r, patterns))


def ignored(relative: str, lines: list[str], *, anchored: bool) -> bool:
    """Whether ``relative`` (a POSIX path) is excluded by the ignore-file ``lines``.

    ``anchored`` gives Docker's rules (every pattern matched from the root of the
    context); otherwise git's (a pattern without a slash matches at any depth).
    """
    if anchored:
        return excluded(relative, parse_dockerignore("\n".join(lines)))
    return _gitignore_spec(lines).match_file(relative)


def _gitignore_spec(lines: Iterable[str]) -> pathspec.GitIgnoreSpec:
    """``.gitignore`` lines as a :class:`pathspec.GitIgnoreSpec`, bounded and as git reads them."""
    kept: list[str] = []
    for raw in lines:
        line = _keep_trailing_white_space(raw)
        if _runnable(line):
            kept.append(line)
        elif line.startswith("!"):
            kept = []  # taken to re-include everything: the lines before it no longer count
    return pathspec.GitIgnoreSpec.from_lines(kept)


def _keep_trailing_white_space(line: str) -> str:
    """``line`` with git's end: unescaped spaces trimmed, any other white space kept.

    pathspec strips all trailing white space (``str.rstrip``); git strips spaces only,
    so a tab, say, becomes a bracket expression holding the tab, which pathspec keeps.
    """
    chars = _GIT_CHAR.findall(line)
    while chars and chars[-1] == " ":
        chars.pop()
    end = len(chars)
    while end and chars[end - 1][-1].isspace():
        end -= 1
    return "".join(chars[:end]) + "".join(f"[{char[-1]}]" for char in chars[end:])


def _runnable(line: str) -> bool:
    """Whether pathspec reads ``line`` and matches it quickly whatever the path."""
    try:
        pathspec.GitIgnoreSpec.from_lines([line])
    except (ValueError, re.error):  # pathspec's GitIgnorePatternError, a bad range
        return False
    segments = line.removeprefix("!").split("/")
    any_depth = segments[0] not in {"", "**"} and (len(segments) == 1 or segments[1:] == [""])
    globstars = segments.count("**") + any_depth
    stars = sum(segment.count("*") for segment in segments if segment != "**")
    return globstars <= _MAX_GLOBSTARS and globstars + stars <= _MAX_WILDCARDS


def _lines(text: str) -> list[str]:
    """Lines as git reads them: split at LF, a trailing CR removed."""
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
