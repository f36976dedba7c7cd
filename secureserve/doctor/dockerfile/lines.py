r"""The logical lines of a Dockerfile, as BuildKit's parser reads them (``parser/``).

:func:`instructions` yields each logical line as an :class:`Instruction`: directives
(``# escape=``) read on the leading lines, continuation lines joined, blank and comment
lines skipped, the keyword and builder flags split off (``split_command.go``,
extractBuilderFlags), and the heredocs of RUN, COPY and ADD skipped. :func:`json_array`
reads the exec form (a JSON array) as Go's decoder does.

Lines end at ``\n`` only, trailing ``\r`` are dropped and a byte-order mark is ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from secureserve.doctor.dockerfile.lexer import (
    GO_SPACE,
    Lexer,
    LexError,
    go_lower,
    go_lstrip,
    go_strip,
)

__all__ = ["TOKEN_SPACE", "Instruction", "instructions", "json_array", "split_command"]


@dataclass(frozen=True)
class Instruction:
    """One logical line: its keyword (lower case) and its arguments after builder flags."""

    keyword: str
    args: str
    line: str
    escape: str


class _Lines:
    r"""The physical lines, split on ``\n`` alone and without their trailing ``\r``."""

    def __init__(self, text: str) -> None:
        lines = text.removeprefix("\ufeff").split("\n")
        if lines[-1] == "":
            lines.pop()  # the end of the last line, not a line
        self._lines = [line.rstrip("\r") for line in lines]
        self._next = 0

    def take(self) -> str | None:
        if self._next == len(self._lines):
            return None
        self._next += 1
        return self._lines[self._next - 1]

    def skip_heredoc(self, terminator: str, *, strip_tabs: bool) -> None:
        while (line := self.take()) is not None:
            if (line.lstrip("\t") if strip_tabs else line) == terminator:
                return


#: Go's ``\s`` in BuildKit's directive pattern ``^#\s*(name)\s*=\s*(.+?)\s*$``.
_DIRECTIVE_SPACE: Final = "\t\n\f\r "
_DIRECTIVE_NAME: Final = re.compile(r"[a-zA-Z][a-zA-Z0-9]*")
_DIRECTIVE_NAMES: Final = frozenset({"escape", "syntax", "check"})


class _Directives:
    """``# name=value`` lines before anything else (directives.go)."""

    def __init__(self) -> None:
        self.escape = "\\"
        self._open = True
        self._seen: set[str] = set()

    def read(self, line: str) -> None:
        if not self._open:
            return
        name, value = _directive(line)
        if name not in _DIRECTIVE_NAMES:
            self._open = False
        elif name not in self._seen:  # a repeated one makes BuildKit refuse the file
            self._seen.add(name)
            if name == "escape" and value in {"\\", "`"}:
                self.escape = value


def _directive(line: str) -> tuple[str, str]:
    """The lower-case name and the value of a ``# name=value`` line; ``("", "")`` if not one."""
    name, equals, value = line.removeprefix("#").partition("=")
    name, value = name.strip(_DIRECTIVE_SPACE), value.strip(_DIRECTIVE_SPACE)
    if not line.startswith("#") or not equals or not value or not _DIRECTIVE_NAME.fullmatch(name):
        return "", ""
    return name.lower(), value


def instructions(text: str) -> Iterator[Instruction]:
    """The instructions of a Dockerfile, its lines read as BuildKit's parser reads them."""
    lines = _Lines(text)
    directives = _Directives()
    while (raw := lines.take()) is not None:
        first = go_lstrip(raw)
        directives.read(first)
        piece, continued = _continuation("" if first.startswith("#") else first, directives.escape)
        if not piece and not continued:
            continue
        pieces = [piece]
        while continued and (raw := lines.take()) is not None:
            if go_lstrip(raw)[:1] in {"", "#"}:
                continue  # blank and comment lines do not end a continuation
            piece, continued = _continuation(raw, directives.escape)
            pieces.append(piece)
        instruction = split_command("".join(pieces), directives.escape)
        for terminator, strip_tabs in _heredocs(instruction):
            lines.skip_heredoc(terminator, strip_tabs=strip_tabs)
        yield instruction


def _continuation(line: str, escape: str) -> tuple[str, bool]:
    """``line`` without its continuation mark, and whether the next line continues it."""
    body = line.rstrip(" \t")
    if body.endswith(escape) and body[-2:] != escape * 2:
        return body[:-1], True
    return line, False


TOKEN_SPACE: Final = re.compile(r"[\t\v\f\r ]+")


def split_command(line: str, escape: str) -> Instruction:
    """The keyword, builder flags and arguments of a logical line (split_command.go)."""
    parts = TOKEN_SPACE.split(go_strip(line), maxsplit=1)
    _, args = _builder_flags(parts[1]) if len(parts) > 1 else ((), "")
    return Instruction(go_lower(parts[0]), go_strip(args), line, escape)


def _builder_flags(text: str) -> tuple[tuple[str, ...], str]:
    """Leading ``--name[=value]`` words, and the rest (extractBuilderFlags).

    A flag written without ``=`` takes the next word as its value, until a flag with an
    ``=`` has been seen (BuildKit's rule); a ``--`` word ends the flags.
    """
    flags: list[str] = []
    takes_value, value_next = True, False
    for word, has_equals, start, end in _flag_words(text):
        if value_next:
            flags[-1] += "=" + word
            takes_value, value_next = True, False
            continue
        if not text.startswith("--", start):
            return tuple(flags), text[start:]
        if word == "--":
            return tuple(flags), text[end:]
        takes_value = takes_value and not has_equals
        value_next = takes_value
        flags.append(word)
    return tuple(flags), ""


def _flag_words(text: str) -> Iterator[tuple[str, bool, int, int]]:
    r"""(word, has an unquoted ``=``, start, end): quotes removed, ``\`` escapes applied."""
    pos = 0
    while True:
        while pos < len(text) and text[pos] in GO_SPACE:
            pos += 1
        if pos == len(text):
            return
        start, chars, quote, has_equals = pos, [], "", False
        while pos < len(text) and (quote or text[pos] not in GO_SPACE):
            char, pos = text[pos], pos + 1
            if quote and char == quote:
                quote = ""
                continue
            if not quote and char in {"'", '"'}:
                quote = char
                continue
            has_equals = has_equals or (not quote and char == "=")
            if char == "\\":
                if pos == len(text):
                    break  # an escape at the very end is dropped
                char, pos = text[pos], pos + 1
            chars.append(char)
        yield "".join(chars), has_equals, start, pos


_HEREDOC: Final = re.compile(r"([0-9]*)<<(-?)([^<]*)")
_HEREDOC_KEYWORDS: Final = frozenset({"run", "copy", "add"})


def _heredocs(instruction: Instruction) -> list[tuple[str, bool]]:
    """The heredocs ``instruction`` opens, in order: (terminator, strip leading tabs)."""
    target = instruction
    if target.keyword == "onbuild":
        target = split_command(target.args, target.escape)
    if target.keyword not in _HEREDOC_KEYWORDS or "<<" not in instruction.line:
        return []
    if _exec_form(target.args) is not None:
        return []
    try:  # one shell word at a time, quotes kept: "a <<EOF" is no heredoc
        words = Lexer(instruction.line, raw=True, keep_unset=True).words()
    except LexError:
        return []  # BuildKit then looks for none
    heredocs = []
    for word in words:
        match = _HEREDOC.fullmatch(word)
        if match is None or not match.group(3):
            continue
        try:
            name = Lexer(match.group(3), keep_unset=True).words()
        except LexError:
            continue  # BuildKit refuses the file
        if len(name) == 1:
            heredocs.append((name[0], match.group(2) == "-"))
    return heredocs


def _exec_form(args: str) -> list[str] | None:
    array = json_array(args)
    if array is None or not all(isinstance(item, str) for item in array):
        return None
    return [str(item) for item in array]


def json_array(args: str) -> list[object] | None:
    """The JSON array ``args`` starts with; text after it is ignored, as Go's decoder does."""
    text = go_lstrip(args)
    if not text.startswith("["):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else None
