"""The input guard: each instance scored against the reference profile before predict.

Two tests per instance, on its feature view (:mod:`secureserve.features`):

- range: every feature inside ``[q01 - margin * IQR, q99 + margin * IQR]`` of the
  profile (where the training data has no spread between its quartiles, the spread
  between q01 and q99 stands in for the IQR, and where there is none there either,
  the spread between min and max: a feature that was constant must stay exactly that
  constant);
- distance: the root mean square of the z-scores ``(x - mean) / std`` over the
  features that vary (a Mahalanobis distance with a diagonal covariance, divided by
  the square root of the number of features so that one bound suits any width; about
  1 for typical training instances) at most ``max_distance``.

``refuse`` answers 422 ``out-of-distribution`` naming the first failing instance's
index only (naming features would map the profile's bounds for an attacker; the log
has them); ``flag`` lets the request through and records it (audit field ``flagged``,
metric ``secureserve_guard_flagged_total{model,reason}``, a log line). This is a
screen for inputs unlike the training data, not a certified defense: an adversarial
example close to real data passes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from secureserve.errors import RequestRejected
from secureserve.profile import Profile
from secureserve.settings import GuardSettings

__all__ = ["Flagged", "InputGuard", "guard_mode"]

#: Features named per flagged instance in the log (the rest are counted).
_NAMED: Final = 5


@dataclass(frozen=True)
class Flagged:
    """One instance the guard did not like: its index, why, and (for the log) which features."""

    index: int
    reason: Literal["range", "distance"]
    features: tuple[str, ...]
    distance: float

    def describe(self) -> str:
        """For the application log only: never sent to the client."""
        named = ", ".join(self.features[:_NAMED])
        more = f" and {len(self.features) - _NAMED} more" if len(self.features) > _NAMED else ""
        return f"instance {self.index}: {self.reason} (distance {self.distance:.2f}; {named}{more})"


def guard_mode(settings: GuardSettings, *, has_profile: bool) -> Literal["refuse", "flag", "off"]:
    """The mode in effect: the configured one, else ``flag`` with a profile and ``off`` without."""
    if settings.mode is not None:
        return settings.mode
    return "flag" if has_profile else "off"


class InputGuard:
    """Scores feature rows against one profile; built once per deployment."""

    def __init__(self, profile: Profile, settings: GuardSettings) -> None:
        features = profile.features
        self.names = profile.names
        q01 = np.array([f.quantiles.q01 for f in features])
        q99 = np.array([f.quantiles.q99 for f in features])
        iqr = np.array([f.quantiles.q75 - f.quantiles.q25 for f in features])
        whole = np.array([f.max - f.min for f in features])
        spread = np.where(iqr > 0, iqr, np.where(q99 > q01, q99 - q01, whole))
        self.lower = q01 - settings.margin * spread
        self.upper = q99 + settings.margin * spread
        std = np.array([f.std for f in features])
        mean = np.array([f.mean for f in features])
        # a spread too small to divide by (1e-12 of the value) counts as constant
        self._varies = std > 1e-12 * np.maximum(1.0, np.abs(mean))
        self._mean = mean[self._varies]
        self._scale = 1.0 / std[self._varies]
        self._width = max(int(self._varies.sum()), 1)
        self.max_distance = settings.max_distance

    def check(self, rows: npt.NDArray[np.float64]) -> list[Flagged]:
        """The instances (rows) outside the profile, in order; empty when all are fine."""
        outside = (rows < self.lower) | (rows > self.upper)
        z = (rows[:, self._varies] - self._mean) * self._scale
        distance = np.sqrt(np.einsum("ij,ij->i", z, z) / self._width)
        bad = outside.any(axis=1) | (distance > self.max_distance)
        if not bad.any():
            return []
        flagged = []
        for index in np.flatnonzero(bad):
            names = tuple(self.names[j] for j in np.flatnonzero(outside[index]))
            flagged.append(
                Flagged(
                    index=int(index),
                    reason="range" if names else "distance",
                    features=names,
                    distance=float(distance[index]),
                )
            )
        return flagged


def out_of_distribution(flagged: list[Flagged]) -> RequestRejected:
    """The 422 of ``refuse``: the first instance's index for the client, all of it for the log."""
    return RequestRejected(
        422,
        "out-of-distribution",
        "Input outside the model's reference profile",
        detail=f"instance {flagged[0].index} is unlike the data this model was built for",
        log_reason="; ".join(f.describe() for f in flagged[:_NAMED]),
    )
