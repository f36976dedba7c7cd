"""Duplicate keys are found per object, after unescaping, never inside strings."""

from __future__ import annotations

import pytest

from secureserve.strict_json import find_duplicate_key


@pytest.mark.parametrize(
    ("body", "duplicate"),
    [
        (rb'{"a": 1, "b": 2}', False),
        (rb'{"a": 1, "a": 2}', True),
        (rb'{"a": 1, "\u0061": 2}', True),
        (rb'{"a": {"a": 1}}', False),
        (rb'[{"a": 1}, {"a": 2}]', False),
        (rb'{"a": "{\"a\": 1, \"a\": 2}"}', False),
        (rb'{"x": [{"k": 1, "k": 2}]}', True),
        (rb'{"a\"b": 1, "a\"b": 2}', True),
    ],
)
def test_find_duplicate_key(body, duplicate):
    """Duplicate keys are found per object, after unescaping, and never inside strings."""
    assert find_duplicate_key(body) is duplicate
