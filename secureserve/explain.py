"""Explanations for role ``explain``: one attribution per feature of each instance.

The quantity explained is the model's probability for the label it predicted for the
instance: the ``ss.Scores`` entry of that label, or else the ``ss.Score`` field (taken
as 0 for a variant whose predicted label changed). Two methods, both against the
reference profile (``[model.explain] method``):

- ``occlusion`` (built in): each feature in turn is replaced by the profile's median
  (rounded for whole-number features); its attribution is how much the probability
  drops. ``d + 1`` model evaluations per instance of ``d`` features, run on the
  inference thread in chunks of at most ``max_instances``.
- ``kernelshap`` (``pip install 'secureserve[explain]'``): KernelSHAP from the ``shap``
  package with the profile's medians as the background, ``[model.explain] samples``
  evaluations per instance (plus two), run on a worker thread that hands every batch
  to the inference thread.

Both need the feature view and its inverse (``Model.from_features``) and a profile.
Explanations leak more than predictions, so they have their own limit (``[limits]
explain_per_principal`` counts explained instances) and the quota is charged the model
evaluations run. Attributions are rounded to the caller's policy ``decimals`` and
withheld under ``label_only``.
"""

from __future__ import annotations

import asyncio
import math
import warnings
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import numpy.typing as npt

from secureserve.errors import ConfigError, RequestRejected
from secureserve.model import Model
from secureserve.outputs import OutputView, label_field, score_fields
from secureserve.profile import Profile
from secureserve.settings import ExplainSettings

if TYPE_CHECKING:
    from secureserve.runner import InferenceRunner
    from secureserve.schema import ModelSchema

__all__ = ["Explainer", "unavailable"]


def unavailable(why: str) -> RequestRejected:
    """409: this model cannot explain (no profile, no inverse, nothing to explain)."""
    return RequestRejected(409, "explain-unavailable", "Explanations are not available", detail=why)


class Explainer:
    """Explains one deployment's predictions; built once per deployment."""

    def __init__(
        self,
        model: Model[Any, Any],
        profile: Profile | None,
        settings: ExplainSettings,
        schema: ModelSchema,
        *,
        has_view: bool,
        max_batch: int,
    ) -> None:
        self.settings = settings
        self._model = model
        self._schema = schema
        self._max_batch = max_batch
        self._label = label_field(schema.output_type)
        self._score, self._scores = score_fields(schema.output_type)
        self._decode = msgspec.json.Decoder(schema.response_type)
        self.why_not = _why_not(model, profile, has_view=has_view, has_score=self._can_score())
        self.names: tuple[str, ...] = profile.names if profile is not None else ()
        self._baseline = _baseline(model, profile) if self.why_not is None else None
        if settings.method == "kernelshap":
            _require_shap()

    def evaluations(self, instances: int) -> int | None:
        """The model evaluations explaining ``instances`` will run, when known beforehand.

        Occlusion runs ``d + 1`` per instance; KernelSHAP decides as it goes (None: the
        quota is charged what it ran, afterwards).
        """
        if self.settings.method == "kernelshap":
            return None
        return instances * (len(self.names) + 1)

    async def explain(
        self, runner: InferenceRunner, instances: list[Any], view: OutputView | None
    ) -> tuple[list[dict[str, Any]], list[Any], int]:
        """One ``{"prediction", "attributions"}`` per instance, as ``view`` allows.

        Also the predicted labels (for extraction detection) and the model evaluations run.
        """
        if self.why_not is not None or self._baseline is None:
            raise unavailable(self.why_not or "no reference profile")
        rows = self._model.features(instances)
        originals = await self._predict(runner, instances)
        labels = [self._label_of(out) for out in originals]
        base = np.array(
            [self._probability(out, lab) for out, lab in zip(originals, labels, strict=True)]
        )
        if self.settings.method == "kernelshap":
            attributions, evaluations = await self._kernel_shap(runner, rows, labels)
        else:
            attributions = await self._occlusion(runner, rows, labels, base)
            evaluations = len(instances) * (len(self.names) + 1)
        shown = view.apply(originals) if view is not None else originals
        hide = view is not None and view.policy == "label_only"
        digits = view.decimals if view is not None else 6
        explanations = [
            {
                "prediction": msgspec.to_builtins(prediction),
                "attributions": None
                if hide
                else {
                    name: round(float(value), digits) + 0.0  # + 0.0: no "-0.0"
                    for name, value in zip(self.names, row, strict=True)
                },
            }
            for prediction, row in zip(shown, attributions, strict=True)
        ]
        return explanations, labels, evaluations

    # ----------------------------------------------------------------------- methods

    async def _occlusion(
        self,
        runner: InferenceRunner,
        rows: npt.NDArray[np.float64],
        labels: list[Hashable],
        base: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.float64]:
        n, d = rows.shape
        occluded = np.empty((n, d))
        for i in range(n):  # one instance at a time: d x d numbers, built off the event loop
            variants = await asyncio.to_thread(self._occluded, rows[i])
            outputs = await self._predict(runner, variants)
            occluded[i] = [self._probability(out, labels[i]) for out in outputs]
        drops: npt.NDArray[np.float64] = base[:, None] - occluded
        return drops

    def _occluded(self, row: npt.NDArray[np.float64]) -> list[Any]:
        """The instances of ``row`` with each feature in turn at the baseline."""
        assert self._baseline is not None  # noqa: S101 - explain() checked it
        variants = np.repeat(row[None, :], len(row), axis=0)
        np.fill_diagonal(variants, self._baseline)
        return self._model.from_features(variants)

    async def _kernel_shap(
        self, runner: InferenceRunner, rows: npt.NDArray[np.float64], labels: list[Hashable]
    ) -> tuple[npt.NDArray[np.float64], int]:
        import shap  # noqa: PLC0415 - the optional extra, checked at start-up

        loop = asyncio.get_running_loop()
        background = self._baseline[None, :]  # type: ignore[index]
        run = [0]  # model evaluations, counted as KernelSHAP asks for them

        def explain_row(row: npt.NDArray[np.float64], label: Hashable) -> Any:
            def scores(batch: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
                run[0] += len(batch)
                future = asyncio.run_coroutine_threadsafe(
                    self._predict(runner, self._model.from_features(batch)), loop
                )
                return np.array([self._probability(out, label) for out in future.result()])

            explainer = shap.KernelExplainer(scores, background)
            return explainer.shap_values(row[None, :], nsamples=self.settings.samples, silent=True)

        values = [
            np.asarray(await asyncio.to_thread(explain_row, row, label)).reshape(-1)
            for row, label in zip(rows, labels, strict=True)
        ]
        return np.stack(values), run[0]

    # ----------------------------------------------------------------------- helpers

    async def _predict(self, runner: InferenceRunner, instances: list[Any]) -> list[Any]:
        """Validated outputs for ``instances``, predicted in chunks of at most ``max_batch``."""
        size = self._max_batch
        chunks = [instances[i : i + size] for i in range(0, len(instances), size)]
        bodies = await asyncio.gather(*(runner.submit(chunk) for chunk in chunks))
        return [out for body in bodies for out in self._decode.decode(body).predictions]

    def _can_score(self) -> bool:
        return self._scores is not None or self._score is not None

    def _label_of(self, output: Any) -> Hashable:
        return getattr(output, self._label) if self._label is not None else None

    def _probability(self, output: Any, label: Hashable) -> float:
        if self._scores is not None:
            mapping = getattr(output, self._scores) or {}
            value = mapping.get(label, mapping.get(str(label), 0.0))
            return float(value)
        if self._score is None:  # pragma: no cover - _why_not refused it
            return math.nan
        same = self._label is None or getattr(output, self._label) == label
        score = getattr(output, self._score)
        return float(score) if same and score is not None else 0.0


def _why_not(
    model: Model[Any, Any], profile: Profile | None, *, has_view: bool, has_score: bool
) -> str | None:
    cls = type(model)
    if not has_view:
        return "the model's input has no feature view; define features() and feature_names"
    if profile is None:
        return (
            "the model has no reference profile: write one with `secureserve profile DATA`, "
            "then `secureserve lock`"
        )
    if cls.features is not Model.features and cls.from_features is Model.from_features:
        return "the handler defines features() but not from_features(), its inverse"
    if not has_score:
        return "the output has no ss.Score or ss.Scores field to explain"
    return None


def _baseline(model: Model[Any, Any], profile: Profile | None) -> npt.NDArray[np.float64] | None:
    """The profile's medians, whole numbers where the input wants them."""
    if profile is None:
        return None
    medians = np.array([f.quantiles.q50 for f in profile.features])
    cls = type(model)
    if cls.features is Model.features:
        from secureserve.model import default_feature_view  # noqa: PLC0415

        kinds = default_feature_view(cls).kinds
        whole = np.array([k is not float for k in kinds])
        medians = np.where(whole, np.round(medians), medians)
    return medians


def _require_shap() -> None:
    try:
        # shap's import styles its plots with matplotlib (when installed) through calls
        # that matplotlib 3.11 marks as pending deprecation: shap's concern, not the caller's
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            import shap  # noqa: F401, PLC0415 - only to see that it is there
    except ImportError:
        raise ConfigError(
            '[model.explain] method = "kernelshap" needs the shap package: '
            "pip install 'secureserve[explain]' (or use method = \"occlusion\")."
        ) from None
