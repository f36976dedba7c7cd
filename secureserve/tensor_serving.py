"""Serving an ``ss.TensorModel``: loading it verified, and the version that answers ``/v2``.

:func:`load_tensor_model` goes the same way as :func:`secureserve.serving.load_model`:
the lock (and its signature) before any file is read, each file against the lock, the
hardened ONNX session on the chosen execution providers. It refuses, naming the setting,
a model with score outputs unless its output policy is ``"full"`` (tensors have no
labels or top-k to fall back to, and role policies do not apply to them).

The model defenses are those of ``/v1`` (:class:`secureserve.defenses.Defenses`): a
profile (``[model] profile``, or a locked ``profile.json``) switches on the input guard
and drift monitoring, extraction detection runs unless switched off; they read the
model's feature input (:meth:`secureserve.tensor_model.TensorModel.feature_columns`).

A :class:`TensorDeployment` runs its session on one inference thread of its own
(:class:`TensorRunner`, the machinery of :mod:`secureserve.runner`), so a slow model
never holds the event loop; a request waits at most ``[server] predict_timeout_s``
(then 504, and a run whose every request has timed out is stopped). Requests that wait
while the thread is busy run as one batch when the graph allows it (the first dimension
of every input and output open, and the class says each output row depends on its
input row alone: ``independent_rows = True``) and they fit together (the same outputs asked for,
each input of the same datatype and the same shape past the first dimension), up to
``[server] max_instances`` rows; when a merged run fails, each request runs alone.

:class:`TensorState` is the served model: reloads swap
deployments as for ``/v1`` models (:class:`secureserve.serving.ServedModel`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime

from secureserve.artifacts import ArtifactRecord, Artifacts
from secureserve.defenses import Defenses, FeatureSource, check_guard_has_profile, without_view
from secureserve.errors import ConfigError, ModelError
from secureserve.logs import get_logger
from secureserve.metrics import Metrics
from secureserve.profile import Profile, load_profile, tensor_revision
from secureserve.release import revision_of
from secureserve.runner import BatchRunner, Job
from secureserve.serving import ServedModel, open_model_files, profile_name_of, started
from secureserve.settings import ModelSettings, Settings
from secureserve.tensor_model import TensorModel

__all__ = [
    "LoadedTensor",
    "TensorDeployment",
    "TensorRunner",
    "TensorState",
    "load_tensor_model",
    "open_graph",
]

Arrays = dict[str, np.ndarray[Any, Any]]
Outputs = list[tuple[str, str, np.ndarray[Any, Any]]]
#: What a tensor job asks for: the checked inputs and the outputs wanted, in order.
_Infer = tuple[Arrays, list[str]]


@dataclass(frozen=True)
class LoadedTensor:
    """A tensor model after ``load``, with what it opened and which lock it was checked on."""

    instance: TensorModel
    opened: Mapping[str, ArtifactRecord]
    revision: str
    lock_sha256: str | None
    profile: Profile | None = None  # the reference profile, when the model has one
    no_features: str | None = None  # why the model has no feature view (defenses off)


def load_tensor_model(
    cls: type[TensorModel], settings: Settings, model: ModelSettings, *, table: str = "[model]"
) -> LoadedTensor:
    """Instantiate ``cls`` and ``load`` it from its verified files (see the module docstring)."""
    cls.check_definition()
    artifacts, lock, lock_sha256 = open_model_files(settings, model, model=cls.name)
    instance = open_graph(cls, artifacts)
    scores = instance.score_outputs()
    section = f"{table[:-1]}.output]"
    if model.output.roles:
        raise ConfigError(
            f"{section} roles: {cls.name} is a tensor model, whose outputs have no per-role "
            "policy; remove the roles table (serve the model in two processes to show two "
            "audiences different outputs)."
        )
    if scores and model.output.policy != "full":
        raise ConfigError(
            f"{section} policy: {cls.name}'s outputs {', '.join(scores)} are class scores, and "
            'a tensor model serves them only in full: set policy = "full" to accept that '
            "detailed scores make extraction and inversion cheaper, or serve the model with "
            "an ss.Model handler and ss.Scores to cut or round them."
        )
    profile_name = profile_name_of(model, lock)
    has_profile = profile_name is not None
    no_features = instance.no_feature_view()
    if no_features is not None:
        no_features = without_view(f"{no_features}.", model, has_profile=has_profile)
    check_guard_has_profile(model, has_profile=has_profile)
    profile = None
    if profile_name is not None:
        spec = instance.inputs[0]  # the feature input: checked above
        profile = load_profile(
            artifacts,
            profile_name,
            revision=tensor_revision(spec.name, spec.datatype, spec.shape),
            columns=instance.feature_columns(),
            owner=f"{cls.file}'s input {spec.name}",
        )
    revision = revision_of(lock, lock_sha256)
    return LoadedTensor(
        instance, dict(artifacts.opened), revision, lock_sha256, profile, no_features
    )


def open_graph(cls: type[TensorModel], artifacts: Artifacts) -> TensorModel:
    """An instance of ``cls`` with its ONNX session open (``load`` and ``warmup``)."""
    return started(cls, artifacts, f"{cls.__module__}.{cls.__qualname__}")


class _Run:
    """One session run and the jobs in it: stopped once every one of them has timed out."""

    __slots__ = ("jobs", "options")

    def __init__(self, jobs: list[Job[_Infer, Outputs]]) -> None:
        self.jobs = jobs
        self.options = onnxruntime.RunOptions()

    def stop_if_abandoned(self) -> bool:
        """Stop the run (``terminate``) if nobody waits for it any more; whether it was."""
        if all(job.abandoned for job in self.jobs):
            self.options.terminate = True  # the thread is free for the next requests
        return bool(self.options.terminate)


class TensorRunner(BatchRunner[_Infer, Outputs]):
    """A tensor model's session on its inference thread, merging requests that fit."""

    def __init__(self, instance: TensorModel, *, max_batch: int, timeout: float) -> None:
        super().__init__(
            max_batch=max_batch, timeout=timeout, name=f"secureserve-infer-{type(instance).name}"
        )
        self._instance = instance
        specs = (*instance.inputs, *instance.outputs)
        self._mergeable = type(instance).independent_rows and all(
            spec.shape and spec.shape[0] == -1 for spec in specs
        )

    async def infer(self, inputs: Arrays, wanted: list[str], rows: int) -> Outputs:
        """The ``wanted`` outputs for ``inputs`` (of ``rows`` rows); 504 past the timeout."""
        job = await self._submit((inputs, wanted), rows)
        return job.future.result()

    def _expire(self, job: Job[_Infer, Outputs]) -> None:
        super()._expire(job)
        run: _Run | None = job.extra
        if run is not None:
            run.stop_if_abandoned()

    def _run(self, jobs: list[Job[_Infer, Outputs]]) -> list[tuple[Job[_Infer, Outputs], Any]]:
        results: list[tuple[Job[_Infer, Outputs], Any]] = []
        group: list[Job[_Infer, Outputs]] = []
        for job in jobs:
            if group and not self._fits(group[0], job):
                results += self._run_group(group)
                group = []
            group.append(job)
        return results + self._run_group(group)

    def _fits(self, first: Job[_Infer, Outputs], job: Job[_Infer, Outputs]) -> bool:
        (inputs, wanted), (theirs, their_wanted) = first.work, job.work
        return (
            self._mergeable
            and wanted == their_wanted
            and all(
                a.dtype == b.dtype and a.shape[1:] == b.shape[1:]
                for a, b in ((inputs[name], theirs[name]) for name in inputs)
            )
        )

    def _run_group(
        self, jobs: list[Job[_Infer, Outputs]]
    ) -> list[tuple[Job[_Infer, Outputs], Any]]:
        jobs = [job for job in jobs if not job.abandoned]  # timed out while others ran
        if not jobs:
            return []
        results = self._run_once(jobs)
        if len(jobs) > 1 and any(isinstance(r, BaseException) for _, r in results):
            # a merged run failed: each request alone, unless it was stopped for timing out
            return [pair for job in jobs if not job.abandoned for pair in self._run_once([job])]
        return results

    def _run_once(self, jobs: list[Job[_Infer, Outputs]]) -> list[tuple[Job[_Infer, Outputs], Any]]:
        run = _Run(jobs)
        for job in jobs:
            job.extra = run
        if run.stop_if_abandoned():  # timed out just before: nothing to run
            return []
        inputs, wanted = jobs[0].work
        if len(jobs) > 1:
            inputs = {name: np.concatenate([j.work[0][name] for j in jobs]) for name in inputs}
        try:
            outputs = self._instance.infer(inputs, wanted, run.options)
        except Exception as exc:  # noqa: BLE001 - a failed run is a redacted 500
            error = ModelError(f"the ONNX session raised {type(exc).__name__}")
            error.__cause__ = exc
            return [(job, error) for job in jobs]
        if len(jobs) == 1:
            return [(jobs[0], outputs)]
        total = sum(job.size for job in jobs)
        if any(array.ndim == 0 or array.shape[0] != total for _, _, array in outputs):
            wrong = ModelError("a merged run's outputs do not have one row per input row")
            return [(job, wrong) for job in jobs]  # then each runs alone
        results = []
        start = 0
        for job in jobs:
            end = start + job.size
            results.append((job, [(n, t, array[start:end]) for n, t, array in outputs]))
            start = end
        return results


class TensorDeployment:
    """One loaded version of a tensor model, with the inference thread that runs it."""

    def __init__(self, loaded: LoadedTensor, settings: Settings, defenses: Defenses) -> None:
        self.instance = loaded.instance
        self.version: str = type(loaded.instance).version
        self.revision = loaded.revision
        self.artifacts = dict(loaded.opened)
        self.defenses = defenses
        self.runner = TensorRunner(
            loaded.instance,
            max_batch=settings.server.max_instances,
            timeout=settings.server.predict_timeout_s,
        )
        self._active = 0
        self._retired = False

    async def infer(self, inputs: Arrays, wanted: list[str], rows: int) -> Outputs:
        """Run the session on the inference thread; 504 past the timeout, 500 if it raises."""
        return await self.runner.infer(inputs, wanted, rows)

    def acquire(self) -> None:
        """A request starts on this version (event-loop thread only)."""
        self._active += 1

    def release(self) -> None:
        """A request finished; a retired version stops its thread when none is left."""
        self._active -= 1
        if self._retired and self._active == 0:
            self.runner.stop()

    def retire(self) -> None:
        """Stop taking new requests; stop the thread when in-flight ones are done."""
        self._retired = True
        if self._active == 0:
            self.runner.stop()

    def close(self) -> None:
        """Shutdown: finish queued work and stop the thread."""
        self.runner.close()


class TensorState(ServedModel):
    """One ``ss.TensorModel`` served on ``/v2``."""

    current: TensorDeployment | None

    def __init__(
        self,
        cls: type[TensorModel],
        loaded: LoadedTensor | None,
        settings: Settings,
        model_settings: ModelSettings,
        metrics: Metrics,
        *,
        table: str = "[model]",
    ) -> None:
        super().__init__(cls, settings, model_settings, metrics, table=table)
        self._start(loaded)

    def deployment(self) -> TensorDeployment:
        """The version serving now; 503 ``model-unavailable`` for an optional model not loaded."""
        current: TensorDeployment = super().deployment()
        return current

    def _load(self) -> LoadedTensor:
        return load_tensor_model(self.cls, self.settings, self.model_settings, table=self.table)

    def _deploy(self, loaded: LoadedTensor) -> TensorDeployment:
        instance = loaded.instance
        source = FeatureSource(self.name, instance.feature_columns(), instance.features)
        defenses = Defenses(
            source,
            loaded.profile,
            self.model_settings,
            metrics=self.metrics,
            audit=lambda: self.audit,
            limiter=lambda: self.limiter,
        )
        return TensorDeployment(loaded, self.settings, defenses)

    def _swapped(self, previous: TensorDeployment, current: TensorDeployment) -> None:
        current.defenses.take_over(previous.defenses)
        previous.retire()

    def _started(self, loaded: LoadedTensor) -> None:
        instance = loaded.instance
        defenses = self.deployment().defenses
        log = get_logger()
        log.info(
            "tensor model",
            model=self.name,
            inputs={s.name: [s.datatype, list(s.shape)] for s in instance.inputs},
            outputs={s.name: [s.datatype, list(s.shape)] for s in instance.outputs},
            score_outputs=list(instance.score_outputs()) or None,
        )
        if loaded.no_features is not None:
            log.info(
                "model defenses that need a feature view are off",
                model=self.name,
                reason=loaded.no_features,
            )
        log.info(
            "model defenses",
            model=self.name,
            guard=defenses.mode if defenses.guard is not None else "off",
            drift="on" if defenses.drift is not None else "off",
            extraction=defenses.action if defenses.extraction is not None else "off",
            profile_features=len(loaded.profile.features) if loaded.profile else None,
        )
        if instance.score_outputs():
            get_logger().warning(
                'every caller receives full scores (output policy = "full"): '
                "model inversion and extraction are cheaper",
                model=self.name,
                setting=f"{self.table[1:-1]}.output.policy",
            )
