"""secureserve.check.report and .plots: report.json, report.md and a self-contained report.html."""

from __future__ import annotations

import base64
import importlib.util
import json
import re

import msgspec
import pytest

from secureserve.check.plots import MAX_PSI_BARS, PLOTS
from secureserve.check.report import FILES, html_page, write_report
from secureserve.check.results import CheckResult, Figure, Report
from secureserve.settings import CheckSettings

HOSTILE = '<script>alert("x")</script>'
PNG = b"\x89PNG\r\n\x1a\n"


def sample_report(*, group: str = "north", passed: bool = True) -> Report:
    """A report with every plotted check's details, as the checks write them."""
    checks = [
        CheckResult(
            "robustness",
            passed,
            "robust accuracy 0.80 at epsilon 0.05 (at least 0.50)",
            [
                Figure("robust_accuracy", 0.8, 0.5, passed, "HopSkipJump, 5 rows, epsilon 0.05"),
                Figure("noise_accuracy@0.1", 0.9),
            ],
            {
                "noise_curve": {"0.0": 1.0, "0.1": 0.9, "0.3": 0.7},
                "minimal_perturbations": [0.02, 0.2, None, 0.4, 0.3],
            },
        ),
        CheckResult(
            "fairness",
            True,
            "cohort: demographic_parity_difference 0.050 (at most 0.200)",
            [Figure("cohort: demographic_parity_difference", 0.05, 0.2, True)],
            {
                "positive_labels": ["approve"],
                "parity_labels": {"cohort": "approve"},
                "columns": {
                    "cohort": {
                        group: {
                            "size": 40,
                            "accuracy": 0.9,
                            "selection_rate": {"approve": 0.5},
                            "judged": True,
                        },
                        "south": {
                            "size": 3,
                            "accuracy": 1.0,
                            "selection_rate": {"approve": 0.0},
                            "judged": False,
                        },
                    }
                },
            },
        ),
        CheckResult(
            "fuzz",
            False,
            "100 generated requests, 1 answered wrongly",
            [Figure("failures", 1.0, 0.0, False)],
            {"failures": [{"mode": "positive", "body": {"note": HOSTILE}, "problem": "500"}]},
        ),
        CheckResult(
            "load",
            True,
            "900 requests/s",
            [Figure("p99_ms", 4.0, 250.0, True), Figure("p50_ms", 2.0)],
            {"latency_histogram": {"edges_ms": [1.0, 2.0, 3.0, 4.0], "counts": [5, 10, 2]}},
        ),
        CheckResult(
            "drift",
            True,
            "largest PSI 0.300 (f3)",
            [Figure("max_psi", 0.3, 0.2, False, "f3")],
            {"psi": {f"f{i}": i / 10 for i in range(40)}},
        ),
    ]
    return Report(
        model=HOSTILE,
        version="1.0",
        lock_sha256="ab" * 32,
        signature="verified",
        secureserve="0.1.0",
        time="2026-12-06T00:00:00Z",
        data="data/check.jsonl",
        instances=43,
        passed=False,
        checks=checks,
        thresholds=CheckSettings(),
    )


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_the_page_needs_nothing_beside_it_and_runs_nothing():
    page = html_page(sample_report())
    assert len(images(page)) == 4  # robustness, fairness, load, drift
    assert all(png.startswith(PNG) for png in images(page))
    # every src is an embedded image; no script, no link, nothing fetched
    assert re.findall(r'src="(?!data:image/png;base64,)', page) == []
    assert "<script" not in page
    assert "http://" not in page
    assert "https://" not in page
    assert "default-src 'none'; img-src data:" in page


def test_text_from_the_project_and_the_data_is_escaped():
    breakout = '"><img src=x onerror=alert(1)>'
    report = sample_report(group=breakout)
    fuzz = report.checks[2]
    checks = [*report.checks[:2], msgspec.structs.replace(fuzz, summary=breakout)]
    page = html_page(msgspec.structs.replace(report, checks=[*checks, *report.checks[3:]]))
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page  # model name, request body
    assert breakout not in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_page_shows_each_check_its_figures_and_the_thresholds():
    page = html_page(sample_report())
    assert '<p class="banner fail">FAILED</p>' in page
    for name in ("robustness", "fairness", "fuzz", "load", "drift"):
        assert f'id="{name}"' in page
    assert "robust_accuracy" in page
    assert "<code>max_p99_ms</code>" in page  # the thresholds table
    assert "ab" * 32 in page  # the lock's sha256
    assert "answered wrongly, to replay" in page


def test_without_matplotlib_the_page_says_why_there_is_no_plot(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    page = html_page(sample_report())
    assert images(page) == []
    assert page.count("plots need matplotlib (pip install &#x27;secureserve[check]&#x27;)") == 4


def test_plots_are_none_without_details_and_the_same_bytes_twice():
    empty = CheckResult.not_judged("drift", "no profile")
    settings = CheckSettings()
    for draw, _caption in PLOTS.values():
        assert draw(empty, settings) is None
    report = sample_report()
    drift = report.checks[-1]
    draw, _ = PLOTS["drift"]
    assert draw(drift, settings) == draw(drift, settings)
    assert len(drift.details["psi"]) > MAX_PSI_BARS  # the plot keeps the largest only


def test_write_report_writes_three_whole_files(tmp_path):
    report = sample_report()
    paths = write_report(report, tmp_path / "out")
    assert [p.name for p in paths] == list(FILES)
    saved = json.loads(paths[0].read_text())
    assert saved["thresholds"]["max_p99_ms"] == CheckSettings().max_p99_ms
    assert saved["checks"][0]["details"]["minimal_perturbations"][2] is None
    assert "| fuzz | **fail** | failures |" in paths[1].read_text()
    assert paths[2].read_text().startswith("<!doctype html>")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(FILES)  # no temporaries


def test_a_report_folder_that_cannot_be_written_is_an_error_and_leaves_no_part(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OSError):
        write_report(sample_report(), blocker)
    assert blocker.read_text() == "a file, not a folder"


def test_a_pipe_or_line_break_from_the_data_stays_inside_its_markdown_cell():
    report = sample_report()
    drift = msgspec.structs.replace(
        report.checks[-1], figures=[Figure("max_psi", 0.3, 0.2, False, "col|umn\nname")]
    )
    table = msgspec.structs.replace(report, checks=[drift]).markdown().splitlines()[-1]
    assert table == "| drift | **fail** | max_psi (col\\|umn name) | 0.3 | 0.2 |"


def test_dollar_signs_from_the_data_are_drawn_not_read_as_mathematics():
    report = sample_report(group="$\\frac{a$")  # a broken formula: matplotlib would fail on it
    drift = msgspec.structs.replace(report.checks[-1], details={"psi": {"$x$": 0.1, "y": 0.3}})
    page = html_page(msgspec.structs.replace(report, checks=[*report.checks[:-1], drift]))
    assert len(images(page)) == 4


def test_a_plot_that_fails_costs_the_report_nothing_but_that_plot(monkeypatch, tmp_path):
    def broken(check, settings):
        raise ValueError("no")

    monkeypatch.setitem(PLOTS, "load", (broken, "caption"))
    paths = write_report(sample_report(), tmp_path)
    page = paths[2].read_text()
    assert len(images(page)) == 3
    assert "The plot failed: ValueError." in page
