"""Which onnxruntime execution providers a model's ONNX sessions run on.

``[model] providers`` lists them in order of preference; the default is the CPU alone.
At start-up :func:`choose_providers` checks the list against what the installed
onnxruntime offers:

- the sessions get the listed providers that are available, in the listed order;
- a listed provider that is not available is skipped with a warning naming the one
  that runs instead: listing a later provider is the explicit opt-in to fall back to it
  (``["CUDAExecutionProvider", "CPUExecutionProvider"]``);
- when none is available, start-up stops with the providers onnxruntime does offer.

:func:`check_onnxruntime_distribution` stops start-up when more than one onnxruntime
distribution is installed: ``onnxruntime`` and ``onnxruntime-gpu`` (and the other
builds) install the same ``onnxruntime`` module over each other, and which files won
is an accident of install order.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Final

import msgspec
import onnxruntime

from secureserve.errors import ConfigError
from secureserve.logs import get_logger

__all__ = [
    "CPU",
    "MAX_PROVIDERS",
    "ONNXRUNTIME_DISTRIBUTIONS",
    "ProviderName",
    "check_onnxruntime_distribution",
    "choose_providers",
]

CPU: Final = "CPUExecutionProvider"
MAX_PROVIDERS: Final = 8  # onnxruntime has about twenty; a list longer than this is a mistake
#: The PyPI distributions that install the ``onnxruntime`` module.
ONNXRUNTIME_DISTRIBUTIONS: Final = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
    "onnxruntime-silicon",
)
#: onnxruntime names every provider ``<Something>ExecutionProvider``.
ProviderName = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Z][A-Za-z0-9]{0,63}ExecutionProvider$", max_length=81)
]
_PRINTED: Final = 20  # available providers named in an error, at most


def choose_providers(
    wanted: Sequence[str],
    *,
    model: str,
    available: Iterable[str] | None = None,
) -> tuple[str, ...]:
    """The providers ``model``'s sessions get: the ``wanted`` ones onnxruntime has.

    ``available`` defaults to ``onnxruntime.get_available_providers()``. Raises
    :class:`ConfigError` when none of ``wanted`` is available.
    """
    offered = list(onnxruntime.get_available_providers() if available is None else available)
    chosen = tuple(name for name in wanted if name in offered)
    missing = [name for name in wanted if name not in offered]
    if not chosen:
        shown = ", ".join(offered[:_PRINTED]) or "none"
        raise ConfigError(
            f"[model] providers: onnxruntime here has none of {', '.join(wanted)}; it has "
            f"{shown}. Install the onnxruntime build for that hardware (docs/models.md, "
            f'"Execution providers"), or list a fallback after it, e.g. "{CPU}".'
        )
    if missing:
        get_logger().warning(
            "execution provider not available: falling back as [model] providers allows",
            model=model,
            missing=missing,
            running=list(chosen),
            setting="model.providers",
        )
    return chosen


def check_onnxruntime_distribution(
    installed: Callable[[str], str] = importlib.metadata.version,
) -> None:
    """Stop start-up when more than one onnxruntime distribution is installed."""
    found = []
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        try:
            found.append(f"{name} {installed(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if len(found) > 1:
        raise ConfigError(
            f"more than one onnxruntime is installed ({', '.join(found)}): they install the "
            "same module over each other, so which one runs is an accident. Uninstall all "
            "of them, then install the one you want (e.g. pip uninstall -y "
            f"{' '.join(f.split()[0] for f in found)} && pip install onnxruntime-gpu)."
        )
