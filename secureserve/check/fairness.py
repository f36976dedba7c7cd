"""The fairness check: accuracy and selection rate per group, with fairlearn.

Per ``--sensitive`` column: accuracy and selection rate (the share predicted the
positive label) per group, and fairlearn's demographic parity difference and
equalized odds difference between the groups with at least ``[check] min_group_size``
rows (smaller groups are reported, not judged). The positive label is
``[check] positive_label``; a binary output needs none (the label that sorts last is
taken). A model with more than two labels and no ``positive_label`` gets accuracy per
group only: its parity figures are reported as not judged, with the fix.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from secureserve.check.results import CheckResult, Figure
from secureserve.errors import ConfigError
from secureserve.settings import CheckSettings

__all__ = ["fairness"]


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
    positive = settings.positive_label
    labels = sorted(set(truth) | set(predicted))
    if positive is None and len(labels) == 2:  # noqa: PLR2004 - binary
        positive = labels[-1]
    figures: list[Figure] = []
    details: dict[str, Any] = {"positive_label": positive, "columns": {}}
    for column, values in groups.items():
        g = np.array(values)
        sizes = Counter(values)
        judged = np.array([sizes[v] >= settings.min_group_size for v in values])
        details["columns"][column] = {
            str(group): {
                "size": size,
                "accuracy": round(float(np.mean(y_true[g == group] == y_pred[g == group])), 4),
                "selection_rate": None
                if positive is None
                else round(float(np.mean(y_pred[g == group] == positive)), 4),
                "judged": size >= settings.min_group_size,
            }
            for group, size in sorted(sizes.items())
        }
        if judged.sum() == 0 or len({v for v, j in zip(values, judged, strict=True) if j}) < 2:  # noqa: PLR2004
            figures.append(
                Figure(f"{column}: groups", None, note="fewer than two groups large enough")
            )
            continue
        if positive is None:
            figures.append(
                Figure(
                    f"{column}: parity",
                    None,
                    note="more than two labels: set [check] positive_label",
                )
            )
            continue
        t, p, s = y_true[judged] == positive, y_pred[judged] == positive, g[judged]
        for name, value, limit in (
            (
                "demographic_parity_difference",
                demographic_parity_difference(t, p, sensitive_features=s),
                settings.max_demographic_parity_difference,
            ),
            (
                "equalized_odds_difference",
                equalized_odds_difference(t, p, sensitive_features=s),
                settings.max_equalized_odds_difference,
            ),
        ):
            figures.append(
                Figure(f"{column}: {name}", round(float(value), 4), limit, float(value) <= limit)
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
