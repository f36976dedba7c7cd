"""API keys: high-entropy secrets shown once, stored only as SHA-256 digests.

A key looks like ``ss_<id>_<secret>``: ``id`` (12 hex characters) finds the
record in O(1), the 256-bit ``secret`` is compared by digest with
``hmac.compare_digest``. Because the secret is random and long, an unsalted
SHA-256 is enough (nothing to brute-force). Records live in a TOML file (by
default ``secrets/api_keys.toml``), written atomically with mode 0600; a
running server re-reads it when it changes, so revocation needs no restart.

Every writer (:func:`create_key`, :func:`revoke_key`) holds an exclusive
``flock`` on a sidecar lock file beside the key file (``api_keys.toml.lock``)
for its whole read-modify-write, so concurrent ``keys create`` and ``keys
revoke`` never lose each other's change. Readers take no lock: each write
replaces the file by a rename, so a reader sees the old file or the new one,
and a server needs no write access to the folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import re
import secrets
import stat
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import msgspec

from secureserve.errors import ConfigError
from secureserve.secretfiles import fsync_folder, read_regular
from secureserve.settings import BUILTIN_ROLES, is_role_name

__all__ = [
    "ROLES",
    "ApiKey",
    "KeyRecord",
    "KeyStore",
    "check_roles",
    "create_key",
    "list_keys",
    "mint_key",
    "revoke_key",
]

#: The built-in roles; a key may also carry custom roles (see :func:`check_roles`).
ROLES: Final = BUILTIN_ROLES
KEY_PREFIX: Final = "ss_"
_KEY_RE: Final = re.compile(r"ss_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}")
_MODEL_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_RELOAD_EVERY_S: Final = 1.0
#: How long a writer waits for another writer's lock before giving up.
_LOCK_TIMEOUT_S: Final = 10.0
_LOCK_POLL_S: Final = 0.005
#: Room for about 40,000 key records.
_MAX_KEY_FILE_BYTES: Final = 16 * 1024 * 1024
_HEADER: Final = (
    "# API keys of this secureserve project, managed with `secureserve keys`.\n"
    "# Only SHA-256 digests of the secrets are stored here; the secrets were shown once.\n"
)


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One stored key: never the secret, only its digest."""

    id: str
    name: str
    roles: tuple[str, ...]
    sha256: str
    created: datetime
    models: tuple[str, ...] | None = None
    expires: datetime | None = None
    revoked: datetime | None = None
    dev: bool = False

    def active(self, now: datetime) -> bool:
        """Not revoked and not expired at ``now``."""
        return self.revoked is None and (self.expires is None or now < self.expires)


class _KeyFile(msgspec.Struct, forbid_unknown_fields=True):
    keys: list[KeyRecord] = msgspec.field(default_factory=list)


class Secret(str):
    """A string whose ``repr`` never shows its value (for keys held in memory)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('**********')"


@dataclass(frozen=True)
class ApiKey:
    """A freshly created key: ``secret`` is the only copy there will ever be."""

    record: KeyRecord
    secret: Secret = field(repr=False)


def digest(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def read_records(path: Path) -> list[KeyRecord]:
    """Read and validate the key file; a missing file means no keys."""
    try:
        data = read_regular(path, max_bytes=_MAX_KEY_FILE_BYTES, source=f"key file {path}")
    except FileNotFoundError:
        return []
    try:
        records = msgspec.convert(tomllib.loads(data.decode()), _KeyFile, strict=False).keys
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(
            f"{path}: not a valid key file ({exc}); recreate keys with `secureserve keys create`."
        ) from None
    for record in records:
        for moment in (record.created, record.expires, record.revoked):
            if moment is not None and moment.tzinfo is None:
                raise ConfigError(
                    f"{path}: key {record.id} has a date without a time zone; write it in "
                    "UTC with a Z, e.g. 2030-01-01T00:00:00Z."
                )
        check_roles(record.roles, where=f"{path}: key {record.id}")
    return records


def write_records(path: Path, records: list[KeyRecord]) -> None:
    """Atomically replace the key file (mode 0600, parent folder 0700 when created).

    A read-modify-write must hold :func:`_locked` around the read and this write.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = [_HEADER]
    for r in records:
        lines.append("\n[[keys]]\n")
        lines.append(f"id = {_q(r.id)}\nname = {_q(r.name)}\n")
        lines.append(f"roles = [{', '.join(_q(x) for x in r.roles)}]\n")
        if r.models is not None:
            lines.append(f"models = [{', '.join(_q(x) for x in r.models)}]\n")
        lines.append(f"sha256 = {_q(r.sha256)}\ncreated = {_t(r.created)}\n")
        if r.expires is not None:
            lines.append(f"expires = {_t(r.expires)}\n")
        if r.revoked is not None:
            lines.append(f"revoked = {_t(r.revoked)}\n")
        if r.dev:
            lines.append("dev = true\n")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).chmod(0o600)  # mkstemp already creates 0600; keep it explicit
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)  # a crash right after the rename cannot bring the old file back


_LOCK_FLAGS: Final = (
    os.O_RDWR
    | os.O_CREAT
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def lock_path(path: Path) -> Path:
    """The sidecar lock file of the key file ``path`` (``api_keys.toml.lock``)."""
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the key file's sidecar for a whole read-modify-write.

    The sidecar is created 0600 in the key file's folder (0700 when created), opened
    without following a symbolic link, and must be a regular file; it is never
    deleted (removing a lock file while another writer waits on it breaks the lock).
    A writer waits at most ``_LOCK_TIMEOUT_S`` for another one.
    """
    if sys.platform == "win32":  # pragma: no cover - no flock; os.replace keeps files whole
        yield
        return
    import fcntl  # noqa: PLC0415 - POSIX only

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = lock_path(path)
    try:
        fd = os.open(lock, _LOCK_FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"{lock} is a symbolic link; secureserve never follows one for its key-file "
                "lock. Remove it (it is recreated) and try again."
            ) from None
        raise ConfigError(
            f"key-file lock {lock} cannot be opened ({exc.strerror}); check that this user "
            "may write to its folder."
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{lock} is not a regular file; remove it and try again.")
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConfigError(
                        f"{path} is being changed by another `secureserve keys` command "
                        f"(lock {lock} held for over {_LOCK_TIMEOUT_S:g} s); try again when "
                        "it has finished."
                    ) from None
                time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def check_roles(roles: tuple[str, ...], *, where: str) -> None:
    """``ConfigError`` unless ``roles`` has at least one role and every name is well-formed.

    Besides the built-in roles, any name of 1-64 letters, digits, ``-`` and ``_`` is a
    custom role: it grants no route by itself, and ``[model.output.roles]`` can give it
    its own output policy.
    """
    if not roles:
        raise ConfigError(f"{where} has no role; give one or more of {', '.join(ROLES)}.")
    for role in roles:
        if not is_role_name(role):
            raise ConfigError(
                f"{where}: role {role[:80]!r} is not a role name; use 1-64 letters, digits, "
                f"- or _, and write built-in roles in lower case ({', '.join(ROLES)})."
            )


def mint_key(
    *,
    name: str,
    roles: tuple[str, ...],
    models: tuple[str, ...] | None = None,
    expires_in: timedelta | None = None,
    dev: bool = False,
    now: datetime | None = None,
    taken: frozenset[str] = frozenset(),
) -> ApiKey:
    """A new random key and its record, not yet stored anywhere."""
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"key name {name!r}: use 1-64 letters, digits, spaces or . _ @ -.")
    check_roles(roles, where="the new key")
    for model in models or ():
        if not _MODEL_RE.fullmatch(model):
            raise ConfigError(f"model name {model!r} is not a valid model name.")
    now = now or datetime.now(UTC)
    key_id = secrets.token_hex(6)
    while key_id in taken:  # pragma: no cover - 48 random bits
        key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = KeyRecord(
        id=key_id,
        name=name,
        roles=tuple(dict.fromkeys(roles)),
        sha256=digest(secret),
        created=now,
        models=models,
        expires=now + expires_in if expires_in else None,
        dev=dev,
    )
    return ApiKey(record, Secret(f"{KEY_PREFIX}{key_id}_{secret}"))


def create_key(
    path: Path,
    *,
    name: str,
    roles: tuple[str, ...],
    models: tuple[str, ...] | None = None,
    expires_in: timedelta | None = None,
    dev: bool = False,
    now: datetime | None = None,
) -> ApiKey:
    """Create a key and store its digest; return the secret (shown once by the caller).

    A dev key (``dev=True``) revokes every earlier dev key.
    """
    now = now or datetime.now(UTC)
    with _locked(path):
        records = read_records(path)
        if dev:
            records = [
                msgspec.structs.replace(r, revoked=now) if r.dev and r.revoked is None else r
                for r in records
            ]
        key = mint_key(
            name=name,
            roles=roles,
            models=models,
            expires_in=expires_in,
            dev=dev,
            now=now,
            taken=frozenset(r.id for r in records),
        )
        write_records(path, [*records, key.record])
    return key


def list_keys(path: Path) -> list[KeyRecord]:
    """Every stored record, revoked and expired ones included."""
    return read_records(path)


def revoke_key(path: Path, key_id: str, *, now: datetime | None = None) -> KeyRecord:
    """Mark a key revoked (the record stays, for the audit trail)."""
    with _locked(path):
        records = read_records(path)
        for i, record in enumerate(records):
            if record.id == key_id:
                if record.revoked is None:
                    records[i] = msgspec.structs.replace(record, revoked=now or datetime.now(UTC))
                    write_records(path, records)
                return records[i]
    raise ConfigError(
        f"no key with id {key_id!r} in {path}; `secureserve keys list` shows the ids."
    )


class KeyStore:
    """Verifies presented keys against the records, re-reading the file when it changes.

    If the file turns unreadable or invalid while serving, every key is refused
    until it is fixed (fail closed) and the error is logged by the caller via
    ``last_error``. ``on_change(changes)`` is called after a reload that changed
    the records, with one ``(key_id, what)`` pair per change (``"added"``,
    ``"revoked"``, ``"removed"``, ``"changed"``), for the audit trail.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        records: list[KeyRecord] | None = None,
        on_change: Callable[[list[tuple[str, str]]], None] | None = None,
    ) -> None:
        self._path = path
        self._by_id: dict[str, KeyRecord] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._on_change = on_change
        self._stamp_seen = False  # the first load is not a change
        self.last_error: str | None = None
        if records is not None:
            self._by_id = {r.id: r for r in records}
        elif path is not None:
            self._load()

    def verify(self, presented: str, now: datetime | None = None) -> KeyRecord | None:
        """The active record for ``presented``, or ``None``. Constant-time on the secret."""
        self._maybe_reload()
        match = _KEY_RE.fullmatch(presented)
        if match is None:
            return None
        record = self._by_id.get(match.group(1))
        wanted = record.sha256 if record is not None else "0" * 64
        ok = hmac.compare_digest(digest(match.group(2)), wanted)
        if record is None or not ok:
            return None
        return record if record.active(now or datetime.now(UTC)) else None

    def _maybe_reload(self) -> None:
        if self._path is None:
            return
        now = time.monotonic()
        if now - self._checked < _RELOAD_EVERY_S:
            return
        self._checked = now
        try:
            st = self._path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp != self._stamp:
            self._load()

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            st = self._path.stat()
            self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            self._stamp = (0, 0, 0)
        before = self._by_id
        try:
            self._by_id = {r.id: r for r in read_records(self._path)}
            self.last_error = None
        except ConfigError as exc:
            self._by_id = {}
            self.last_error = str(exc)
        changes = _changes(before, self._by_id)
        if changes and self._on_change is not None and self._stamp_seen:
            self._on_change(changes)
        self._stamp_seen = True


def _changes(before: dict[str, KeyRecord], after: dict[str, KeyRecord]) -> list[tuple[str, str]]:
    changes = [(key_id, "removed") for key_id in sorted(before.keys() - after.keys())]
    for key_id in sorted(after):
        old, new = before.get(key_id), after[key_id]
        if old is None:
            changes.append((key_id, "added"))
        elif old != new:
            changes.append((key_id, "revoked" if new.revoked and not old.revoked else "changed"))
    return changes


def _q(text: str) -> str:
    return msgspec.json.encode(text).decode()


def _t(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
