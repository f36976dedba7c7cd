"""``secureserve doctor``: what in a project is weaker than secureserve's defaults.

The doctor reads a project (its settings, key files, model files, lock, Dockerfile and
Kubernetes manifests) and reports findings, each with a severity, a stable code, the
setting or file it is about, what is wrong and how to fix it. It never starts a
server, opens a socket, or changes a file, and it never prints a secret.

Severities: ``error`` is a weakness or a broken setup that must be fixed before
production (the command exits non-zero); ``warning`` is a protection switched off or
something to double-check; ``info`` is a note that needs no action in development.
Files that are git-ignored in a checkout (the audit digest key, API key records) are
usually mounted where the server runs, so their absence is a warning, not an error.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import msgspec

from secureserve.config import CONFIG_FILENAME, Settings, load_settings
from secureserve.doctor import files, settings
from secureserve.doctor.findings import Finding, Severity
from secureserve.errors import ConfigError

__all__ = ["Finding", "Report", "Severity", "diagnose", "format_report"]


@dataclass(frozen=True)
class Report:
    """Every finding for one project, most severe first."""

    project: Path
    findings: tuple[Finding, ...]

    def count(self, severity: Severity) -> int:
        """How many findings have ``severity``."""
        return sum(1 for finding in self.findings if finding.severity is severity)

    @property
    def ok(self) -> bool:
        """True when there is no error-level finding."""
        return self.count(Severity.ERROR) == 0

    def to_json(self) -> bytes:
        """The report for machines: project, findings and a count per severity."""
        return msgspec.json.encode(
            {
                "project": str(self.project),
                "ok": self.ok,
                "summary": {severity.value: self.count(severity) for severity in Severity},
                "findings": self.findings,
            }
        )


def diagnose(
    project_dir: Path,
    *,
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Report:
    """Examine the project in ``project_dir`` (settings from ``config`` if given).

    ``environ`` (default: ``os.environ``) is the environment the settings are read
    with, as ``secureserve run`` would; ``now`` fixes the clock for certificate dates.
    """
    project_dir = project_dir.resolve()
    env = dict(os.environ if environ is None else environ)
    found: list[Finding] = []
    loaded: Settings | None = None
    if config is None and not (project_dir / CONFIG_FILENAME).is_file():
        found.append(
            Finding(
                severity=Severity.WARNING,
                code="config-missing",
                subject=CONFIG_FILENAME,
                message=f"there is no {CONFIG_FILENAME} in {project_dir}; every setting is "
                "a default and no handler is named.",
                fix="run the doctor in the project folder, pass --config, or create a "
                "project with `secureserve new`.",
            )
        )
    try:
        loaded = load_settings(config, project_dir=project_dir, environ=env)
    except ConfigError as exc:
        found.append(
            Finding(
                severity=Severity.ERROR,
                code="config-invalid",
                subject=str(config or CONFIG_FILENAME),
                message=f"the settings do not load, so `secureserve run` stops: {exc}",
                fix="fix the setting named above; the other checks need valid settings.",
            )
        )
    if loaded is not None:
        found.extend(settings.check(loaded, config_file=config, environ=env, now=now))
    found.extend(files.check(project_dir, loaded))
    ordered = sorted(found, key=lambda finding: finding.rank)
    return Report(project=project_dir, findings=tuple(ordered))


def format_report(report: Report, *, width: int = 100) -> str:
    """The report for people: one block per finding and a summary line."""
    lines = [f"secureserve doctor: {report.project}"]
    indent = " " * 9
    for finding in report.findings:
        lines.append(f"{finding.severity.value.upper():<8} {finding.code}: {finding.subject}")
        for text in (finding.message, f"fix: {finding.fix}"):
            lines.extend(
                textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent)
            )
    counts = [
        f"{report.count(Severity.ERROR)} error(s)",
        f"{report.count(Severity.WARNING)} warning(s)",
        f"{report.count(Severity.INFO)} info",
    ]
    verdict = "no error-level findings" if report.ok else "fix the errors before production"
    lines.append(f"{', '.join(counts)}: {verdict}.")
    return "\n".join(lines)
