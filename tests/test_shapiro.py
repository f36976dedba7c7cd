"""Shapiro-Wilk W without scipy: the same statistic as scipy.stats.shapiro."""

from __future__ import annotations

import math
import warnings
from collections import deque

import numpy as np
import pytest
from scipy.stats import shapiro

from secureserve.extraction import _shapiro
from secureserve.shapiro import shapiro_w

SIZES = [*range(3, 40), 50, 64, 101, 257, 1000, 2000, 4999, 5000]
SHAPES = {
    "normal": lambda rng, n: rng.normal(size=n),
    "uniform": lambda rng, n: rng.uniform(size=n),
    "exponential": lambda rng, n: rng.exponential(size=n),
    "heavy tails": lambda rng, n: rng.lognormal(0.0, 2.0, size=n),
    "ties": lambda rng, n: np.round(rng.normal(size=n), 1),
    "two clusters": lambda rng, n: np.r_[rng.normal(0, 1, n // 2), rng.normal(50, 1, n - n // 2)],
    "huge offset": lambda rng, n: 1e9 + rng.normal(size=n),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_w_is_scipys(shape):
    """Every size from 3 to 5,000 and very different shapes: W within 1e-7 of scipy's."""
    rng = np.random.default_rng(len(shape))
    for n in SIZES:
        values = SHAPES[shape](rng, n)
        if np.ptp(values) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about sizes over 5,000 and ties
            expected = float(shapiro(values).statistic)
        assert shapiro_w(values) == pytest.approx(expected, abs=1e-7), (shape, n)


def test_w_does_not_depend_on_order_location_or_scale():
    """W of sorted, shuffled, shifted or scaled values is the same."""
    rng = np.random.default_rng(7)
    values = rng.exponential(size=300)
    w = shapiro_w(values)
    assert 0.0 < w < 0.9  # exponential: clearly not normal
    for other in (np.sort(values), rng.permutation(values), values * 1e-6 + 3.0):
        assert shapiro_w(other) == pytest.approx(w, abs=1e-9)  # the shift costs digits
    assert shapiro_w(rng.normal(size=300)) > 0.98


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([1.0, 2.0]), "at least 3"),
        (np.array([2.0, 2.0, 2.0, 2.0]), "not all equal"),
        (np.array([1.0, 2.0, np.nan, 4.0]), "finite"),
        (np.array([1.0, 2.0, np.inf, 4.0]), "finite"),
    ],
)
def test_w_refuses_what_has_no_w(values, message):
    """Fewer than 3 values, or all alike: an error, never a number."""
    with pytest.raises(ValueError, match=message):
        shapiro_w(values)


def test_extraction_takes_values_without_w_as_no_pass():
    """Distances W cannot be computed from are a statistic of 0 (suspect), never an error."""
    assert _shapiro(deque([0.5, 1.0, math.nan, 2.0] * 10)) == 0.0
    assert _shapiro(deque([0.5, 1.0, -math.inf, 2.0] * 10)) == 0.0
    assert _shapiro(deque([1.5] * 40)) == 0.0
    assert _shapiro(deque([1.0, 2.0])) is None
