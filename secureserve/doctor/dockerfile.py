"""Read a Dockerfile the way the builder does, far enough to judge the image it makes.

The parser joins continuation lines (skipping blank and comment lines inside them, as
BuildKit does), skips heredoc bodies, splits instructions on any whitespace, and
follows ``FROM <earlier stage>`` so that the final image inherits that stage's
``USER``, ``ENV``, ``ENTRYPOINT``, ``CMD`` and ``HEALTHCHECK``. ``ARG`` and ``ENV``
values are substituted into ``USER`` and the start command (``$X``, ``${X}``,
``${X:-default}``); a reference that cannot be resolved is reported as such rather
than guessed.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from secureserve.doctor._read import read_text

__all__ = ["Image", "parse_dockerfile", "read_dockerfile"]

_HEREDOC: Final = re.compile(r"<<-?\s*[\"']?([A-Za-z_][A-Za-z0-9_]*)[\"']?")
_VARIABLE: Final = re.compile(
    r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


@dataclass
class Image:
    """What the final stage of a Dockerfile runs with (after inheritance)."""

    #: The last ``USER`` value with variables substituted (None: no USER at all).
    user: str | None = None
    #: The ``ENTRYPOINT`` and ``CMD`` words, variables substituted.
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    healthcheck: bool = False
    #: Variable names that could not be resolved in USER or the command.
    unresolved: set[str] = field(default_factory=set)


@dataclass
class _Stage:
    name: str | None
    base: str
    image: Image
    args: dict[str, str]


def parse_dockerfile(text: str) -> Image:
    """The final image's user, command, environment and health check."""
    global_args: dict[str, str] = {}
    stages: list[_Stage] = []
    for instruction, arguments in _instructions(text):
        if instruction == "FROM":
            stages.append(_new_stage(arguments, stages, global_args))
        elif not stages:
            if instruction == "ARG":
                global_args.update(_assignments(arguments, arg=True))
        else:
            _apply(stages[-1], instruction, arguments, global_args)
    return stages[-1].image if stages else Image()


def _new_stage(arguments: str, stages: list[_Stage], global_args: dict[str, str]) -> _Stage:
    words = [w for w in arguments.split() if not w.startswith("--")]
    base = _substitute(words[0], global_args, set()) if words else ""
    name = words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else None  # noqa: PLR2004
    parent = next((s for s in reversed(stages) if s.name == base.lower()), None)
    if parent is None:
        return _Stage(name, base, Image(), {})
    inherited = parent.image
    image = Image(
        user=inherited.user,
        command=list(inherited.command),
        env=dict(inherited.env),
        healthcheck=inherited.healthcheck,
        unresolved=set(inherited.unresolved),
    )
    return _Stage(name, base, image, {})


def _apply(stage: _Stage, instruction: str, arguments: str, global_args: dict[str, str]) -> None:
    image = stage.image
    known = {**global_args, **stage.args, **image.env}
    if instruction == "ARG":
        for key, value in _assignments(arguments, arg=True).items():
            stage.args[key] = value or global_args.get(key, "")
    elif instruction == "ENV":
        for key, value in _assignments(arguments, arg=False).items():
            image.env[key] = _substitute(value, known, set())
    elif instruction == "USER":
        image.user = _substitute(_unquote(arguments.strip()), known, image.unresolved)
    elif instruction in {"ENTRYPOINT", "CMD"}:
        words = [_substitute(w, known, image.unresolved) for w in _command_words(arguments)]
        # A later ENTRYPOINT or CMD replaces the earlier one of the same kind; both
        # end up on the command line, so keeping every word errs on the safe side.
        image.command.extend(words)
    elif instruction == "HEALTHCHECK":
        image.healthcheck = arguments.split()[:1] != ["NONE"]


def _instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` for each logical line of the Dockerfile."""
    result: list[tuple[str, str]] = []
    lines = text.splitlines()
    pending: str | None = None
    heredoc: str | None = None
    for raw in lines:
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continuation, as BuildKit does
        if line.endswith("\\"):
            pending = (pending or "") + line[:-1] + " "
            continue
        logical = (pending or "") + line
        pending = None
        parts = logical.split(None, 1)
        instruction, arguments = parts[0].upper(), parts[1] if len(parts) > 1 else ""
        result.append((instruction, arguments))
        match = _HEREDOC.search(arguments) if instruction in {"RUN", "COPY", "ADD"} else None
        if match is not None:
            heredoc = match.group(1)
    if pending:
        parts = pending.split(None, 1)
        result.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
    return result


def _assignments(arguments: str, *, arg: bool) -> dict[str, str]:
    """``KEY=value`` pairs (or the legacy ``ENV KEY value`` form)."""
    try:
        words = shlex.split(arguments)
    except ValueError:
        words = arguments.split()
    if not arg and words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    pairs: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=")
        pairs[key] = value
    return pairs


def _command_words(arguments: str) -> list[str]:
    stripped = arguments.strip()
    if stripped.startswith("["):
        try:
            words = json.loads(stripped)
        except ValueError:
            return stripped.split()
        if isinstance(words, list):
            return [str(word) for word in words]
    return stripped.split()


def _substitute(text: str, known: dict[str, str], unresolved: set[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        value = known.get(name)
        if value:
            return value
        if match.group(2) is not None:
            return match.group(2)
        unresolved.add(name)
        return match.group(0)

    return _VARIABLE.sub(replace, text)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":  # noqa: PLR2004
        return text[1:-1]
    return text


def read_dockerfile(project: Path) -> tuple[Path, str] | None:
    """The project's ``Dockerfile`` (or ``Containerfile``) and its text, if there is one."""
    for name in ("Dockerfile", "Containerfile"):
        path = project / name
        text = read_text(path)
        if text is not None:
            return path, text
    return None
