"""Duplicate keys are found per object, after unescaping, never inside strings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
        (rb'{"instances": [{"features": [1, 2]}, {"features": [3, 4]}]}', False),
        (rb'[{"x": 1}, {"y": [{"k": 1},\n {"k": 2 ,\t"k" : 3}]}]', True),
        (rb'{"a": 1, "b": ",\"a\":"}', False),
    ],
)
def test_find_duplicate_key(body, duplicate):
    """Duplicate keys are found per object, after unescaping, and never inside strings."""
    assert find_duplicate_key(body) is duplicate


_KEYS = st.sampled_from(["a", "b", "é", 'k"', "x,y"])  # é and " are written escaped
_SPACE = st.sampled_from(["", " ", "\n\t"])


def _text(value: Any, space: str) -> str:
    """JSON text for a value in which an object is a list of (key, value) pairs."""
    if isinstance(value, list):
        if value and isinstance(value[0], tuple):
            members = (f"{space}{json.dumps(k)}{space}:{space}{_text(v, space)}" for k, v in value)
            return "{" + ",".join(members) + "}"
        return "[" + f",{space}".join(_text(v, space) for v in value) + "]"
    return json.dumps(value)


_VALUES = st.recursive(
    st.one_of(st.integers(-5, 5), st.sampled_from(["s", ',"a":', "{"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).filter(lambda v: not v or not isinstance(v[0], tuple)),
        st.lists(st.tuples(_KEYS, inner), min_size=1, max_size=4),
    ),
    max_leaves=12,
)


def _has_duplicate(body: bytes) -> bool:
    """The reference: Python's own parser, shown every object's members in order."""
    found = False

    def pairs(members: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        keys = [k for k, _ in members]
        found = found or len(keys) != len(set(keys))
        return dict(members)

    json.loads(body, object_pairs_hook=pairs)
    return found


@settings(max_examples=400, deadline=None, derandomize=True)
@given(value=_VALUES, space=_SPACE)
def test_find_duplicate_key_agrees_with_a_parser(value, space):
    """Any body (escaped keys, look-alike strings, whitespace): as a real parser says."""
    body = _text(value, space).encode()
    assert find_duplicate_key(body) is _has_duplicate(body), body
