"""The feature view: each decoded instance as a row of numbers, with a name per column.

The input guard, drift monitoring, extraction detection, explanations and
``secureserve check`` see instances through this view. :func:`feature_view` builds
it once per input type: it flattens the numeric fields of the input Struct (``int``,
``float``, ``bool``, and fixed-length lists or tuples of them, nested to any depth;
nested Structs in declaration order). Column names follow the JSON: ``age``,
``features[0]``, ``inner.width``. A type it cannot flatten (free text, a list of any
length, an optional field) raises :class:`NoFeatureViewError` naming the field; a
handler can then define ``Model.features`` and ``feature_names`` itself.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec.inspect as mi
import numpy as np
import numpy.typing as npt

from secureserve.errors import ConfigError

__all__ = ["FeatureView", "NoFeatureViewError", "check_names", "feature_view"]

#: Columns a view may have: the guard and drift keep a few numbers per column.
MAX_FEATURES: Final = 100_000
_MAX_NAME: Final = 200

_NUMBERS: Final = (mi.IntType, mi.FloatType, mi.BoolType)


class NoFeatureViewError(ConfigError):
    """The input type has a field the default view cannot turn into numbers."""


class FeatureView:
    """``view(batch)`` is a float64 array of shape ``[len(batch), len(view.names)]``."""

    def __init__(self, names: Sequence[str], columns: Sequence[_Column]) -> None:
        self.names: tuple[str, ...] = tuple(names)
        self._columns = tuple(columns)
        #: the kind of number of each column: int, float or bool
        self.kinds: tuple[type, ...] = tuple(c.kind for c in columns for _ in range(c.size))
        only = self._columns[0] if len(self._columns) == 1 else None
        # one flat list field (the common case): numpy reads the lists directly
        self._single = only.get if only is not None and only.depth == 1 else None

    def __call__(self, batch: Sequence[Any]) -> npt.NDArray[np.float64]:
        """The rows of ``batch``, one per instance, in order."""
        if self._single is not None:
            get = self._single
            return np.array([get(item) for item in batch], dtype=np.float64)
        return np.array([self._row(item) for item in batch], dtype=np.float64)

    def json_instance(self, row: Sequence[float]) -> dict[str, Any]:
        """The inverse of the view for one row: the instance as JSON-ready builtins.

        Decode it with the input type (``msgspec.convert``) to apply the schema's
        bounds. Only the default view has an inverse.
        """
        instance: dict[str, Any] = {}
        start = 0
        for column in self._columns:
            target = instance
            for key in column.keys[:-1]:
                target = target.setdefault(key, {})
            target[column.keys[-1]] = column.json_value(row[start : start + column.size])
            start += column.size
        return instance

    def _row(self, item: Any) -> list[float]:
        row: list[float] = []
        for column in self._columns:
            value = column.get(item)
            if column.depth == 0:
                row.append(value)
            elif column.depth == 1:
                row.extend(value)
            else:
                row.extend(_flatten(value, column.depth))
        return row


class _Column:
    """One field of the input: where it is, its list shape, and what its numbers are."""

    __slots__ = ("depth", "get", "keys", "kind", "shape", "size")

    def __init__(
        self, path: str, keys: tuple[str, ...], shape: tuple[int, ...], kind: type
    ) -> None:
        self.get: Callable[[Any], Any] = operator.attrgetter(path)
        self.keys = keys  # the JSON member names from the top of the instance
        self.shape = shape
        self.depth = len(shape)
        self.size = math.prod(shape)
        self.kind = kind  # int, float or bool

    def json_value(self, flat: Sequence[float]) -> Any:
        """The field's JSON value from its ``size`` numbers (integral floats become ints)."""
        values = [_as(self.kind, float(x)) for x in flat]
        for length in reversed(self.shape[1:]):
            values = [values[i : i + length] for i in range(0, len(values), length)]
        return values if self.shape else values[0]


def _as(kind: type, value: float) -> Any:
    if kind is bool and value in (0.0, 1.0):
        return value == 1.0
    if kind is int and value.is_integer():
        return int(value)
    return value  # left for the schema to accept or refuse


def feature_view(input_type: Any) -> FeatureView:
    """The default view of ``input_type``; :class:`NoFeatureViewError` names what stops it."""
    info = mi.type_info(input_type)
    if not isinstance(info, mi.StructType):
        raise NoFeatureViewError(
            f"the input type {getattr(input_type, '__name__', input_type)} is not a "
            "msgspec Struct; define features() and feature_names on the handler."
        )
    names: list[str] = []
    columns: list[_Column] = []
    _walk(info, attr="", keys=(), names=names, columns=columns)
    if not names:
        raise NoFeatureViewError(
            f"the input type {info.cls.__name__} has no numeric field; define features() "
            "and feature_names on the handler."
        )
    return FeatureView(names, columns)


def _walk(
    info: mi.StructType,
    *,
    attr: str,
    keys: tuple[str, ...],
    names: list[str],
    columns: list[_Column],
) -> None:
    for field in info.fields:
        attr_path = f"{attr}{field.name}"
        field_keys = (*keys, field.encode_name)
        name_path = ".".join(field_keys)
        kind = field.type
        if isinstance(kind, mi.StructType):
            _walk(kind, attr=f"{attr_path}.", keys=field_keys, names=names, columns=columns)
            continue
        shape = _shape(kind)
        if shape is None:
            raise NoFeatureViewError(
                f"input field `{name_path}` is not a number or a fixed-length list of numbers "
                "(optional fields and lists of any length cannot be columns); define "
                "features() and feature_names on the handler, or give the list "
                "min_length = max_length."
            )
        width = math.prod(shape)
        if len(names) + width > MAX_FEATURES:
            raise NoFeatureViewError(
                f"the input has more than {MAX_FEATURES} numeric values per instance; "
                "define features() and feature_names on the handler with a smaller view."
            )
        names.extend(name_path + "".join(f"[{i}]" for i in index) for index in np.ndindex(*shape))
        columns.append(_Column(attr_path, field_keys, shape, _leaf_kind(kind)))


def _shape(kind: mi.Type) -> tuple[int, ...] | None:
    """``()`` for a number, ``(n, m, ...)`` for fixed-length nested lists; else None."""
    if isinstance(kind, _NUMBERS):
        return ()
    if isinstance(kind, mi.ListType):
        if kind.min_length is None or kind.min_length != kind.max_length:
            return None
        inner = _shape(kind.item_type)
        return None if inner is None else (kind.min_length, *inner)
    if isinstance(kind, mi.TupleType) and kind.item_types:
        shapes = {_shape(item) for item in kind.item_types}
        if len(shapes) != 1 or None in shapes:
            return None
        (inner,) = shapes
        return None if inner is None else (len(kind.item_types), *inner)
    return None


def _leaf_kind(kind: mi.Type) -> type:
    while isinstance(kind, mi.ListType | mi.TupleType):
        kind = kind.item_type if isinstance(kind, mi.ListType) else kind.item_types[0]
    return {mi.IntType: int, mi.BoolType: bool}.get(type(kind), float)


def _flatten(value: Any, depth: int) -> list[Any]:
    if depth == 1:
        return list(value)
    return [x for part in value for x in _flatten(part, depth - 1)]


def check_names(names: object, where: str) -> tuple[str, ...]:
    """``feature_names`` declared by a handler: distinct, non-empty strings."""
    if (
        not isinstance(names, tuple)
        or not names
        or not all(isinstance(n, str) and 0 < len(n) <= _MAX_NAME for n in names)
        or len(set(names)) != len(names)
        or len(names) > MAX_FEATURES
    ):
        raise ConfigError(
            f"{where}.feature_names must be a tuple of distinct column names (one per "
            "column that features() returns), e.g. ('age', 'income')."
        )
    return names
