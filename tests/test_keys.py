"""API keys: shown once, stored as digests only, verified in constant time, reloaded on change."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from secureserve.errors import ConfigError
from secureserve.keys import (
    KeyStore,
    create_key,
    digest,
    list_keys,
    lock_path,
    mint_key,
    revoke_key,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_create_key_stores_only_the_digest_with_mode_0600(tmp_path):
    """The key file holds the secret's SHA-256, never the secret; only its owner may read it."""
    path = tmp_path / "secrets" / "keys.toml"
    key = create_key(path, name="ci", roles=("predict",))
    text = path.read_text()
    secret = str(key.secret)[16:]  # after "ss_<12 hex id>_"
    assert secret not in text
    assert digest(secret) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_secret_repr_is_masked():
    """A key held in memory never shows up in a repr (tracebacks, debuggers, logs)."""
    key = mint_key(name="x", roles=("predict",))
    assert str(key.secret) not in repr(key)
    assert str(key.secret) not in repr(key.secret)


def test_keystore_verifies_valid_and_refuses_tampered_keys(tmp_path):
    """The right key maps to its record; a one-character change, another id or junk maps to None."""
    path = tmp_path / "keys.toml"
    key = create_key(path, name="ci", roles=("predict",))
    store = KeyStore(path)
    record = store.verify(str(key.secret))
    assert record is not None
    assert record.id == key.record.id
    secret = str(key.secret)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    other_id = "ss_000000000000_" + secret[16:]
    for bad in (flipped, other_id, "", "ss_", secret + "x", secret.upper()):
        assert store.verify(bad) is None


def test_keystore_refuses_revoked_and_expired_keys(tmp_path):
    """Revocation and expiry take effect; a key with a future expiry still works."""
    path = tmp_path / "keys.toml"
    live = create_key(path, name="live", roles=("predict",), expires_in=timedelta(days=1), now=NOW)
    expired = create_key(
        path,
        name="old",
        roles=("predict",),
        expires_in=timedelta(days=1),
        now=NOW - timedelta(days=2),
    )
    revoked = create_key(path, name="gone", roles=("predict",), now=NOW)
    revoke_key(path, revoked.record.id, now=NOW)
    store = KeyStore(path)
    assert store.verify(str(live.secret), now=NOW) is not None
    assert store.verify(str(expired.secret), now=NOW) is None
    assert store.verify(str(revoked.secret), now=NOW) is None


def test_keystore_reloads_file_when_it_changes(tmp_path, monkeypatch):
    """A revocation written by `secureserve keys revoke` reaches a running store without restart."""
    path = tmp_path / "keys.toml"
    key = create_key(path, name="ci", roles=("predict",))
    store = KeyStore(path)
    assert store.verify(str(key.secret)) is not None
    revoke_key(path, key.record.id)
    monkeypatch.setattr("secureserve.keys._RELOAD_EVERY_S", 0.0)
    assert store.verify(str(key.secret)) is None


def test_keystore_fails_closed_on_a_corrupt_file(tmp_path, monkeypatch):
    """If the key file turns invalid while serving, every key is refused and the error is kept."""
    path = tmp_path / "keys.toml"
    key = create_key(path, name="ci", roles=("predict",))
    store = KeyStore(path)
    path.write_text("[[keys]]\nid = 1\n")
    os.utime(path, ns=(1, 1))
    monkeypatch.setattr("secureserve.keys._RELOAD_EVERY_S", 0.0)
    assert store.verify(str(key.secret)) is None
    assert store.last_error is not None


def test_create_dev_key_revokes_previous_dev_keys(tmp_path):
    """Each `run --dev` start mints a new dev key and revokes the last one; other keys stay."""
    path = tmp_path / "keys.toml"
    normal = create_key(path, name="ci", roles=("predict",))
    first = create_key(path, name="dev", roles=("predict",), dev=True)
    second = create_key(path, name="dev", roles=("predict",), dev=True)
    store = KeyStore(path)
    assert store.verify(str(first.secret)) is None
    assert store.verify(str(second.secret)) is not None
    assert store.verify(str(normal.secret)) is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "", "roles": ("predict",)}, "key name"),
        ({"name": "a\nb", "roles": ("predict",)}, "key name"),
        ({"name": "x" * 65, "roles": ("predict",)}, "key name"),
        ({"name": "ok", "roles": ()}, "no role"),
        ({"name": "ok", "roles": ("ro le",)}, "not a role name"),
        ({"name": "ok", "roles": ("x" * 65,)}, "not a role name"),
        ({"name": "ok", "roles": ("predict\n",)}, "not a role name"),
        ({"name": "ok", "roles": ("Admin",)}, "not a role name"),
        ({"name": "ok", "roles": ("predict",), "models": ("../x",)}, "model name"),
    ],
)
def test_mint_key_refuses_bad_arguments(kwargs, message):
    """Names, roles and model lists are validated before anything is stored."""
    with pytest.raises(ConfigError, match=message):
        mint_key(**kwargs)


def test_revoke_key_unknown_id_names_the_fix(tmp_path):
    """Revoking an id that does not exist is an error that points at `keys list`."""
    create_key(tmp_path / "k.toml", name="ci", roles=("predict",))
    with pytest.raises(ConfigError, match="keys list"):
        revoke_key(tmp_path / "k.toml", "deadbeef0000")


def test_list_keys_round_trips_every_field(tmp_path):
    """What create_key wrote reads back identically (roles, models, expiry, dev flag)."""
    path = tmp_path / "k.toml"
    key = create_key(
        path,
        name="bot @ci",
        roles=("predict", "metrics"),
        models=("iris",),
        expires_in=timedelta(days=3),
        now=NOW,
    )
    (record,) = list_keys(path)
    assert record == key.record


@pytest.mark.parametrize(
    "text",
    [
        "not toml [",
        '[[keys]]\nid = "x"\n',
        '[[keys]]\nid="a"\nname="n"\nroles=["ro ot"]\nsha256="00"\ncreated=2026-01-01T00:00:00Z\n',
    ],
)
def test_read_records_refuses_invalid_files(tmp_path, text):
    """A malformed key file or an unknown role is a ConfigError naming the file."""
    path = tmp_path / "k.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"k\.toml"):
        list_keys(path)


def test_read_records_refuses_dates_without_time_zone(tmp_path):
    """A hand-edited expiry without a zone is refused at load, not a 500 at request time."""
    path = tmp_path / "k.toml"
    create_key(path, name="ci", roles=("predict",))
    path.write_text(path.read_text() + "expires = 2030-01-01T00:00:00\n")
    with pytest.raises(ConfigError, match="time zone"):
        list_keys(path)


def test_concurrent_creates_and_revoke_lose_no_update(tmp_path):
    """One revoke and six creates started together keep all seven changes, in 20 rounds.

    Each thread opens its own lock descriptor (flock locks belong to open file
    descriptions), so threads contend exactly as separate `secureserve keys` processes do.
    """
    for round_no in range(20):
        path = tmp_path / f"round-{round_no}" / "api_keys.toml"
        victim = create_key(path, name="victim", roles=("predict",))
        barrier = threading.Barrier(7)
        created: list[str] = []

        def create(i: int, path=path, barrier=barrier, created=created) -> None:
            barrier.wait()
            created.append(create_key(path, name=f"new-{i}", roles=("predict",)).record.id)

        def revoke(path=path, barrier=barrier, victim=victim) -> None:
            barrier.wait()
            revoke_key(path, victim.record.id)

        with ThreadPoolExecutor(max_workers=7) as pool:
            futures = [pool.submit(revoke)] + [pool.submit(create, i) for i in range(6)]
            for future in futures:
                future.result()
        records = {r.id: r for r in list_keys(path)}
        assert set(created) <= records.keys(), f"round {round_no}: a created key was lost"
        assert len(records) == 7
        assert records[victim.record.id].revoked is not None, f"round {round_no}: revoke lost"


def test_key_file_lock_is_a_private_sidecar(tmp_path):
    """Writers leave `<keys file>.lock` beside the key file, mode 0600, in a 0700 folder."""
    path = tmp_path / "secrets" / "api_keys.toml"
    create_key(path, name="ci", roles=("predict",))
    lock = path.parent / "api_keys.toml.lock"
    assert lock_path(path) == lock
    assert stat.S_ISREG(lock.lstat().st_mode)
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_key_file_lock_refuses_a_symlink(tmp_path):
    """A symbolic link in place of the lock file is refused, never followed."""
    path = tmp_path / "api_keys.toml"
    target = tmp_path / "elsewhere"
    lock_path(path).symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        create_key(path, name="ci", roles=("predict",))
    assert not target.exists()
    assert not path.exists()


def test_key_file_lock_refuses_a_non_regular_file(tmp_path):
    """A folder (or FIFO, device) in place of the lock file is refused with the fix."""
    path = tmp_path / "api_keys.toml"
    lock_path(path).mkdir()
    with pytest.raises(ConfigError, match="lock"):
        create_key(path, name="ci", roles=("predict",))


def test_key_file_writer_gives_up_on_a_held_lock(tmp_path, monkeypatch):
    """A writer waits for another one's lock only so long, then names the lock; nothing changes."""
    path = tmp_path / "api_keys.toml"
    key = create_key(path, name="ci", roles=("predict",))
    monkeypatch.setattr("secureserve.keys._LOCK_TIMEOUT_S", 0.05)
    fd = os.open(lock_path(path), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="another `secureserve keys` command"):
            revoke_key(path, key.record.id)
    finally:
        os.close(fd)
    (record,) = list_keys(path)
    assert record.revoked is None


def test_key_store_reads_without_write_access_to_the_folder(tmp_path):
    """A server only reads: a read-only key folder still verifies keys and creates no lock."""
    folder = tmp_path / "ro"
    path = folder / "api_keys.toml"
    key = create_key(path, name="ci", roles=("predict",))
    lock_path(path).unlink()
    folder.chmod(0o500)
    try:
        assert KeyStore(path).verify(str(key.secret)) is not None
        assert not lock_path(path).exists()
    finally:
        folder.chmod(0o700)
