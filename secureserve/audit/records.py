"""Audit records: what one line of the audit log holds, and how fields get that shape.

:class:`AuditRecord` is one line; :class:`RequestEntry` is what a request record
says before the writer adds ``time``, ``seq`` and ``prev``; :func:`shape`,
:func:`request_fields` and :func:`refusals_fields` turn caller fields into a line's
fields; :func:`sha256` and :func:`parse` hash and read lines for the writer and for
verification; :data:`PRUNED` names the record that retention writes. Depends on no
other audit module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from secureserve.errors import RequestRejected

__all__ = [
    "DIGEST_PREFIX",
    "GENESIS",
    "PRUNED",
    "AuditRecord",
    "AuditUnavailable",
    "Decision",
    "Digest",
    "RequestEntry",
    "decision",
    "parse",
    "refusals_fields",
    "request_fields",
    "rfc3339",
    "sha256",
    "shape",
]

GENESIS: Final = "0" * 64
#: The action of the admin record written when rotated files are removed (retention).
PRUNED: Final = "audit-pruned"
DIGEST_PREFIX: Final = "hmac-sha256:"
_MAX_DETAIL: Final = 200
_HEX64: Final = "^[0-9a-f]{64}$"
_DIGEST: Final = f"^{DIGEST_PREFIX}[0-9a-f]{{64}}$"
# Written on every line of their event (null when absent), so every line has one shape.
_ALWAYS: Final = frozenset({"time", "seq", "prev", "event", "principal", "roles"})
_REQUEST: Final = frozenset(
    {
        "request_id",
        "route",
        "model",
        "model_version",
        "decision",
        "status",
        "latency_ms",
        "input_digest",
        "output_digest",
    }
)
_REFUSALS: Final = frozenset(
    {
        "client",
        "route",
        "decision",
        "status",
        "reason",
        "count",
        "first_time",
        "last_time",
        "request_id",
    }
)
_EVENT_FIELDS: Final = {
    "request": _ALWAYS | _REQUEST,
    "refusals": _ALWAYS | _REFUSALS,
    "admin": _ALWAYS,
}

Decision = Literal["allowed", "denied", "limited", "error"]
Digest = Annotated[str, msgspec.Meta(pattern=_DIGEST)]
_MAX_TEXT: Final = 1024


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One audit line. ``event`` says which of the optional fields are meaningful.

    Request records carry every request field (``null`` when absent). Refusals
    records count the refusals of unauthenticated callers from one ``client`` for one
    ``route``, ``status`` and ``reason`` in one window, and always carry those fields,
    ``count``, ``first_time``/``last_time`` and the ``request_id`` of the first one
    (``client`` ``"*"`` with ``null`` route, status and reason is the overflow
    bucket). Admin records carry ``action`` and whichever of
    ``request_id``/``trigger``/``model``/``detail`` apply; an ``audit-pruned`` one
    also ``pruned_files`` and the ``pruned_last_seq``/``pruned_last_hash`` of the last
    line removed. ``rotated_from`` appears on the first record of a file that
    continues another. A request record whose instances the input guard flagged (and
    let through) lists their indexes in ``flagged``.
    """

    time: str
    seq: Annotated[int, msgspec.Meta(ge=0)]
    prev: Annotated[str, msgspec.Meta(pattern=_HEX64)]
    event: Literal["request", "admin", "refusals"]
    principal: str | None = None
    roles: tuple[str, ...] = ()
    request_id: str | None = None
    route: str | None = None
    model: str | None = None
    model_version: str | None = None
    decision: Decision | None = None
    status: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    latency_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None
    input_digest: Digest | None = None
    output_digest: Digest | None = None
    flagged: tuple[Annotated[int, msgspec.Meta(ge=0)], ...] | None = None
    action: str | None = None
    trigger: str | None = None
    detail: str | None = None
    client: str | None = None
    reason: str | None = None
    count: Annotated[int, msgspec.Meta(ge=1)] | None = None
    first_time: str | None = None
    last_time: str | None = None
    pruned_files: tuple[str, ...] | None = None
    pruned_last_seq: Annotated[int, msgspec.Meta(ge=0)] | None = None
    pruned_last_hash: Annotated[str, msgspec.Meta(pattern=_HEX64)] | None = None
    rotated_from: str | None = None


class AuditUnavailable(RequestRejected):
    """The audit log cannot be written, so the request is refused (503, ``Retry-After: 5``).

    ``log_reason`` says why (deleted, read-only, the OS error); the client sees only
    the fixed title.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            503,
            "audit-unavailable",
            "Service temporarily unavailable",
            headers={"Retry-After": "5"},
            log_reason=f"audit log unavailable: {reason}",
        )


_decoder: Final = msgspec.json.Decoder(AuditRecord)


class RequestEntry(msgspec.Struct, frozen=True, kw_only=True):
    """What a request record says; :meth:`AuditLog.request` adds time, seq and prev."""

    principal: str | None
    roles: Sequence[str]
    request_id: str
    route: str
    model: str | None
    model_version: str | None
    decision: Decision
    status: int
    latency_ms: float
    input_digest: str | None = None
    output_digest: str | None = None
    #: indexes of the instances the input guard flagged (and let through)
    flagged: tuple[int, ...] | None = None


def request_fields(entry: RequestEntry) -> dict[str, Any]:
    """The fields of a request record, as :meth:`AuditLog.record` would shape them."""
    fields = msgspec.structs.asdict(entry)
    fields["roles"] = list(entry.roles)
    fields["latency_ms"] = round(entry.latency_ms, 3)
    if entry.flagged is None:
        del fields["flagged"]  # only requests the guard flagged carry the field
    else:
        fields["flagged"] = list(entry.flagged)
    return {"event": "request", **fields}


def refusals_fields(
    *,
    client: str,
    route: str | None,
    status: int | None,
    reason: str | None,
    count: int,
    first: datetime,
    last: datetime,
    request_id: str,
) -> dict[str, Any]:
    """The fields of a refusals record (every one written, ``null`` when absent)."""
    return {
        "event": "refusals",
        "principal": None,
        "roles": [],
        "client": client,
        "route": route,
        "decision": None if status is None else decision(status),
        "status": status,
        "reason": reason,
        "count": count,
        "first_time": rfc3339(first),
        "last_time": rfc3339(last),
        "request_id": request_id,
    }


def rfc3339(moment: datetime) -> str:
    """``moment`` (UTC) as written in the log: ``2025-01-02T03:04:05.678901Z``.

    The date and time to the second are formatted once per second (``strftime`` is
    the slow part), the microseconds every time.
    """
    second = moment.replace(microsecond=0)
    cached = _SECOND[0]
    if cached[0] != second:
        cached = (second, second.strftime("%Y-%m-%dT%H:%M:%S"))
        _SECOND[0] = cached  # one reference swapped whole: safe to read from any thread
    return f"{cached[1]}.{moment.microsecond:06d}Z"


# The last second formatted by rfc3339 with its text: a single slot, replaced whole.
_SECOND: Final[list[tuple[datetime | None, str]]] = [(None, "")]


def decision(status: int) -> Decision:
    """The audit decision an HTTP status stands for: 429 limited, other 4xx denied, 5xx error."""
    if status < 400:  # noqa: PLR2004 - HTTP status classes
        return "allowed"
    if status == 429:  # noqa: PLR2004
        return "limited"
    return "denied" if status < 500 else "error"  # noqa: PLR2004


def sha256(line: bytes) -> str:
    """The hex SHA-256 of ``line`` (a line's bytes without its LF): the next ``prev``."""
    return hashlib.sha256(line).hexdigest()


def parse(line: bytes) -> AuditRecord | None:
    """The record on ``line``, or None when it is not one (torn, not JSON, fields wrong)."""
    try:
        return _decoder.decode(line)
    except msgspec.DecodeError:
        return None


def shape(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate caller fields as an :class:`AuditRecord` and keep the ones its event writes."""
    for name in ("time", "seq", "prev", "rotated_from"):
        if name in fields:
            raise TypeError(f"audit field {name!r} is filled in by AuditLog, not the caller")
    try:
        record = msgspec.convert({**fields, "time": "", "seq": 0, "prev": GENESIS}, AuditRecord)
    except msgspec.ValidationError as exc:
        raise TypeError(f"invalid audit record: {exc}") from None
    if record.event == "request" and None in (record.route, record.decision, record.status):
        raise ValueError("a request audit record needs route, decision and status")
    if record.event == "admin" and record.action is None:
        raise ValueError("an admin audit record needs an action")
    if record.event == "refusals" and None in (
        record.client,
        record.count,
        record.first_time,
        record.last_time,
    ):
        raise ValueError("a refusals audit record needs client, count, first_time and last_time")
    values = msgspec.structs.asdict(record)
    for name, value in values.items():  # long client-influenced text is cut, not refused
        limit = _MAX_DETAIL if name == "detail" else _MAX_TEXT
        if isinstance(value, str) and len(value) > limit:
            values[name] = value[: limit - 1] + "…"
    if record.latency_ms is not None:
        values["latency_ms"] = round(record.latency_ms, 3)
    always = _EVENT_FIELDS[record.event]
    return {
        name: value
        for name, value in values.items()
        if name not in {"time", "seq", "prev"} and (name in always or value is not None)
    }
