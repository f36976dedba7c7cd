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
        for name, metric, limit in (
            (
                "demographic_parity_difference",
                demographic_parity_difference,
                settings.max_demographic_parity_difference,
            ),
            (
                "equalized_odds_difference",
                equalized_odds_difference,
                settings.max_equalized_odds_difference,
            ),
        ):
            # one label against the rest, for each label in turn: the largest is judged
            by_label = {
                label: float(metric(t == label, p == label, sensitive_features=s))
                for label in positives
            }
            label, value = max(by_label.items(), key=lambda item: item[1])
            details["parity_labels"].setdefault(column, label)  # the demographic parity one
            note = None if len(positives) == 1 else f"largest for label {label!r} against the rest"
            figures.append(
                Figure(f"{column}: {name}", round(value, 4), limit, value <= limit, note)
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
