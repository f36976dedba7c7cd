"""The Shapiro-Wilk W statistic, without scipy (extraction detection needs W, not a p-value).

Importing ``scipy.stats`` for ``shapiro`` cost every server with extraction detection
(the default) about half a second of start-up and 63 MiB of memory. W alone is a few
lines of numpy: Royston's approximation of the coefficients (Royston 1992, "Approximating
the Shapiro-Wilk W-test for non-normality", Statistics and Computing 2; Algorithm AS R94,
Applied Statistics 44, 1995), then W as the squared correlation between the sorted
values and those coefficients, computed as AS R94 computes it (``1 - W`` first, for
rounding). tests/test_shapiro.py compares it with ``scipy.stats.shapiro``.
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["shapiro_w"]

#: AS R94's polynomials in ``1/sqrt(n)`` correcting the two outermost coefficients.
_C1: Final = (0.0, 0.221157, -0.147981, -2.071190, 4.434685, -2.706056)
_C2: Final = (0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633)
#: Sample sizes whose coefficients are kept (a tested principal's count grows by tenths,
#: then stays at the history's length): at most this many arrays of up to 2,500 floats.
_KEPT_SIZES: Final = 32
_SMALLEST: Final = 3


def shapiro_w(values: npt.NDArray[np.float64]) -> float:
    """Shapiro-Wilk W of ``values`` (at least 3, finite, not all equal; any order): in (0, 1].

    Near 1 for normally distributed values, lower the less normal they look.
    """
    n = len(values)
    if n < _SMALLEST:
        raise ValueError(f"W needs at least {_SMALLEST} values, got {n}")
    if not np.isfinite(values).all():
        raise ValueError("W needs finite values")
    x = np.sort(values)
    spread = float(x[-1] - x[0])
    if not spread > 0:
        raise ValueError("W needs values that are not all equal")
    half = _coefficients(n)
    a = np.zeros(n)
    a[: len(half)] = -half  # the lowest values weigh negatively, the highest positively
    a[n - len(half) :] = half[::-1]
    a -= a.mean()
    scaled = x / spread
    scaled -= scaled.mean()
    ssa, ssx, sax = float(a @ a), float(scaled @ scaled), float(a @ scaled)
    root = math.sqrt(ssa * ssx)
    return 1.0 - (root - sax) * (root + sax) / (ssa * ssx)


@functools.lru_cache(maxsize=_KEPT_SIZES)
def _coefficients(n: int) -> npt.NDArray[np.float64]:
    """The ``n // 2`` coefficients of the highest values, largest first (read-only)."""
    if n == _SMALLEST:
        half = np.array([math.sqrt(0.5)])
    else:
        inverse = NormalDist().inv_cdf
        m = np.array([inverse((i - 0.375) / (n + 0.25)) for i in range(1, n // 2 + 1)])
        summ2 = 2.0 * float(m @ m)
        root = math.sqrt(summ2)
        u = 1.0 / math.sqrt(n)
        a1 = _poly(_C1, u) - m[0] / root
        if n > 5:  # noqa: PLR2004 - AS R94 corrects a second coefficient from n = 6
            a2 = -m[1] / root + _poly(_C2, u)
            fac = math.sqrt((summ2 - 2 * m[0] ** 2 - 2 * m[1] ** 2) / (1 - 2 * a1**2 - 2 * a2**2))
            half = -m / fac
            half[:2] = a1, a2
        else:
            fac = math.sqrt((summ2 - 2 * m[0] ** 2) / (1 - 2 * a1**2))
            half = -m / fac
            half[0] = a1
    half.flags.writeable = False
    return half


def _poly(coefficients: tuple[float, ...], x: float) -> float:
    """``c0 + c1 x + c2 x^2 + ...``."""
    return sum(c * x**power for power, c in enumerate(coefficients))
