"""The public API is exactly what secureserve.__all__ lists (httpx's rule)."""

from __future__ import annotations

from typing import Annotated, Any, get_origin

import secureserve


def _ours(value: Any) -> bool:
    """Defined by secureserve: a class or function of ours, or an alias carrying our marker."""
    if get_origin(value) is Annotated:  # ss.Label, ss.Score, ss.Scores
        return any(type(m).__module__.startswith("secureserve") for m in value.__metadata__)
    return getattr(value, "__module__", "").startswith("secureserve")


def test_exported_members_match_all():
    """Every public name in the package namespace is in __all__, sorted, and vice versa."""
    members = {
        name
        for name, value in vars(secureserve).items()
        if not name.startswith("_") and _ours(value)
    }
    # the typed client is imported on first use (the server never loads httpx2)
    members |= {name for name in secureserve._LAZY if _ours(getattr(secureserve, name))}
    exported = set(secureserve.__all__) - {"__version__"}
    assert members == exported
    assert secureserve.__all__ == sorted(secureserve.__all__)
