"""API keys: shown once, stored as digests only, verified in constant time, reloaded on change."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta

import pytest

from secureserve.errors import ConfigError
from secureserve.keys import KeyStore, create_key, digest, list_keys, mint_key, revoke_key

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
        ({"name": "ok", "roles": ()}, "roles"),
        ({"name": "ok", "roles": ("root",)}, "roles"),
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
        '[[keys]]\nid="a"\nname="n"\nroles=["root"]\nsha256="00"\ncreated=2026-01-01T00:00:00Z\n',
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
