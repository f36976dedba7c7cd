"""JSON log lines, redaction of credentials wherever they appear, stdlib loggers included."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from app_helpers import asgi_client, replaced, unlimited_iris_settings
from conftest import load_iris
from server_helpers import copy_iris, production_iris, running_server

from secureserve.app import create_app
from secureserve.config import load_settings
from secureserve.errors import ConfigError
from secureserve.logs import (
    REDACTED,
    AccessRecord,
    access_log,
    configure_logging,
    escape_text,
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


# --------------------------------------------------------------------------- console format

#: What a web page can make a developer's browser send to 127.0.0.1: colours (ESC [ 31 m),
#: a terminal title (OSC ... BEL), a carriage return and a forged line, bidi overrides,
#: a C1 control (NEL) and a zero-width space.
HOSTILE = "\x1b[31mred\x1b]0;pwned\x07\rfake\nline\u202eevil\u2066\x85\u200bend"
RAW = ("\x1b", "\x07", "\r", "\u202e", "\u2066", "\x85", "\u200b")


class _Terminal(io.BytesIO):
    """A byte stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def console():
    """Console-format logs at level debug, captured; the set-up is undone afterwards."""
    out = io.BytesIO()
    configure_logging("debug", stream=out, log_format="console")
    yield out
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def _assert_no_raw_controls(text: str) -> None:
    for char in RAW:
        assert char not in text, repr(char)


def test_escape_text_escapes_every_non_printable_character():
    """Controls, C1, bidi and zero-width characters become escapes; printable text stays."""
    assert escape_text("/v1/models/iris") == "/v1/models/iris"
    assert escape_text("é ü 模型") == "é ü 模型"
    assert escape_text(HOSTILE) == (
        "\\x1b[31mred\\x1b]0;pwned\\x07\\x0dfake\\x0aline\\u202eevil\\u2066\\x85\\u200bend"
    )
    assert escape_text("a\nb\rc", keep_newlines=True) == "a\nb\\x0dc"
    assert escape_text("\U000e0041") == "\\U000e0041"  # a tag character


def test_console_format_escapes_event_and_values(console):
    """The event and every string value are escaped; one event is one line."""
    get_logger().info(f"event {HOSTILE}", path=HOSTILE, nested={"k": HOSTILE}, n=3)
    text = console.getvalue().decode()
    _assert_no_raw_controls(text)
    assert text.count("\n") == 1
    assert "event \\x1b[31mred" in text
    assert "path=\\x1b[31mred\\x1b]0;pwned\\x07\\x0dfake\\x0aline\\u202eevil" in text
    assert "[info" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_console_format_escapes_stdlib_records_and_tracebacks(console):
    """Uvicorn's records and exception text are escaped too; a traceback keeps its lines."""
    logging.getLogger("uvicorn.error").warning("bad request %s", HOSTILE)
    try:
        raise ValueError(HOSTILE)  # noqa: TRY301 - an exception message from a request
    except ValueError:
        get_logger().exception("failed")
    text = console.getvalue().decode()
    _assert_no_raw_controls(text)
    assert "bad request \\x1b[31mred" in text
    assert "Traceback (most recent call last)" in text
    assert "ValueError: " in text


def test_console_format_redacts_like_json(console):
    """Redaction runs before rendering in the console format as well."""
    get_logger().info("oops", authorization=f"Bearer {KEY}", message=f"with {KEY}")
    text = console.getvalue().decode()
    assert KEY not in text
    assert REDACTED in text


def test_console_format_colours_only_a_terminal():
    """Colours on a TTY (the renderer's own ESC codes), none on a file; values escaped on both."""
    for stream, coloured in ((_Terminal(), True), (io.BytesIO(), False)):
        configure_logging("info", stream=stream, log_format="console")
        try:
            get_logger().info("hello", path="\x1b[2J")
        finally:
            structlog.reset_defaults()
            logging.getLogger().handlers.clear()
        text = stream.getvalue().decode()
        assert ("\x1b[" in text) is coloured
        assert "\x1b[2J" not in text
        assert "\\x1b[2J" in text


def test_console_access_line_of_a_real_request_is_escaped(console):
    """A request path with ANSI, CR/LF and bidi characters is escaped in the access line."""
    app = create_app(load_iris(), config=unlimited_iris_settings(), dev=True)
    with asgi_client(app) as client:
        # percent-encoded, as a browser sends it; the server decodes the path
        reply = client.get("/v1/models/%1b%5b31mred%0d%0afake%e2%80%aeevil%c2%85")
    assert reply.status_code == 401
    text = console.getvalue().decode()
    _assert_no_raw_controls(text)
    (line,) = [row for row in text.splitlines() if " request " in row and "status=401" in row]
    assert "path=/v1/models/\\x1b[31mred\\x0d\\x0afake\\u202eevil\\x85" in line


def test_logging_format_from_file_and_environment(tmp_path):
    """``[logging] format`` and SECURESERVE_LOGGING__FORMAT; unset is None (decided by --dev)."""
    assert load_settings(project_dir=tmp_path, environ={}).logging.format is None
    environ = {"SECURESERVE_LOGGING__FORMAT": "console"}
    assert load_settings(project_dir=tmp_path, environ=environ).logging.format == "console"
    (tmp_path / "secureserve.toml").write_text('[logging]\nformat = "json"\n')
    assert load_settings(project_dir=tmp_path, environ={}).logging.format == "json"
    (tmp_path / "secureserve.toml").write_text('[logging]\nformat = "text"\n')
    with pytest.raises(ConfigError, match="format"):
        load_settings(project_dir=tmp_path, environ={})
    with pytest.raises(ConfigError, match="SECURESERVE_LOGGING__FORMAT"):
        load_settings(project_dir=tmp_path, environ={"SECURESERVE_LOGGING__FROMAT": "json"})


@pytest.mark.parametrize(
    ("dev", "setting", "renderer"),
    [
        (True, None, structlog.dev.ConsoleRenderer),
        (False, None, structlog.processors.JSONRenderer),
        (True, "json", structlog.processors.JSONRenderer),
        (False, "console", structlog.dev.ConsoleRenderer),
    ],
)
def test_create_app_picks_the_format(dev, setting, renderer):
    """Console by default in development, JSON otherwise; ``[logging] format`` decides when set."""
    settings = replaced(unlimited_iris_settings(), logging={"format": setting})
    structlog.reset_defaults()
    try:
        create_app(load_iris(), config=settings, dev=dev)
        processors = structlog.get_config()["processors"]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert any(isinstance(p, renderer) for p in processors)


@pytest.mark.slow
def test_run_dev_writes_escaped_console_lines(tmp_path):
    """``secureserve run --dev`` (format unset) logs for a console, hostile paths escaped."""
    project = copy_iris(tmp_path / "iris")
    with running_server(project, env={"SECURESERVE_LOGGING__FORMAT": "null"}) as server:
        reply = server.request("GET", "/v1/models/%1b%5b31mred%0d%0afake%e2%80%ae")
        assert reply.status == 401
        assert "/docs" in server.stderr()  # the banner names the API page
        docs = server.request("GET", "/docs")
        assert docs.status == 200
        assert "script-src 'self'" in docs.headers["content-security-policy"]
    text = server.stdout()
    _assert_no_raw_controls(text)
    assert "path=/v1/models/\\x1b[31mred\\x0d\\x0afake\\u202e" in text
    assert "[info" in text
    with pytest.raises(json.JSONDecodeError):
        server.log_lines()


@pytest.mark.slow
def test_run_without_dev_writes_json(tmp_path):
    """``secureserve run`` without --dev (format unset) writes JSON lines; no /docs page."""
    production = production_iris(tmp_path, "reader")
    env = {**production.tls_env(), "SECURESERVE_LOGGING__FORMAT": "null"}
    with production.running(env) as server:
        assert server.request("GET", "/docs", key=server.key).status == 404
    events = [line["event"] for line in server.log_lines()]
    assert "starting" in events
    assert "request" in events
