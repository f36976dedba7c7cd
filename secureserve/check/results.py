"""What a check found: figures against thresholds, and the report that holds them all."""

from __future__ import annotations

import html
from typing import Any, Final, Literal

import msgspec

from secureserve.settings import CheckSettings

__all__ = ["VERDICTS", "CheckResult", "Figure", "Report"]

#: A check's or a figure's verdict in words, in every form of the report.
VERDICTS: Final = {True: "pass", False: "fail", None: "not judged"}


class Figure(msgspec.Struct, frozen=True):
    """One measured value; ``passed`` is None when it is reported but not judged."""

    name: str
    value: float | None
    threshold: float | None = None
    passed: bool | None = None
    note: str | None = None

    @property
    def measured_only(self) -> bool:
        """A figure shown for what it says, with no threshold to judge it against."""
        return self.passed is None and self.threshold is None and self.value is not None


class CheckResult(msgspec.Struct, frozen=True):
    """One check: pass (True), fail (False), or not judged (None, with the reason)."""

    check: str
    passed: bool | None
    summary: str
    figures: list[Figure] = msgspec.field(default_factory=list)
    details: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def not_judged(cls, check: str, why: str) -> CheckResult:
        """A check that could not run here, and why."""
        return cls(check=check, passed=None, summary=f"not judged: {why}")


class Report(msgspec.Struct, frozen=True):
    """``report.json``: which model and files were checked, when, and every result."""

    model: str
    version: str
    lock_sha256: str | None
    #: "verified": [model] signing_public_key is set, so the lock's signature was
    #: checked before any file was read; "not checked": no key is configured
    signature: Literal["verified", "not checked"]
    secureserve: str
    time: str
    data: str
    instances: int
    passed: bool
    checks: list[CheckResult]
    thresholds: CheckSettings

    def lines(self) -> list[str]:
        """One line per check, as the command prints them."""
        shown = {"pass": "pass", "fail": "FAIL", "not judged": "----"}  # aligned, fail loud
        return [f"{shown[VERDICTS[c.passed]]}  {c.check:<10} {c.summary}" for c in self.checks]

    def markdown(self) -> str:
        """``report.md``: the same, for people."""
        out = [
            f"# secureserve check: {self.model} {self.version}",
            "",
            f"- result: **{'passed' if self.passed else 'FAILED'}**",
            f"- data: `{self.data}` ({self.instances} instances)",
            f"- lock sha256: `{self.lock_sha256 or 'no lock'}`; signature: {self.signature}",
            f"- secureserve {self.secureserve}, {self.time}",
            "",
            "| check | result | figure | value | threshold |",
            "| --- | --- | --- | ---: | ---: |",
        ]
        word = {**VERDICTS, False: f"**{VERDICTS[False]}**"}
        for check in self.checks:
            if not check.figures:
                out.append(f"| {check.check} | {word[check.passed]} | {_cell(check.summary)} | | |")
            for figure in check.figures:
                value = "" if figure.value is None else f"{figure.value:.4g}"
                threshold = "" if figure.threshold is None else f"{figure.threshold:.4g}"
                verdict = "" if figure.measured_only else word[figure.passed]
                name = _cell(figure.name + (f" ({figure.note})" if figure.note else ""))
                out.append(f"| {check.check} | {verdict} | {name} | {value} | {threshold} |")
        return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell, shown as text.

    A ``|`` or a line break would end the cell, and Markdown renders HTML: text from
    the project or the data (labels, group values) is escaped.
    """
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")
