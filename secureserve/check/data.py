"""The labelled data ``secureserve check --data`` reads: instances, labels, groups.

Two forms:

- ``.jsonl``: one ``{"instance": {...}, "label": ..., "group": {"column": value}}`` per
  line; the instance is decoded with the model's input type, as a request would be.
- ``.csv``: a header with the feature view's column names, the label column
  (``--labels``, default ``label``) and the sensitive columns (``--sensitive``); the
  instance is rebuilt from its features (``Model.from_features``) and decoded the same
  way.

A bad row stops the command naming its line (the first five of them); nothing is run.
"""

from __future__ import annotations

import asyncio
import csv
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np

from secureserve.errors import ConfigError
from secureserve.model import Model
from secureserve.profile import row_problem, stop_on_bad_rows

__all__ = ["LabelledData", "Predictor", "read_labelled"]

_MAX_REPORTED: Final = 5
_Scalar = str | int | float | bool


class _Row(msgspec.Struct, forbid_unknown_fields=True):
    instance: msgspec.Raw
    label: _Scalar
    group: dict[str, _Scalar] = msgspec.field(default_factory=dict)


@dataclass
class LabelledData:
    """Decoded instances with their true labels (as text) and group columns."""

    instances: list[Any]
    labels: list[str]
    groups: dict[str, list[str]] = field(default_factory=dict)


def read_labelled(
    path: Path,
    model: Model[Any, Any],
    *,
    label_column: str = "label",
    sensitive: tuple[str, ...] = (),
) -> LabelledData:
    """The rows of ``path``; ``ConfigError`` naming the first bad lines."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ConfigError(f"--data {path}: no such file.")
    if suffix == ".jsonl":
        data = _from_jsonl(path, model)
    elif suffix == ".csv":
        data = _from_csv(path, model, label_column)
    else:
        raise ConfigError(
            f"--data {path}: use .jsonl ({{'instance', 'label', 'group'}} per line) or .csv."
        )
    missing = [c for c in sensitive if c not in data.groups]
    if missing:
        raise ConfigError(
            f"--sensitive {missing[0]}: {path} has no such group column "
            f"(it has: {', '.join(sorted(data.groups)) or 'none'})."
        )
    data.groups = {name: data.groups[name] for name in sensitive}
    if not data.instances:
        raise ConfigError(f"--data {path} holds no rows.")
    return data


def _from_jsonl(path: Path, model: Model[Any, Any]) -> LabelledData:
    decode_row = msgspec.json.Decoder(_Row).decode
    decode_instance = msgspec.json.Decoder(type(model).input_type).decode
    data = LabelledData([], [])
    problems: list[str] = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                row = decode_row(line)
                instance = decode_instance(row.instance)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                problems.append(f"line {number}: {row_problem(exc)}")
                if len(problems) >= _MAX_REPORTED:
                    break
                continue
            data.instances.append(instance)
            data.labels.append(str(row.label))
            for name, value in row.group.items():
                data.groups.setdefault(name, []).append(str(value))
    _stop_on(problems, path)
    for name, values in data.groups.items():
        if len(values) != len(data.instances):
            raise ConfigError(f"--data {path}: not every line has the group column {name!r}.")
    return data


def _from_csv(path: Path, model: Model[Any, Any], label_column: str) -> LabelledData:
    names = type(model).feature_columns()
    with path.open(newline="", encoding="utf-8") as text:
        reader = csv.DictReader(text)
        header = reader.fieldnames or []
        absent = [n for n in (*names, label_column) if n not in header]
        if absent:
            raise ConfigError(
                f"--data {path}: the header lacks {absent[:3]} (features and the label "
                f"column {label_column!r}; --labels names another)."
            )
        extra = [c for c in header if c not in names and c != label_column]
        rows: list[list[float]] = []
        labels: list[str] = []
        groups: dict[str, list[str]] = {c: [] for c in extra}
        problems = []
        for number, record in enumerate(reader, start=2):
            try:
                rows.append([float(record[n]) for n in names])
            except (TypeError, ValueError):
                problems.append(f"line {number}: a feature is not a number")
                if len(problems) >= _MAX_REPORTED:
                    break
                continue
            labels.append(record[label_column])
            for c in extra:
                groups[c].append(record[c] or "")
    _stop_on(problems, path)
    try:
        instances = model.from_features(np.array(rows, dtype=np.float64).reshape(-1, len(names)))
    except msgspec.ValidationError as exc:
        raise ConfigError(
            f"--data {path}: a row does not match the input schema ({row_problem(exc)})."
        ) from None
    return LabelledData(instances, labels, groups)


def _stop_on(problems: list[str], path: Path) -> None:
    stop_on_bad_rows(problems, f"--data {path}", outcome="nothing was checked")


class Predictor:
    """The handler's ``predict``, plain or ``async def``, called alike for a whole check.

    The check calls the handler in process, outside any event loop: an async predict
    runs on one event loop kept for the whole check (a ``asyncio.Runner``), so what it
    binds to its loop stays usable from one call to the next. ``close()`` ends it.
    """

    def __init__(self, model: Model[Any, Any]) -> None:
        self._model = model
        self._runner = asyncio.Runner() if type(model).is_async() else None

    @property
    def model(self) -> Model[Any, Any]:
        """The handler it calls."""
        return self._model

    def __call__(self, batch: list[Any]) -> list[Any]:
        """The handler's outputs for ``batch``."""
        outputs = self._model.predict(batch)
        if self._runner is not None and inspect.isawaitable(outputs):
            return list(self._runner.run(_awaited(outputs)))
        return list(outputs)  # type: ignore[arg-type]

    def close(self) -> None:
        """End the event loop of an async predict."""
        if self._runner is not None:
            self._runner.close()


async def _awaited(outputs: Any) -> Any:
    return await outputs
