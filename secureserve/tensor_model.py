"""``ss.TensorModel``: an ONNX file served over the Open Inference Protocol, no code needed.

::

    class IrisTensor(ss.TensorModel):
        name = "iris"
        version = "1"
        file = "iris.onnx"   # inputs, outputs, datatypes and shapes come from the graph

At load the file is opened through :class:`~secureserve.artifacts.Artifacts` (locked,
format-checked, hardened session) and its graph's inputs and outputs become the
model's tensors: name, OIP datatype (:func:`secureserve.tensors.datatype_of`) and shape
(a dimension the graph leaves open, such as the batch, is ``-1``). ``/v2/models/{name}``
reports them and ``/v2/models/{name}/infer`` checks every request against them before
the session runs: the inputs the graph has, each of its datatype and of a shape that
fits (same rank, fixed dimensions equal), the same batch size (the first dimension)
for every input.

Class scores are outputs: an output is taken as scores when ``scores`` names it, or,
with ``scores`` unset, whenever it is floating point (a probability, a logit or a
sigmoid per row all are; only the model's author can say that a float output is not
a score, by naming the ones that are, ``scores = ()`` for none). The output policy of
secureserve holds for them
as for ``ss.Scores``: detailed scores make model extraction and inversion cheaper, so
a model with score outputs is served only under an explicit ``policy = "full"`` and
refuses to start otherwise, naming the setting (tensors have no labels to fall back to).

The model defenses that need a feature view (input guard, drift, extraction
detection) read one input: the graph's only input, of a numeric datatype, with a batch
dimension first and every other dimension fixed (``[-1, 4]``, or ``[-1, 1, 8, 8]`` for
images). Each instance is that input flattened; its columns are named after the input,
``x[0]``, ``x[1]``, ... (at most :data:`MAX_FEATURES`). The codec has already refused
NaN and infinities (:mod:`secureserve.tensors`), so every row is finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

import numpy as np
import numpy.typing as npt

from secureserve.errors import ConfigError, RequestRejected
from secureserve.model import NAME_PATTERN, VERSION_PATTERN
from secureserve.tensors import datatype_of

if TYPE_CHECKING:
    import onnxruntime

    from secureserve.artifacts import Artifacts

__all__ = ["MAX_FEATURES", "TensorModel", "TensorSpec"]

_FLOATS: Final = frozenset({"FP16", "FP32", "FP64"})
_NUMERIC: Final = frozenset(
    {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", *_FLOATS}
)
#: The widest feature input the defenses read (a 64 x 64 image is 4,096 columns).
MAX_FEATURES: Final = 4096


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the graph: its name, OIP datatype and shape (-1: any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a tensor of ``shape`` fits: the same rank, each fixed dimension equal."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )


class TensorModel:
    """Base class of a tensor model: set ``name``, ``version`` and ``file``; nothing else.

    Class attributes:
        name: the served name, as for ``ss.Model``.
        version: the public version (``/v2/models/{name}`` lists it).
        file: the ONNX file in the model folder.
        scores: the outputs that are class scores (default: every floating-point
            output; see the module docstring).
        independent_rows: True when every output row depends on its own input row
            alone (a classifier or regressor applied row by row): requests waiting
            for the model may then run as one batch. False (the default) for graphs
            that mix rows, such as batch statistics, top-k or non-maximum suppression
            over the batch: each request runs alone, so no caller sees another's rows.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    file: ClassVar[str]
    scores: ClassVar[tuple[str, ...] | None] = None
    independent_rows: ClassVar[bool] = False

    def __init__(self) -> None:
        self.session: onnxruntime.InferenceSession | None = None
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()

    @classmethod
    def check_definition(cls) -> None:
        """Refuse a class whose name, version or file is missing or malformed."""
        where = f"{cls.__module__}.{cls.__qualname__}"
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
            raise ConfigError(
                f"{where}.name must be lower-case letters, digits, '.', '_' or '-' (at most "
                '63 characters), e.g. name = "iris".'
            )
        if not isinstance(cls.version, str) or VERSION_PATTERN.fullmatch(cls.version) is None:
            raise ConfigError(f'{where}.version must be a short version string, e.g. "1".')
        if not isinstance(getattr(cls, "file", None), str):
            raise ConfigError(
                f'{where}.file must name the ONNX file in the model folder, e.g. "iris.onnx".'
            )

    def load(self, artifacts: Artifacts) -> None:
        """Open the verified ONNX file and read its inputs and outputs."""
        session = artifacts.onnx(self.file)
        self.session = session
        self.inputs = tuple(_spec(arg, self.file) for arg in session.get_inputs())
        self.outputs = tuple(_spec(arg, self.file) for arg in session.get_outputs())

    def warmup(self) -> None:
        """Nothing: the session was made by ``load``."""

    def score_outputs(self) -> tuple[str, ...]:
        """The outputs that are class scores (see the module docstring)."""
        if self.scores is not None:
            unknown = sorted(set(self.scores) - {spec.name for spec in self.outputs})
            if unknown:
                raise ConfigError(
                    f"{type(self).__qualname__}.scores names {', '.join(unknown)}, which "
                    f"{self.file} has no output of; its outputs are "
                    f"{', '.join(s.name for s in self.outputs)}."
                )
            return tuple(self.scores)
        return tuple(spec.name for spec in self.outputs if spec.datatype in _FLOATS)

    def feature_input(self) -> TensorSpec | None:
        """The input the defenses read (see the module docstring), or None."""
        return None if self.no_feature_view() else self.inputs[0]

    def no_feature_view(self) -> str | None:
        """Why the model has no feature view (then the defenses that need one are off)."""
        if len(self.inputs) != 1:
            return f"{self.file} has {len(self.inputs)} inputs; the defenses read one"
        (spec,) = self.inputs
        if spec.datatype not in _NUMERIC:
            return f"{self.file}'s input {spec.name} is {spec.datatype}, not numbers"
        dims = spec.shape[1:]
        if not dims or any(d < 0 for d in dims):
            return (
                f"{self.file}'s input {spec.name} has shape {list(spec.shape)}; the defenses "
                "need a batch dimension first and every other dimension fixed"
            )
        if math.prod(dims) > MAX_FEATURES:
            return (
                f"{self.file}'s input {spec.name} holds {math.prod(dims)} numbers per "
                f"instance; the defenses read at most {MAX_FEATURES}"
            )
        return None

    def feature_columns(self) -> tuple[str, ...]:
        """The feature view's column names: the input's name and flat index."""
        spec = self.feature_input()
        if spec is None:
            return ()
        return tuple(f"{spec.name}[{i}]" for i in range(math.prod(spec.shape[1:])))

    def check_request(
        self, inputs: dict[str, np.ndarray[Any, Any]], datatypes: dict[str, str]
    ) -> int:
        """Refuse (400) inputs that do not fit the graph; return the batch size.

        BYTES inputs are turned into text in place (the ONNX string type is UTF-8 text).
        """
        wanted = {spec.name: spec for spec in self.inputs}
        missing = [name for name in wanted if name not in inputs]
        extra = [name for name in inputs if name not in wanted]
        if missing or extra:
            problem = (
                f"missing input {missing[0]!r}" if missing else f"no input named {extra[0][:64]!r}"
            )
            raise RequestRejected(
                400,
                "validation",
                "Inputs do not match the model",
                detail=f"$.inputs: {problem}; the model takes {', '.join(wanted)}",
            )
        batch: int | None = None
        for i, (name, array) in enumerate(inputs.items()):
            spec = wanted[name]
            if datatypes[name] != spec.datatype:
                raise RequestRejected(
                    400,
                    "validation",
                    "Input datatype does not match the model",
                    detail=f"$.inputs[{i}].datatype: {name} is {spec.datatype}, "
                    f"not {datatypes[name]}",
                )
            if not spec.fits(array.shape):
                raise RequestRejected(
                    400,
                    "validation",
                    "Input shape does not match the model",
                    detail=f"$.inputs[{i}].shape: {name} is {list(spec.shape)} (-1: any), "
                    f"not {list(array.shape)}",
                )
            if spec.datatype == "BYTES":  # ONNX strings are text: onnxruntime would str() bytes
                inputs[name] = _text(array, i)
            rows = array.shape[0] if array.ndim else 1
            if batch is not None and rows != batch:
                raise RequestRejected(
                    400,
                    "validation",
                    "Inputs of different batch sizes",
                    detail=f"$.inputs[{i}].shape: every input has the same first dimension",
                )
            batch = rows
        return batch or 0

    def infer(
        self,
        inputs: dict[str, np.ndarray[Any, Any]],
        wanted: list[str],
        options: onnxruntime.RunOptions | None = None,
    ) -> list[tuple[str, str, np.ndarray[Any, Any]]]:
        """Run the session: the ``wanted`` outputs as (name, datatype, array), in that order.

        ``options`` lets the caller stop the run (``options.terminate = True``).
        """
        if self.session is None:  # pragma: no cover - the server loads before serving
            raise RuntimeError("the model is not loaded")
        datatypes = {spec.name: spec.datatype for spec in self.outputs}
        results = self.session.run(wanted, inputs, options)
        return [
            (name, datatypes[name], np.asarray(array))
            for name, array in zip(wanted, results, strict=True)
        ]

    def features(self, inputs: dict[str, np.ndarray[Any, Any]]) -> npt.NDArray[np.float64]:
        """The feature view of a request's checked inputs: one flat row per instance."""
        spec = self.feature_input()
        if spec is None:  # pragma: no cover - callers check feature_input first
            raise RuntimeError("this model has no feature view")
        array = inputs[spec.name]
        width = math.prod(spec.shape[1:])
        rows: npt.NDArray[np.float64] = array.reshape(array.shape[0], width).astype(np.float64)
        return rows


def _text(array: np.ndarray[Any, Any], index: int) -> np.ndarray[Any, Any]:
    """A BYTES array as an array of ``str`` (400 for bytes that are not UTF-8)."""
    text = np.empty(array.shape, dtype=object)
    for position, item in np.ndenumerate(array):
        try:
            text[position] = item.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestRejected(
                400,
                "validation",
                "Input is not text",
                detail=f"$.inputs[{index}]: this model's string inputs take UTF-8 text",
            ) from None
    return text


def _spec(arg: Any, file: str) -> TensorSpec:
    """One ``onnxruntime.NodeArg`` as a :class:`TensorSpec`."""
    datatype = datatype_of(arg.type)
    if datatype is None:
        raise ConfigError(
            f"{file}: {arg.name} is of type {arg.type}, which the Open Inference Protocol "
            "cannot carry; serve this model with an ss.Model handler instead."
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(arg.name, datatype, shape)
