"""Bearer credentials to principals; 401 bodies that never say which check failed."""

from __future__ import annotations

import pytest

from secureserve.auth import Principal, authenticate, require_role
from secureserve.errors import RequestRejected
from secureserve.keys import KeyStore, mint_key


@pytest.fixture
def key_and_store():
    key = mint_key(name="ci", roles=("predict",), models=("iris",))
    return key, KeyStore(None, records=[key.record])


def test_authenticate_valid_key_gives_principal(key_and_store):
    """A valid bearer key yields its id, roles and model list."""
    key, store = key_and_store
    principal = authenticate(f"Bearer {key.secret}", store)
    assert principal == Principal(
        id=key.record.id, name="ci", roles=frozenset({"predict"}), models=frozenset({"iris"})
    )
    assert principal.may_use("iris")
    assert not principal.may_use("other")


def test_authenticate_scheme_is_case_insensitive(key_and_store):
    """RFC 9110: the auth scheme is case-insensitive."""
    key, store = key_and_store
    assert authenticate(f"bEaReR {key.secret}", store).id == key.record.id


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic dXNlcjpwYXNz", "not-bearer"),
        ("Bearer", "not-bearer"),
        ("Bearer " + "x" * 20000, "not-bearer"),
        ("Bearer ss_000000000000_" + "a" * 43, "unknown-revoked-or-expired-key"),
        ("Bearer garbage", "unknown-revoked-or-expired-key"),
    ],
)
def test_authenticate_refusals_are_uniform(key_and_store, header, reason):
    """Every refusal is a 401 with a challenge; the detail only says missing or invalid."""
    _, store = key_and_store
    with pytest.raises(RequestRejected) as info:
        authenticate(header, store)
    exc = info.value
    assert exc.status == 401
    assert exc.headers["WWW-Authenticate"].startswith("Bearer")
    assert exc.log_reason == reason
    assert exc.detail == ("no bearer token" if reason == "missing" else "invalid credentials")


def test_require_role_refuses_missing_role():
    """A principal without the role gets 403; with it, nothing happens."""
    principal = Principal(id="a", name="a", roles=frozenset({"predict"}))
    require_role(principal, "predict")
    with pytest.raises(RequestRejected) as info:
        require_role(principal, "admin")
    assert info.value.status == 403
