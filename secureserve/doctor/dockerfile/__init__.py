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

The package is read bottom-up; each module depends only on those listed before it:

* :mod:`.lexer`: shell words and variable expansion (``shell/lex.go``), values and
  their limits, and Go's whitespace and case.
* :mod:`.lines`: logical lines: directives, continuation, comments, builder flags,
  heredocs and the exec form (``parser/``).
* :mod:`.stages`: what each instruction does to a stage, and the last stage built along
  the stages it comes FROM (``dockerfile2llb``).
* this module: :class:`Image`, the final stage's start command read as a shell would,
  and finding and reading the file.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from secureserve.doctor._read import MAX_TEXT_BYTES
from secureserve.doctor.dockerfile.lexer import Value, capped, substitute
from secureserve.doctor.dockerfile.stages import Form, Stage, build, read_plans
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
    global_args, plans = read_plans(text)
    return _final_image(build(plans, global_args)) if plans else Image()


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


# --- the final image ------------------------------------------------------------------

#: What a POSIX shell has set before reading the command.
_SHELL_DEFAULTS: Final = {"IFS": Value(" \t\n")}
#: Longest string split with shlex (slow on long words); longer ones split on whitespace.
_MAX_SHLEX: Final = 8192
_SHELL_SPECIAL: Final = re.compile(r"[\s'\"\\]")


def _final_image(stage: Stage) -> Image:
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
        unresolved=set(capped(unresolved)),
    )


def _command_words(form: Form, env: Mapping[str, Value], unresolved: set[str]) -> list[str]:
    """The words of a start command, each string substituted and split as by a shell."""
    if form.problem:
        unresolved.add(form.problem)
    words: list[str] = []
    for text in form.texts:
        if "$(" in text or "`" in text:
            unresolved.add("$(...)")
        words += _shell_words(substitute(text, env, unresolved))
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
