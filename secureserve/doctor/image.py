"""Findings about the image the project's Dockerfile builds, and the settings it sets.

This module owns what is judged of the final stage once
:mod:`secureserve.doctor.dockerfile` has parsed it: a server running as root (no
``USER``, or ``root``, ``0``, ``00``) is an error and a user name (or an unresolved
variable) a warning, since Kubernetes' ``runAsNonRoot`` can only verify a number;
``secureserve run --dev`` is an error; a start command or user the doctor cannot
resolve is a warning; no ``HEALTHCHECK`` is a note. A storage URL with a password set
by ``ENV`` is an error: whoever pulls the image reads it. :func:`image_environment`
gives the ``SECURESERVE_*`` variables the image sets, for checking the settings a
second time as the deployed server gets them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

from secureserve.doctor.dockerfile import Image, parse_dockerfile, read_dockerfile
from secureserve.doctor.findings import Finding, error, info, warning
from secureserve.doctor.settings import has_password
from secureserve.errors import ConfigError

__all__ = ["check_image", "check_image_secrets", "image_environment"]

_LIMITS_STORAGE_ENV: Final = "SECURESERVE_LIMITS__STORAGE"


def image_environment(project: Path) -> dict[str, str]:
    """The ``SECURESERVE_*`` variables the project's Dockerfile sets in its final image."""
    try:
        dockerfile = read_dockerfile(project)
    except ConfigError:
        return {}  # reported by files.check()
    if dockerfile is None:
        return {}
    env = parse_dockerfile(dockerfile[1]).env
    return {key: value for key, value in env.items() if key.startswith("SECURESERVE_")}


def check_image(name: str, image: Image) -> Iterator[Finding]:
    """Findings about the user, start command and health check of the final stage."""
    user = image.user
    uid = (user or "").split(":", 1)[0].strip()
    if user is None:
        yield error(
            "docker-root",
            name,
            "the final image has no USER instruction, so the server runs as root.",
            "add `USER 10001:10001` (a numeric, non-root user) before the ENTRYPOINT.",
        )
    elif uid in {"", "root"} or (uid.isdigit() and int(uid) == 0):
        yield error(
            "docker-root",
            name,
            f"the final image runs as {user!r}, which is root.",
            "switch to a non-root user, e.g. `USER 10001:10001`.",
        )
    elif not uid.isdigit():
        yield warning(
            "docker-user-name",
            name,
            f"USER {user} is not a numeric uid: Kubernetes' runAsNonRoot can only verify a "
            "number, and a name (or an unresolved variable) can map to uid 0.",
            "use a numeric uid and gid, e.g. `USER 10001:10001`.",
        )
    if "--dev" in image.command or any(w.endswith(" --dev") for w in image.command):
        yield error(
            "docker-dev-mode",
            name,
            "the image starts `secureserve run --dev`: a development certificate, a fresh "
            "key printed to the log, and 127.0.0.1 only.",
            "start `secureserve run` and mount the certificate and keys.",
        )
    elif image.unresolved:
        unresolved = ", ".join(sorted(image.unresolved))
        yield warning(
            "docker-unresolved",
            name,
            "the user or start command depends on what the doctor cannot resolve (build "
            f"arguments, run-time variables, substitutions): {unresolved}.",
            "write the user and command literally in the final stage.",
        )
    if not image.healthcheck:
        yield info(
            "docker-no-healthcheck",
            name,
            "the image has no HEALTHCHECK, so plain Docker cannot tell a hung server.",
            "add one that requests https://127.0.0.1:8443/healthz (the generated "
            "Dockerfile has one).",
        )


def check_image_secrets(name: str, image: Image) -> Iterator[Finding]:
    """Secrets set with ENV are baked into every layer after it and shown by `docker inspect`."""
    storage = image.env.get(_LIMITS_STORAGE_ENV)
    if storage is not None and has_password(storage):
        yield error(
            "secret-in-image",
            f"{name} ENV {_LIMITS_STORAGE_ENV}",
            "the image sets a storage URL with a password: whoever can pull the image "
            "can read it (`docker inspect`).",
            "remove the ENV line and pass the URL at run time from a secret store.",
        )
