"""Tests of secureserve.body: size limit and deadline while the body streams, content types."""

from __future__ import annotations

import asyncio

import pytest

from secureserve.body import check_json_content_type, read_body
from secureserve.errors import RequestRejected

LIMIT = 100


# --- helpers -----------------------------------------------------------------------


class FakeReceive:
    """An ASGI ``receive`` that plays back ``messages`` and counts how often it was called."""

    def __init__(self, messages, *, delay_s=0.0):
        self.messages = list(messages)
        self.delay_s = delay_s
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if not self.messages:  # a client that never sends the rest
            await asyncio.sleep(3600)
        return self.messages.pop(0)


def _chunks(*parts, last_more=False):
    """``http.request`` messages for ``parts``; only the last one ends the body."""
    return [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1 or last_more}
        for i, part in enumerate(parts)
    ]


def _scope(*headers):
    return {"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers]}


def _read(scope, receive, *, limit=LIMIT, deadline_s=5.0):
    return asyncio.run(read_body(scope, receive, limit=limit, deadline_s=deadline_s))


def _rejected(scope, receive, **kwargs):
    with pytest.raises(RequestRejected) as info:
        _read(scope, receive, **kwargs)
    return info.value


# --- read_body: accepted bodies ------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "parts"),
    [
        ((), (b"",)),
        ((), (b"x" * LIMIT,)),
        ((("content-length", str(LIMIT)),), (b"x" * LIMIT,)),
        ((), (b'{"a"', b": ", b"1}")),
        ((), (b"a" * 40, b"", b"b" * 60)),
    ],
    ids=["empty", "exactly-limit", "declared-exactly-limit", "three-chunks", "empty-chunk"],
)
def test_read_body_returns_whole_body_within_limit(headers, parts):
    """A body up to the limit, in one or many chunks, comes back joined and complete."""
    receive = FakeReceive(_chunks(*parts))
    assert _read(_scope(*headers), receive) == b"".join(parts)
    assert receive.calls == len(parts)


# --- read_body: refusals ---------------------------------------------------------------


@pytest.mark.parametrize("declared", [str(LIMIT + 1), "20971553", "9" * 40])
def test_read_body_declared_length_over_limit_is_413_before_reading(declared):
    """A Content-Length over the limit is refused with 413 before ``receive`` is ever called."""
    receive = FakeReceive(_chunks(b"x" * (LIMIT + 1)))
    error = _rejected(_scope(("content-length", declared)), receive)
    assert error.status == 413
    assert error.close is True
    assert error.detail == f"the body may be at most {LIMIT} bytes"
    assert receive.calls == 0


@pytest.mark.parametrize(
    ("chunk_size", "expected_calls"), [(40, 3), (1, LIMIT + 1), (LIMIT + 1, 1), (99, 2)]
)
def test_read_body_stream_crossing_limit_is_413_without_reading_further(chunk_size, expected_calls):
    """A body without Content-Length is refused the moment it crosses the limit; no more reads."""
    receive = FakeReceive(_chunks(*([b"y" * chunk_size] * 200)))
    error = _rejected(_scope(), receive)
    assert error.status == 413
    assert error.close is True
    assert receive.calls == expected_calls


def test_read_body_understated_content_length_still_bounded():
    """A Content-Length that lies (small) does not let a larger streamed body through."""
    receive = FakeReceive(_chunks(*([b"z" * 50] * 10)))
    error = _rejected(_scope(("content-length", "10")), receive)
    assert error.status == 413
    assert receive.calls == 3


@pytest.mark.parametrize(
    "parts",
    [(), (b"partial",)],
    ids=["nothing-arrives", "first-chunk-then-silence"],
)
def test_read_body_slow_body_is_408_and_closes(parts):
    """A body that has not fully arrived by the deadline is refused with 408 and close=True."""
    receive = FakeReceive(_chunks(*parts, last_more=True), delay_s=0.01)
    error = _rejected(_scope(), receive, deadline_s=0.1)
    assert error.status == 408
    assert error.close is True
    assert error.slug == "body-timeout"


def test_read_body_trickling_body_is_408_even_if_each_chunk_is_quick():
    """The deadline covers the whole body, not each chunk: a slow trickle still gets 408."""
    receive = FakeReceive(_chunks(*([b"a"] * 50)), delay_s=0.02)
    error = _rejected(_scope(), receive, deadline_s=0.15)
    assert error.status == 408
    assert receive.calls < 50


@pytest.mark.parametrize(
    "messages",
    [
        [{"type": "http.disconnect"}],
        [{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}],
    ],
    ids=["at-once", "mid-body"],
)
def test_read_body_disconnect_is_400(messages):
    """A client that disconnects before the body is complete gets 400 (and the log a reason)."""
    error = _rejected(_scope(), FakeReceive(messages))
    assert error.status == 400
    assert error.close is True
    assert error.log_reason == "client-disconnected"


@pytest.mark.parametrize("declared", ["abc", "-1", "1e3", "", " 10", "10 ", "+5", "0x10", "1.0"])
def test_read_body_invalid_content_length_is_400(declared):
    """A Content-Length that is not a plain decimal number is refused with 400 before reading."""
    receive = FakeReceive(_chunks(b"x"))
    error = _rejected(_scope(("content-length", declared)), receive)
    assert error.status == 400
    assert error.detail == "invalid Content-Length"
    assert error.close is True
    assert receive.calls == 0


# --- check_json_content_type -------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=utf-8",
        "APPLICATION/JSON",
        "Application/Json; Charset=UTF-8",
    ],
)
def test_check_json_content_type_accepts_json(content_type):
    """application/json, with or without charset=utf-8, in any letter case, is accepted."""
    assert check_json_content_type(_scope(("content-type", content_type))) is None


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json-seq",
        "application/jsonx",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "text/json",
        "",
    ],
)
def test_check_json_content_type_refuses_other_types(content_type):
    """Anything but UTF-8 application/json is refused with 415 and a fixed, safe detail."""
    with pytest.raises(RequestRejected) as info:
        check_json_content_type(_scope(("content-type", content_type)))
    assert info.value.status == 415
    assert info.value.detail == "send the body as application/json"


def test_check_json_content_type_refuses_missing_header():
    """A request without a Content-Type header is refused with 415."""
    with pytest.raises(RequestRejected) as info:
        check_json_content_type(_scope(("content-length", "2")))
    assert info.value.status == 415


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate", "GZIP"])
def test_check_json_content_type_refuses_a_compressed_body(encoding):
    """/v1 never inflates: a body declared compressed is refused, not read as plain JSON."""
    scope = _scope(("content-type", "application/json"), ("content-encoding", encoding))
    with pytest.raises(RequestRejected) as info:
        check_json_content_type(scope)
    assert info.value.status == 415
    assert info.value.detail == "send the body uncompressed (no Content-Encoding)"


def test_check_json_content_type_accepts_identity_encoding():
    """``identity`` (no compression) is what every body is anyway."""
    scope = _scope(("content-encoding", "identity"), ("content-type", "application/json"))
    assert check_json_content_type(scope) is None
