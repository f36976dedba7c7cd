"""The handler base class a user subclasses: ``class Iris(ss.Model[Flower, Species])``.

The lifecycle, in order (each hook has a documented default):

1. ``load(artifacts)``  once, before serving: open weights through ``Artifacts`` only.
2. ``warmup()``         once, after ``load``: run a dummy prediction so the first
                        real request does not pay for lazy initialisation.
3. ``predict(batch)``   many times: takes a list of decoded inputs, returns a list
                        of outputs of the same length and order. A plain ``def``
                        runs on the inference thread, never on the event loop; an
                        ``async def`` runs on the event loop and must not block it.

``features(batch)`` is the numeric view of instances that the model defenses use
(the input guard, drift monitoring): by default the numeric fields of the input
Struct, flattened (:mod:`secureserve.features`); a handler whose input is not numbers
(text, for example) may define it, with ``feature_names``, or leave those defenses off.

Input and output types come from the generic parameters and nothing else; the
request decoder and response encoder are built once per model class
(``secureserve.schema``). This module knows nothing of HTTP.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeVar, get_args, get_origin

import msgspec
import numpy as np
import numpy.typing as npt

from secureserve.errors import ConfigError
from secureserve.features import FeatureView, check_names, feature_view

if TYPE_CHECKING:
    from secureserve.artifacts import Artifacts

__all__ = ["Model"]

In = TypeVar("In")
Out = TypeVar("Out")

NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
VERSION_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


class Model(Generic[In, Out]):
    """Base class of a served model. Subclass as ``Model[InputStruct, OutputStruct]``.

    Class attributes:
        name: the URL name (``/v1/models/{name}:predict``): lower-case letters,
            digits, ``.``, ``_`` and ``-``, at most 63 characters.
        version: the public version reported in ``X-Model-Version`` and ``/v1/models``.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    input_type: ClassVar[Any]
    output_type: ClassVar[Any]
    #: Column names of ``features()``; declare them when you define ``features`` yourself.
    feature_names: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is Model:
                input_type, output_type = get_args(base)
                if isinstance(input_type, TypeVar) or isinstance(output_type, TypeVar):
                    continue  # a still-generic intermediate base
                cls.input_type, cls.output_type = input_type, output_type

    def load(self, artifacts: Artifacts) -> None:
        """Open the model's files. Default: nothing to load."""

    def warmup(self) -> None:
        """Run once after ``load`` and before the server reports ready. Default: nothing."""

    def predict(self, batch: list[In]) -> list[Out] | Awaitable[list[Out]]:
        """Return one output per input, in order. Must be overridden."""
        raise NotImplementedError

    def features(self, batch: list[In]) -> npt.NDArray[np.float64]:
        """The instances as a float64 array ``[len(batch), len(feature_names)]``.

        Default: the numeric fields of the input Struct, flattened in declaration order
        (raises :class:`~secureserve.features.NoFeatureViewError` when the input has
        other fields). Override it together with ``feature_names``.
        """
        return default_feature_view(type(self))(batch)

    def from_features(self, rows: npt.NDArray[np.float64]) -> list[In]:
        """Instances from feature rows: the inverse of :meth:`features` (for explanations).

        Default: the inverse of the default view, each instance decoded with the input
        type (its bounds apply). A handler that defines ``features`` must define this too
        for what rebuilds instances (explanations, ``secureserve check``): the default
        inverts the default view, not the handler's.
        """
        cls = type(self)
        if cls.features is not Model.features:
            raise ConfigError(
                f"{cls.__qualname__} defines features() but not from_features(), its inverse; "
                "define it to rebuild instances from feature rows."
            )
        view = default_feature_view(cls)
        return [msgspec.convert(view.json_instance(row), cls.input_type) for row in rows]

    @classmethod
    def feature_columns(cls) -> tuple[str, ...]:
        """The column names of :meth:`features` (``NoFeatureViewError`` if there is no view)."""
        if cls.features is Model.features:
            return default_feature_view(cls).names
        return check_names(getattr(cls, "feature_names", None), f"{cls.__qualname__}")

    @classmethod
    def check_definition(cls) -> None:
        """Raise ``ConfigError`` unless the subclass is complete and servable."""
        where = f"{cls.__module__}.{cls.__qualname__}"
        if not hasattr(cls, "input_type"):
            raise ConfigError(
                f"{where} must name its input and output types: "
                "class MyModel(secureserve.Model[Input, Output])."
            )
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
            raise ConfigError(
                f"{where}.name must be set to a URL-safe name such as 'iris' "
                "(lower-case letters, digits, '.', '_', '-'; at most 63 characters)."
            )
        if not isinstance(cls.version, str) or VERSION_PATTERN.fullmatch(cls.version) is None:
            raise ConfigError(
                f"{where}.version must be a short string such as '1.0.0' "
                "(letters, digits, '.', '_', '+', '-')."
            )
        if cls.predict is Model.predict:
            raise ConfigError(f"{where} must define predict(self, batch) -> list[Output].")
        if cls.features is not Model.features:
            check_names(getattr(cls, "feature_names", None), where)
        elif "feature_names" in vars(cls):
            raise ConfigError(
                f"{where}.feature_names names the columns of a features() the handler "
                "defines; define features() too, or remove feature_names (the default "
                "view names its columns after the input fields)."
            )

    @classmethod
    def is_async(cls) -> bool:
        """Whether ``predict`` is a coroutine function (then it runs on the event loop)."""
        return inspect.iscoroutinefunction(cls.predict)


def default_feature_view(cls: type[Model[Any, Any]]) -> FeatureView:
    """The default feature view of ``cls``, built on first use and kept on the class."""
    view = cls.__dict__.get("_secureserve_feature_view")
    if view is None:
        view = feature_view(cls.input_type)
        cls._secureserve_feature_view = view  # type: ignore[attr-defined]
    return view
