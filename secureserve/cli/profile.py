"""``secureserve profile DATA``: the reference profile of training data (a model artifact)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from secureserve.cli._common import import_handler, settings_from
from secureserve.errors import ConfigError
from secureserve.model import Model
from secureserve.profile import (
    DEFAULT_PROFILE,
    Profile,
    build_profile,
    read_instances,
    read_rows,
    schema_revision,
    tensor_revision,
    write_profile,
)
from secureserve.settings import ModelSettings, Settings
from secureserve.tensor_model import TensorModel
from secureserve.tensors import numpy_dtype


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``profile`` to the command line."""
    profile = commands.add_parser(
        "profile",
        parents=[common],
        help="write the reference profile of training data (for the input guard and drift)",
    )
    profile.add_argument("data", type=Path, help="instances: .jsonl, .csv (feature header), .npy")
    profile.add_argument(
        "--out",
        type=Path,
        help=f"where to write it (default: {DEFAULT_PROFILE} in the model folder)",
    )
    profile.add_argument(
        "--model", help="the served model's name, required with several (default: the only one)"
    )
    profile.set_defaults(func=_profile)


def _profile(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    name, model = _chosen_model(settings, args.model)
    handler: type[Any] = import_handler(model.handler, settings.project_dir)
    handler.check_definition()
    if name is None and args.model is not None and args.model != handler.name:
        raise ConfigError(f"--model {args.model!r}: this project serves {handler.name!r}.")
    if issubclass(handler, TensorModel):
        profile = _tensor_profile(args.data, handler, settings, model)
    else:
        profile = _instances_profile(args.data, handler, settings, model)
    columns = profile.names
    out: Path = args.out or model.dir / DEFAULT_PROFILE
    write_profile(out, profile)
    print(f"wrote {out}: {profile.count} instances, {len(columns)} features")
    model_dir = model.dir.resolve()
    if not out.resolve().is_relative_to(model_dir):
        print(
            f"note: {out} is outside the model folder {model_dir}; the server reads it only there"
        )
    elif out.resolve() != (model_dir / DEFAULT_PROFILE) and model.profile is None:
        relative = out.resolve().relative_to(model_dir).as_posix()
        print(f'note: set {settings.table(name)} profile = "{relative}" so the server uses it')
    print("next: `secureserve lock` (and `secureserve sign` if you sign the lock)")
    return 0


def _instances_profile(
    data: Path, cls: type[Model[Any, Any]], settings: Settings, model: ModelSettings
) -> Profile:
    """The profile of an ``ss.Model``'s instances, through its feature view."""
    features = None
    if cls.features is not Model.features:  # the handler's own view may need its files
        from secureserve.serving import load_model  # noqa: PLC0415 - only for such handlers

        features = load_model(cls, settings, model).instance.features
    columns = cls.feature_columns()  # NoFeatureViewError names the field if there is no view
    rows = read_instances(data, cls, features)
    return build_profile(rows, columns, model=cls.name, revision=schema_revision(cls.input_type))


def _tensor_profile(
    data: Path, cls: type[TensorModel], settings: Settings, model: ModelSettings
) -> Profile:
    """The profile of a tensor model's feature input (its graph says which and how wide)."""
    from secureserve.serving import open_model_files  # noqa: PLC0415 - onnxruntime, late
    from secureserve.tensor_serving import open_graph  # noqa: PLC0415

    artifacts, _, _ = open_model_files(settings, model, model=cls.name)
    instance = open_graph(cls, artifacts)
    reason = instance.no_feature_view()
    if reason is not None:
        raise ConfigError(f"{cls.name} has no feature view to profile: {reason}.")
    spec = instance.inputs[0]
    columns = instance.feature_columns()
    rows = read_rows(data, columns, numpy_dtype(spec.datatype))
    revision = tensor_revision(spec.name, spec.datatype, spec.shape)
    return build_profile(rows, columns, model=cls.name, revision=revision)


def _chosen_model(settings: Settings, wanted: str | None) -> tuple[str | None, ModelSettings]:
    """The served name (None for ``[model]``) and settings of the model to profile.

    With ``[models.<name>]`` tables, ``--model NAME`` picks one and may be left out only
    when there is a single table; with ``[model]`` it is checked against the handler.
    """
    if not settings.models:
        return None, settings.model
    served = ", ".join(sorted(settings.models))
    if wanted is None:
        if len(settings.models) == 1:
            return next(iter(settings.models.items()))
        raise ConfigError(
            f"this project serves several models ({served}): choose the one whose training "
            "data this is with --model NAME."
        )
    model = settings.models.get(wanted)
    if model is None:
        raise ConfigError(
            f"--model {wanted!r}: there is no [models.{wanted}] table; this project serves "
            f"{served}."
        )
    return wanted, model
