"""The reference profile: what the training data looked like, feature by feature.

``secureserve profile DATA --out models/profile.json`` reads instances (``.jsonl`` in
the input schema, ``.csv`` with a header of feature names, or ``.npy`` rows), decodes
every one through the model's input schema (a bad row stops the command and is named
by its line), and writes per feature of the model's feature view
(:mod:`secureserve.features`): count, min, max, mean, std, the 1/5/25/50/75/95/99 %
quantiles, and a histogram over fixed bins (cut at the deciles) for drift monitoring.
The input schema's revision is recorded, so a profile of another schema is refused at
start-up. A tensor model (``ss.TensorModel``) has rows instead of instances: its feature
input flattened (:mod:`secureserve.tensor_model`), read by :func:`read_rows`, and its
revision is that of the input's name, datatype and shape (:func:`tensor_revision`).
The same data gives the same bytes. The file is a model artifact: locked, signed with
the rest, and read through :class:`~secureserve.artifacts.Artifacts`.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from secureserve.atomic import write_atomically
from secureserve.errors import ConfigError
from secureserve.features import FeatureView
from secureserve.model import Model, default_feature_view

if TYPE_CHECKING:
    from secureserve.artifacts import Artifacts

__all__ = [
    "DEFAULT_PROFILE",
    "FeatureProfile",
    "Profile",
    "build_profile",
    "load_profile",
    "read_instances",
    "read_rows",
    "schema_revision",
    "tensor_revision",
    "write_profile",
]

FORMAT: Final = "secureserve-profile/1"
#: The profile a model uses when ``[model] profile`` is not set, if the lock lists it.
DEFAULT_PROFILE: Final = "profile.json"
#: Fewer rows than this say too little about a feature to guard or monitor it.
MIN_ROWS: Final = 20
#: Bad rows named before the command stops.
_MAX_REPORTED: Final = 5
_QUANTILES: Final = (0.01, 0.05, 0.25, 0.50, 0.75, 0.95, 0.99)
_CUTS: Final = tuple(i / 10 for i in range(1, 10))


class Quantiles(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The 1, 5, 25, 50, 75, 95 and 99 % quantiles of one feature."""

    q01: float
    q05: float
    q25: float
    q50: float
    q75: float
    q95: float
    q99: float


class FeatureProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One feature: summary statistics and the reference histogram.

    The histogram has ``len(edges) + 1`` bins: ``x <= edges[0]``, then
    ``edges[i - 1] < x <= edges[i]``, then ``x > edges[-1]``; the edges are the
    distinct deciles of the data.
    """

    name: str
    count: int
    min: float
    max: float
    mean: float
    std: float
    quantiles: Quantiles
    edges: list[float]
    counts: list[int]


class Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A model's reference profile (``profile.json``)."""

    format: Literal["secureserve-profile/1"]
    model: str
    schema_revision: str
    count: int
    features: list[FeatureProfile]

    @property
    def names(self) -> tuple[str, ...]:
        """The feature names, in column order."""
        return tuple(f.name for f in self.features)


def schema_revision(input_type: Any) -> str:
    """First 16 hex digits of the SHA-256 of the input type's canonical JSON Schema."""
    schema = msgspec.json.schema(input_type)
    return hashlib.sha256(msgspec.json.encode(schema, order="sorted")).hexdigest()[:16]


def tensor_revision(name: str, datatype: str, shape: Sequence[int]) -> str:
    """:func:`schema_revision` of a tensor input: its name, OIP datatype and shape."""
    spec = {"name": name, "datatype": datatype, "shape": list(shape)}
    return hashlib.sha256(msgspec.json.encode(spec, order="sorted")).hexdigest()[:16]


def build_profile(
    rows: npt.NDArray[np.float64], names: Sequence[str], *, model: str, revision: str
) -> Profile:
    """The profile of ``rows`` (one row per instance, one column per name)."""
    if rows.ndim != 2 or rows.shape[1] != len(names):  # noqa: PLR2004 - a matrix
        raise ConfigError(f"the data has {rows.shape[-1]} columns; the model has {len(names)}.")
    if rows.shape[0] < MIN_ROWS:
        raise ConfigError(
            f"the data has {rows.shape[0]} instances; a profile needs at least {MIN_ROWS} to "
            "say anything about a feature. Use the training or validation set."
        )
    features = []
    for name, column in zip(names, rows.T, strict=True):
        quantiles = np.quantile(column, _QUANTILES)
        edges = np.unique(np.quantile(column, _CUTS))
        counts = np.bincount(np.searchsorted(edges, column, side="left"), minlength=len(edges) + 1)
        features.append(
            FeatureProfile(
                name=name,
                count=len(column),
                min=float(column.min()),
                max=float(column.max()),
                mean=float(column.mean()),
                std=float(column.std()),
                quantiles=Quantiles(*(float(q) for q in quantiles)),
                edges=[float(e) for e in edges],
                counts=[int(c) for c in counts],
            )
        )
    return Profile(
        format=FORMAT, model=model, schema_revision=revision, count=len(rows), features=features
    )


def encode_profile(profile: Profile) -> bytes:
    """The file's bytes: indented JSON, fields in a fixed order, a final newline."""
    return msgspec.json.format(msgspec.json.encode(profile), indent=1) + b"\n"


def write_profile(path: Path, profile: Profile) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, encode_profile(profile))


# --------------------------------------------------------------------------- reading data


Features = Callable[[list[Any]], npt.NDArray[np.float64]]


def read_instances(
    path: Path, cls: type[Model[Any, Any]], features: Features | None = None
) -> npt.NDArray[np.float64]:
    """The feature rows of the instances in ``path``, each checked against the input schema.

    ``features`` is the loaded handler's ``features`` when it defines its own (default:
    the view of the input type). ``ConfigError`` names the first bad rows (line numbers
    count from 1, the CSV header included; ``.npy`` rows count from 0) and what is
    wrong with each.
    """
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".npy"):
        raise ConfigError(
            f"{path}: use a .jsonl file of instances, a .csv file with a header of feature "
            "names, or a .npy array of rows."
        )
    if not path.is_file():
        raise ConfigError(f"{path} does not exist or is not a file.")
    if suffix == ".jsonl":
        return _from_jsonl(path, cls.input_type, features or default_feature_view(cls))
    if cls.features is not Model.features:
        raise ConfigError(
            f"{path}: {cls.__qualname__} defines its own features(), so rows of numbers cannot "
            "be checked against its input schema; give the instances as .jsonl instead."
        )
    view = default_feature_view(cls)
    raw = _from_csv(path, view.names) if suffix == ".csv" else _from_npy(path, view.names)
    _check_rows(raw, view, cls.input_type, path, first=2 if suffix == ".csv" else 0)
    return raw


def read_rows(path: Path, names: Sequence[str], dtype: np.dtype[Any]) -> npt.NDArray[np.float64]:
    """A tensor model's feature rows in ``path``, each a value of the input's ``dtype``.

    ``.jsonl``: one JSON array per line, the input tensor of one instance (nested or
    flat, ``len(names)`` numbers in all); ``.csv`` with a header of the column names;
    ``.npy`` of shape ``(rows, len(names))``. Every number must be finite and, for an
    integer input, an integer its datatype holds; ``ConfigError`` names the first bad
    rows, as :func:`read_instances` does.
    """
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".npy"):
        raise ConfigError(
            f"{path}: use a .jsonl file with one JSON array of numbers per line, a .csv file "
            "with a header of the column names, or a .npy array of rows."
        )
    if not path.is_file():
        raise ConfigError(f"{path} does not exist or is not a file.")
    if suffix == ".jsonl":
        rows, first = _arrays_from_jsonl(path, len(names)), 1
    else:
        rows = _from_csv(path, names) if suffix == ".csv" else _from_npy(path, names)
        first = 2 if suffix == ".csv" else 0
    problems = []
    fits = _representable(rows, dtype)
    for index in np.flatnonzero(~fits)[:_MAX_REPORTED]:
        where = f"line {index + first}" if first else f"row {index}"
        problems.append(f"{where}: not a finite {dtype} value")
    _stop_on(problems, path)
    return rows


def _arrays_from_jsonl(path: Path, width: int) -> npt.NDArray[np.float64]:
    decoder = msgspec.json.Decoder()
    rows: list[npt.NDArray[np.float64]] = []
    problems: list[str] = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                row = np.asarray(decoder.decode(line), dtype=np.float64).reshape(-1)
            except (msgspec.DecodeError, ValueError, TypeError):
                problems.append(f"line {number}: not a JSON array of numbers")
            else:
                if row.size == width:
                    rows.append(row)
                else:
                    problems.append(f"line {number}: {row.size} numbers, expected {width}")
            if len(problems) >= _MAX_REPORTED:
                break
    _stop_on(problems, path)
    if not rows:
        raise ConfigError(f"{path} holds no rows.")
    return np.stack(rows)


def _representable(rows: npt.NDArray[np.float64], dtype: np.dtype[Any]) -> npt.NDArray[np.bool_]:
    """Per row: every value finite and, for an integer ``dtype``, a whole number it holds."""
    good = np.isfinite(rows)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        whole = np.where(good, rows, 0.5)
        good &= (whole == np.round(whole)) & (rows >= info.min) & (rows <= info.max)
    fits: npt.NDArray[np.bool_] = np.all(good, axis=1)
    return fits


def _from_jsonl(path: Path, input_type: Any, features: Features) -> npt.NDArray[np.float64]:
    decoder = msgspec.json.Decoder(input_type)
    rows: list[npt.NDArray[np.float64]] = []
    problems: list[str] = []
    batch: list[Any] = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                problems.append(f"line {number}: empty line")
            else:
                try:
                    batch.append(decoder.decode(line))
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    problems.append(f"line {number}: {row_problem(exc)}")
            if len(problems) >= _MAX_REPORTED:
                break
            if len(batch) >= 1024:  # noqa: PLR2004 - bounded memory for the objects
                rows.append(features(batch))
                batch = []
    _stop_on(problems, path)
    if batch:
        rows.append(features(batch))
    if not rows:
        raise ConfigError(f"{path} holds no instances.")
    return np.concatenate(rows)


def _from_csv(path: Path, names: Sequence[str]) -> npt.NDArray[np.float64]:
    with path.open(newline="", encoding="utf-8") as text:
        reader = csv.reader(text)
        header = next(reader, None)
        if header is None or sorted(header) != sorted(names):
            missing = sorted(set(names) - set(header or ()))[:3]
            extra = sorted(set(header or ()) - set(names))[:3]
            raise ConfigError(
                f"{path}: the header must name each feature once ({len(names)} columns: "
                f"{', '.join(names[:4])}, ...); missing {missing}, unknown {extra}."
            )
        order = [header.index(name) for name in names]
        rows: list[list[float]] = []
        problems = []
        for number, record in enumerate(reader, start=2):
            try:
                values = [float(record[i]) for i in order] if len(record) == len(header) else None
            except ValueError:
                values = None
            if values is None:
                problems.append(f"line {number}: expected {len(header)} numbers")
                if len(problems) >= _MAX_REPORTED:
                    break
            else:
                rows.append(values)
    _stop_on(problems, path)
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(names))


def _from_npy(path: Path, names: Sequence[str]) -> npt.NDArray[np.float64]:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not a numeric .npy array ({exc}); save it without objects."
        ) from None
    if array.ndim != 2 or array.shape[1] != len(names) or array.dtype.kind not in "biuf":  # noqa: PLR2004
        raise ConfigError(
            f"{path}: expected a numeric array of shape (rows, {len(names)}), "
            f"got {array.dtype} {array.shape}."
        )
    rows: npt.NDArray[np.float64] = array.astype(np.float64)
    return rows


def _check_rows(
    rows: npt.NDArray[np.float64], view: FeatureView, input_type: Any, path: Path, *, first: int
) -> None:
    """Every row through the input schema (bounds, integers), as a request would be."""
    problems = []
    for index, row in enumerate(rows):
        where = f"line {index + first}" if first else f"row {index}"
        if not np.isfinite(row).all():
            problems.append(f"{where}: not a finite number")
        else:
            try:
                msgspec.convert(view.json_instance(row), input_type)
            except msgspec.ValidationError as exc:
                problems.append(f"{where}: {row_problem(exc)}")
        if len(problems) >= _MAX_REPORTED:
            break
    _stop_on(problems, path)


def row_problem(exc: Exception) -> str:
    """What is wrong with a data row, safe to print: a field path and a fixed phrase."""
    from secureserve.schema import validation_detail  # noqa: PLC0415 - avoids an import cycle

    if isinstance(exc, msgspec.ValidationError):
        return validation_detail(str(exc))
    return "not valid JSON"


def stop_on_bad_rows(problems: list[str], where: str, *, outcome: str) -> None:
    """``ConfigError`` listing ``problems`` (``line N: ...``) when there are any."""
    if problems:
        more = " (and maybe more)" if len(problems) >= _MAX_REPORTED else ""
        raise ConfigError(
            f"{where}: rows that do not match the model's input schema{more}:\n  "
            + "\n  ".join(problems)
            + f"\nFix or remove them; {outcome}."
        )


def _stop_on(problems: list[str], path: Path) -> None:
    stop_on_bad_rows(problems, str(path), outcome="nothing was written")


# --------------------------------------------------------------------------- serving


def load_profile(
    artifacts: Artifacts, name: str, *, revision: str, columns: Sequence[str], owner: str
) -> Profile:
    """The locked profile ``name``, checked against the model's schema and feature columns.

    ``revision`` is the input schema's (:func:`schema_revision`, :func:`tensor_revision`),
    ``columns`` the feature view's, ``owner`` names where the columns come from in
    messages. Locked is not the same as sound: every number the guard and the drift
    monitor will divide by, compare with or allocate for is checked too
    (:func:`check_profile`).
    """
    where = f"[model] profile {name}"
    try:
        profile = msgspec.convert(artifacts.json(name), Profile)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(
            f"{where} is not a secureserve profile ({exc}); write it with `secureserve profile`."
        ) from None
    if profile.schema_revision != revision:
        raise ConfigError(
            f"{where} was made for another input schema (revision {profile.schema_revision}); "
            "make it again with `secureserve profile DATA`, then `secureserve lock`."
        )
    if profile.names != tuple(columns):
        raise ConfigError(
            f"{where} names other features than {owner}; make it again "
            "with `secureserve profile DATA`, then `secureserve lock`."
        )
    check_profile(profile, where)
    return profile


def check_profile(profile: Profile, where: str) -> None:
    """``ConfigError`` unless every feature's numbers are what ``build_profile`` writes.

    Finite statistics in order (min <= q01 <= ... <= q99 <= max, the mean between min
    and max, a std between 0 and max - min),
    at most nine strictly increasing cut points, and non-negative bin counts that add
    up to the row count.
    """
    if profile.count < MIN_ROWS or not profile.features:
        raise ConfigError(f"{where}: counts {profile.count} rows; a profile needs {MIN_ROWS}.")
    for f in profile.features:
        q = f.quantiles
        ordered = [f.min, q.q01, q.q05, q.q25, q.q50, q.q75, q.q95, q.q99, f.max]
        numbers = [*ordered, f.mean, f.std, *f.edges]
        problem = None
        if not all(map(math.isfinite, numbers)):
            problem = "a number that is not finite"
        elif (
            any(a > b for a, b in itertools.pairwise(ordered))
            or not f.min <= f.mean <= f.max
            or not 0 <= f.std <= f.max - f.min
        ):
            problem = "statistics out of order"
        elif len(f.edges) > len(_CUTS) or any(a >= b for a, b in itertools.pairwise(f.edges)):
            problem = "bin edges that are not at most 9 increasing cut points"
        elif (
            f.count != profile.count
            or len(f.counts) != len(f.edges) + 1
            or min(f.counts) < 0
            or sum(f.counts) != f.count
        ):
            problem = "a histogram that does not add up"
        if problem is not None:
            raise ConfigError(
                f"{where}: feature {f.name[:80]} has {problem}; make the profile again with "
                "`secureserve profile DATA`, then `secureserve lock`."
            )
