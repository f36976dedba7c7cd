"""Shell words and variables as BuildKit's lexer reads them (``shell/lex.go``).

:class:`Lexer` splits text into shell words and expands ``$X``, ``${X}``, ``${X:-w}``
and the other forms BuildKit knows. :func:`expand` uses it as BuildKit expands USER,
ENV, ARG and FROM; :func:`substitute` as a shell substitutes a start command at run
time, quotes and escapes kept. A :class:`Value` carries the unknown variables it was
made from; what cannot be known is named rather than guessed.

Limits, so that a hostile file cannot stall the doctor: values are cut at 4096
characters and one expansion takes in at most 16 KiB of variable text (both marked as
unresolved), and ``${...}`` nests at most 64 deep.

Go's whitespace (``unicode.IsSpace``) and case (``strings.ToLower``), which the parser
uses throughout, are at the end.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final, NamedTuple

__all__ = [
    "GO_SPACE",
    "GO_SPACE_RUN",
    "LexError",
    "Lexer",
    "Value",
    "capped",
    "expand",
    "go_lower",
    "go_lstrip",
    "go_strip",
    "substitute",
]


class Value(NamedTuple):
    """A variable's value, and the unknown variables it was made from."""

    text: str
    unresolved: frozenset[str] = frozenset()


class LexError(ValueError):
    """Text that BuildKit's lexer refuses (or that would expand past the limits)."""


#: Deeper ``${a:-${b:-...}}`` nesting is refused rather than exhausting the stack.
_MAX_NESTING: Final = 64
#: Most variable text one expansion takes in.
_MAX_EXPANSION: Final = 16 * 1024
_SPECIAL_PARAMETERS: Final = frozenset("@*#?-$!0")
_MODIFIERS: Final = frozenset({"-", "+", "?", "#", "%"})


class Lexer:
    """BuildKit's shell-word lexer, as far as this package needs it.

    ``raw`` keeps quotes and escape characters (RawQuotes, RawEscapes). ``keep_unset``
    leaves every unset variable as written (SkipUnsetEnv). Otherwise an unset variable
    without a default is left as written too (BuildKit would put ""), and its name is
    added to ``unresolved``, so that an unknown value never reads as a known one.
    """

    def __init__(
        self,
        text: str,
        env: Mapping[str, Value] | None = None,
        *,
        escape: str = "\\",
        raw: bool = False,
        keep_unset: bool = False,
    ) -> None:
        self._text, self._pos, self._nesting, self._taken = text, 0, 0, 0
        self._env: Mapping[str, Value] = env or {}
        self._escape, self._raw, self._keep_unset = escape, raw, keep_unset
        self._buffer = _WordBuffer()
        self._split = False
        self.unresolved: set[str] = set()

    def word(self) -> str:
        """The whole text, processed (ProcessWord)."""
        return self._until("")[0]

    def words(self) -> list[str]:
        """The text split into shell words (ProcessWords)."""
        self._split = True
        return self._until("")[1]

    def _peek(self) -> str:
        return self._text[self._pos] if self._pos < len(self._text) else ""

    def _take(self) -> str:
        char = self._peek()
        self._pos += len(char)
        return char

    def _until(self, stop: str) -> tuple[str, list[str]]:
        """Read up to ``stop`` (consumed) or the end: text and words (processStopOn)."""
        result: list[str] = []
        words = _Words(self._buffer, active=self._split)
        while char := self._peek():
            if char == stop:
                self._pos += 1
                return "".join(result), words.finish()
            if char in {"'", '"'}:
                piece = self._quoted(char)
                words.add_raw(piece)
            elif char == "$":
                piece = self._dollar()
                words.add_text(piece)
            else:
                piece = self._plain(words)
            result.append(piece)
        if stop:
            raise LexError(f"missing {stop}")
        return "".join(result), words.finish()

    def _plain(self, words: _Words) -> str:
        """A character outside quotes; the escape character makes the next one literal."""
        char = self._take()
        if char != self._escape:
            words.add_text(char)
            return char
        kept = char if self._raw else ""
        escaped = self._take()  # nothing when the escape ends the text
        if kept or escaped:
            words.add_raw(kept + escaped)
        return kept + escaped

    def _quoted(self, quote: str) -> str:
        """'...' is literal; "..." expands $ and lets the escape protect " $ and itself."""
        self._take()
        out = [quote] if self._raw else []
        while char := self._peek():
            if char == quote:
                self._take()
                out += [quote] if self._raw else []
                return "".join(out)
            if quote == '"' and char == "$":
                out.append(self._dollar())
                continue
            self._take()
            if quote == '"' and char == self._escape:
                if self._raw:
                    out.append(char)  # and again below unless it escapes something: as Go
                if not self._peek():
                    continue
                if self._peek() in {'"', "$", self._escape}:
                    char = self._take()
            out.append(char)
        raise LexError(f"missing {quote}")

    def _dollar(self) -> str:
        self._nesting += 1
        try:
            if self._nesting > _MAX_NESTING:
                raise LexError("nested too deeply")
            return self._substitution()
        finally:
            self._nesting -= 1

    def _substitution(self) -> str:
        """What ``$...`` stands for (processDollar)."""
        self._take()
        if self._peek() != "{":
            name = self._name()
            return self._lookup(name, "$" + name) if name else "$"
        self._take()
        if self._peek() in {"", "{", "}", ":"}:
            raise LexError("bad substitution")
        name = self._name()
        operator = self._take()
        if operator == "}":
            return self._lookup(name, "${" + name + "}")
        colon = operator == ":"
        if colon:
            operator = self._take()
        if operator == "/" and not colon:
            return self._replacement(name)
        if operator not in _MODIFIERS or (colon and operator in {"#", "%"}):
            raise LexError(f"unsupported modifier {operator!r}")
        word = self._until("}")[0]
        return self._modified(name, operator, word, colon=colon)

    def _name(self) -> str:
        """A variable name: digits, one special parameter, or letters, digits and ``_``."""
        start = self._pos
        if self._peek().isdecimal():
            while self._peek().isdecimal():
                self._pos += 1
        elif self._peek() in _SPECIAL_PARAMETERS:
            self._pos += 1
        else:
            while (char := self._peek()) and (char.isalpha() or char.isdecimal() or char == "_"):
                self._pos += 1
        return self._text[start : self._pos]

    def _get(self, name: str) -> Value | None:
        """The variable's value, if set; what it was made from counts as used."""
        value = self._env.get(name)
        if value is not None:
            self._taken += len(value.text)
            if self._taken > _MAX_EXPANSION:
                raise LexError("expands to too much text")
            self.unresolved.update(value.unresolved)
        return value

    def _lookup(self, name: str, written: str) -> str:
        value = self._get(name)
        if value is not None:
            return value.text
        self._unknown(name)
        return written

    def _unknown(self, name: str) -> None:
        """Record an unset variable (not ``$1``, ``$@``...: the shell's own)."""
        if not self._keep_unset and (name[:1].isalpha() or name[:1] == "_"):
            self.unresolved.add(name)

    def _modified(self, name: str, operator: str, word: str, *, colon: bool) -> str:
        """``${X-w}``, ``${X+w}``, ``${X?w}`` (``:`` also treats empty as unset)."""
        value = self._get(name)
        written = "${" + name + (":" if colon else "") + operator + word + "}"
        if value is None:
            return self._unset_modified(name, operator, word, written)
        empty = colon and not value.text
        if operator == "-":
            return word if empty else value.text
        if operator == "+":
            return "" if empty else word
        if operator == "?" and not empty:
            return value.text
        self.unresolved.add("${" + name + (":" if colon else "") + operator + "...}")
        return written  # a refused empty value, or pattern removal: not modelled

    def _unset_modified(self, name: str, operator: str, word: str, written: str) -> str:
        if self._keep_unset:
            return written
        if operator == "-":
            return word
        self._unknown(name)  # it may be set at build or run time
        return "" if operator == "+" else written

    def _replacement(self, name: str) -> str:
        """``${X/pattern/replacement}``: not modelled."""
        if self._peek() == "/":
            self._take()
        pattern = self._until("/")[0]
        replacement = self._until("}")[0]
        if not self._keep_unset:
            self.unresolved.add("${" + name + "/...}")
        return "${" + name + "/" + pattern + "/" + replacement + "}"


class _WordBuffer:
    """The characters of the word being read."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)

    def clear(self) -> None:
        self.parts.clear()
        self.size = 0


class _Words:
    """The lexer's word splitting (wordsStruct).

    BuildKit's lexer shares one buffer between a word and the ``${X:-...}`` read inside
    it, so the start of that word is lost; reproduced, since it decides what is a
    heredoc (it can only make fewer).
    """

    def __init__(self, buffer: _WordBuffer, *, active: bool) -> None:
        buffer.clear()
        self._buffer = buffer
        self._active = active  # else nothing is split: only the text is wanted
        self._in_word = False
        self.words: list[str] = []

    def add_text(self, text: str) -> None:
        """Characters that whitespace splits."""
        if not self._active:
            return
        for char in text:
            if char not in GO_SPACE:
                self.add_raw(char)
            elif self._in_word and self._buffer.size:
                self._end_word()

    def add_raw(self, text: str) -> None:
        """Characters kept in the word whatever they are (quoted or escaped)."""
        if not self._active:
            return
        self._buffer.add(text)
        self._in_word = True

    def finish(self) -> list[str]:
        if self._buffer.size:
            self._end_word()
        return self.words

    def _end_word(self) -> None:
        self.words.append("".join(self._buffer.parts))
        self._buffer.clear()
        self._in_word = False


# --- values: expansion, substitution and their limits -----------------------------------

#: Longest value kept for a variable (``ENV A=$A$A`` doubles at each line).
_MAX_VALUE: Final = 4096
#: Most names kept in one set of unresolved names (the others are counted).
_MAX_NAMES: Final = 16
_MARK_CHARS: Final = 40


def substitute(text: str, env: Mapping[str, Value], unresolved: set[str]) -> str:
    """``text`` with its variables replaced as a shell would, quotes and escapes kept."""
    lexer = Lexer(text, env, raw=True)
    try:
        substituted = lexer.word()
    except LexError:
        unresolved.add(_not_understood(text))
        return text
    unresolved.update(lexer.unresolved)
    return substituted


def expand(text: str, scope: Mapping[str, Value], escape: str) -> Value:
    """``text`` expanded as BuildKit expands USER, ENV, ARG and FROM (ProcessWord)."""
    lexer = Lexer(text, scope, escape=escape)
    try:
        expanded = lexer.word()
    except LexError:
        return _value(text, {_not_understood(text)})
    return _value(expanded, lexer.unresolved)


def _value(text: str, unresolved: Iterable[str]) -> Value:
    """A value cut to ``_MAX_VALUE`` characters (marked if it was)."""
    names = set(unresolved)
    if len(text) > _MAX_VALUE:
        text = text[:_MAX_VALUE]
        names.add(f"a value longer than {_MAX_VALUE} characters")
    return Value(text, capped(names))


def capped(names: set[str]) -> frozenset[str]:
    """At most ``_MAX_NAMES`` names and a count of the others."""
    if len(names) <= _MAX_NAMES + 1:
        return frozenset(names)
    return frozenset([*sorted(names)[:_MAX_NAMES], f"{len(names) - _MAX_NAMES} more"])


def _not_understood(text: str) -> str:
    """A mark for text BuildKit's lexer refuses, short enough for a message."""
    shown = text if len(text) <= _MARK_CHARS else text[:_MARK_CHARS] + "..."
    return f"{shown} (not understood)"


# --- Go's whitespace and case ---------------------------------------------------------

#: Go's ``unicode.IsSpace``; Python's ``str.isspace`` also counts ``\x1c``-``\x1f``.
_GO_SPACE_CHARS: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
GO_SPACE: Final = frozenset(_GO_SPACE_CHARS)
GO_SPACE_RUN: Final = re.compile(f"[{_GO_SPACE_CHARS}]+")


def go_lstrip(text: str) -> str:
    """``text`` without Go's leading whitespace."""
    return text.lstrip(_GO_SPACE_CHARS)


def go_strip(text: str) -> str:
    """``text`` without Go's leading and trailing whitespace."""
    return text.strip(_GO_SPACE_CHARS)


def go_lower(text: str) -> str:
    """Go's ``strings.ToLower``: ``İ`` becomes ``i``, where Python adds a combining dot."""
    return text.replace("\u0130", "i").lower()
