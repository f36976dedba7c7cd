"""The figures of ``report.html``, drawn with matplotlib as PNG bytes.

One function per check, each taking that check's result (figures and details as
``report.json`` holds them) and the thresholds, and returning the PNG, or None when
the check kept nothing to draw (not judged, or not run). Text that came from the
project or the data (group values, labels, column and feature names) is drawn
literally, never as matplotlib's mathematics. matplotlib is used through
its object interface (``matplotlib.figure.Figure`` with the Agg canvas): no pyplot,
no global state, no window. The PNGs carry no software or date metadata, so the same
figures give the same bytes.
"""

from __future__ import annotations

import io
import itertools
from typing import TYPE_CHECKING, Any, Final

from secureserve.check.results import CheckResult
from secureserve.settings import CheckSettings

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as PlotFigure

__all__ = ["PLOTS", "accuracy_against_epsilon", "fairness_per_group", "latency", "psi"]

#: Bars of the PSI plot: the features with the largest PSI, when there are more.
MAX_PSI_BARS: Final = 30
#: Groups drawn per sensitive column, largest first, when there are more.
MAX_GROUP_BARS: Final = 12
_SIZE: Final = (7.0, 3.4)
_DPI: Final = 110
_GOOD: Final = "#2e7d32"
_FAIL: Final = "#c62828"
_MAIN: Final = "#1565c0"
_SECOND: Final = "#ef6c00"
_MUTED: Final = "#9e9e9e"


def accuracy_against_epsilon(check: CheckResult, settings: CheckSettings) -> bytes | None:
    """Accuracy under random noise, and the attacked rows that withstand the attack."""
    curve = check.details.get("noise_curve")
    distances = check.details.get("minimal_perturbations")
    if not curve:
        return None
    figure, axes = _figure()
    epsilons = [float(e) for e in curve]
    axes.plot(epsilons, list(curve.values()), "o-", color=_MAIN, label="random noise")
    if distances:
        flipped = [d for d in distances if d is not None]
        top = max([*epsilons, *flipped])
        grid = [top * i / 200 for i in range(201)]
        held = [sum(d is None or d > e for d in distances) / len(distances) for e in grid]
        axes.step(grid, held, where="post", color=_SECOND, label="HopSkipJump (attacked rows)")
    epsilon = settings.epsilon
    axes.axvline(epsilon, color=_MUTED, linestyle="--", label=f"epsilon {epsilon}")
    axes.axhline(
        settings.min_robust_accuracy,
        color=_FAIL,
        linestyle=":",
        label=f"min_robust_accuracy {settings.min_robust_accuracy}",
    )
    axes.set_xlabel("perturbation (L-infinity, fraction of each feature's range)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(fontsize="small", loc="lower left")
    return _png(figure)


def fairness_per_group(check: CheckResult, settings: CheckSettings) -> bytes | None:
    """Accuracy and selection rate per group, one panel per sensitive column."""
    columns: dict[str, dict[str, Any]] = check.details.get("columns") or {}
    if not columns:
        return None
    from matplotlib.figure import Figure as PlotFigure  # noqa: PLC0415 - the [check] extra

    figure = PlotFigure(figsize=(_SIZE[0], _SIZE[1] * len(columns)), dpi=_DPI, layout="tight")
    for row, (column, groups) in enumerate(columns.items(), start=1):
        axes = figure.add_subplot(len(columns), 1, row)
        largest = sorted(groups.items(), key=lambda item: -int(item[1]["size"]))[:MAX_GROUP_BARS]
        shown = sorted(largest)
        names = [f"{_plain(name)}\n(n={g['size']})" for name, g in shown]
        where = list(range(len(shown)))
        width = 0.4
        axes.bar(
            [x - width / 2 for x in where],
            [g["accuracy"] for _, g in shown],
            width,
            color=[_MAIN if g["judged"] else _MUTED for _, g in shown],
            label="accuracy",
        )
        # the positive label, or of several the one with the largest parity difference
        label = check.details.get("parity_labels", {}).get(column)
        if label is not None:
            axes.bar(
                [x + width / 2 for x in where],
                [g["selection_rate"].get(label, 0.0) for _, g in shown],
                width,
                color=[_SECOND if g["judged"] else _MUTED for _, g in shown],
                label=_plain(f"selection rate of {label!r}"),
            )
        axes.set_xticks(where, names, fontsize="small")
        axes.set_ylim(0, 1.3)  # room for the legend above the bars
        axes.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        small = f"grey: fewer than {settings.min_group_size} rows, not judged"
        axes.set_title(f"{_plain(column)}  ({small})", fontsize="medium")
        axes.legend(fontsize="small", loc="upper center", ncols=2)
    return _png(figure)


def latency(check: CheckResult, settings: CheckSettings) -> bytes | None:
    """The latency histogram of the load check, with p50, p99 and max_p99_ms marked."""
    histogram = check.details.get("latency_histogram") or {}
    edges, counts = histogram.get("edges_ms") or [], histogram.get("counts") or []
    if not counts:
        return None
    figure, axes = _figure()
    widths = [b - a for a, b in itertools.pairwise(edges)]
    axes.bar(edges[:-1], counts, widths, align="edge", color=_MAIN, label="requests")
    marks = {f.name: f.value for f in check.figures if f.value is not None}
    for name, color in (("p50_ms", _GOOD), ("p99_ms", _SECOND)):
        if name in marks:
            axes.axvline(marks[name], color=color, linestyle="--", label=f"{name} {marks[name]}")
    if settings.max_p99_ms <= edges[-1] * 1.5:  # off the chart it would squash the bars
        axes.axvline(settings.max_p99_ms, color=_FAIL, linestyle=":", label="max_p99_ms")
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("requests")
    axes.legend(fontsize="small")
    return _png(figure)


def psi(check: CheckResult, settings: CheckSettings) -> bytes | None:
    """PSI per feature (the largest ``MAX_PSI_BARS``), with max_drift_psi marked."""
    values: dict[str, float] = check.details.get("psi") or {}
    if not values:
        return None
    shown = sorted(values.items(), key=lambda item: -item[1])[:MAX_PSI_BARS]
    figure, axes = _figure()
    where = list(range(len(shown)))
    axes.bar(
        where,
        [v for _, v in shown],
        color=[_FAIL if v > settings.max_drift_psi else _MAIN for _, v in shown],
    )
    axes.axhline(settings.max_drift_psi, color=_FAIL, linestyle=":", label="max_drift_psi")
    axes.set_xticks(where, [_plain(name) for name, _ in shown], rotation=90, fontsize="x-small")
    axes.set_ylabel("PSI")
    more = f" (the {MAX_PSI_BARS} largest of {len(values)})" if len(values) > len(shown) else ""
    axes.set_title(f"PSI per feature{more}", fontsize="medium")
    axes.legend(fontsize="small")
    return _png(figure)


def _plain(text: str) -> str:
    """``text`` from the project or the data, to be drawn as it is (``$`` escaped).

    matplotlib reads ``$...$`` as mathematics, and fails on a bad formula.
    """
    return text.replace("$", r"\$")


def _figure() -> tuple[PlotFigure, Axes]:
    from matplotlib.figure import Figure as PlotFigure  # noqa: PLC0415 - the [check] extra

    figure = PlotFigure(figsize=_SIZE, dpi=_DPI, layout="tight")
    return figure, figure.add_subplot()


def _png(figure: PlotFigure) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


#: The plot of each check, in the order report.html shows them, with what it shows.
PLOTS: Final = {
    "robustness": (
        accuracy_against_epsilon,
        (
            "Accuracy against epsilon. Blue: accuracy on all rows under uniform random noise of "
            "at most epsilon on every feature. Orange: the share of attacked rows that "
            "HopSkipJump could not flip with a change of at most epsilon. The dashed line is "
            "[check] epsilon, the dotted one min_robust_accuracy."
        ),
    ),
    "fairness": (
        fairness_per_group,
        (
            "Per group of each sensitive column: accuracy (blue) and the selection rate of the "
            "positive label (orange), the share of the group predicted that label. Grey bars "
            "are groups too small to judge."
        ),
    ),
    "load": (
        latency,
        (
            "Latency of the answered requests under load, with p50 and p99 (dashed) and "
            "max_p99_ms (dotted, when it is near enough to draw)."
        ),
    ),
    "drift": (
        psi,
        (
            "Population stability index of each feature between --data and the model's "
            "profile; red bars exceed max_drift_psi (dotted)."
        ),
    ),
}
