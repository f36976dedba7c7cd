"""The fairness check: accuracy and selection rate per group, with fairlearn.

Per ``--sensitive`` column: accuracy and selection rate (the share predicted the
positive label) per group, and fairlearn's demographic parity difference and
equalized odds difference between the groups with at least ``[check] min_group_size``
rows (smaller groups are reported, not judged). The positive label is
``[check] positive_label``; a binary output needs none (the label that sorts last is
taken; the figures are the same either way). With more than two labels and no
``positive_label``, each label is taken in turn against the rest and the largest
difference is judged, naming its label.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

import numpy as np

from secureserve.check.results import CheckResult, Figure
from secureserve.errors import ConfigError
from secureserve.settings import CheckSettings

__all__ = ["fairness"]

_NO_RATES: Final = "rows with and without the label are needed in every group"
#: Labels named in the message about an unknown positive_label.
_LABELS_SHOWN: Final = 10


def fairness(
    truth: list[str], predicted: list[str], groups: dict[str, list[str]], settings: CheckSettings
) -> CheckResult:
    """The fairness check over every sensitive column in ``groups``."""
    try:
        from fairlearn.metrics import (  # noqa: PLC0415 - the [check] extra
            demographic_parity_difference,
            equalized_odds_difference,
        )
    except ImportError:
        raise ConfigError(
            "the fairness check needs fairlearn: pip install 'secureserve[check]'."
        ) from None
    y_true, y_pred = np.array(truth), np.array(predicted)
    positives = _positive_labels(truth, predicted, settings.positive_label)
    figures: list[Figure] = []
    details: dict[str, Any] = {"positive_labels": positives, "columns": {}, "parity_labels": {}}
    for column, values in groups.items():
        g = np.array(values)
        sizes = Counter(values)
        judged = np.array([sizes[v] >= settings.min_group_size for v in values])
        details["columns"][column] = {
            str(group): {
                "size": size,
                "accuracy": round(float(np.mean(y_true[g == group] == y_pred[g == group])), 4),
                "selection_rate": {
                    label: round(float(np.mean(y_pred[g == group] == label)), 4)
                    for label in positives
                },
                "judged": size >= settings.min_group_size,
            }
            for group, size in sorted(sizes.items())
        }
        if len({v for v, j in zip(values, judged, strict=True) if j}) < 2:  # noqa: PLR2004
            figures.append(
                Figure(f"{column}: groups", None, note="fewer than two groups large enough")
            )
            continue
        t, p, s = y_true[judged], y_pred[judged], g[judged]
        # one label against the rest, for each label in turn: the largest is judged
        parity = {
            label: float(
                demographic_parity_difference(t == label, p == label, sensitive_features=s)
            )
            for label in positives
        }
        label = max(parity, key=parity.__getitem__)
        details["parity_labels"][column] = label
        figures.append(
            _judged(
                f"{column}: demographic_parity_difference",
                label,
                parity[label],
                settings.max_demographic_parity_difference,
                several=len(positives) > 1,
            )
        )
        # true- and false-positive rates need rows of the label and rows of others in
        # every group: a label missing from a group would count as a rate of 0
        per_group = [t[s == group] for group in np.unique(s)]
        rated = [
            label
            for label in positives
            if all((rows == label).any() and (rows != label).any() for rows in per_group)
        ]
        name = f"{column}: equalized_odds_difference"
        if not rated:
            figures.append(Figure(name, None, note=_NO_RATES))
            continue
        odds = {
            label: float(equalized_odds_difference(t == label, p == label, sensitive_features=s))
            for label in rated
        }
        label = max(odds, key=odds.__getitem__)
        skipped = len(positives) - len(rated)
        figures.append(
            _judged(
                name,
                label,
                odds[label],
                settings.max_equalized_odds_difference,
                several=len(positives) > 1,
                more=f"; {skipped} label(s) not judged: {_NO_RATES}" if skipped else "",
            )
        )
    judged_figures = [f for f in figures if f.passed is not None]
    passed = all(f.passed for f in judged_figures) if judged_figures else None
    worst = max(judged_figures, key=lambda f: (f.value or 0) - (f.threshold or 0), default=None)
    summary = (
        f"{worst.name} {worst.value:.3f} (at most {worst.threshold:.3f})"
        if worst is not None
        else "nothing could be judged (see the figures)"
    )
    return CheckResult("fairness", passed, summary, figures, details)


def _judged(
    name: str, label: str, value: float, limit: float, *, several: bool, more: str = ""
) -> Figure:
    """A judged figure; with several labels its note names the one it was largest for."""
    note = (f"largest for label {label!r} against the rest" if several else "") + more
    return Figure(name, round(value, 4), limit, value <= limit, note.lstrip("; ") or None)


def _positive_labels(truth: list[str], predicted: list[str], chosen: str | None) -> list[str]:
    """The labels whose selection is compared: the chosen one, the last of two, or all."""
    labels = sorted(set(truth) | set(predicted))
    if chosen is not None:
        if chosen not in labels:
            shown = ", ".join(repr(label) for label in labels[:_LABELS_SHOWN])
            raise ConfigError(
                f"[check] positive_label {chosen!r} is neither a label of --data nor a "
                f"prediction of the model; the labels are {shown}"
                f"{', ...' if len(labels) > _LABELS_SHOWN else ''}."
            )
        return [chosen]
    return labels[-1:] if len(labels) == 2 else labels  # noqa: PLR2004 - binary
