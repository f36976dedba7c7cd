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

A check that cannot finish (an unreadable file, say) is itself an error finding: the
doctor never passes a project it could not examine. Everything printed is escaped, so
a hostile file name cannot forge lines of the report or move the terminal's cursor.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import msgspec

from secureserve.config import CONFIG_FILENAME, Settings, load_settings
from secureserve.doctor import defenses, files, settings
from secureserve.doctor.findings import Finding, Severity, error, warning
from secureserve.errors import ConfigError

__all__ = ["Finding", "Report", "Severity", "diagnose", "format_report"]

#: Findings about files present only where the server runs, left out of the re-check
#: with the deployment files' settings.
_MOUNTED_AT_RUN_TIME: Final = frozenset(
    {"tls-file-missing", "key-file-missing", "auth-no-credentials", "files-writable"}
)

#: Control characters (C0, DEL, C1), bidirectional overrides and isolates (which reorder
#: what a terminal shows), and lone surrogates from undecodable file names.
_UNPRINTABLE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


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
                "project": printable(str(self.project)),
                "ok": self.ok,
                "summary": {severity.value: self.count(severity) for severity in Severity},
                "findings": [_printable_finding(f) for f in self.findings],
            }
        )


def diagnose(
    project_dir: Path,
    *,
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
    debug: bool = False,
    handler: bool = False,
) -> Report:
    """Examine the project in ``project_dir`` (settings from ``config`` if given).

    ``environ`` (default: ``os.environ``) is the environment the settings are read
    with, as ``secureserve run`` would; ``now`` fixes the clock for certificate dates.
    ``debug`` lets an unexpected exception in a check propagate instead of becoming a
    ``doctor-check-failed`` finding. ``handler`` imports the project's handler (its code
    runs, as under ``secureserve run``) to check its output policy and feature view.
    When the project's Dockerfile sets
    ``SECURESERVE_*`` variables, the settings are checked a second time with them, as
    the image will run. Raises :class:`ConfigError` when ``project_dir`` is not a folder.
    """
    project = Path(os.path.realpath(project_dir))
    if not project.is_dir():
        raise ConfigError(
            f"{project_dir} is not a folder; give the project folder (the one that holds "
            f"{CONFIG_FILENAME})."
        )
    env = dict(os.environ if environ is None else environ)
    found: list[Finding] = []
    if config is None and not (project / CONFIG_FILENAME).is_file():
        found.append(
            warning(
                "config-missing",
                CONFIG_FILENAME,
                f"there is no {CONFIG_FILENAME} in {project}; every setting is a default and "
                "no handler is named.",
                "run the doctor in the project folder, pass --config, or create a project "
                "with `secureserve new`.",
            )
        )
    loaded = _load(project, config, env, found, subject=str(config or CONFIG_FILENAME))
    if loaded is not None:
        _run(
            "settings",
            found,
            lambda: settings.check(loaded, config_file=config, now=now),
            debug=debug,
        )
        _run("defenses", found, lambda: defenses.check(loaded, handler=handler), debug=debug)
    _run("files", found, lambda: files.check(project, loaded), debug=debug)
    _run(
        "deployed", found, lambda: _deployed_findings(project, config, env, now, found), debug=debug
    )
    return Report(project=project, findings=tuple(sorted(found, key=lambda f: f.rank)))


def _load(
    project: Path, config: Path | None, env: dict[str, str], found: list[Finding], *, subject: str
) -> Settings | None:
    try:
        return load_settings(config, project_dir=project, environ=env)
    except (ConfigError, RecursionError) as exc:
        found.append(
            error(
                "config-invalid",
                subject,
                f"the settings do not load, so `secureserve run` stops: {exc}",
                "fix the setting named above; the other settings checks need valid settings.",
            )
        )
        return None


def _deployed_findings(
    project: Path,
    config: Path | None,
    env: dict[str, str],
    now: datetime | None,
    found: list[Finding],
) -> Iterable[Finding]:
    """Settings findings that appear only with the values the deployment files set.

    The Dockerfile's ``ENV`` and then the literal ``env`` values of the ``k8s/``
    manifests (a container's environment overrides its image's) are laid over
    ``env``. Findings about files that exist only where the server runs (mounted
    keys and certificates) are left out: their absence here is expected.
    """
    sources = [("the Dockerfile ENV", files.image_environment(project))]
    sources.append(("k8s/", files.manifest_environment(project)))
    used = [(label, values) for label, values in sources if values]
    if not used:
        return []
    label = " and ".join(name for name, _ in used)
    deployed = dict(env)
    for _, values in used:
        deployed.update(values)
    extra: list[Finding] = []
    loaded = _load(project, config, deployed, extra, subject=label)
    if loaded is not None:
        extra.extend(settings.check(loaded, config_file=config, now=now))
    seen = {(f.code, f.message) for f in found}
    return [
        msgspec.structs.replace(f, subject=f"{f.subject} (as set by {label})")
        for f in extra
        if (f.code, f.message) not in seen and f.code not in _MOUNTED_AT_RUN_TIME
    ]


def _run(
    name: str,
    found: list[Finding],
    check: Callable[[], Iterable[Finding]],
    *,
    debug: bool,
) -> None:
    """Collect a group's findings; a group that fails becomes an error finding itself."""
    try:
        found.extend(check())
    except Exception as exc:
        if debug:
            raise
        found.append(
            error(
                "doctor-check-failed",
                name,
                f"the {name} checks could not finish ({type(exc).__name__}), so this part "
                "of the project was not examined.",
                "run `secureserve doctor --debug` for the traceback, fix what it names, "
                "and run the doctor again.",
            )
        )


def printable(text: str) -> str:
    """``text`` with control characters and undecodable bytes shown as escapes."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # noqa: PLR2004 - surrogateescape: the undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"  # noqa: PLR2004


def _printable_finding(finding: Finding) -> Finding:
    return msgspec.structs.replace(
        finding,
        subject=printable(finding.subject),
        message=printable(finding.message),
        fix=printable(finding.fix),
    )


def format_report(report: Report, *, width: int = 100) -> str:
    """The report for people: one block per finding and a summary line."""
    lines = [f"secureserve doctor: {printable(str(report.project))}"]
    indent = " " * 9
    for finding in map(_printable_finding, report.findings):
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
