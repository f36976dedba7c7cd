r"""Read a Dockerfile the way BuildKit does, far enough to judge the image it makes.

:func:`parse_dockerfile` follows moby/buildkit's Dockerfile frontend (``parser/parser.go``,
``parser/line_parsers.go``, ``parser/split_command.go``, ``shell/lex.go``,
``dockerfile2llb/convert.go``):

* **Lines** end at ``\n`` only (not ``\r``, ``\f`` or ``\x1c``); trailing ``\r`` are
  dropped and a byte-order mark is ignored.
* **Directives**: ``# escape=`` then ``\`` or a backtick sets the escape character, on
  the leading lines only (until the first line that is not a directive); ``# syntax=``
  and ``# check=`` are read past.
* **Continuation**: a line whose last character before spaces and tabs is the escape
  character, not itself escaped, continues; blank and comment lines inside are skipped;
  the pieces are joined as they are.
* **Whitespace and case** are Go's (``unicode.IsSpace``, ``strings.ToLower``); builder
  flags (``--platform x``) are taken off the front of the arguments.
* **Heredocs** exist only in the shell form of RUN, COPY and ADD (also after ONBUILD):
  each shell word ``[n]<<[-]WORD`` opens one, read in turn, ended by a line equal to
  the unquoted word (after its leading tabs for ``<<-``).
* **Stages**: the last one is the image. ``FROM <earlier stage>`` inherits its USER,
  ENV, ENTRYPOINT, CMD, HEALTHCHECK and build-time variables, then runs its ONBUILD
  triggers; ENTRYPOINT clears an inherited CMD.
* **Variables**: an ARG before the first FROM is seen by FROM lines, and in a stage only
  through ``ARG NAME``; ARG and ENV values are seen by later instructions (the last
  written wins). USER is expanded at build time; ENTRYPOINT and CMD as the shell does at
  run time, from the image's ENV. ``$X``, ``${X}``, ``${X:-w}``, ``${X-w}``,
  ``${X:+w}``, ``${X+w}``, ``${X:?w}``, quotes and escapes as BuildKit's lexer reads them.
* **Exec form** is a JSON array of strings; like Go's decoder, text after it is ignored.

What cannot be known here, or is not modelled, is put in :attr:`Image.unresolved`
rather than guessed: variables without a value (build args, a base image's ENV,
``docker run -e``), pattern substitutions (``${X%p}``), command substitution, exec
forms BuildKit refuses, text its lexer refuses, a FROM naming an unknown variable.

Not modelled: ``--build-arg`` and ``--target`` (defaults and the last stage are used),
what a base image brings (no USER here is root), ``SHELL``, a custom frontend chosen by
``# syntax=``, the byte-level quirks of builder-flag parsing, the 64 KiB line limit.

A hostile file must not stall the doctor: every step is linear in the file's size,
values are cut at 4096 characters and one expansion at 16 KiB of variable text (both
marked as unresolved), and ``${...}`` nests at most 64 deep.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

from secureserve.doctor._read import MAX_TEXT_BYTES
from secureserve.errors import ConfigError
from secureserve.secretfiles import read_regular

__all__ = ["Image", "parse_dockerfile", "read_dockerfile"]

#: The names ``docker build`` tries, in its order; podman's Containerfile last.
_NAMES: Final = ("Dockerfile", "dockerfile", "Containerfile")


@dataclass
class Image:
    """What the final stage of a Dockerfile runs with (after inheritance).

    ``user`` is the last USER, variables substituted; None when no stage sets one. A
    user part that the runtime reads as uid 0 is written ``0``: an empty one (``USER
    :0``, ``USER ""``: the default, root) and a number Go's ``strconv.Atoi`` reads as 0
    modulo 2**32 (``+0``, ``4294967296``: containerd keeps 32 bits). So
    ``user.split(":")[0]`` is ``"0"`` for root spelled in any of these ways.

    ``command`` is the ENTRYPOINT then the CMD, substituted from ``env`` as the shell
    would at run time, with every string in it split into shell words (the shell form,
    and exec-form arguments such as the script of ``sh -c``): ``--dev`` is a word of its
    own wherever it is passed. It is for inspection, not for running.

    ``unresolved`` holds the names of variables the user or command depends on whose
    value cannot be known here, and marks such as ``$(...)`` or ``${X%...}`` for what
    the parser does not model there.
    """

    user: str | None = None
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    healthcheck: bool = False
    unresolved: set[str] = field(default_factory=set)


def parse_dockerfile(text: str) -> Image:
    """The final image's user, command, environment and health check."""
    global_args, plans = _read_plans(text)
    return _final_image(_build(plans, global_args)) if plans else Image()


def read_dockerfile(project: Path) -> tuple[Path, str] | None:
    """The file ``docker build`` would use in ``project``, and its text; None if none.

    As in docker's CLI, a name that exists in any form is chosen (``Dockerfile``, then
    ``dockerfile``; then ``Containerfile``). If it is not a readable regular file of at
    most 1 MiB, :class:`ConfigError` says why, naming it.
    """
    for name in _NAMES:
        path = project / name
        if not _exists(path):
            continue
        try:
            content = read_regular(path, max_bytes=MAX_TEXT_BYTES, source=str(path))
        except FileNotFoundError:
            raise ConfigError(f"{path} is a symbolic link to a missing file.") from None
        return path, content.decode("utf-8", errors="replace")
    return None


def _exists(path: Path) -> bool:
    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # there, but not for us: reading it says why
    return True


# --- lines: directives, continuation, comments, heredocs (parser.go) ----------------


@dataclass(frozen=True)
class _Instruction:
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


def _instructions(text: str) -> Iterator[_Instruction]:
    """The instructions of a Dockerfile, its lines read as BuildKit's parser reads them."""
    lines = _Lines(text)
    directives = _Directives()
    while (raw := lines.take()) is not None:
        first = _go_lstrip(raw)
        directives.read(first)
        piece, continued = _continuation("" if first.startswith("#") else first, directives.escape)
        if not piece and not continued:
            continue
        pieces = [piece]
        while continued and (raw := lines.take()) is not None:
            if _go_lstrip(raw)[:1] in {"", "#"}:
                continue  # blank and comment lines do not end a continuation
            piece, continued = _continuation(raw, directives.escape)
            pieces.append(piece)
        instruction = _split_command("".join(pieces), directives.escape)
        for terminator, strip_tabs in _heredocs(instruction):
            lines.skip_heredoc(terminator, strip_tabs=strip_tabs)
        yield instruction


def _continuation(line: str, escape: str) -> tuple[str, bool]:
    """``line`` without its continuation mark, and whether the next line continues it."""
    body = line.rstrip(" \t")
    if body.endswith(escape) and body[-2:] != escape * 2:
        return body[:-1], True
    return line, False


_TOKEN_SPACE: Final = re.compile(r"[\t\v\f\r ]+")


def _split_command(line: str, escape: str) -> _Instruction:
    """The keyword, builder flags and arguments of a logical line (split_command.go)."""
    parts = _TOKEN_SPACE.split(_go_strip(line), maxsplit=1)
    _, args = _builder_flags(parts[1]) if len(parts) > 1 else ((), "")
    return _Instruction(_go_lower(parts[0]), _go_strip(args), line, escape)


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
        while pos < len(text) and text[pos] in _GO_SPACE:
            pos += 1
        if pos == len(text):
            return
        start, chars, quote, has_equals = pos, [], "", False
        while pos < len(text) and (quote or text[pos] not in _GO_SPACE):
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


def _heredocs(instruction: _Instruction) -> list[tuple[str, bool]]:
    """The heredocs ``instruction`` opens, in order: (terminator, strip leading tabs)."""
    target = instruction
    if target.keyword == "onbuild":
        target = _split_command(target.args, target.escape)
    if target.keyword not in _HEREDOC_KEYWORDS or "<<" not in instruction.line:
        return []
    if _exec_form(target.args) is not None:
        return []
    try:  # one shell word at a time, quotes kept: "a <<EOF" is no heredoc
        words = _Lexer(instruction.line, raw=True, keep_unset=True).words()
    except _LexError:
        return []  # BuildKit then looks for none
    heredocs = []
    for word in words:
        match = _HEREDOC.fullmatch(word)
        if match is None or not match.group(3):
            continue
        try:
            name = _Lexer(match.group(3), keep_unset=True).words()
        except _LexError:
            continue  # BuildKit refuses the file
        if len(name) == 1:
            heredocs.append((name[0], match.group(2) == "-"))
    return heredocs


# --- stages: what each instruction does to the image (dockerfile2llb) ----------------


class _Value(NamedTuple):
    """A variable's value, and the unknown variables it was made from."""

    text: str
    unresolved: frozenset[str] = frozenset()


class _Form(NamedTuple):
    """An ENTRYPOINT or CMD: exec-form words, or one shell string; a mark if refused."""

    texts: tuple[str, ...]
    problem: str | None = None


@dataclass
class _Plan:
    """A stage as written: the earlier stage it is built FROM, and its instructions."""

    name: str | None
    parent: int | None
    #: Unknowns in the FROM line (``FROM $X`` with X unknown).
    notes: frozenset[str]
    body: list[_Instruction] = field(default_factory=list)


@dataclass
class _Stage:
    """A stage as built so far."""

    #: What ``$X`` means at build time: ARG and ENV values, the last written wins.
    variables: dict[str, _Value] = field(default_factory=dict)
    #: The image's ENV, what ``$X`` means at run time.
    env: dict[str, _Value] = field(default_factory=dict)
    #: ENV names whose build-time value a later ARG replaced (the ENV value returns
    #: in stages built FROM this one).
    shadowed: set[str] = field(default_factory=set)
    user: _Value | None = None
    entrypoint: _Form | None = None
    cmd: _Form | None = None
    cmd_set: bool = False
    healthcheck: bool = False
    notes: frozenset[str] = frozenset()


_AS_ARGS: Final = 3  # FROM image AS name
_NOT_TRIGGERS: Final = frozenset({"onbuild", "from", "maintainer"})


def _read_plans(text: str) -> tuple[dict[str, _Value], list[_Plan]]:
    """The ARG values before the first FROM, and the stages."""
    global_args: dict[str, _Value] = {}
    plans: list[_Plan] = []
    names: dict[str, int] = {}
    for instruction in _instructions(text):
        if instruction.keyword == "from":
            words = _TOKEN_SPACE.split(instruction.args) if instruction.args else [""]
            base = _expand(words[0], global_args, instruction.escape)
            named = len(words) == _AS_ARGS and words[1].casefold() == "as"
            name = _go_lower(words[2]) if named else None
            plans.append(_Plan(name, names.get(base.text), base.unresolved))
            if name is not None:
                names[name] = len(plans) - 1
        elif plans:
            plans[-1].body.append(instruction)
        elif instruction.keyword == "arg":
            _assign_args(global_args, instruction, defaults={})
    return global_args, plans


def _build(plans: list[_Plan], global_args: Mapping[str, _Value]) -> _Stage:
    """The last stage, built along the stages it comes FROM (the others do not matter)."""
    chain: list[_Plan] = []
    index: int | None = len(plans) - 1
    while index is not None:
        chain.append(plans[index])
        index = plans[index].parent
    stage, parent = _Stage(notes=chain[-1].notes), None
    for plan in reversed(chain):
        if parent is not None:
            stage = _inherit(stage, parent, global_args)
        for instruction in plan.body:
            _apply(stage, instruction, global_args)
        parent = plan
    return stage


def _inherit(built: _Stage, plan: _Plan, global_args: Mapping[str, _Value]) -> _Stage:
    """A stage built FROM ``built``: its state, then the ONBUILD triggers of its ``plan``."""
    variables = built.variables  # taken over: ``built`` is not used again
    for name in built.shadowed:
        variables[name] = built.env[name]
    stage = _Stage(
        variables=variables,
        env=built.env,
        user=built.user,
        entrypoint=built.entrypoint,
        cmd=built.cmd,
        healthcheck=built.healthcheck,
        notes=built.notes,
    )
    for instruction in plan.body:
        if instruction.keyword == "onbuild":
            trigger = _split_command(instruction.args, instruction.escape)
            if trigger.keyword not in _NOT_TRIGGERS:  # refused by BuildKit
                _apply(stage, trigger, global_args)
    return stage


def _apply(stage: _Stage, instruction: _Instruction, global_args: Mapping[str, _Value]) -> None:
    """What ``instruction`` changes in ``stage``; instructions without effect on it pass."""
    keyword, args = instruction.keyword, instruction.args
    if keyword == "arg":
        assigned = _assign_args(stage.variables, instruction, defaults=global_args)
        stage.shadowed.update(name for name in assigned if name in stage.env)
    elif keyword == "env":
        pairs = _env_pairs(instruction, stage.variables)
        stage.variables.update(pairs)
        stage.env.update(pairs)
        stage.shadowed.difference_update(pairs)
    elif keyword == "user":
        stage.user = _user(_expand(args, stage.variables, instruction.escape))
    elif keyword == "entrypoint":
        stage.entrypoint = _command_form("ENTRYPOINT", args)
        if not stage.cmd_set:
            stage.cmd = None  # an inherited CMD is not kept
    elif keyword == "cmd":
        stage.cmd, stage.cmd_set = _command_form("CMD", args), True
    elif keyword == "healthcheck":
        kind = _GO_SPACE_RUN.split(args, maxsplit=1)[0]
        stage.healthcheck = kind.upper() not in {"", "NONE"}


def _assign_args(
    scope: dict[str, _Value], instruction: _Instruction, *, defaults: Mapping[str, _Value]
) -> list[str]:
    """``ARG NAME[=default] ...``: defaults expanded in turn; a bare name takes ``defaults``."""
    assigned = []
    for word in _words(instruction.args, instruction.escape):
        name, equals, default = word.partition("=")
        if equals:
            scope[name] = _expand(default, scope, instruction.escape)
        elif name in defaults:
            scope[name] = defaults[name]
        else:
            continue  # declared without a value: a build arg, unknown here
        assigned.append(name)
    return assigned


def _env_pairs(instruction: _Instruction, scope: Mapping[str, _Value]) -> dict[str, _Value]:
    """``ENV KEY=value ...`` (or ``ENV KEY value``), all expanded with the values before it."""
    args, escape = instruction.args, instruction.escape
    words = _words(args, escape)
    if words and "=" not in words[0]:
        key, _, value = _TOKEN_SPACE.sub(" ", args, count=1).partition(" ")
        pairs = [(key, value)] if value else []  # BuildKit refuses a key alone
    elif all("=" in word for word in words):
        pairs = [(key, value) for key, _, value in (word.partition("=") for word in words)]
    else:
        pairs = []  # BuildKit refuses the line
    return {_expand(key, scope, escape).text: _expand(value, scope, escape) for key, value in pairs}


_ATOI: Final = re.compile(r"[+-]?[0-9]+")
_UID_BITS: Final = 32
_INT64: Final = 2**63


def _user(user: _Value) -> _Value:
    """``user`` with a user part that the runtime reads as uid 0 written ``0``."""
    name, colon, group = user.text.partition(":")
    return _Value("0" + colon + group, user.unresolved) if _is_uid_0(name) else user


def _is_uid_0(name: str) -> bool:
    """Empty (the default user), or a number ``strconv.Atoi`` reads as 0 in 32 bits."""
    if not name:
        return True
    if _ATOI.fullmatch(name) is None:
        return False
    number = int(name)
    return -_INT64 <= number < _INT64 and number % 2**_UID_BITS == 0


def _command_form(keyword: str, args: str) -> _Form:
    """The exec form (a JSON array of strings) or the shell form of ENTRYPOINT or CMD."""
    array = _json_array(args)
    if array is None:
        looks_json = _go_lstrip(args).startswith("[")
        return _Form((args,), f"{keyword} [...] that is not JSON" if looks_json else None)
    if all(isinstance(item, str) for item in array):
        return _Form(tuple(str(item) for item in array))
    return _Form((), f"{keyword} JSON array that is not all strings")


def _exec_form(args: str) -> list[str] | None:
    array = _json_array(args)
    if array is None or not all(isinstance(item, str) for item in array):
        return None
    return [str(item) for item in array]


def _json_array(args: str) -> list[object] | None:
    """The JSON array ``args`` starts with; text after it is ignored, as Go's decoder does."""
    text = _go_lstrip(args)
    if not text.startswith("["):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def _words(text: str, escape: str) -> list[str]:
    """Words as ARG and ENV split them, quotes and escapes kept (parseWords)."""
    words: list[str] = []
    word: list[str] = []
    quote, keep_empty, pos = "", False, 0
    while pos < len(text):
        char, pos = text[pos], pos + 1
        if not quote and char in _GO_SPACE:
            if word or keep_empty:
                words.append("".join(word))
            word, keep_empty = [], False
            continue
        if char == escape and quote != "'":
            if pos == len(text):
                quote = ""  # an escape at the very end is dropped
                continue
            word.append(char)
            char, pos = text[pos], pos + 1
        elif quote and char == quote:
            quote = ""
        elif not quote and char in {"'", '"'}:
            quote, keep_empty = char, True
        word.append(char)
    if word or keep_empty:
        words.append("".join(word))
    return words


# --- the final image, and values -----------------------------------------------------

#: What a POSIX shell has set before reading the command.
_SHELL_DEFAULTS: Final = {"IFS": _Value(" \t\n")}
#: Longest value kept for a variable (``ENV A=$A$A`` doubles at each line).
_MAX_VALUE: Final = 4096
#: Most names kept in one set of unresolved names (the others are counted).
_MAX_NAMES: Final = 16
#: Longest string split with shlex (slow on long words); longer ones split on whitespace.
_MAX_SHLEX: Final = 8192
_SHELL_SPECIAL: Final = re.compile(r"[\s'\"\\]")
_MARK_CHARS: Final = 40


def _final_image(stage: _Stage) -> Image:
    unresolved = set(stage.notes | (stage.user.unresolved if stage.user else frozenset()))
    runtime = {**_SHELL_DEFAULTS, **stage.env}
    command: list[str] = []
    for form in (stage.entrypoint, stage.cmd):
        if form is not None:
            command += _command_words(form, runtime, unresolved)
    return Image(
        user=stage.user.text if stage.user else None,
        command=command,
        env={key: value.text for key, value in stage.env.items()},
        healthcheck=stage.healthcheck,
        unresolved=set(_capped(unresolved)),
    )


def _command_words(form: _Form, env: Mapping[str, _Value], unresolved: set[str]) -> list[str]:
    """The words of a start command, each string substituted and split as by a shell."""
    if form.problem:
        unresolved.add(form.problem)
    words: list[str] = []
    for text in form.texts:
        if "$(" in text or "`" in text:
            unresolved.add("$(...)")
        words += _shell_words(_substitute(text, env, unresolved))
    return words


def _shell_words(text: str) -> list[str]:
    """``text`` split as a shell would (shlex); on whitespace if unbalanced or long."""
    if _SHELL_SPECIAL.search(text) is None:
        return [text] if text else []
    if len(text) > _MAX_SHLEX:
        return text.split()
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _substitute(text: str, env: Mapping[str, _Value], unresolved: set[str]) -> str:
    """``text`` with its variables replaced as a shell would, quotes and escapes kept."""
    lexer = _Lexer(text, env, raw=True)
    try:
        substituted = lexer.word()
    except _LexError:
        unresolved.add(_not_understood(text))
        return text
    unresolved.update(lexer.unresolved)
    return substituted


def _expand(text: str, scope: Mapping[str, _Value], escape: str) -> _Value:
    """``text`` expanded as BuildKit expands USER, ENV, ARG and FROM (ProcessWord)."""
    lexer = _Lexer(text, scope, escape=escape)
    try:
        expanded = lexer.word()
    except _LexError:
        return _value(text, {_not_understood(text)})
    return _value(expanded, lexer.unresolved)


def _value(text: str, unresolved: Iterable[str]) -> _Value:
    """A value cut to ``_MAX_VALUE`` characters (marked if it was)."""
    names = set(unresolved)
    if len(text) > _MAX_VALUE:
        text = text[:_MAX_VALUE]
        names.add(f"a value longer than {_MAX_VALUE} characters")
    return _Value(text, _capped(names))


def _capped(names: set[str]) -> frozenset[str]:
    """At most ``_MAX_NAMES`` names and a count of the others."""
    if len(names) <= _MAX_NAMES + 1:
        return frozenset(names)
    return frozenset([*sorted(names)[:_MAX_NAMES], f"{len(names) - _MAX_NAMES} more"])


def _not_understood(text: str) -> str:
    """A mark for text BuildKit's lexer refuses, short enough for a message."""
    shown = text if len(text) <= _MARK_CHARS else text[:_MARK_CHARS] + "..."
    return f"{shown} (not understood)"


# --- shell words and variables (shell/lex.go) -----------------------------------------


class _LexError(ValueError):
    """Text that BuildKit's lexer refuses (or that would expand past the limits)."""


#: Deeper ``${a:-${b:-...}}`` nesting is refused rather than exhausting the stack.
_MAX_NESTING: Final = 64
#: Most variable text one expansion takes in.
_MAX_EXPANSION: Final = 16 * 1024
_SPECIAL_PARAMETERS: Final = frozenset("@*#?-$!0")
_MODIFIERS: Final = frozenset({"-", "+", "?", "#", "%"})


class _Lexer:
    """BuildKit's shell-word lexer, as far as this module needs it.

    ``raw`` keeps quotes and escape characters (RawQuotes, RawEscapes). ``keep_unset``
    leaves every unset variable as written (SkipUnsetEnv). Otherwise an unset variable
    without a default is left as written too (BuildKit would put ""), and its name is
    added to ``unresolved``, so that an unknown value never reads as a known one.
    """

    def __init__(
        self,
        text: str,
        env: Mapping[str, _Value] | None = None,
        *,
        escape: str = "\\",
        raw: bool = False,
        keep_unset: bool = False,
    ) -> None:
        self._text, self._pos, self._nesting, self._taken = text, 0, 0, 0
        self._env: Mapping[str, _Value] = env or {}
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
            raise _LexError(f"missing {stop}")
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
        raise _LexError(f"missing {quote}")

    def _dollar(self) -> str:
        self._nesting += 1
        try:
            if self._nesting > _MAX_NESTING:
                raise _LexError("nested too deeply")
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
            raise _LexError("bad substitution")
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
            raise _LexError(f"unsupported modifier {operator!r}")
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

    def _get(self, name: str) -> _Value | None:
        """The variable's value, if set; what it was made from counts as used."""
        value = self._env.get(name)
        if value is not None:
            self._taken += len(value.text)
            if self._taken > _MAX_EXPANSION:
                raise _LexError("expands to too much text")
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
            if char not in _GO_SPACE:
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


# --- Go's whitespace and case ---------------------------------------------------------

#: Go's ``unicode.IsSpace``; Python's ``str.isspace`` also counts ``\x1c``-``\x1f``.
_GO_SPACE_CHARS: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_GO_SPACE: Final = frozenset(_GO_SPACE_CHARS)
_GO_SPACE_RUN: Final = re.compile(f"[{_GO_SPACE_CHARS}]+")


def _go_lstrip(text: str) -> str:
    return text.lstrip(_GO_SPACE_CHARS)


def _go_strip(text: str) -> str:
    return text.strip(_GO_SPACE_CHARS)


def _go_lower(text: str) -> str:
    """Go's ``strings.ToLower``: ``İ`` becomes ``i``, where Python adds a combining dot."""
    return text.replace("\u0130", "i").lower()
