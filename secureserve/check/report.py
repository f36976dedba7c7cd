"""The report folder: ``report.json``, ``report.md`` and a self-contained ``report.html``.

:func:`write_report` writes the three files, each whole or not at all. The HTML page
needs nothing beside it: its style is inline and its plots
(:mod:`secureserve.check.plots`) are PNGs embedded as data URIs; it runs no script.
Every text in it that came from the project or the data (names, labels, group
values, the failing requests of the fuzz check) is escaped. Without matplotlib (the
``secureserve[check]`` extra) the page is written without plots and says so.
"""

from __future__ import annotations

import base64
import html
import importlib.util
from pathlib import Path
from typing import Final

import msgspec

from secureserve.atomic import write_atomically
from secureserve.check.plots import PLOTS
from secureserve.check.results import VERDICTS, CheckResult, Figure, Report
from secureserve.settings import CheckSettings

__all__ = ["FILES", "html_page", "to_json", "write_report"]

#: What :func:`write_report` writes, in that order.
FILES: Final = ("report.json", "report.md", "report.html")
_POLICY: Final = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'"
)
_OUTCOME: Final = {True: "passed", False: "FAILED"}
_NO_PLOTS: Final = "No plot: plots need matplotlib (pip install 'secureserve[check]')."
#: Each verdict's words and CSS class (pass, fail; none for not judged).
_VERDICT: Final = {
    passed: (word, word if passed is not None else "none") for passed, word in VERDICTS.items()
}
_STYLE: Final = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #212121; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border-bottom: 1px solid #e0e0e0; padding: .25rem .6rem; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #2e7d32; font-weight: 600; } .fail { color: #c62828; font-weight: 600; }
.none { color: #757575; }
.banner { padding: .6rem 1rem; border-radius: .3rem; font-size: 1.1rem; }
.banner.pass { background: #e8f5e9; } .banner.fail { background: #ffebee; }
figure { margin: 1rem 0; } figcaption { color: #616161; font-size: .9rem; }
img { max-width: 100%; }
pre { background: #f5f5f5; padding: .5rem; overflow-x: auto; white-space: pre-wrap; }
code { font-size: .9em; }
"""


def to_json(report: Report) -> bytes:
    """``report.json``: every figure and threshold, indented."""
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"


def write_report(report: Report, folder: Path) -> list[Path]:
    """Write the report files into ``folder`` (created if missing); return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = (to_json(report), report.markdown().encode(), html_page(report).encode())
    paths = [folder / name for name in FILES]
    for path, data in zip(paths, contents, strict=True):
        write_atomically(path, data)
    return paths


def html_page(report: Report) -> str:
    """The report as one HTML page with its plots embedded."""
    # matplotlib is imported by the plots themselves, only when one is drawn
    plotting = importlib.util.find_spec("matplotlib") is not None
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # nothing in the page may load or run anything: a data: image is all it shows
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">',
        f"<title>secureserve check: {_e(report.model)} {_e(report.version)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>secureserve check: {_e(report.model)} {_e(report.version)}</h1>",
        f'<p class="banner {_VERDICT[report.passed][1]}">{_OUTCOME[report.passed]}</p>',
        _about(report),
        "<h2>Results</h2>",
        _results_table(report.checks),
    ]
    parts.extend(_section(check, report.thresholds, plotting=plotting) for check in report.checks)
    parts += ["<h2>Thresholds</h2>", _thresholds(report.thresholds), "</body></html>"]
    return "\n".join(parts) + "\n"


def _about(report: Report) -> str:
    rows = [
        ("data", f"<code>{_e(report.data)}</code> ({report.instances} instances)"),
        ("lock sha256", f"<code>{_e(report.lock_sha256 or 'no lock')}</code>"),
        ("lock signature", _e(report.signature)),
        ("secureserve", _e(report.secureserve)),
        ("time", _e(report.time)),
    ]
    body = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return f"<table>{body}</table>"


def _results_table(checks: list[CheckResult]) -> str:
    rows = ["<tr><th>check</th><th>result</th><th>summary</th></tr>"]
    for check in checks:
        word, css = _VERDICT[check.passed]
        rows.append(
            f'<tr><td><a href="#{_e(check.check)}">{_e(check.check)}</a></td>'
            f'<td class="{css}">{word}</td><td>{_e(check.summary)}</td></tr>'
        )
    return f"<table>{''.join(rows)}</table>"


def _section(check: CheckResult, settings: CheckSettings, *, plotting: bool) -> str:
    word, css = _VERDICT[check.passed]
    parts = [
        f'<h2 id="{_e(check.check)}">{_e(check.check)}: <span class="{css}">{word}</span></h2>',
        f"<p>{_e(check.summary)}</p>",
    ]
    if check.figures:
        parts.append(_figures_table(check.figures))
    if check.check in PLOTS and not plotting:
        parts.append(f'<p class="none">{_e(_NO_PLOTS)}</p>')
    elif check.check in PLOTS:
        draw, caption = PLOTS[check.check]
        try:
            png = draw(check, settings)
        except Exception as exc:  # noqa: BLE001 - a plot never costs the report its figures
            png = None
            parts.append(f'<p class="none">{_e(f"The plot failed: {type(exc).__name__}.")}</p>')
        if png is not None:
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_e(caption)}</figcaption></figure>"
            )
    failures = check.details.get("failures") or []
    if failures:
        parts.append("<p>The requests that were answered wrongly, to replay:</p>")
        for failure in failures:
            text = msgspec.json.format(msgspec.json.encode(failure), indent=2).decode()
            parts.append(f"<pre>{_e(text)}</pre>")
    return "\n".join(parts)


def _figures_table(figures: list[Figure]) -> str:
    rows = ["<tr><th>figure</th><th>value</th><th>threshold</th><th>result</th><th></th></tr>"]
    for figure in figures:
        word, css = ("", "none") if figure.measured_only else _VERDICT[figure.passed]
        rows.append(
            f"<tr><td>{_e(figure.name)}</td><td class='n'>{_number(figure.value)}</td>"
            f"<td class='n'>{_number(figure.threshold)}</td><td class='{css}'>{word}</td>"
            f"<td>{_e(figure.note or '')}</td></tr>"
        )
    return f"<table>{''.join(rows)}</table>"


def _thresholds(settings: CheckSettings) -> str:
    values = msgspec.structs.asdict(settings)
    body = "".join(
        f"<tr><td><code>{_e(name)}</code></td><td class='n'>{_e(str(value))}</td></tr>"
        for name, value in values.items()
    )
    return f"<table><tr><th>[check] key</th><th>value</th></tr>{body}</table>"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
