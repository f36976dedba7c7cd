"""The robustness check: the model under random noise and a decision-based attack.

Both work in the feature view, scaled so that every feature's profile range
(min to max) is 0 to 1: an ``epsilon`` of 0.05 is 5 % of each feature's range. A
perturbed vector is clipped to that range, rounded where the input wants whole
numbers, and rebuilt into an instance (``Model.from_features``), so every query the
model sees is one its schema accepts.

- **noise**: accuracy under uniform random L-infinity noise at several epsilons (the
  curve in the report);
- **HopSkipJump** (Chen et al., 2020; the Adversarial Robustness Toolbox, ``[check]``
  extra): a decision-based attack on ``robustness_samples`` correctly classified rows,
  giving each one's smallest adversarial perturbation (L-infinity, in range units), the
  median of those, and the robust accuracy at ``epsilon``: the share of rows the model
  still classifies correctly (no adversarial example was found within ``epsilon``).
  Judged against ``min_robust_accuracy``.

The model is asked through its ``ss.Scores`` mapping when it has one, else through its
label (a one-hot answer), which is all a decision-based attack needs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from secureserve.check.data import Predictor
from secureserve.check.progress import Progress
from secureserve.check.results import CheckResult, Figure
from secureserve.errors import ConfigError
from secureserve.model import Model, default_feature_view
from secureserve.outputs import label_field, score_fields
from secureserve.profile import Profile
from secureserve.settings import CheckSettings

__all__ = ["robustness"]

#: Random points tried per row for one the model labels otherwise (ART's init_size).
_START_TRIES: Final = 100
#: Epsilons of the noise curve, in fractions of each feature's range.
NOISE_EPSILONS: Final = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)


def robustness(
    predict: Predictor,
    profile: Profile,
    instances: list[Any],
    truth: list[str],
    settings: CheckSettings,
    *,
    batch: int,
    progress: Progress | None = None,
) -> CheckResult:
    """The robustness check of ``predict``'s handler on ``instances`` (labels in ``truth``)."""
    progress = progress or Progress()
    model = predict.model
    try:
        with warnings.catch_warnings():  # ART warns that PyTorch is absent: it is not needed
            warnings.simplefilter("ignore")
            from art.attacks.evasion import HopSkipJump  # noqa: PLC0415 - the [check] extra
            from art.estimators.classification import BlackBoxClassifier  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "the robustness check needs the Adversarial Robustness Toolbox: "
            "pip install 'secureserve[check]'."
        ) from None
    oracle = _Oracle(predict, profile, truth, batch)
    x = oracle.scale(model.features(instances))
    y = np.array([oracle.classes.index(t) if t in oracle.classes else -1 for t in truth])
    rng = np.random.default_rng(0)
    curve = {}
    with progress.part("robustness: noise", len(NOISE_EPSILONS)) as advance:
        for eps in NOISE_EPSILONS:
            noisy = np.clip(x + rng.uniform(-eps, eps, x.shape), 0.0, 1.0)
            curve[eps] = float(np.mean(oracle.labels(noisy) == y))
            advance(1)
    right = np.flatnonzero(oracle.labels(x) == y)
    sample = right[: settings.robustness_samples]
    classifier = BlackBoxClassifier(
        oracle.probabilities, (x.shape[1],), len(oracle.classes), clip_values=(0.0, 1.0)
    )
    attack = HopSkipJump(
        classifier,
        norm=np.inf,
        max_iter=settings.robustness_max_iter,
        max_eval=settings.robustness_max_eval,
        init_eval=min(100, settings.robustness_max_eval),
        verbose=False,
    )
    starts = _starting_points(oracle, x[sample], y[sample], rng)
    adversarial = x[sample].copy()  # a row with no start stays itself: never flipped
    with (
        progress.part("robustness: HopSkipJump", len(sample)) as advance,
        warnings.catch_warnings(),
        _numpy_random_seeded(0),
    ):
        warnings.simplefilter("ignore")
        for row, (index, start) in enumerate(zip(sample, starts, strict=True)):
            if start is not None:  # one row at a time, as the attack works anyway
                adversarial[row] = attack.generate(
                    x=x[index : index + 1], x_adv_init=start[None, :]
                )[0]
            advance(1)
    fooled = oracle.labels(adversarial) != y[sample]
    distance = np.where(fooled, np.abs(adversarial - x[sample]).max(axis=1), np.inf)
    robust = float(np.mean(distance > settings.epsilon)) if len(sample) else None
    median = float(np.median(distance)) if len(sample) else None
    passed = None if robust is None else robust >= settings.min_robust_accuracy
    figures = [
        Figure(
            "robust_accuracy",
            None if robust is None else round(robust, 4),
            settings.min_robust_accuracy,
            passed,
            note=f"HopSkipJump, {len(sample)} rows, epsilon {settings.epsilon}",
        ),
        Figure(
            "median_minimal_perturbation",
            None if median is None or not np.isfinite(median) else round(median, 4),
            note="L-infinity, in fractions of each feature's range",
        ),
        *(Figure(f"noise_accuracy@{eps}", round(acc, 4)) for eps, acc in curve.items()),
    ]
    summary = (
        f"robust accuracy {robust:.2f} at epsilon {settings.epsilon} "
        f"(at least {settings.min_robust_accuracy:.2f})"
        if robust is not None
        else "not judged: no correctly classified row to attack"
    )
    return CheckResult(
        "robustness",
        passed,
        summary,
        figures,
        {
            "noise_curve": {str(k): v for k, v in curve.items()},
            # per attacked row, the smallest change found that flipped it (None: none did)
            "minimal_perturbations": [
                round(float(d), 4) if np.isfinite(d) else None for d in distance
            ],
            "evaluations": oracle.calls,
        },
    )


def _starting_points(
    oracle: _Oracle, rows: npt.NDArray[np.float64], truth: npt.NDArray[np.int64], rng: Any
) -> list[npt.NDArray[np.float64] | None]:
    """For each row, the first of ``_START_TRIES`` random points the model labels otherwise.

    HopSkipJump starts from such a point; ART would draw it from an unseeded generator,
    so it is drawn here from the check's own: the same data gives the same figures.
    (Given a start, ART skips its first L2 search toward the row; the attack's own
    L-infinity search does that work.) The tries of all rows are asked in one batch.
    """
    if not len(rows):
        return []
    tries = rng.uniform(0.0, 1.0, (len(rows), _START_TRIES, rows.shape[1]))
    labels = oracle.labels(tries.reshape(-1, rows.shape[1])).reshape(len(rows), _START_TRIES)
    starts: list[npt.NDArray[np.float64] | None] = []
    for row in range(len(rows)):
        other = np.flatnonzero(labels[row] != truth[row])
        starts.append(tries[row, other[0]] if len(other) else None)
    return starts


@contextlib.contextmanager
def _numpy_random_seeded(seed: int) -> Iterator[None]:
    """Seed numpy's global generator (ART's attack steps draw from it); restore it after."""
    state = np.random.get_state()  # noqa: NPY002 - the legacy global generator ART uses
    np.random.seed(seed)  # noqa: NPY002 - ART uses the global generator; it is put back below
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


class _Oracle:
    """The model as the attack sees it: scaled feature vectors in, class scores out."""

    def __init__(self, predict: Predictor, profile: Profile, truth: list[str], batch: int) -> None:
        self._predict = predict
        self._model = model = predict.model
        cls = type(model)
        if cls.features is not Model.features and cls.from_features is Model.from_features:
            raise ConfigError(
                "the robustness check rebuilds instances from feature vectors: define "
                "from_features() on the handler (or use the default feature view)."
            )
        self._batch = batch
        self._low = np.array([f.min for f in profile.features])
        self._span = np.array([f.max - f.min for f in profile.features])
        kinds = (
            default_feature_view(cls).kinds
            if cls.features is Model.features
            else (float,) * len(profile.features)
        )
        self._whole = np.array([k is not float for k in kinds])
        self._label = label_field(cls.output_type)
        _, self._scores = score_fields(cls.output_type)
        if self._label is None and self._scores is None:
            raise ConfigError("the output has no ss.Label or ss.Scores field to attack.")
        self.classes = sorted(set(truth))
        self.calls = 0

    def scale(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        span = np.where(self._span > 0, self._span, 1.0)
        scaled: npt.NDArray[np.float64] = np.clip((rows - self._low) / span, 0.0, 1.0)
        return scaled

    def probabilities(self, scaled: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        rows = self._low + np.clip(scaled, 0.0, 1.0) * self._span
        rows = np.where(self._whole, np.round(rows), rows)
        out = np.zeros((len(rows), len(self.classes)))
        for start in range(0, len(rows), self._batch):
            chunk = self._model.from_features(rows[start : start + self._batch])
            for i, output in enumerate(self._predict(chunk), start=start):
                out[i] = self._answer(output)
        self.calls += len(rows)
        return out

    def labels(self, scaled: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        answered: npt.NDArray[np.int64] = self.probabilities(scaled).argmax(axis=1)
        return answered

    def _answer(self, output: Any) -> npt.NDArray[np.float64]:
        answer = np.zeros(len(self.classes))
        if self._scores is not None:
            mapping = getattr(output, self._scores) or {}
            for label, value in mapping.items():
                if str(label) in self.classes:
                    answer[self.classes.index(str(label))] = value
            if answer.any():
                return answer
        label = str(getattr(output, self._label)) if self._label is not None else None
        if label in self.classes:
            answer[self.classes.index(label)] = 1.0
        return answer
