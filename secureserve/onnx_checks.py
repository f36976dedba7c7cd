"""ONNX hardening: what a model may contain before onnxruntime ever sees it.

Only the standard operator domains (plus an explicit allow-list) are accepted,
in the main graph, its subgraphs and local functions, because custom operators
run native code; node counts are capped; external data must be a relative path
inside the model folder and is read by the caller's choke point, never by
onnxruntime (older runtimes follow ``../`` paths). No I/O happens here.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Final

import onnxruntime
from onnx import GraphProto, ModelProto, NodeProto, TensorProto

from secureserve.errors import ArtifactError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["STANDARD_ONNX_DOMAINS", "check_model", "inline_external_data", "session_options"]

#: ONNX operator domains always allowed; others must be allow-listed by name.
STANDARD_ONNX_DOMAINS: Final = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_EXTERNAL_KEYS: Final = frozenset({"location", "offset", "length", "checksum"})
_OPTIMIZATION: Final = {
    "disabled": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def check_model(
    name: str, model: ModelProto, *, allowed_domains: frozenset[str], max_nodes: int
) -> None:
    """Refuse a model without a graph, with too many nodes, or with a non-allowed op domain."""
    if not model.HasField("graph"):
        raise ArtifactError(name, "onnx-invalid", "the ONNX model has no graph")
    opsets = [*model.opset_import]
    for function in model.functions:
        opsets.extend(function.opset_import)
    nodes = [*_all_nodes(model)]
    if len(nodes) > max_nodes:
        raise ArtifactError(
            name,
            "onnx-too-large",
            f"has {len(nodes)} nodes, over the limit of {max_nodes}",
        )
    domains = {o.domain for o in opsets} | {n.domain for n in nodes}
    refused = sorted(domains - allowed_domains)
    if refused:
        raise ArtifactError(
            name,
            "onnx-custom-domain",
            f"uses operator domain(s) {', '.join(map(repr, refused))}, which are not "
            "standard ONNX; custom operators run native code. If you trust them, list the "
            "domain in [model] onnx_allowed_domains",
        )


def inline_external_data(name: str, model: ModelProto, read: Callable[[str], bytes]) -> None:
    """Read every external tensor with ``read`` (the artifact choke point) and embed its bytes.

    onnxruntime then never resolves a path itself: external data is checked,
    hashed and recorded like any other artifact, whatever the runtime's version.
    """
    base = PurePosixPath(name).parent
    cache: dict[str, bytes] = {}
    for tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL and not tensor.external_data:
            continue
        entries: dict[object, object] = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        # protobuf hands back bytes, not str, for strings that are not valid UTF-8
        if (
            not isinstance(location, str)
            or not location
            or set(entries) - _EXTERNAL_KEYS
            or not all(isinstance(v, str) for v in entries.values())
        ):
            raise ArtifactError(
                name,
                "onnx-external-data",
                f"tensor {tensor.name!r} has malformed external data entries",
            )
        target = _external_target(name, tensor.name, base, location)
        if target not in cache:
            try:
                cache[target] = read(target)
            except ArtifactError as exc:
                escape = exc.reason in ("path-escape", "name-invalid")
                raise ArtifactError(
                    name,
                    "onnx-external-data-escape" if escape else "onnx-external-data",
                    f"tensor {tensor.name!r} keeps its data in {exc}",
                ) from exc
        blob = cache[target]
        fields = {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, str)}
        tensor.raw_data = _slice(name, tensor.name, blob, fields)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def session_options(threads: int, optimization: str = "all") -> onnxruntime.SessionOptions:
    """Session options for an untrusted model: CPU, bounded threads, ONNX format only.

    ``optimization`` is ``[model] onnx_optimization``: disabled, basic, extended or all.
    """
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = _OPTIMIZATION[optimization]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.enable_profiling = False
    options.log_severity_level = 4  # fatal only: failures are raised, with the cause
    # Parse only ONNX protobuf (never the ORT flatbuffer format), keep released
    # opsets only, and do not burn idle CPU spinning between requests.
    options.add_session_config_entry("session.load_model_format", "ONNX")
    options.add_session_config_entry("session.allow_released_opsets_only", "1")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _external_target(name: str, tensor: str, base: PurePosixPath, location: str) -> str:
    path = PurePosixPath(location)
    if (
        "\x00" in location
        or "\\" in location
        or path.is_absolute()
        or ".." in path.parts
        or path.parts in ((), (".",))
    ):
        raise ArtifactError(
            name,
            "onnx-external-data-escape",
            f"tensor {tensor!r} keeps its data at {location!r}, which is not a relative path "
            "inside the model folder; external data must stay beside the model",
        )
    return (base / path).as_posix()


def _slice(name: str, tensor: str, blob: bytes, entries: dict[str, str]) -> bytes:
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else len(blob) - offset
    except ValueError as exc:
        raise ArtifactError(
            name, "onnx-external-data", f"tensor {tensor!r} has a non-numeric offset or length"
        ) from exc
    if offset < 0 or length < 0 or offset + length > len(blob):
        raise ArtifactError(
            name,
            "onnx-external-data",
            f"tensor {tensor!r} external data [{offset}, {offset + length}) does not fit in "
            f"its {len(blob)}-byte file",
        )
    return blob[offset : offset + length]


def _all_graphs(model: ModelProto) -> Iterator[GraphProto]:
    """Yield the main graph, training graphs and every subgraph (attributes, functions)."""
    roots = [model.graph]
    for info in model.training_info:
        roots.extend((info.initialization, info.algorithm))
    stack = list(roots)
    function_nodes = [n for f in model.functions for n in f.node]
    stack.extend(_subgraphs(function_nodes))
    while stack:
        graph = stack.pop()
        yield graph
        stack.extend(_subgraphs(graph.node))


def _subgraphs(nodes: Iterator[NodeProto] | list[NodeProto]) -> list[GraphProto]:
    found: list[GraphProto] = []
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                found.append(attribute.g)
            found.extend(attribute.graphs)
    return found


def _all_nodes(model: ModelProto) -> Iterator[NodeProto]:
    for graph in _all_graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _all_tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Yield initializers, sparse initializers and tensor attributes, everywhere."""
    for graph in _all_graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
    for node in _all_nodes(model):
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
            for sparse in attribute.sparse_tensors:
                yield from (sparse.values, sparse.indices)
