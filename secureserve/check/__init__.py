"""``secureserve check``: the model tested the way auditors and attackers will, as a CI gate.

The project is loaded as ``secureserve run`` loads it (settings, lock, signature, the
format gate) and the handler is called in process. Each check gives figures against
the thresholds of ``[check]`` in secureserve.toml; ``run_check`` returns a
:class:`Report` whose ``passed`` is False when any judged figure fails (the command
then exits 1). A figure that cannot be judged (a group too small, no profile) is
reported with the reason, never counted as a pass or a failure.

The checks: ``robustness`` (:mod:`secureserve.check.robustness`, with the Adversarial
Robustness Toolbox), ``fairness`` (:mod:`secureserve.check.fairness`, with fairlearn),
``fuzz`` (:mod:`secureserve.check.fuzz`, with schemathesis; all three from the
``secureserve[check]`` extra), ``load`` (:mod:`secureserve.check.load`, the real server
on loopback) and ``drift`` of the data against the model's reference profile.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from secureserve import __version__
from secureserve.check.data import LabelledData, Predictor, read_labelled
from secureserve.check.progress import Progress
from secureserve.check.results import CheckResult, Figure, Report
from secureserve.config import load_settings
from secureserve.drift import psi_of
from secureserve.errors import ConfigError
from secureserve.model import Model
from secureserve.outputs import label_field
from secureserve.profile import Profile
from secureserve.serving import load_model
from secureserve.settings import CheckSettings, ModelSettings, Settings

__all__ = ["CHECKS", "Report", "run_check"]

_NO_PROFILE: Final = "the model has no reference profile (secureserve profile DATA)"
#: The checks this version runs, in the order it runs them.
CHECKS: Final = ("robustness", "fairness", "fuzz", "load", "drift")


def run_check(
    project: Path,
    data: Path,
    *,
    config: Path | None = None,
    label_column: str = "label",
    sensitive: tuple[str, ...] = (),
    only: tuple[str, ...] = CHECKS,
    progress: Progress | None = None,
    model_name: str | None = None,
) -> Report:
    """Load the project in ``project``, read ``data`` and run the checks in ``only``.

    ``model_name`` picks the model of a project that serves several (``--model``).
    ``progress`` shows how far the long parts have come (nothing, by default).
    """
    progress = progress or Progress()
    unknown = [name for name in only if name not in CHECKS]
    if unknown:
        raise ConfigError(
            f"--only {unknown[0]}: there is no such check; choose from {', '.join(CHECKS)}."
        )
    from secureserve.cli._common import import_handler  # noqa: PLC0415 - runs project code

    settings = load_settings(config, project_dir=project)
    model_settings = _chosen(settings, model_name)
    cls = import_handler(model_settings.handler, settings.project_dir)
    if model_name is not None and cls.name != model_name:
        raise ConfigError(f"--model {model_name}: this project serves {cls.name!r}.")
    loaded = load_model(cls, settings, model_settings)
    model = loaded.instance
    rows = read_labelled(data, model, label_column=label_column, sensitive=sensitive)
    results = []
    with contextlib.closing(Predictor(model)) as predict:
        # only fairness compares predicted labels: a slow model is not run over the data else
        predicted = (
            _predict_labels(predict, model, rows, settings.server.max_instances, progress)
            if "fairness" in only
            else None
        )
        for name in only:
            if name == "robustness":
                results.append(_robustness(predict, loaded.profile, rows, settings, progress))
            elif name == "fairness":
                results.append(_fairness(rows, predicted, settings.check))
            elif name == "fuzz":
                from secureserve.check.fuzz import fuzz  # noqa: PLC0415 - the [check] extra

                results.append(fuzz(cls, settings, model_settings, progress))
            elif name == "load":
                from secureserve.check.load import load  # noqa: PLC0415

                first = msgspec.to_builtins(rows.instances[0])
                project_dir, check = settings.project_dir, settings.check
                results.append(load(project_dir, cls.name, first, check, progress, config=config))
            elif name == "drift":
                results.append(_drift(model, loaded.profile, rows, settings.check))
    return Report(
        model=cls.name,
        version=cls.version,
        lock_sha256=loaded.lock_sha256,  # the lock verified when the model was loaded
        signature="verified" if model_settings.signing_public_key is not None else "not checked",
        secureserve=__version__,
        time=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        data=str(data),
        instances=len(rows.instances),
        passed=all(result.passed is not False for result in results),
        checks=results,
        thresholds=settings.check,
    )


def _chosen(settings: Settings, name: str | None) -> ModelSettings:
    """The settings of the model to check: ``[model]``, or ``[models.<name>]`` by ``--model``."""
    if not settings.models:
        return settings.model
    served = ", ".join(settings.models)
    if name is None:
        raise ConfigError(
            f"this project serves several models ({served}): choose one with --model NAME."
        )
    if name not in settings.models:
        raise ConfigError(f"--model {name}: there is no [models.{name}] table; choose {served}.")
    return settings.models[name]


def _predict_labels(
    predict: Predictor, model: Model[Any, Any], rows: LabelledData, batch: int, progress: Progress
) -> list[str] | None:
    """The predicted label of every instance, as text (None: the output has no ss.Label)."""
    field = label_field(type(model).output_type)
    if field is None:
        return None
    labels: list[str] = []
    with progress.part("fairness: predicting", len(rows.instances)) as advance:
        for start in range(0, len(rows.instances), batch):
            outputs = predict(rows.instances[start : start + batch])
            labels.extend(str(getattr(output, field)) for output in outputs)
            advance(len(outputs))
    return labels


def _fairness(
    rows: LabelledData, predicted: list[str] | None, settings: CheckSettings
) -> CheckResult:
    if predicted is None:
        return CheckResult.not_judged("fairness", "the output has no ss.Label field to compare")
    if not rows.groups:
        return CheckResult.not_judged("fairness", "no --sensitive column was given")
    from secureserve.check.fairness import fairness  # noqa: PLC0415 - needs the [check] extra

    return fairness(rows.labels, predicted, rows.groups, settings)


def _robustness(
    predict: Predictor,
    profile: Profile | None,
    rows: LabelledData,
    settings: Settings,
    progress: Progress,
) -> CheckResult:
    if profile is None:
        return CheckResult.not_judged("robustness", _NO_PROFILE)
    from secureserve.check.robustness import robustness  # noqa: PLC0415 - the [check] extra

    return robustness(
        predict,
        profile,
        rows.instances,
        rows.labels,
        settings.check,
        batch=settings.server.max_instances,
        progress=progress,
    )


def _drift(
    model: Model[Any, Any], profile: Profile | None, rows: LabelledData, settings: CheckSettings
) -> CheckResult:
    if profile is None:
        return CheckResult.not_judged("drift", _NO_PROFILE)
    values = psi_of(profile, model.features(rows.instances))
    worst = max(values, key=lambda v: v.psi)
    passed = worst.psi <= settings.max_drift_psi
    return CheckResult(
        check="drift",
        passed=passed,
        summary=f"largest PSI {worst.psi:.3f} ({worst.feature})",
        figures=[
            Figure(
                name="max_psi",
                value=worst.psi,
                threshold=settings.max_drift_psi,
                passed=passed,
                note=worst.feature,
            )
        ],
        details={"psi": {v.feature: v.psi for v in values}},
    )
