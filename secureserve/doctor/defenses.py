"""Doctor checks on the model defenses: output policies, the profile, the feature view.

From the settings alone: a ``full`` output policy for every caller, or for a role other
than ``admin``, is reported (detailed scores are what inversion and extraction feed
on), and so is a model without a reference profile (no input guard, no drift). With
``--handler`` the doctor also imports the handler, as ``secureserve run`` would (so only
for projects whose code you trust), and reports a policy the server would refuse and
an input with no feature view (the defenses that need one are then off); for a tensor
model (``ss.TensorModel``) it opens the verified graph to see its feature input and
its score outputs. Each served model is checked on its own; findings name its table
(``[models.iris.output]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from secureserve.doctor.findings import FIX_SEE_MESSAGE, Finding, error, info, warning
from secureserve.errors import ConfigError, SecureServeError
from secureserve.lockfile import LOCK_FILENAME, folder_lock, read_lock_file
from secureserve.model import Model
from secureserve.profile import DEFAULT_PROFILE
from secureserve.release import lock_section
from secureserve.settings import ModelSettings, Settings
from secureserve.tensor_model import TensorModel

__all__ = ["check"]


def check(settings: Settings, *, handler: bool) -> Iterator[Finding]:
    """The defense findings for ``settings``; ``handler``: import the handlers to check more."""
    for name, model in settings.served().items():
        yield from _check_model(settings, name, model, handler=handler)


def _check_model(
    settings: Settings, name: str | None, model: ModelSettings, *, handler: bool
) -> Iterator[Finding]:
    """One served model's findings; ``name`` is None for ``[model]``."""
    table = settings.table(name)
    output_table = _subtable(table, "output")
    output = model.output
    if output.policy == "full":
        yield warning(
            "output-full-scores",
            f"{output_table} policy",
            "every caller with role predict receives full scores, which make model "
            "inversion and extraction cheaper.",
            f'set {output_table} policy = "top_k" (or "label_only") and give full scores '
            "only to a custom role held by trusted callers, e.g. "
            f'{_subtable(output_table, "roles")} analyst = "full" (a tensor model serves '
            "its scores only in full: give it to few, named keys instead).",
        )
    full = sorted(
        role for role, level in output.roles.items() if level == "full" and role != "admin"
    )
    if full:
        yield warning(
            "output-full-scores-role",
            _subtable(output_table, "roles"),
            f"callers holding {', '.join(full)} receive full scores; make sure only trusted "
            "callers hold that role.",
            "keep such roles for few, named keys (secureserve keys create --role predict "
            f"--role {full[0]} --name WHO), or lower their policy to top_k.",
        )
    has_profile = model.profile is not None or _locked_profile(settings, model)
    if not has_profile:
        chosen = f"--model {name} " if name is not None else ""
        yield info(
            "profile-missing",
            f"{table} profile",
            "the model has no reference profile, so the input guard and drift monitoring are off.",
            f"write one from the training data: `secureserve profile DATA {chosen}--out "
            f"{_in_project(settings, model)}/{DEFAULT_PROFILE}`, then `secureserve lock`.",
        )
    if handler:
        yield from _check_handler(settings, model, table, has_profile=has_profile)


def _check_tensor(
    settings: Settings,
    model: ModelSettings,
    handler: type[TensorModel],
    where: str,
    *,
    has_profile: bool,
) -> Iterator[Finding]:
    """A tensor model's graph: its feature input for the defenses, its score outputs."""
    from secureserve.defenses import without_view  # noqa: PLC0415
    from secureserve.serving import open_model_files  # noqa: PLC0415 - onnxruntime, late
    from secureserve.tensor_serving import open_graph  # noqa: PLC0415

    try:
        artifacts, _, _ = open_model_files(settings, model, model=handler.name)
        instance = open_graph(handler, artifacts)
        scores = instance.score_outputs()
    except SecureServeError:
        return  # the lock and model-file checks say why it cannot be opened
    reason = instance.no_feature_view()
    if reason is not None:
        try:
            without_view(f"{reason}.", model, has_profile=has_profile)
        except ConfigError as exc:
            yield error("feature-view-missing", where, str(exc), FIX_SEE_MESSAGE)
        else:
            yield warning(
                "defenses-off",
                where,
                f"the model has no feature view ({reason}), so the input guard, drift "
                "monitoring and extraction detection cannot run.",
                "serve a graph with one numeric input of fixed shape per instance, or the "
                "model as an ss.Model handler with features().",
            )
    if scores:
        yield info(
            "tensor-scores-full",
            where,
            f"a tensor model: its score outputs ({', '.join(scores)}) go to every caller "
            "in full; tensors have no rounding, top-k or per-role policy.",
            "serve the model as an ss.Model handler with ss.Scores where scores must be "
            "cut, and give this one to few, named keys (secureserve keys create --model NAME).",
        )


def _subtable(table: str, key: str) -> str:
    """``[model]`` and ``output`` give ``[model.output]``; ``[models.iris]``: its own."""
    return f"{table[:-1]}.{key}]"


def _in_project(settings: Settings, model: ModelSettings) -> str:
    """The model folder as a command run in the project folder names it."""
    if model.dir.is_relative_to(settings.project_dir):
        return model.dir.relative_to(settings.project_dir).as_posix()
    return str(model.dir)


def _locked_profile(settings: Settings, model: ModelSettings) -> bool:
    """Whether the lock lists ``profile.json`` in the model's folder (the default profile)."""
    path = settings.project_dir / LOCK_FILENAME
    try:
        lock_file, _ = read_lock_file(path)
        section = lock_section(settings, model)
        lock = folder_lock(lock_file, section, source=str(path), owner="dir")
    except (OSError, SecureServeError):
        return False
    return DEFAULT_PROFILE in lock.files


def _check_handler(
    settings: Settings, model: ModelSettings, table: str, *, has_profile: bool
) -> Iterator[Finding]:
    from secureserve.cli._common import import_handler  # noqa: PLC0415 - runs project code
    from secureserve.defenses import check_feature_view  # noqa: PLC0415
    from secureserve.outputs import OutputPolicies  # noqa: PLC0415

    try:
        handler: type[Any] = import_handler(model.handler, settings.project_dir)
        handler.check_definition()
    except ConfigError as exc:
        yield error("handler-invalid", f"{table} handler", str(exc), FIX_SEE_MESSAGE)
        return
    where = f"{handler.__module__}.{handler.__qualname__}"
    if issubclass(handler, TensorModel):
        yield from _check_tensor(settings, model, handler, where, has_profile=has_profile)
        return
    cls: type[Model[Any, Any]] = handler
    try:
        policies = OutputPolicies(cls.output_type, model.output, where=where)
    except ConfigError as exc:
        yield error("output-policy-invalid", _subtable(table, "output"), str(exc), FIX_SEE_MESSAGE)
    else:
        if not policies.has_scores:
            yield info(
                "output-unmarked",
                where,
                "no output field is marked ss.Score or ss.Scores, so no output policy "
                "applies: whatever predict returns is sent as it is.",
                "annotate probability and confidence fields with ss.Score / ss.Scores "
                "(and labels with ss.Label) so that the policy can round or hide them.",
            )
    try:
        reason = check_feature_view(cls, model, has_profile=has_profile)
    except ConfigError as exc:
        yield error("feature-view-missing", where, str(exc), FIX_SEE_MESSAGE)
        return
    if reason is not None:
        yield warning(
            "defenses-off",
            where,
            f"the input has no feature view ({reason}), so the input guard, drift "
            "monitoring and extraction detection cannot run.",
            "define features(self, batch) and feature_names on the handler.",
        )
