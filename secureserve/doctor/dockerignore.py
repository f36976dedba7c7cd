r"""Docker's ``.dockerignore`` rules: which paths a build context leaves out.

This module owns Docker's pattern language, which is not git's, so it follows
moby/patternmatcher (what BuildKit runs) step by step instead of using pathspec's
gitignore patterns. A file is read as ``ignorefile.ReadAll`` reads it: lines split at
``\n`` (one trailing ``\r`` dropped), a line starting with ``#`` is a comment before
anything is trimmed, Go's white space is trimmed (also after ``!``), the pattern is
cleaned as ``filepath.Clean`` cleans it and a leading ``/`` dropped. A pattern is
matched against the whole path from the root of the context and against each of its
parent folders, and the last pattern that matches decides, so ``!`` re-includes a
file even inside an excluded folder. There is no "at any depth" as in git: ``*.pem``
is the root's only, ``**/*.pem`` is everywhere; ``*`` and ``?`` never match ``/``;
``**`` matches any number of folders, and Docker's quirks are kept (``**.pem`` is any
path ending in ``.pem``, ``a**b`` is ``ab`` or ``a.../b``). A pattern Docker rejects
(the build then fails) or mistranslates (``*``, ``?`` or ``[`` inside brackets, ``\``
before a letter or digit) is not guessed at: as an exclusion it excludes nothing, as
an exception it re-includes everything, so the doctor errs towards reporting a key.
Patterns are run as automata, in time linear in pattern and path: a hostile pattern
cannot stall the doctor.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["DockerPattern", "excluded", "parse_dockerignore"]

#: What Go's ``strings.TrimSpace`` trims (``unicode.IsSpace``); Python's ``str.strip``
#: also trims \x1c-\x1f, which Docker keeps as part of the pattern.
_GO_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

_Kind = Literal["exact", "prefix", "suffix", "regexp", "unknown"]

# What Docker's regular expression for a pattern is made of (``Pattern.compile``).
_LITERAL: Final = 0  # one given character
_ONE: Final = 1  # ``?``: ``[^/]``
_CLASS: Final = 2  # ``[...]``: one character in (or not in) a set; it can be ``/``
_STAR: Final = 3  # ``*``: ``[^/]*``
_FOLDERS: Final = 4  # ``**`` before more: ``(.*/)?``
_REST: Final = 5  # ``**`` at the end, after a wildcard: ``.*``
_START: Final = 6  # an unescaped ``^``, which Go reads as "at the start of the path"
_WILDCARDS: Final = {"*": _STAR, "?": _ONE}


@dataclass(frozen=True)
class _Token:
    kind: int
    char: str = ""
    ranges: tuple[tuple[str, str], ...] = ()
    negated: bool = False


@dataclass(frozen=True)
class DockerPattern:
    """One cleaned ``.dockerignore`` pattern, compiled as Docker compiles it."""

    #: The cleaned pattern, without its ``!``.
    text: str
    #: True for ``!`` (an exception, which re-includes what it matches).
    exception: bool
    #: Docker's match type, or "unknown" for a pattern it rejects or mistranslates.
    kind: _Kind
    tokens: tuple[_Token, ...] = ()

    @classmethod
    def compile(cls, text: str, *, exception: bool = False) -> DockerPattern:
        """The pattern ``text`` (already cleaned) as Docker matches it."""
        kind, tokens = _compile(text)
        return cls(text, exception, kind, tokens)

    def matches(self, path: str) -> bool:
        """Whether the pattern matches ``path`` (clean, relative, POSIX) or a parent folder."""
        text = self.text
        if self.kind == "exact":
            return path == text or path.startswith(text + "/")
        if self.kind == "prefix":  # a parent starts with it only if the path does
            return path.startswith(text[:-2])
        if self.kind == "suffix":
            tail = text[2:]
            return any(
                candidate.endswith(tail) or (tail.startswith("/") and candidate == tail[1:])
                for candidate in _self_and_parents(path)
            )
        if self.kind == "regexp":
            return _run(self.tokens, path)
        return self.exception


def parse_dockerignore(text: str) -> list[DockerPattern]:
    """The patterns of a ``.dockerignore``, in order (``ReadAll`` then ``New``)."""
    patterns: list[DockerPattern] = []
    for raw in text.removeprefix("\ufeff").split("\n"):
        line = raw.removesuffix("\r")
        if line.startswith("#"):
            continue  # a comment before anything is trimmed
        line = line.strip(_GO_SPACE)
        if not line:
            continue
        exception = line.startswith("!")
        body = line[1:].strip(_GO_SPACE) if exception else line
        if body:
            body = _go_clean(body)
            body = body[1:] if len(body) > 1 and body.startswith("/") else body
        # New() cleans the line again, "!" included: "!../../x" becomes "x".
        pattern = _go_clean("!" + body) if exception else _go_clean(body)
        exception = pattern.startswith("!")
        pattern = pattern[1:] if exception else pattern
        if pattern:  # a bare "!" names no path (Docker refuses the file)
            patterns.append(DockerPattern.compile(pattern, exception=exception))
    return patterns


def excluded(path: str, patterns: Sequence[DockerPattern]) -> bool:
    """Whether ``patterns`` leave ``path`` out of the context (``MatchesOrParentMatches``)."""
    result = False
    for pattern in patterns:
        if pattern.exception == result and pattern.matches(path):
            result = not pattern.exception
    return result


def _go_clean(path: str) -> str:
    """Go's ``filepath.Clean``: ``posixpath.normpath``, but ``//a`` is ``/a`` too."""
    cleaned = posixpath.normpath(path)
    return cleaned[1:] if cleaned.startswith("//") else cleaned


def _self_and_parents(path: str) -> Iterable[str]:
    yield from (path[:end] for end, char in enumerate(path) if char == "/")
    yield path


def _compile(text: str) -> tuple[_Kind, tuple[_Token, ...]]:
    """Docker's match type for ``text`` and, for "regexp", its tokens."""
    tokens: list[_Token] = []
    kind: _Kind = "exact"
    pos, size, first = 0, len(text), True
    while pos < size:
        char = text[pos]
        pos += 1
        if char == "*" and text[pos : pos + 1] == "*":
            pos += 2 if text[pos + 1 : pos + 2] == "/" else 1  # "**/" is read as "**"
            if pos < size:
                tokens.append(_Token(_FOLDERS))
                kind = "regexp"
            elif kind == "exact":
                kind = "prefix"
            else:
                tokens.append(_Token(_REST))
                kind = "regexp"
            kind = "suffix" if first else kind
        elif char in "*?]":
            tokens.append(_Token(_LITERAL, char) if char == "]" else _Token(_WILDCARDS[char]))
            kind = "regexp"
        elif char in "\\[":
            token, pos = _escaped(text, pos) if char == "\\" else _class(text, pos)
            if token is None:
                return "unknown", ()
            tokens.append(token)
            kind = "regexp"
        else:
            tokens.append(_Token(_START) if char == "^" else _Token(_LITERAL, char))
        first = False
    return kind, tuple(tokens)


def _escaped(text: str, pos: int) -> tuple[_Token | None, int]:
    """The character after a backslash: literal when Go's regexp reads it so (punctuation)."""
    char = text[pos : pos + 1]
    if not char or ord(char) >= 0x80 or char.isalnum():  # noqa: PLR2004 - ASCII
        return None, pos  # a trailing "\" is refused; "\d", "\n", ... are not literals
    return _Token(_LITERAL, char), pos + 1


def _class(text: str, pos: int) -> tuple[_Token | None, int]:
    """A bracket expression after its ``[``, with ``filepath.Match``'s syntax checks."""
    negated = text[pos : pos + 1] == "^"
    pos += negated
    ranges: list[tuple[str, str]] = []
    while not (text[pos : pos + 1] == "]" and ranges):
        low, pos = _class_char(text, pos)
        high = low
        if low is not None and text[pos : pos + 1] == "-":
            high, pos = _class_char(text, pos + 1)
        if low is None or high is None or high < low:
            return None, pos
        ranges.append((low, high))
    return _Token(_CLASS, ranges=tuple(ranges), negated=negated), pos + 1


def _class_char(text: str, pos: int) -> tuple[str | None, int]:
    """One character of a range (``getEsc``); None where Docker fails or mistranslates."""
    char = text[pos : pos + 1]
    if char in {"", "-", "]", "*", "?", "["}:  # refused, or turned into regexp syntax
        return None, pos
    if char == "\\":
        token, pos = _escaped(text, pos + 1)
        if token is None:
            return None, pos
        char = token.char
    else:
        pos += 1
    return (char, pos) if pos < len(text) else (None, pos)  # the class must be closed


def _run(tokens: tuple[_Token, ...], path: str) -> bool:
    """Whether ``^tokens$`` matches ``path`` or a parent folder: a linear-time automaton.

    A state ``2 * k`` waits at token ``k``; ``2 * k + 1`` is inside the ``.*`` of a
    ``(.*/)?``. Go's ``.`` never matches a newline; its ``[^/]`` and classes do.
    """
    accept = 2 * len(tokens)
    states = _closure(tokens, {0}, at_start=True)
    for char in path:
        if char == "/" and accept in states:
            return True  # the parent folder so far matches
        following = {new for state in states for new in _moves(tokens, state, char)}
        states = _closure(tokens, following, at_start=False)
        if not states:
            return False
    return accept in states


def _moves(tokens: tuple[_Token, ...], state: int, char: str) -> list[int]:
    """The states that ``state`` moves to on reading ``char``."""
    index, inside = divmod(state, 2)
    if inside:  # ".*" then the "/" that ends "(.*/)"
        stay = [state] if char != "\n" else []
        return [*stay, state + 1] if char == "/" else stay
    if index == len(tokens) or not _reads(tokens[index], char):
        return []
    return [state] if tokens[index].kind in {_STAR, _REST} else [state + 2]


def _closure(tokens: tuple[_Token, ...], states: set[int], *, at_start: bool) -> set[int]:
    """``states`` and every state reachable from them without reading a character."""
    pending = list(states)
    while pending:
        state = pending.pop()
        index, inside = divmod(state, 2)
        if inside or index == len(tokens):
            continue
        kind = tokens[index].kind
        reached: list[int] = []
        if kind in {_STAR, _REST} or (kind == _START and at_start):
            reached = [state + 2]
        elif kind == _FOLDERS:
            reached = [state + 1, state + 2]
        for new in reached:
            if new not in states:
                states.add(new)
                pending.append(new)
    return states


def _reads(token: _Token, char: str) -> bool:
    """Whether ``token`` can read ``char``."""
    if token.kind in {_STAR, _ONE}:
        return char != "/"
    if token.kind == _REST:
        return char != "\n"
    if token.kind == _LITERAL:
        return char == token.char
    if token.kind == _CLASS:
        return any(low <= char <= high for low, high in token.ranges) != token.negated
    return False  # _START reads no character
