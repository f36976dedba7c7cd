"""The audit trail: record shape, hash chain, tamper detection, rotation, fail-closed writes."""

from __future__ import annotations

import base64
import errno
import hashlib
import itertools
import os
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from app_helpers import RecordingLogger

from secureserve.audit import (
    GENESIS,
    AuditLog,
    AuditUnavailable,
    RequestEntry,
    VerifyResult,
    chain_files,
    chainfile,
    format_result,
    generate_digest_key,
    load_digest_key,
    verify_chain,
)
from secureserve.audit.refusals import MAX_CLIENTS, RefusalCounter
from secureserve.errors import ConfigError, RequestRejected

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture
def logger() -> RecordingLogger:
    return RecordingLogger()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.jsonl"


def _open(path: Path, logger: RecordingLogger, **options: Any) -> AuditLog:
    return AuditLog(path, digest_key=KEY, logger=logger, clock=lambda: NOW, **options)


def _request(log: AuditLog, n: int = 0, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "event": "request",
        "request_id": f"req-{n}",
        "principal": "key-1",
        "roles": ["predict"],
        "route": "/v1/models/iris:predict",
        "model": "iris",
        "model_version": "1",
        "decision": "allowed",
        "status": 200,
        "latency_ms": 1.23456,
        "input_digest": log.digest(b'{"instances": []}'),
        "output_digest": log.digest(b'{"predictions": []}'),
    }
    fields.update(overrides)
    log.record(**fields)


def _write_chain(path: Path, logger: RecordingLogger, count: int, **options: Any) -> None:
    with _open(path, logger, **options) as log:
        for n in range(count):
            _request(log, n)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _verify(path: Path, **options: Any) -> VerifyResult:
    return verify_chain(chain_files(path), **options)


# --------------------------------------------------------------------------- records


def test_record_request_shape(log_path, logger):
    """A request line is compact sorted JSON with every request field, time in RFC 3339 UTC."""
    with _open(log_path, logger) as log:
        _request(log, input_digest=None, output_digest=None)
    line = log_path.read_bytes()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    record = msgspec.json.decode(line)
    assert list(record) == sorted(record)
    assert record == {
        "decision": "allowed",
        "event": "request",
        "input_digest": None,
        "latency_ms": 1.235,
        "model": "iris",
        "model_version": "1",
        "output_digest": None,
        "prev": GENESIS,
        "principal": "key-1",
        "request_id": "req-0",
        "roles": ["predict"],
        "route": "/v1/models/iris:predict",
        "seq": 0,
        "status": 200,
        "time": "2025-01-02T03:04:05.678901Z",
    }


def test_record_admin_shape(log_path, logger):
    """An admin line carries action, trigger, detail and no request-only fields."""
    with _open(log_path, logger) as log:
        log.record(event="admin", action="reload", trigger="SIGHUP", model="iris", detail="ok")
    record = msgspec.json.decode(log_path.read_bytes())
    assert record == {
        "action": "reload",
        "detail": "ok",
        "event": "admin",
        "model": "iris",
        "prev": GENESIS,
        "principal": None,
        "roles": [],
        "seq": 0,
        "time": "2025-01-02T03:04:05.678901Z",
        "trigger": "SIGHUP",
    }


def test_record_long_text_is_cut(log_path, logger):
    """Over-long text (a client-chosen route, a detail) is shortened, not refused."""
    with _open(log_path, logger) as log:
        _request(log, route="/" + "a" * 5000)
        log.record(event="admin", action="key-create", detail="d" * 500)
    first, second = (msgspec.json.decode(line) for line in _lines(log_path))
    assert len(first["route"]) == 1024
    assert len(second["detail"]) == 200


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"event": "request", "route": "/", "decision": "allowed", "status": 200, "x": 1},
            TypeError,
        ),
        ({"event": "request", "route": "/", "decision": "maybe", "status": 200}, TypeError),
        ({"event": "request", "route": "/", "decision": "allowed"}, ValueError),
        ({"event": "admin"}, ValueError),
        ({"event": "admin", "action": "reload", "seq": 5}, TypeError),
        ({"event": "admin", "action": "reload", "prev": GENESIS}, TypeError),
        (
            {
                "event": "request",
                "route": "/",
                "decision": "allowed",
                "status": 200,
                "input_digest": "raw input",
            },
            TypeError,
        ),
    ],
)
def test_record_rejects_misuse(log_path, logger, fields, error):
    """Unknown or caller-filled fields, wrong values and raw data in a digest are refused."""
    with _open(log_path, logger) as log, pytest.raises(error):
        log.record(**fields)
    assert log_path.read_bytes() == b""


def test_files_are_private(tmp_path, logger):
    """The folder is created 0700 and the file 0600."""
    path = tmp_path / "new" / "audit.jsonl"
    with _open(path, logger) as log:
        _request(log)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_digest_is_keyed(log_path, logger, tmp_path):
    """Same data gives the same digest under one key and a different one under another."""
    with _open(log_path, logger) as log:
        digest = log.digest(b"hello")
        assert digest == log.digest(b"hello")
        assert digest != log.digest(b"hello!")
    with AuditLog(tmp_path / "other.jsonl", digest_key=OTHER_KEY, logger=logger) as other:
        assert other.digest(b"hello") != digest
    assert digest.startswith("hmac-sha256:")
    assert digest != "hmac-sha256:" + hashlib.sha256(b"hello").hexdigest()


def test_no_raw_data_in_file(log_path, logger):
    """Only digests of bodies reach the file: a marker in the body never appears."""
    marker = b"SECRET-PATIENT-RECORD-4242"
    body = b'{"instances": [{"note": "' + marker + b'"}]}'
    with _open(log_path, logger) as log:
        _request(log, input_digest=log.digest(body), output_digest=log.digest(marker))
    content = log_path.read_bytes()
    assert marker not in content
    assert base64.b64encode(marker) not in content
    assert marker.hex().encode() not in content


def test_short_digest_key_refused(log_path, logger):
    """A digest key under 32 bytes stops start-up."""
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        AuditLog(log_path, digest_key=b"short", logger=logger)


def test_admin_helper(log_path, logger):
    """admin() writes an admin record with only the fields given."""
    with _open(log_path, logger) as log:
        log.admin(action="key-revoked", trigger="keys-file", detail="key 3f9c0a1b2c3d")
        log.admin(action="reload", principal="ops", roles=["admin"], request_id="r-1")
    first, second = (msgspec.json.decode(line) for line in _lines(log_path))
    assert first["action"] == "key-revoked"
    assert "request_id" not in first
    assert (second["principal"], second["roles"], second["request_id"]) == ("ops", ["admin"], "r-1")
    assert _verify(log_path).ok


# --------------------------------------------------------------------------- chain


def test_chain_verifies(log_path, logger):
    """N records verify; the head is the SHA-256 of the last line."""
    _write_chain(log_path, logger, 20)
    result = _verify(log_path)
    assert result.ok
    assert result.records == 20
    assert result.head == hashlib.sha256(_lines(log_path)[-1][:-1]).hexdigest()
    assert result.first_problem is None


def test_chain_edit_detected_on_next_line(log_path, logger):
    """Editing line k (still valid JSON) is reported at line k+1 as a prev mismatch."""
    _write_chain(log_path, logger, 10)
    lines = _lines(log_path)
    lines[3] = lines[3].replace(b'"status":200', b'"status":403')
    log_path.write_bytes(b"".join(lines))
    result = _verify(log_path)
    assert not result.ok
    assert (result.file, result.line, result.records) == (log_path, 5, 4)
    assert result.first_problem is not None
    assert "prev does not match" in result.first_problem


def test_chain_edit_of_last_line_changes_head(log_path, logger):
    """The last line has no successor: the edit verifies, but the head differs."""
    _write_chain(log_path, logger, 5)
    before = _verify(log_path).head
    lines = _lines(log_path)
    lines[-1] = lines[-1].replace(b'"status":200', b'"status":403')
    log_path.write_bytes(b"".join(lines))
    after = _verify(log_path)
    assert after.ok
    assert after.head != before


def test_chain_garbled_line_detected_on_itself(log_path, logger):
    """A line that is no longer a record is reported at its own position."""
    _write_chain(log_path, logger, 5)
    lines = _lines(log_path)
    lines[2] = b'{"not": "a record"}\n'
    log_path.write_bytes(b"".join(lines))
    result = _verify(log_path)
    assert (result.ok, result.line) == (False, 3)
    assert "not an audit record" in (result.first_problem or "")


def test_chain_deleted_line_detected(log_path, logger):
    """Deleting line k makes the following record land at position k with a seq gap."""
    _write_chain(log_path, logger, 10)
    lines = _lines(log_path)
    del lines[4]
    log_path.write_bytes(b"".join(lines))
    result = _verify(log_path)
    assert (result.ok, result.line) == (False, 5)
    assert "deleted" in (result.first_problem or "")


def test_chain_swapped_lines_detected(log_path, logger):
    """Swapping lines k and k+1 is reported at line k."""
    _write_chain(log_path, logger, 10)
    lines = _lines(log_path)
    lines[6], lines[7] = lines[7], lines[6]
    log_path.write_bytes(b"".join(lines))
    result = _verify(log_path)
    assert (result.ok, result.line) == (False, 7)
    assert "seq 7 where 6" in (result.first_problem or "")


def test_chain_torn_last_line_detected(log_path, logger):
    """A last line cut short (no LF) is reported as incomplete."""
    _write_chain(log_path, logger, 4)
    content = log_path.read_bytes()
    log_path.write_bytes(content[:-20])
    result = _verify(log_path)
    assert (result.ok, result.line, result.records) == (False, 4, 3)
    assert "incomplete" in (result.first_problem or "")


def test_chain_missing_start_detected(log_path, logger):
    """Deleting the first line is reported unless the start is taken on trust."""
    _write_chain(log_path, logger, 4)
    log_path.write_bytes(b"".join(_lines(log_path)[1:]))
    result = _verify(log_path)
    assert (result.ok, result.line) == (False, 1)
    assert "does not start here" in (result.first_problem or "")
    assert _verify(log_path, require_genesis=False).ok


def test_verify_nothing(tmp_path):
    """No files at all is not a verified chain."""
    result = verify_chain(chain_files(tmp_path / "audit.jsonl"))
    assert not result.ok


def test_verify_unreadable_file(tmp_path):
    """A file that cannot be read is reported with its name."""
    missing = tmp_path / "gone.jsonl"
    result = verify_chain([missing])
    assert (result.ok, result.file, result.line) == (False, missing, None)


def test_format_result():
    """OK is one line with the head; a failure names file, line and problem."""
    ok = format_result(VerifyResult(ok=True, records=3, head="ab" * 32))
    assert ok.startswith("OK: 3 audit records")
    assert "\n" not in ok
    bad = format_result(
        VerifyResult(
            ok=False, records=4, first_problem="seq 9 where 5", file=Path("a.jsonl"), line=5
        )
    )
    assert "a.jsonl, line 5" in bad
    assert "seq 9 where 5" in bad
    assert bad.startswith("FAILED")


# --------------------------------------------------------------------------- restart


def test_new_log_continues_chain(log_path, logger):
    """A new AuditLog (a restarted process) appends to the existing chain."""
    _write_chain(log_path, logger, 3)
    _write_chain(log_path, logger, 3)
    assert [msgspec.json.decode(line)["seq"] for line in _lines(log_path)] == list(range(6))
    assert _verify(log_path).ok


def test_new_log_after_torn_line_starts_new_file(log_path, logger):
    """A torn last line is moved aside, not appended to; verify still reports it."""
    _write_chain(log_path, logger, 3)
    log_path.write_bytes(log_path.read_bytes()[:-10])
    _write_chain(log_path, logger, 2)
    files = chain_files(log_path)
    assert [p.name for p in files] == ["audit.1.jsonl", "audit.jsonl"]
    first = msgspec.json.decode(_lines(log_path)[0])
    assert first["rotated_from"] == "audit.1.jsonl"
    assert first["seq"] == 2
    assert any("torn" in event for event in logger.at("warning"))
    result = verify_chain(files)
    assert (result.ok, result.file, result.line) == (False, files[0], 3)


def test_second_writer_refused(log_path, logger):
    """Two AuditLogs on one file would interleave two chains: the second is refused."""
    with _open(log_path, logger), pytest.raises(ConfigError, match="another process"):
        _open(log_path, logger)


def test_path_that_cannot_be_created(tmp_path, logger):
    """A path whose folder is a file stops start-up with a ConfigError naming it."""
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(ConfigError, match="blocker"):
        _open(tmp_path / "blocker" / "audit.jsonl", logger)


# --------------------------------------------------------------------------- rotation


def _rotated_chain(path: Path, logger: RecordingLogger) -> list[Path]:
    _write_chain(path, logger, 12, max_bytes=1500)
    files = chain_files(path)
    assert len(files) >= 3
    return files


def test_rotation_verifies_across_files(log_path, logger):
    """Rotated files link to each other and verify as one chain."""
    files = _rotated_chain(log_path, logger)
    assert files[-1] == log_path
    assert [p.name for p in files[:-1]] == [f"audit.{n}.jsonl" for n in range(1, len(files))]
    for older, newer in itertools.pairwise(files):
        first = msgspec.json.decode(_lines(newer)[0])
        assert first["rotated_from"] == older.name
        assert first["prev"] == hashlib.sha256(_lines(older)[-1][:-1]).hexdigest()
    assert all(p.stat().st_size <= 1500 for p in files)
    result = verify_chain(files)
    assert (result.ok, result.records) == (True, 12)
    assert "audit chain head" in logger.at("info")


def test_rotation_continues_after_restart(log_path, logger):
    """A restarted process keeps rotating and the chain still verifies."""
    _write_chain(log_path, logger, 6, max_bytes=1500)
    _write_chain(log_path, logger, 6, max_bytes=1500)
    assert verify_chain(chain_files(log_path)).records == 12


def test_rotation_empty_current_file_continues_from_rotated(log_path, logger):
    """An empty current file (crash after rotation) continues from the newest rotated file."""
    files = _rotated_chain(log_path, logger)
    log_path.unlink()
    log_path.write_bytes(b"")
    log_path.chmod(0o600)
    _write_chain(log_path, logger, 1, max_bytes=1500)
    first = msgspec.json.decode(_lines(log_path)[0])
    assert first["rotated_from"] == files[-2].name
    assert verify_chain(chain_files(log_path)).ok


def test_rotation_missing_middle_file_detected(log_path, logger):
    """Deleting a middle file is reported on the first line of the file after it."""
    files = _rotated_chain(log_path, logger)
    files[1].unlink()
    result = verify_chain(chain_files(log_path))
    assert (result.ok, result.file, result.line) == (False, files[2], 1)
    assert "missing" in (result.first_problem or "")


def test_rotation_missing_first_file_detected(log_path, logger):
    """Deleting the oldest file is reported: the chain no longer starts at seq 0."""
    files = _rotated_chain(log_path, logger)
    files[0].unlink()
    result = verify_chain(chain_files(log_path))
    assert (result.ok, result.file, result.line) == (False, files[1], 1)
    assert verify_chain(chain_files(log_path), require_genesis=False).ok


def test_rotation_swapped_files_detected(log_path, logger):
    """Swapping the contents of two rotated files is reported where the walk breaks.

    A break inside the chain is reported before the start is judged: an audit-pruned
    record further on could account for the start, a broken link cannot be excused.
    """
    files = _rotated_chain(log_path, logger)
    one, two = files[0].read_bytes(), files[1].read_bytes()
    files[0].write_bytes(two)
    files[1].write_bytes(one)
    result = verify_chain(chain_files(log_path))
    assert (result.ok, result.file, result.line) == (False, files[1], 1)
    assert "swapped" in (result.first_problem or "")


def test_rotation_edited_file_end_detected(log_path, logger):
    """Editing the last line of a rotated file is caught by the next file's first prev."""
    files = _rotated_chain(log_path, logger)
    lines = _lines(files[0])
    lines[-1] = lines[-1].replace(b'"status":200', b'"status":500')
    files[0].write_bytes(b"".join(lines))
    result = verify_chain(files)
    assert (result.ok, result.file, result.line) == (False, files[1], 1)
    assert "last line of" in (result.first_problem or "")


# --------------------------------------------------------------------------- failures


def test_deleted_file_is_recreated_and_recorded(log_path, logger):
    """A file deleted while open is an incident: logged, recorded, and visible to verify."""
    with _open(log_path, logger) as log:
        _request(log, 0)
        _request(log, 1)
        log_path.unlink()
        log.check_writable()
        _request(log, 2)
    lines = [msgspec.json.decode(line) for line in _lines(log_path)]
    assert [r.get("action") for r in lines] == ["audit-file-recreated", None]
    assert [r["seq"] for r in lines] == [2, 3]
    assert any("deleted" in event for event in logger.at("error"))
    assert not _verify(log_path).ok  # the lost records are a gap verify reports
    assert _verify(log_path, require_genesis=False).ok


@pytest.mark.usefixtures("audit_looked_at_every_time")
def test_deleted_file_not_recreatable_refuses(log_path, logger, monkeypatch):
    """When the deleted file cannot be recreated, requests are refused (fail closed)."""
    with _open(log_path, logger) as log:
        _request(log)
        log_path.unlink()
        real_open = os.open

        def refuse(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if Path(path) == log_path:
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(chainfile.os, "open", refuse)
        with pytest.raises(AuditUnavailable):
            log.check_writable()
        with pytest.raises(AuditUnavailable):
            _request(log)
        monkeypatch.setattr(chainfile.os, "open", real_open)
        log.check_writable()
        _request(log)
    assert len(logger.at("error")) == 2  # the deletion, then one outage


@pytest.mark.usefixtures("audit_looked_at_every_time")
def test_read_only_file_refuses(log_path, logger):
    """A file made read-only while serving refuses requests until it is writable again."""
    with _open(log_path, logger) as log:
        _request(log, 0)
        log_path.chmod(0o400)
        log_path.parent.chmod(0o500)
        try:
            with pytest.raises(AuditUnavailable) as caught:
                log.check_writable()
            with pytest.raises(AuditUnavailable):
                _request(log, 1)
        finally:
            log_path.parent.chmod(0o700)
            log_path.chmod(0o600)
        problem = caught.value
        assert isinstance(problem, RequestRejected)
        assert (problem.status, problem.slug) == (503, "audit-unavailable")
        assert problem.headers == {"Retry-After": "5"}
        assert "read-only" in (problem.log_reason or "")
        _request(log, 2)
    records = [msgspec.json.decode(line) for line in _lines(log_path)]
    assert [r.get("action") for r in records] == [None, "audit-resumed", None]
    assert "1 records" in records[1]["detail"]
    assert logger.at("error") == ["audit log cannot be written"]
    assert _verify(log_path).ok


def test_write_error_refuses(log_path, logger, monkeypatch):
    """A disk that refuses the write (ENOSPC) makes record raise AuditUnavailable."""

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with _open(log_path, logger) as log:
        monkeypatch.setattr(chainfile.os, "write", full)
        with pytest.raises(AuditUnavailable, match="503"):
            _request(log)
        monkeypatch.undo()
    assert log_path.read_bytes() == b""


def test_write_error_continue_logs_once(log_path, logger, monkeypatch):
    """In continue mode an outage is logged once, requests go on, the gap is recorded."""
    real_write = os.write

    def denied(fd: int, data: bytes) -> int:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    with _open(log_path, logger, on_write_error="continue") as log:
        _request(log, 0)
        monkeypatch.setattr(chainfile.os, "write", denied)
        for n in range(1, 4):
            _request(log, n)
        log.check_writable()
        monkeypatch.setattr(chainfile.os, "write", real_write)
        _request(log, 4)
    assert logger.at("error") == ["audit log cannot be written"]
    records = [msgspec.json.decode(line) for line in _lines(log_path)]
    assert [r.get("request_id") for r in records] == ["req-0", None, "req-4"]
    assert "3 records were not written" in records[1]["detail"]
    assert _verify(log_path).ok


def test_read_only_continue_mode_does_not_raise(log_path, logger):
    """check_writable and record do not raise in continue mode; one error is logged."""
    with _open(log_path, logger, on_write_error="continue") as log:
        log_path.chmod(0o400)
        try:
            log.check_writable()
            _request(log)
            log.check_writable()
        finally:
            log_path.chmod(0o600)
    assert logger.at("error") == ["audit log cannot be written"]


def test_partial_write_is_undone(log_path, logger, monkeypatch):
    """A write cut short by an error leaves no torn line: the chain still verifies."""
    real_write = os.write
    calls = {"n": 0}

    def half(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:10])
        raise OSError(errno.EIO, "Input/output error")

    with _open(log_path, logger) as log:
        _request(log, 0)
        monkeypatch.setattr(chainfile.os, "write", half)
        with pytest.raises(AuditUnavailable):
            _request(log, 1)
        monkeypatch.setattr(chainfile.os, "write", real_write)
        _request(log, 2)
    assert _verify(log_path).ok


def test_partial_write_not_undone_moves_file_aside(log_path, logger, monkeypatch):
    """If the partial line cannot be removed, the next record starts a new file."""
    real_write = os.write

    def half(fd: int, data: bytes) -> int:
        monkeypatch.setattr(chainfile.os, "write", failing)
        return real_write(fd, bytes(data)[:10])

    def failing(fd: int, data: bytes) -> int:
        raise OSError(errno.EIO, "Input/output error")

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with _open(log_path, logger) as log:
        _request(log, 0)
        monkeypatch.setattr(chainfile.os, "write", half)
        monkeypatch.setattr(chainfile.os, "ftruncate", no_truncate)
        with pytest.raises(AuditUnavailable):
            _request(log, 1)
        monkeypatch.undo()
        _request(log, 2)
    files = chain_files(log_path)
    assert len(files) == 2
    result = verify_chain(files)
    assert (result.ok, result.file, result.line) == (False, files[0], 2)


@pytest.mark.usefixtures("audit_looked_at_every_time")
def test_replaced_file_refuses_until_removed(log_path, logger):
    """A different file put in place of the open one is not written; removing it recovers."""
    with _open(log_path, logger) as log:
        _request(log)
        log_path.rename(log_path.with_name("moved.jsonl"))
        log_path.write_bytes(b"")
        with pytest.raises(AuditUnavailable, match="503"):
            log.check_writable()
        log_path.unlink()
        _request(log)
    assert msgspec.json.decode(_lines(log_path)[0])["action"] == "audit-resumed"


def test_closed_log_refuses(log_path, logger):
    """After close, records are refused and the chain head has been logged."""
    log = _open(log_path, logger)
    _request(log)
    log.close()
    log.close()
    with pytest.raises(AuditUnavailable):
        _request(log)
    assert logger.at("info").count("audit chain head") == 1


def test_deleted_folder_is_recreated(log_path, logger):
    """A folder deleted while serving is recreated (0700) with a file that continues the chain."""
    with _open(log_path, logger) as log:
        _request(log, 0)
        shutil.rmtree(log_path.parent)
        _request(log, 1)
    assert stat.S_IMODE(log_path.parent.stat().st_mode) == 0o700
    records = [msgspec.json.decode(line) for line in _lines(log_path)]
    assert [r["seq"] for r in records] == [1, 2]
    assert records[0]["action"] == "audit-file-recreated"


# --------------------------------------------------------------------------- key files


def test_digest_key_round_trip(tmp_path):
    """A generated key is 32 bytes in a 0600 file and loads back."""
    path = tmp_path / "digest.key"
    generate_digest_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(load_digest_key(path)) == 32


def test_digest_key_never_overwritten(tmp_path):
    """Generating onto an existing file is refused and leaves it alone."""
    path = tmp_path / "digest.key"
    path.write_text("keep")
    with pytest.raises(ConfigError, match="already exists"):
        generate_digest_key(path)
    assert path.read_text() == "keep"


def test_digest_key_folder_missing(tmp_path):
    """Generating into a missing folder names the path."""
    with pytest.raises(ConfigError, match="cannot be created"):
        generate_digest_key(tmp_path / "no" / "digest.key")


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (base64.b64encode(KEY), 0o644, "other than its owner"),
        (base64.b64encode(KEY), 0o640, "other than its owner"),
        (b"", 0o600, "is empty"),
        (b"not base64 !!", 0o600, "not valid base64"),
        (base64.b64encode(b"x" * 16), 0o600, "16 bytes"),
        (b"A" * 2000, 0o600, "too large"),
    ],
)
def test_digest_key_rejected(tmp_path, content, mode, message):
    """Each bad key file is refused with a message naming the file and the problem."""
    path = tmp_path / "digest.key"
    path.write_bytes(content)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=message) as caught:
        load_digest_key(path)
    assert "[audit] digest_key_file" in str(caught.value)
    assert str(path) in str(caught.value)


def test_digest_key_missing_or_not_a_file(tmp_path):
    """A missing key file and a folder are refused with the fix."""
    with pytest.raises(ConfigError, match="audit key new"):
        load_digest_key(tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_digest_key(tmp_path)


def test_digest_key_longer_is_accepted(tmp_path):
    """Keys longer than 32 bytes are fine."""
    path = tmp_path / "digest.key"
    path.write_bytes(base64.b64encode(b"k" * 64) + b"\n")
    path.chmod(0o600)
    assert load_digest_key(path) == b"k" * 64


def _request_fields(n: int) -> dict[str, Any]:
    return {
        "principal": "p",
        "roles": ["predict"],
        "request_id": f"req-{n:08d}",
        "route": "predict",
        "model": "iris",
        "model_version": "1",
        "decision": "allowed",
        "status": 200,
        "latency_ms": 1.0,
    }


def test_request_async_writes_one_iteration_with_one_write(tmp_path, monkeypatch):
    """Records queued in one loop iteration go out in one write, chained in order."""
    import asyncio

    log = AuditLog(tmp_path / "a.jsonl", digest_key=os.urandom(32))
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd, data):
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(chainfile.os, "write", counting_write)

    async def scenario():
        await asyncio.gather(
            *(log.request_async(RequestEntry(**_request_fields(n))) for n in range(10))
        )

    asyncio.run(scenario())
    log.close()
    assert len(writes) == 1
    result = verify_chain(chain_files(tmp_path / "a.jsonl"))
    assert result.ok
    assert result.records == 10
    lines = (tmp_path / "a.jsonl").read_bytes().splitlines()
    ids = [msgspec.json.decode(line)["request_id"] for line in lines]
    assert ids == [f"req-{n:08d}" for n in range(10)]
    # written together, at one time; each line names the hash of the one before it
    assert len({msgspec.json.decode(line)["time"] for line in lines}) == 1
    for before, line in itertools.pairwise(lines):
        assert msgspec.json.decode(line)["prev"] == hashlib.sha256(before).hexdigest()


def test_request_async_failed_batch_refuses_all_and_keeps_the_chain(tmp_path, monkeypatch):
    """A failed batch write refuses every waiting record and leaves the chain unbroken."""
    import asyncio

    log = AuditLog(tmp_path / "a.jsonl", digest_key=os.urandom(32))
    log.request(RequestEntry(**_request_fields(0)))
    real_write = os.write

    def failing_write(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    async def batch(first: int) -> list[object]:
        jobs = (
            log.request_async(RequestEntry(**_request_fields(n))) for n in range(first, first + 3)
        )
        return await asyncio.gather(*jobs, return_exceptions=True)

    monkeypatch.setattr(chainfile.os, "write", failing_write)
    results = asyncio.run(batch(1))
    assert all(isinstance(r, RequestRejected) and r.status == 503 for r in results)
    monkeypatch.setattr(chainfile.os, "write", real_write)
    assert asyncio.run(batch(4)) == [None, None, None]
    log.close()
    result = verify_chain(chain_files(tmp_path / "a.jsonl"))
    assert result.ok, result.first_problem


# --------------------------------------------------------------------------- retention


def _pruned_chain(
    path: Path, logger: RecordingLogger, count: int = 40, **options: Any
) -> list[Path]:
    """A chain rotated at 1500 bytes that kept 2 rotated files; its files, oldest first."""
    _write_chain(path, logger, count, max_bytes=1500, max_files=2, **options)
    return chain_files(path)


def _pruned_records(files: list[Path]) -> list[dict[str, Any]]:
    records = [msgspec.json.decode(line) for path in files for line in _lines(path)]
    return [r for r in records if r.get("action") == "audit-pruned"]


def test_retention_keeps_max_files_and_records_each_prune(log_path, logger):
    """Beyond max_files rotated files the oldest go, and each removal is a chained record."""
    files = _pruned_chain(log_path, logger)
    assert len(files) == 3  # two rotated files and the current one
    assert sum(p.stat().st_size for p in files) <= (2 + 1) * 1500  # (max_files + 1) * max_bytes
    pruned = _pruned_records(files)
    assert pruned, "no audit-pruned record was written"
    removed = [int(name.split(".")[1]) for r in pruned for name in r["pruned_files"]]
    kept = [int(p.name.split(".")[1]) for p in files[:-1]]
    assert removed == list(range(min(kept) - len(removed), min(kept)))  # the oldest, in order
    last = pruned[-1]
    assert last["event"] == "admin"
    assert last["trigger"] == "audit"
    assert last["pruned_files"]
    assert all(not (log_path.parent / name).exists() for r in pruned for name in r["pruned_files"])
    assert "old audit files removed" in logger.at("info")


def test_retention_verify_passes_and_says_where_the_chain_starts(log_path, logger):
    """The retained chain verifies; it starts right after the last line the last prune removed."""
    files = _pruned_chain(log_path, logger)
    first = msgspec.json.decode(_lines(files[0])[0])
    last = _pruned_records(files)[-1]
    assert (first["seq"], first["prev"]) == (last["pruned_last_seq"] + 1, last["pruned_last_hash"])
    result = verify_chain(files)
    assert result.ok, result.first_problem
    assert (result.start_seq, result.pruned_at) == (first["seq"], last["seq"])
    assert result.pruned_files == tuple(last["pruned_files"])
    assert result.unfinished_prune is None
    text = format_result(result)
    assert f"retained chain starts at seq {first['seq']}" in text
    assert last["pruned_files"][0] in text


def test_retention_cli_verify_says_where_the_chain_starts(log_path, logger, capsys):
    """`secureserve audit verify` passes a pruned chain and prints where it starts."""
    from secureserve.cli import main

    files = _pruned_chain(log_path, logger)
    start = msgspec.json.decode(_lines(files[0])[0])["seq"]
    capsys.readouterr()
    assert main(["audit", "verify", str(log_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: ")
    assert f"retained chain starts at seq {start} (older files pruned: " in out


def test_retention_one_more_deleted_file_detected(log_path, logger):
    """Deleting a retained file as well is reported: the chain no longer starts where recorded."""
    files = _pruned_chain(log_path, logger)
    files[0].unlink()
    result = verify_chain(chain_files(log_path))
    assert (result.ok, result.file, result.line) == (False, files[1], 1)
    assert "last audit-pruned record" in (result.first_problem or "")
    trusted = verify_chain(chain_files(log_path), require_genesis=False)  # --allow-pruned
    assert trusted.ok
    assert "taken on trust" in format_result(trusted)


def test_retention_edited_prune_record_detected(log_path, logger):
    """An audit-pruned record edited (it is followed by other lines) breaks the chain."""
    files = _pruned_chain(log_path, logger)
    lines = _lines(log_path)
    at = next(n for n, line in enumerate(lines) if b'"audit-pruned"' in line)
    record = msgspec.json.decode(lines[at])
    record["pruned_last_seq"] -= 1
    lines[at] = msgspec.json.encode(record) + b"\n"
    log_path.write_bytes(b"".join(lines))
    assert at + 1 < len(lines)
    assert not verify_chain(files).ok


def test_retention_edited_last_prune_record_detected_by_the_start(log_path, logger):
    """A prune record edited where no successor shows it still fails: the start no longer fits.

    The lines after it are cut first (the tail the chain head catches), so only the
    start check can see the edit.
    """
    files = _pruned_chain(log_path, logger)
    lines = _lines(log_path)
    at = next(n for n, line in enumerate(lines) if b'"audit-pruned"' in line)
    log_path.write_bytes(b"".join(lines[: at + 1]))
    assert verify_chain(files).ok
    record = msgspec.json.decode(lines[at])
    record["pruned_last_hash"] = "f" * 64
    log_path.write_bytes(b"".join([*lines[:at], msgspec.json.encode(record) + b"\n"]))
    result = verify_chain(files)
    assert (result.ok, result.file, result.line) == (False, files[0], 1)
    assert "does not start here" in (result.first_problem or "")


def test_retention_unfinished_prune_still_verifies(log_path, logger, monkeypatch):
    """Files a prune record names but that are still here (the server stopped) still verify."""
    _pruned_chain(log_path, logger, 30)
    before = len(_pruned_records(chain_files(log_path)))
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)
    with _open(log_path, logger, max_bytes=1500, max_files=2) as log:
        n = 0
        while len(_pruned_records(chain_files(log_path))) == before:
            _request(log, n)
            n += 1
            assert n < 100, "no further prune happened"
    monkeypatch.undo()
    result = verify_chain(chain_files(log_path))
    assert result.ok, result.first_problem
    assert result.unfinished_prune == _pruned_records(chain_files(log_path))[-1]["seq"]
    assert "still here" in format_result(result)


def test_retention_files_removed_even_when_the_record_cannot_be_written(
    log_path, logger, monkeypatch
):
    """A full disk does not keep old files: they go, and the record follows with the next line."""
    real_write = os.write
    refused: list[int] = []

    def full_for_the_prune(fd: int, data: bytes) -> int:
        if b'"audit-pruned"' in bytes(data) and not refused:
            refused.append(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(chainfile.os, "write", full_for_the_prune)
    files = _pruned_chain(log_path, logger)
    monkeypatch.undo()
    assert refused
    assert len(files) == 3
    assert "audit-pruned record not written yet; it goes before the next record" in logger.at(
        "error"
    )
    assert verify_chain(files).ok


def test_retention_settings_validated(log_path, logger):
    """max_files below 1 and a negative refusal window stop start-up."""
    with pytest.raises(ConfigError, match="max_files"):
        _open(log_path, logger, max_files=0)
    with pytest.raises(ConfigError, match="refusal_window_s"):
        _open(log_path, logger, refusal_window_s=-1)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MAX_FILES", "0"), ("REFUSAL_WINDOW_S", "-1"), ("REFUSAL_WINDOW_S", "86400")],
)
def test_retention_settings_bounded_in_config(tmp_path, variable, value):
    """[audit] max_files (at least 1, no "keep everything") and refusal_window_s are bounded."""
    from secureserve.config import load_settings

    with pytest.raises(ConfigError, match=f"\\[audit\\] {variable.lower()}"):
        load_settings(project_dir=tmp_path, environ={f"SECURESERVE_AUDIT__{variable}": value})
    defaults = load_settings(project_dir=tmp_path, environ={}).audit
    assert (defaults.max_files, defaults.refusal_window_s) == (9, 60.0)


def test_build_access_passes_retention_and_window(tmp_path, logger):
    """build_access hands [audit] max_files and refusal_window_s to the log; a 0 window warns."""
    from secureserve.access import build_access
    from secureserve.config import Settings
    from secureserve.keys import KeyStore

    audit = {"path": tmp_path / "audit.jsonl", "max_files": 3, "refusal_window_s": 0.0}
    settings = Settings(project_dir=tmp_path, audit=msgspec.convert(audit, type(Settings().audit)))
    access = build_access(settings, logger=logger, keys=KeyStore(None, records=[]), audit_key=KEY)
    with access.audit as log:
        assert log._file.max_files == 3
        _refuse(log)
        assert [r["count"] for r in _refusals(tmp_path / "audit.jsonl")] == [1]
    assert any("refusal_window_s = 0" in event for event in logger.at("warning"))


# --------------------------------------------------------------------------- refusals


def _refuse(log: AuditLog, n: int = 0, *, client: str = "192.0.2.10", **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "client": client,
        "route": "predict",
        "status": 401,
        "reason": "missing",
        "request_id": f"refused-{n:08d}",
    }
    fields.update(overrides)
    log.refused(**fields)


def _refusals(path: Path) -> list[dict[str, Any]]:
    return [
        r for r in (msgspec.json.decode(line) for line in _lines(path)) if r["event"] != "admin"
    ]


def test_record_refusals_shape(log_path, logger):
    """A refusals line carries every refusals field, the count and the first request id."""
    with _open(log_path, logger) as log:
        _refuse(log, 0)
        _refuse(log, 1)
    assert msgspec.json.decode(log_path.read_bytes()) == {
        "client": "192.0.2.10",
        "count": 2,
        "decision": "denied",
        "event": "refusals",
        "first_time": "2025-01-02T03:04:05.678901Z",
        "last_time": "2025-01-02T03:04:05.678901Z",
        "prev": GENESIS,
        "principal": None,
        "reason": "missing",
        "request_id": "refused-00000000",
        "roles": [],
        "route": "predict",
        "seq": 0,
        "status": 401,
        "time": "2025-01-02T03:04:05.678901Z",
    }
    assert _verify(log_path).ok


def test_refusals_counted_per_client_route_status_and_reason(log_path, logger):
    """Two addresses, or another status or reason, are separate records; each one counts."""
    with _open(log_path, logger) as log:
        for n in range(3):
            _refuse(log, n)
        _refuse(log, 3, client="198.51.100.7")
        _refuse(log, 4, status=429, reason="auth-failures-per-ip")
        _refuse(log, 5, reason="unknown-key")
    records = _refusals(log_path)
    assert [(r["client"], r["status"], r["reason"], r["count"]) for r in records] == [
        ("192.0.2.10", 401, "missing", 3),
        ("198.51.100.7", 401, "missing", 1),
        ("192.0.2.10", 429, "auth-failures-per-ip", 1),
        ("192.0.2.10", 401, "unknown-key", 1),
    ]
    assert records[2]["decision"] == "limited"
    assert _verify(log_path).ok


def test_refusals_bounded_with_an_overflow_bucket(log_path, logger):
    """More addresses than the bound in one window: the rest are counted under client "*"."""
    with _open(log_path, logger) as log:
        for n in range(MAX_CLIENTS + 50):
            _refuse(log, n, client=f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
            assert len(log._refusals) <= MAX_CLIENTS + 1
    records = _refusals(log_path)
    assert len(records) == MAX_CLIENTS + 1
    assert {r["count"] for r in records[:-1]} == {1}
    overflow = records[-1]
    assert (overflow["client"], overflow["count"]) == ("*", 50)
    assert (overflow["route"], overflow["status"], overflow["reason"]) == (None, None, None)
    assert overflow["request_id"] == f"refused-{MAX_CLIENTS:08d}"
    assert _verify(log_path).ok


def test_refusals_written_at_close_not_before(log_path, logger):
    """Counting writes nothing; close writes the window."""
    log = _open(log_path, logger)
    _refuse(log)
    assert log_path.read_bytes() == b""
    log.close()
    assert [r["count"] for r in _refusals(log_path)] == [1]


def test_refusals_window_ends_on_a_timer(log_path, logger):
    """The window's records are written by a timer on the running loop, with no other call."""
    import asyncio

    async def scenario() -> bytes:
        with _open(log_path, logger, refusal_window_s=0.01) as log:
            _refuse(log)
            assert log_path.read_bytes() == b""
            for _ in range(1000):  # generous: the timer fires after 10 ms
                await asyncio.sleep(0.01)
                if log_path.read_bytes():
                    break
            return log_path.read_bytes()

    written = asyncio.run(scenario())
    assert msgspec.json.decode(written)["count"] == 1
    assert len(_refusals(log_path)) == 1  # close found nothing left to write


def test_refusals_window_without_a_loop_ends_with_the_next_refusal():
    """Without an event loop to run the timer, the first refusal after the window writes it."""
    now = [0.0]
    written: list[list[dict[str, Any]]] = []
    counter = RefusalCounter(
        window_s=60, write=written.append, clock=lambda: NOW, monotonic=lambda: now[0]
    )
    refusal = {"route": "predict", "status": 401, "reason": "missing", "request_id": "r-1"}
    counter.add(client="192.0.2.1", **refusal)
    now[0] = 59.0
    counter.add(client="192.0.2.1", **refusal)
    assert written == []
    now[0] = 60.0
    counter.add(client="192.0.2.2", **refusal)
    assert [[(r["client"], r["count"]) for r in batch] for batch in written] == [[("192.0.2.1", 2)]]
    assert len(counter) == 1


def test_refusals_window_zero_writes_each(log_path, logger):
    """refusal_window_s = 0 writes every refusal at once, with count 1."""
    with _open(log_path, logger, refusal_window_s=0) as log:
        _refuse(log, 0)
        _refuse(log, 1)
        assert [r["count"] for r in _refusals(log_path)] == [1, 1]


def test_refusals_unwritable_are_counted_as_lost_not_raised(log_path, logger, monkeypatch):
    """A window that cannot be written raises nothing; audit-resumed counts its records."""

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with _open(log_path, logger) as log:
        _refuse(log)
        monkeypatch.setattr(chainfile.os, "write", full)
        log._refusals.flush()
        monkeypatch.undo()
        _request(log)
    records = [msgspec.json.decode(line) for line in _lines(log_path)]
    assert records[0]["action"] == "audit-resumed"
    assert "1 records were not written" in records[0]["detail"]
    assert logger.at("error") == ["audit log cannot be written"]


# --------------------------------------------------------------------------- middleware


class _Receive:
    async def __call__(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}


async def _ignore(message: dict[str, Any]) -> None:
    return None


def _context(log: AuditLog, inner: Any, **options: Any) -> Any:
    """RequestContext around ``inner`` writing to ``log``."""
    from secureserve.metrics import Metrics
    from secureserve.middleware.context import RequestContext

    return RequestContext(
        inner,
        logger=RecordingLogger(),
        access=lambda record, loop=None: None,
        metrics=Metrics(),
        audit=log,
        **options,
    )


async def _unauthenticated(scope: Any, receive: Any, send: Any) -> None:
    from secureserve.auth import unauthorized

    raise unauthorized("missing")


def _scope(peer: str = "192.0.2.10", headers: tuple[tuple[bytes, bytes], ...] = ()) -> Any:
    return {
        "type": "http",
        "scheme": "https",
        "method": "POST",
        "path": "/v1/models/iris:predict",
        "headers": list(headers),
        "client": (peer, 50000),
    }


def test_middleware_ten_thousand_401s_make_one_record(log_path, logger):
    """10,000 unauthenticated 401s from one address in one window: one record, count 10000."""
    import asyncio

    async def scenario(log: AuditLog) -> None:
        app = _context(log, _unauthenticated)
        for _ in range(10_000):
            await app(_scope(), _Receive(), _ignore)

    with _open(log_path, logger) as log:
        asyncio.run(scenario(log))
    records = [msgspec.json.decode(line) for line in _lines(log_path)]
    assert len(records) == 1
    assert records[0]["event"] == "refusals"
    assert (records[0]["client"], records[0]["count"]) == ("192.0.2.10", 10_000)
    assert (records[0]["route"], records[0]["status"], records[0]["decision"]) == (
        "predict",
        401,
        "denied",
    )
    assert _verify(log_path).ok


def test_middleware_refusal_client_from_trusted_proxy(log_path, logger):
    """The counted address is the client behind a trusted proxy, the peer otherwise."""
    import asyncio

    forwarded = ((b"x-forwarded-for", b"203.0.113.9"),)

    async def scenario(log: AuditLog) -> None:
        trusting = _context(log, _unauthenticated, trusted_proxies=["10.0.0.0/8"])
        await trusting(_scope("10.0.0.1", forwarded), _Receive(), _ignore)
        await _context(log, _unauthenticated)(_scope("10.0.0.1", forwarded), _Receive(), _ignore)

    with _open(log_path, logger) as log:
        asyncio.run(scenario(log))
    assert [r["client"] for r in _refusals(log_path)] == ["203.0.113.9", "10.0.0.1"]


def test_middleware_authenticated_refusal_keeps_its_own_record(log_path, logger):
    """A refusal of a known principal is still one request record, written at once."""
    import asyncio

    from secureserve.errors import RequestRejected as Rejected

    async def forbidden(scope: Any, receive: Any, send: Any) -> None:
        scope["secureserve"].principal_id = "key-1"
        raise Rejected(403, "forbidden", "Forbidden")

    with _open(log_path, logger) as log:
        asyncio.run(_context(log, forbidden)(_scope(), _Receive(), _ignore))
        records = [msgspec.json.decode(line) for line in _lines(log_path)]
    assert [(r["event"], r["principal"], r["status"]) for r in records] == [
        ("request", "key-1", 403)
    ]


# --------------------------------------------------------------------------- lock owner

_HOLDER = """
import sys
from pathlib import Path
from secureserve.audit import AuditLog
with AuditLog(Path(sys.argv[1]), digest_key=bytes(32)):
    print("open", flush=True)
    sys.stdin.read()
"""


def _lock_message(pid: int, path: Path) -> str:
    return (
        f"another secureserve (pid {pid}) is already serving this folder (audit log {path} is "
        "locked); stop it first, or give this one its own [audit] path."
    )


def test_lock_owner_pid_written_while_open_and_removed_on_close(log_path, logger):
    """PATH.pid holds this process's id (mode 0600) while the log is open, and goes with it."""
    owner = log_path.with_name("audit.jsonl.pid")
    with _open(log_path, logger) as log:
        _request(log)
        assert owner.read_text() == f"{os.getpid()}\n"
        assert stat.S_IMODE(owner.stat().st_mode) == 0o600
    assert not owner.exists()
    assert _verify(log_path).ok  # the pid file is no part of the chain


def test_lock_second_writer_in_this_process_names_it(log_path, logger):
    """A second AuditLog in the same process is told the log is open in this process."""
    with (
        _open(log_path, logger),
        pytest.raises(ConfigError, match=rf"already open in this process \(pid {os.getpid()}\)"),
    ):
        _open(log_path, logger)


def test_lock_second_writer_names_the_other_process(log_path, logger):
    """A second process on a locked audit file is refused naming the holder's real pid."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(log_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(ConfigError) as refused:
            _open(log_path, logger)
        assert str(refused.value) == _lock_message(holder.pid, log_path)
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0
    with _open(log_path, logger):  # the holder is gone, and so is its lock
        pass


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize(
    "owner",
    [None, b"", b"not a pid\n", b"-1\n", b"99999999999999999999\n", "dead"],
    ids=["no-file", "empty", "garbage", "negative", "huge", "dead-process"],
)
def test_lock_holder_unknown_is_still_refused_without_a_pid(log_path, logger, owner):
    """A lock whose owner file is missing, garbled or stale is refused without naming a pid."""
    import fcntl

    log_path.parent.mkdir(parents=True)
    log_path.touch()
    if owner is not None:
        content = f"{_dead_pid()}\n".encode() if owner == "dead" else owner
        log_path.with_name("audit.jsonl.pid").write_bytes(content)
    fd = os.open(log_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: another holder
        with pytest.raises(ConfigError) as refused:
            _open(log_path, logger)
    finally:
        os.close(fd)
    message = str(refused.value)
    assert message.startswith(f"another process is already writing the audit log {log_path}")
    assert "pid" not in message
    assert "give this one its own [audit] path" in message


@pytest.mark.slow
def test_lock_second_server_in_the_same_folder_names_the_first(tmp_path):
    """A second `secureserve run` in a served folder stops with exit 1, naming the first's pid."""
    from server_helpers import free_port, run_cli, running_server, write_slow_project

    project = write_slow_project(tmp_path / "project").resolve()
    with running_server(project) as first:
        second = run_cli("run", "--dev", "--port", str(free_port()), cwd=project)
        assert second.returncode == 1
        audit = project / "audit" / "audit.jsonl"
        assert _lock_message(first.process.pid, audit) in second.stderr
        assert first.alive()
        # the second one stopped before minting a dev key: the first one's still works
        assert first.request("GET", "/v1/models", key=first.key).status == 200
