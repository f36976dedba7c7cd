"""What a doctor check reports: a :class:`Finding` with a :class:`Severity`."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import msgspec

__all__ = ["FIX_SEE_MESSAGE", "Finding", "Severity", "error", "info", "warning"]


#: The fix of a finding whose message comes from the server's own validator.
FIX_SEE_MESSAGE: Final = "do what the message says; the server refuses this too."


class Severity(StrEnum):
    """How much a finding matters; ``ERROR`` makes ``secureserve doctor`` exit non-zero."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One thing the doctor noticed."""

    severity: Severity
    #: Stable identifier, such as ``tls-invalid`` (listed in docs/doctor.md).
    code: str
    #: The setting or file it is about, such as ``[tls] key`` or ``Dockerfile``.
    subject: str
    #: What is wrong, in plain words.
    message: str
    #: What to do about it.
    fix: str

    @property
    def rank(self) -> int:
        """Sort key: errors first, then warnings, then notes."""
        return _ORDER[self.severity]


_ORDER: Final = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


def error(code: str, subject: str, message: str, fix: str) -> Finding:
    """An error-level finding: fix it before production."""
    return Finding(severity=Severity.ERROR, code=code, subject=subject, message=message, fix=fix)


def warning(code: str, subject: str, message: str, fix: str) -> Finding:
    """A warning: a protection is off, or something needs a second look."""
    return Finding(severity=Severity.WARNING, code=code, subject=subject, message=message, fix=fix)


def info(code: str, subject: str, message: str, fix: str) -> Finding:
    """A note that needs no action in development."""
    return Finding(severity=Severity.INFO, code=code, subject=subject, message=message, fix=fix)
