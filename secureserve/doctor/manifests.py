"""Findings about the Kubernetes manifests under ``k8s/``, and the settings they set.

This module owns the reading of ``k8s/``: every YAML file under it (kustomize layouts
too, at most 200), comments removed, read as text rather than parsed, which is enough
for the two questions asked. :func:`check_replicas` reports manifests that run several
replicas (or an autoscaler) while limits are counted in memory and no container sets
``SECURESERVE_LIMITS__STORAGE`` to shared storage: each replica would count alone.
:func:`manifest_environment` gives the ``SECURESERVE_*`` variables given literal
values, for checking the settings a second time as the deployed server gets them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from secureserve.doctor._read import read_text
from secureserve.doctor.findings import Finding, error

__all__ = ["check_replicas", "manifest_environment"]

_LIMITS_STORAGE_ENV: Final = "SECURESERVE_LIMITS__STORAGE"
#: Kubernetes manifests read under k8s/ (a deployment folder, not a disk).
_MAX_MANIFESTS: Final = 200
#: ``- name: SECURESERVE_X`` then ``value: ...`` (block style), or on one line (flow).
_ENV_BLOCK: Final = re.compile(
    r"name:\s*[\"']?(SECURESERVE_[A-Z0-9_]+)[\"']?\s*\n\s*value:[ \t]*([^\n]*)"
)
_ENV_FLOW: Final = re.compile(
    r"\{\s*name:\s*[\"']?(SECURESERVE_[A-Z0-9_]+)[\"']?\s*,\s*value:[ \t]*([^}\n]*)"
)


def manifest_environment(project: Path) -> dict[str, str]:
    """``SECURESERVE_*`` variables given literal values in the ``k8s/`` manifests.

    Values from ``valueFrom`` (secrets, fields) are unknown here and left out, and so is
    the encryption key, which must never be written in a manifest.
    """
    manifests = _manifest_text(project / "k8s")
    if manifests is None:
        return {}
    found: dict[str, str] = {}
    for name, raw in _ENV_BLOCK.findall(manifests) + _ENV_FLOW.findall(manifests):
        if name != "SECURESERVE_MODEL__ENCRYPTION_KEY":
            found[name] = _yaml_scalar(raw)
    return found


def check_replicas(project: Path) -> Iterator[Finding]:
    """Kubernetes manifests that run several replicas while limits are counted in memory."""
    manifests = _manifest_text(project / "k8s")
    if manifests is None:
        return
    quote = "[\"']?"
    autoscaled = re.search(rf"kind:\s*{quote}HorizontalPodAutoscaler\b", manifests)
    counts = re.findall(rf"^\s*replicas:\s*{quote}(\d+)", manifests, re.MULTILINE)
    storage = re.findall(
        rf"name:\s*{quote}{_LIMITS_STORAGE_ENV}\b{quote}\s*\n\s*(value(?:From)?):\s*(.*)",
        manifests,
    )
    shared = any(kind == "valueFrom" or "memory://" not in value for kind, value in storage)
    if (autoscaled or any(int(n) > 1 for n in counts)) and not shared:
        yield error(
            "limits-memory-replicas",
            "k8s/",
            "the manifests run several replicas, but [limits] storage is memory:// and no "
            f"container sets {_LIMITS_STORAGE_ENV} to shared storage: each replica counts "
            "alone, so every limit and quota is multiplied by the number of replicas.",
            f"set {_LIMITS_STORAGE_ENV} to a redis:// URL from a secretKeyRef (the "
            "generated Deployment does).",
        )


def _yaml_scalar(raw: str) -> str:
    """A plain or quoted one-line YAML scalar (enough for environment values)."""
    text = raw.strip().rstrip(",}").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":  # noqa: PLR2004
        return text[1:-1]
    return text


def _manifest_text(folder: Path) -> str | None:
    """Every YAML file under ``folder`` (kustomize layouts too), comments removed."""
    if not folder.is_dir() or folder.is_symlink():
        return None
    paths = sorted(p for p in folder.rglob("*") if p.suffix in {".yaml", ".yml"})
    texts = [read_text(p) or "" for p in paths[:_MAX_MANIFESTS]]
    lines = [line.split(" #", 1)[0] for text in texts for line in text.split("\n")]
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))
