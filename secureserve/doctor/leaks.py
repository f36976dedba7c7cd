"""Findings about keys and secrets that the project would ship, bake or push.

This module owns the judgement of what :mod:`secureserve.doctor.scan` found. A key
file that others can read, that sits in the model folder (shipped with the model), in
the Docker build context (a ``COPY`` can bake it into the image) or where git would
commit it is an error, each reported on its own; whether Docker or git leaves a key
out is asked of :mod:`secureserve.doctor.ignorefiles`. API keys and model encryption
keys written into files are errors too: a secret in a file is a secret that gets
copied. Findings name the file (and line), never the secret.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path

from secureserve.config import Settings
from secureserve.doctor.findings import Finding, error
from secureserve.doctor.ignorefiles import GitFailed, docker_excluded, git_view

__all__ = ["check_keys", "check_secrets"]


def check_keys(
    project: Path,
    settings: Settings | None,
    keys: list[Path],
    image: str | None,
) -> Iterator[Finding]:
    """Findings for the key files ``keys``; ``image`` names the Dockerfile, if any."""
    relatives = [key.relative_to(project).as_posix() for key in keys]
    try:
        git = git_view(project, relatives)
    except GitFailed as exc:
        git = None
        yield error(
            "git-failed",
            ".gitignore",
            f"{exc}; whether git would commit the project's keys is unknown.",
            "make `git check-ignore` work in this repository (ownership, safe.directory) "
            "and run the doctor again.",
        )
    excluded = docker_excluded(project, relatives, image) if image else None
    served = settings.served().values() if settings is not None else ()
    model_dirs = tuple(os.path.realpath(model.dir) + os.sep for model in served)
    for key, relative in zip(keys, relatives, strict=True):
        quoted = shlex.quote(relative)
        mode = stat.S_IMODE(key.lstat().st_mode)
        if mode & 0o026:
            yield error(
                "private-key-permissions",
                relative,
                f"this key can be read by every user or written by others (mode {mode:04o}).",
                f"restrict it with `chmod 600 {quoted}`.",
            )
        if os.path.realpath(key).startswith(model_dirs):
            yield error(
                "private-key-in-model-dir",
                relative,
                "a key lies in a model folder, which is shipped with the model and "
                "readable by the server.",
                "move it out of the model folder (to secrets/) and lock the folder again.",
            )
        if excluded is not None and relative not in excluded:
            yield error(
                "private-key-in-image",
                relative,
                f"a key is part of the build context of the {image}: a `COPY` can bake it "
                "into the image, where whoever pulls the image can read it.",
                f"add {quoted} (or its folder, e.g. secrets/) to .dockerignore and mount "
                "it at run time instead.",
            )
        if git is not None and git.known and relative not in git.ignored:
            yield error(
                "private-key-not-ignored",
                relative,
                "git would commit this key: it is tracked already, or no .gitignore rule "
                "excludes it.",
                f"add {quoted} (or its folder, e.g. secrets/) to .gitignore; if it is "
                f"tracked, `git rm --cached {quoted}` and replace the key.",
            )


def check_secrets(project: Path, secrets: list[tuple[Path, int, str]]) -> Iterator[Finding]:
    """One error for each (file, line, what) secret written in a project file."""
    for path, line, what in secrets:
        if what.startswith("API key ss_"):  # "API key ss_<id>_...": the id is not secret
            key_id = what.split("_")[1]
            message = f"an {what} is written here in plain text."
            revoke = f"revoke it (`secureserve keys revoke {key_id}`) and give its client a new one"
        else:
            message = f"a {what} is written here in plain text."
            revoke = (
                "encrypt the model files again with a new key (`secureserve encryption-key "
                "new`, then `secureserve encrypt`)"
            )
        yield error(
            "secret-in-file",
            f"{path.relative_to(project).as_posix()}:{line}",
            message,
            f"remove it and treat it as leaked: {revoke}; pass secrets through the "
            "environment or a secret store.",
        )
