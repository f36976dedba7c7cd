"""JSON stricter than the parsers: no duplicate keys.

msgspec (like most parsers) silently keeps the last of two equal keys; parsers
that disagree on which one wins are a classic smuggling vector, so request
bodies and the files secureserve trusts (lock, signatures) refuse them.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

__all__ = ["find_duplicate_key"]

# A JSON string (optionally followed by ":", which makes it a key) or a brace.
_STRING_OR_BRACE: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"(?:\s*:)?|[{}]')
# A comma, then a key: how an object's second (or later) member starts, in any JSON.
# Its key matches when it has no escapes (no backslash in the body); a string value that
# happens to match only costs the full scan.
_LATER_KEY: Final = re.compile(rb',\s*"[^"\\]*"\s*:')
_OPEN, _CLOSE, _COLON = ord("{"), ord("}"), ord(":")


def find_duplicate_key(body: bytes) -> bool:
    r"""Whether any JSON object in ``body`` (already known to be valid JSON) repeats a key.

    Scans only strings and braces, so a body of numbers costs almost nothing.
    Keys are compared after unescaping (``"a"`` and ``"\\u0061"`` are the same key).
    First, one pass in C settles the common case of objects of one member each (a
    batch of one-field instances): no object there has a second key to repeat.
    """
    if b"\\" not in body and _LATER_KEY.search(body) is None:
        return False
    stack: list[set[bytes]] = []
    for token in _STRING_OR_BRACE.findall(body):
        first = token[0]
        if first == _OPEN:
            stack.append(set())
        elif first == _CLOSE:
            stack.pop()
        elif token[-1] == _COLON:
            key = token[1 : token.rindex(b'"')]
            if b"\\" in key:
                key = msgspec.json.decode(b'"' + key + b'"').encode()
            keys = stack[-1]
            if key in keys:
                return True
            keys.add(key)
    return False
