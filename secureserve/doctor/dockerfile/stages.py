"""What each instruction does to the image, stage by stage (``dockerfile2llb``).

:func:`read_plans` reads the ARG values before the first FROM and each stage as
written; :func:`build` builds the last stage along the stages it comes FROM, inheriting
their state and running their ONBUILD triggers. The result is a :class:`Stage`: the
build-time variables, the image's ENV, USER, ENTRYPOINT, CMD and HEALTHCHECK.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from secureserve.doctor.dockerfile.lexer import (
    GO_SPACE,
    GO_SPACE_RUN,
    Value,
    expand,
    go_lower,
    go_lstrip,
)
from secureserve.doctor.dockerfile.lines import (
    TOKEN_SPACE,
    Instruction,
    instructions,
    json_array,
    split_command,
)

__all__ = ["Form", "Stage", "build", "read_plans"]


class Form(NamedTuple):
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
    body: list[Instruction] = field(default_factory=list)


@dataclass
class Stage:
    """A stage as built so far."""

    #: What ``$X`` means at build time: ARG and ENV values, the last written wins.
    variables: dict[str, Value] = field(default_factory=dict)
    #: The image's ENV, what ``$X`` means at run time.
    env: dict[str, Value] = field(default_factory=dict)
    #: ENV names whose build-time value a later ARG replaced (the ENV value returns
    #: in stages built FROM this one).
    shadowed: set[str] = field(default_factory=set)
    user: Value | None = None
    entrypoint: Form | None = None
    cmd: Form | None = None
    cmd_set: bool = False
    healthcheck: bool = False
    notes: frozenset[str] = frozenset()


_AS_ARGS: Final = 3  # FROM image AS name
_NOT_TRIGGERS: Final = frozenset({"onbuild", "from", "maintainer"})


def read_plans(text: str) -> tuple[dict[str, Value], list[_Plan]]:
    """The ARG values before the first FROM, and the stages."""
    global_args: dict[str, Value] = {}
    plans: list[_Plan] = []
    names: dict[str, int] = {}
    for instruction in instructions(text):
        if instruction.keyword == "from":
            words = TOKEN_SPACE.split(instruction.args) if instruction.args else [""]
            base = expand(words[0], global_args, instruction.escape)
            named = len(words) == _AS_ARGS and words[1].casefold() == "as"
            name = go_lower(words[2]) if named else None
            plans.append(_Plan(name, names.get(base.text), base.unresolved))
            if name is not None:
                names[name] = len(plans) - 1
        elif plans:
            plans[-1].body.append(instruction)
        elif instruction.keyword == "arg":
            _assign_args(global_args, instruction, defaults={})
    return global_args, plans


def build(plans: list[_Plan], global_args: Mapping[str, Value]) -> Stage:
    """The last stage, built along the stages it comes FROM (the others do not matter)."""
    chain: list[_Plan] = []
    index: int | None = len(plans) - 1
    while index is not None:
        chain.append(plans[index])
        index = plans[index].parent
    stage, parent = Stage(notes=chain[-1].notes), None
    for plan in reversed(chain):
        if parent is not None:
            stage = _inherit(stage, parent, global_args)
        for instruction in plan.body:
            _apply(stage, instruction, global_args)
        parent = plan
    return stage


def _inherit(built: Stage, plan: _Plan, global_args: Mapping[str, Value]) -> Stage:
    """A stage built FROM ``built``: its state, then the ONBUILD triggers of its ``plan``."""
    variables = built.variables  # taken over: ``built`` is not used again
    for name in built.shadowed:
        variables[name] = built.env[name]
    stage = Stage(
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
            trigger = split_command(instruction.args, instruction.escape)
            if trigger.keyword not in _NOT_TRIGGERS:  # refused by BuildKit
                _apply(stage, trigger, global_args)
    return stage


def _apply(stage: Stage, instruction: Instruction, global_args: Mapping[str, Value]) -> None:
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
        stage.user = _user(expand(args, stage.variables, instruction.escape))
    elif keyword == "entrypoint":
        stage.entrypoint = _command_form("ENTRYPOINT", args)
        if not stage.cmd_set:
            stage.cmd = None  # an inherited CMD is not kept
    elif keyword == "cmd":
        stage.cmd, stage.cmd_set = _command_form("CMD", args), True
    elif keyword == "healthcheck":
        kind = GO_SPACE_RUN.split(args, maxsplit=1)[0]
        stage.healthcheck = kind.upper() not in {"", "NONE"}


def _assign_args(
    scope: dict[str, Value], instruction: Instruction, *, defaults: Mapping[str, Value]
) -> list[str]:
    """``ARG NAME[=default] ...``: defaults expanded in turn; a bare name takes ``defaults``."""
    assigned = []
    for word in _words(instruction.args, instruction.escape):
        name, equals, default = word.partition("=")
        if equals:
            scope[name] = expand(default, scope, instruction.escape)
        elif name in defaults:
            scope[name] = defaults[name]
        else:
            continue  # declared without a value: a build arg, unknown here
        assigned.append(name)
    return assigned


def _env_pairs(instruction: Instruction, scope: Mapping[str, Value]) -> dict[str, Value]:
    """``ENV KEY=value ...`` (or ``ENV KEY value``), all expanded with the values before it."""
    args, escape = instruction.args, instruction.escape
    words = _words(args, escape)
    if words and "=" not in words[0]:
        key, _, value = TOKEN_SPACE.sub(" ", args, count=1).partition(" ")
        pairs = [(key, value)] if value else []  # BuildKit refuses a key alone
    elif all("=" in word for word in words):
        pairs = [(key, value) for key, _, value in (word.partition("=") for word in words)]
    else:
        pairs = []  # BuildKit refuses the line
    return {expand(key, scope, escape).text: expand(value, scope, escape) for key, value in pairs}


_ATOI: Final = re.compile(r"[+-]?[0-9]+")
_UID_BITS: Final = 32
_INT64: Final = 2**63


def _user(user: Value) -> Value:
    """``user`` with a user part that the runtime reads as uid 0 written ``0``."""
    name, colon, group = user.text.partition(":")
    return Value("0" + colon + group, user.unresolved) if _is_uid_0(name) else user


def _is_uid_0(name: str) -> bool:
    """Empty (the default user), or a number ``strconv.Atoi`` reads as 0 in 32 bits."""
    if not name:
        return True
    if _ATOI.fullmatch(name) is None:
        return False
    number = int(name)
    return -_INT64 <= number < _INT64 and number % 2**_UID_BITS == 0


def _command_form(keyword: str, args: str) -> Form:
    """The exec form (a JSON array of strings) or the shell form of ENTRYPOINT or CMD."""
    array = json_array(args)
    if array is None:
        looks_json = go_lstrip(args).startswith("[")
        return Form((args,), f"{keyword} [...] that is not JSON" if looks_json else None)
    if all(isinstance(item, str) for item in array):
        return Form(tuple(str(item) for item in array))
    return Form((), f"{keyword} JSON array that is not all strings")


def _words(text: str, escape: str) -> list[str]:
    """Words as ARG and ENV split them, quotes and escapes kept (parseWords)."""
    words: list[str] = []
    word: list[str] = []
    quote, keep_empty, pos = "", False, 0
    while pos < len(text):
        char, pos = text[pos], pos + 1
        if not quote and char in GO_SPACE:
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
