"""The public API is exactly what secureserve.__all__ lists (httpx's rule)."""

from __future__ import annotations

import secureserve


def test_exported_members_match_all():
    """Every public name in the package namespace is in __all__, sorted, and vice versa."""
    members = {
        name
        for name, value in vars(secureserve).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("secureserve")
    }
    exported = set(secureserve.__all__) - {"__version__"}
    assert members == exported
    assert secureserve.__all__ == sorted(secureserve.__all__)
