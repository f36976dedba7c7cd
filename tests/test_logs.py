"""JSON log lines, redaction of credentials wherever they appear, stdlib loggers included."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from secureserve.logs import (
    REDACTED,
    AccessRecord,
    access_log,
    configure_logging,
    get_logger,
    redact,
)

KEY = "ss_0123456789ab_" + "A" * 43


@pytest.fixture
def stream():
    out = io.BytesIO()
    configure_logging("debug", stream=out)
    yield out
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def _record(path: str) -> AccessRecord:
    return AccessRecord(
        request_id="r" * 8,
        method="GET",
        path=path,
        status=200,
        latency_ms=0.1,
        key_id=None,
        model_version=None,
        reason=None,
    )


def _lines(stream: io.BytesIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_logs_are_json_lines_with_level_and_timestamp(stream):
    """Each event is one JSON object with level, timestamp and the logger name."""
    get_logger().info("hello", request_id="r1")
    (line,) = _lines(stream)
    assert line["event"] == "hello"
    assert line["level"] == "info"
    assert line["request_id"] == "r1"
    assert line["logger"] == "secureserve"
    assert line["timestamp"].endswith("Z")


def test_logs_redact_credentials_by_key_and_inside_text(stream):
    """Authorization headers, key-named fields and keys embedded in text never reach the output."""
    get_logger().info(
        "oops",
        authorization=f"Bearer {KEY}",
        headers={"Authorization": "Bearer abc", "x-api-key": KEY, "accept": "x"},
        message=f"failed for Bearer {KEY} on /v1",
        api_token="t0ken",
        key_id="0123456789ab",
    )
    raw = stream.getvalue().decode()
    assert KEY not in raw
    assert "abc" not in raw
    assert "t0ken" not in raw
    (line,) = _lines(stream)
    assert line["authorization"] == REDACTED
    assert line["headers"]["accept"] == "x"
    assert line["key_id"] == "0123456789ab"  # the id is not a secret


def test_logs_route_stdlib_loggers_through_redaction(stream):
    """Uvicorn logs through the stdlib: its lines are JSON and redacted too."""
    logging.getLogger("uvicorn.error").warning("bad request with Bearer %s", KEY)
    raw = stream.getvalue().decode()
    assert KEY not in raw
    (line,) = _lines(stream)
    assert line["logger"] == "uvicorn.error"


def test_logs_exceptions_as_data_without_locals(stream):
    """A traceback is structured and never includes local variables (which may hold secrets)."""
    secret_local = KEY  # noqa: F841 - must not be logged
    try:
        int("boom")
    except ValueError:
        get_logger().exception("failed", request_id="r2")
    raw = stream.getvalue().decode()
    assert KEY not in raw
    (line,) = _lines(stream)
    assert line["exception"][0]["exc_type"] == "ValueError"
    assert "locals" not in line["exception"][0]["frames"][0]


def test_logs_filter_below_level():
    """Debug lines are dropped at level info."""
    out = io.BytesIO()
    configure_logging("info", stream=out)
    try:
        get_logger().debug("hidden")
        get_logger().info("shown")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert [line["event"] for line in _lines(out)] == ["shown"]


def test_import_configures_nothing():
    """Importing secureserve has no logging side effects (STYLE.md rule 9)."""
    import subprocess
    import sys

    code = (
        "import logging, structlog, secureserve; "
        "print(structlog.is_configured(), logging.getLogger().handlers)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False []"


def test_redact_nested_lists():
    """Redaction walks lists and nested mappings."""
    assert redact([{"token": "x"}, f"Bearer {KEY}"]) == [{"token": REDACTED}, f"Bearer {REDACTED}"]


def test_access_log_writes_one_redacted_json_line(stream):
    """The direct access line has every field, and redacts a key sent in the path or request id."""
    access_log()(
        AccessRecord(
            request_id=KEY,
            method="GET",
            path=f"/v1/models/{KEY}",
            status=404,
            latency_ms=1.5,
            key_id="0123456789ab",
            model_version=None,
            reason=None,
        )
    )
    raw = stream.getvalue().decode()
    assert KEY not in raw
    (line,) = _lines(stream)
    assert line["event"] == "request"
    assert line["level"] == "info"
    assert line["status"] == 404
    assert line["path"] == f"/v1/models/{REDACTED}"
    assert line["key_id"] == "0123456789ab"
    assert line["timestamp"].endswith("Z")


def test_access_log_goes_through_host_structlog_configuration(stream):
    """When the host application configures structlog itself, access lines use its processors."""
    seen = []

    def capture(_, __, event):
        seen.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[capture])
    access_log()(_record("/healthz"))
    assert seen[0]["event"] == "request"
    assert seen[0]["status"] == 200
    assert stream.getvalue() == b""


def test_access_log_silent_above_info():
    """At level warning the per-request line is not written."""
    out = io.BytesIO()
    configure_logging("warning", stream=out)
    try:
        access_log()(_record("/"))
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert out.getvalue() == b""
