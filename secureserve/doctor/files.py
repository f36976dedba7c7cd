"""Doctor checks on the project's files: keys and secrets, Dockerfile, Kubernetes manifests.

This module owns the order of those checks and nothing else: :func:`check` walks the
project once (:mod:`secureserve.doctor.scan`), judges the keys and secrets found
(:mod:`secureserve.doctor.leaks`, which asks git and the ``.dockerignore`` through
:mod:`secureserve.doctor.ignorefiles`), the image the Dockerfile builds
(:mod:`secureserve.doctor.image`) and, when limits are counted in memory, the
Kubernetes manifests (:mod:`secureserve.doctor.manifests`). The ``SECURESERVE_*``
variables the Dockerfile and the manifests set are re-exported from here for the
second settings check.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from secureserve.config import Settings
from secureserve.doctor.dockerfile import parse_dockerfile, read_dockerfile
from secureserve.doctor.findings import Finding, error, warning
from secureserve.doctor.image import check_image, check_image_secrets, image_environment
from secureserve.doctor.leaks import check_keys, check_secrets
from secureserve.doctor.manifests import check_replicas, manifest_environment
from secureserve.doctor.scan import MAX_ENTRIES, scan
from secureserve.errors import ConfigError

__all__ = ["check", "image_environment", "manifest_environment"]


def check(project: Path, settings: Settings | None) -> Iterator[Finding]:
    """File findings for ``project``; ``settings`` is None when they did not load."""
    found = scan(project, settings)
    if found.truncated:
        yield warning(
            "doctor-scan-truncated",
            str(project),
            f"the project holds more than {MAX_ENTRIES} files and folders; only the first "
            "were searched for keys and secrets.",
            "run the doctor on the folder that is deployed, without data or environments.",
        )
    image_name: str | None
    try:
        dockerfile = read_dockerfile(project)
    except ConfigError as exc:
        yield error(
            "dockerfile-unreadable",
            "Dockerfile",
            f"{exc} The image it builds could not be checked.",
            "make it a readable regular file (under 1 MiB) and run the doctor again.",
        )
        dockerfile, image_name = None, "Dockerfile"
    else:
        image_name = dockerfile[0].name if dockerfile is not None else None
    yield from check_keys(project, settings, found.keys, image_name)
    yield from check_secrets(project, found.secrets)
    if dockerfile is not None:
        image = parse_dockerfile(dockerfile[1])
        yield from check_image(dockerfile[0].name, image)
        yield from check_image_secrets(dockerfile[0].name, image)
    if settings is not None and settings.limits.storage.startswith("memory://"):
        yield from check_replicas(project)
