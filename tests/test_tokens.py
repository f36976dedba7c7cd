"""Bearer JWTs: one small test per refusal rule, the shared hostile tokens, JWKS reloads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import shared_fixtures
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from secureserve import tokens
from secureserve.auth import Principal
from secureserve.errors import ConfigError, RequestRejected
from secureserve.tokens import JWTVerifier, looks_like_jwt

NOW = 1_800_000_000
ISS = "https://issuer.test"
AUD = "secureserve"
FIXTURES = shared_fixtures()
DUPLICATE_ALG = b'{"alg": "none", "alg": "RS256"}'


# ---------------------------------------------------------------- helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64(json.dumps(value).encode())


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[Any, dict[str, Any], str]]:
    """Map kid -> (private key, public JWK, alg): one RSA, P-256, Ed25519 and Ed448 key each."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed448_key = ed448.Ed448PrivateKey.generate()
    made = {
        "rsa-1": (rsa_key, RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "RS256"),
        "ec-1": (ec_key, ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "ES256"),
        "ed-1": (ed_key, OKPAlgorithm.to_jwk(ed_key.public_key(), as_dict=True), "EdDSA"),
        "ed448-1": (ed448_key, OKPAlgorithm.to_jwk(ed448_key.public_key(), as_dict=True), "EdDSA"),
    }
    for kid, (_, jwk, alg) in made.items():
        jwk.update(kid=kid, alg=alg, use="sig")
    return made


def tiny_rsa_jwk() -> dict[str, Any]:
    """The public JWK of a 1024-bit RSA key, too small to trust."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - on purpose
    return {**RSAAlgorithm.to_jwk(small.public_key(), as_dict=True), "kid": "tiny"}


def write_jwks(path: Path, jwks: list[dict[str, Any]]) -> Path:
    """Replace the JWKS file atomically (a new inode, as a deploy tool would)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": jwks}))
    tmp.replace(path)
    return path


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims at NOW, with ``changes`` applied (a value of ``...`` deletes the claim)."""
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "client-7",
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "exp": NOW + 3600,
        "role": "predict",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.fixture
def jwks_path(tmp_path, keys) -> Path:
    return write_jwks(tmp_path / "jwks.json", [jwk for _, jwk, _ in keys.values()])


@pytest.fixture
def verifier(jwks_path) -> JWTVerifier:
    return JWTVerifier(jwks_file=jwks_path, issuer=ISS, audience=AUD, clock=lambda: NOW)


def mint(keys, kid: str = "rsa-1", alg: str | None = None, headers=None, **changes) -> str:
    """A token signed by ``kid``'s private key (the header names ``kid`` unless overridden).

    ``PyJWS`` signs the claims as given, so tests may put any JSON in them.
    """
    private, _, default_alg = keys[kid]
    return jwt.PyJWS().encode(
        json.dumps(claims(**changes)).encode(),
        private,
        algorithm=alg or default_alg,
        headers={"kid": kid, **(headers or {})},
    )


def rs256(keys, header: dict[str, Any] | str, payload: bytes | str) -> str:
    """Hand-crafted RS256 token: any header, any payload bytes, a valid signature by rsa-1."""
    head = header if isinstance(header, str) else segment(header)
    body = payload if isinstance(payload, str) else b64(payload)
    signing_input = f"{head}.{body}".encode()
    signature = keys["rsa-1"][0].sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(signature)}"


def refused(verifier: JWTVerifier, token: str) -> str:
    """The log reason of the 401 the verifier raises for ``token``."""
    with pytest.raises(RequestRejected) as info:
        verifier.verify(token)
    assert info.value.status == 401
    assert info.value.log_reason is not None
    return info.value.log_reason


def public(rejection: RequestRejected) -> tuple[Any, ...]:
    return (rejection.status, rejection.slug, rejection.title, rejection.detail, rejection.headers)


# ---------------------------------------------------------------- shared fixtures


def _fixture_tokens() -> list[dict[str, Any]]:
    if FIXTURES is None:
        return []
    lines = (FIXTURES / "tokens.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


FIXTURE_REASONS = {
    "alg_none": "jwt-alg-none",
    "hs256_key_confusion": "jwt-alg-hmac",
    "expired": "jwt-expired",
    "not_yet_valid": "jwt-not-yet-valid",
    "wrong_audience": "jwt-aud-mismatch",
    "wrong_issuer": "jwt-iss-mismatch",
    "unknown_kid": "jwt-kid-unknown",
    "signature_tampered": "jwt-bad-signature",
    "payload_tampered": "jwt-bad-signature",
}


@pytest.fixture
def fixture_verifier() -> JWTVerifier:
    assert FIXTURES is not None
    return JWTVerifier(
        jwks_file=FIXTURES / "jwks.json", issuer=ISS, audience=AUD, algorithms=["RS256"]
    )


@pytest.mark.skipif(FIXTURES is None, reason="needs ../shared/fixtures")
@pytest.mark.parametrize("row", _fixture_tokens(), ids=lambda row: row["name"])
def test_verifier_shared_tokens_accepted_or_refused_as_expected(fixture_verifier, row):
    """Each shared token gets its expected verdict, refused ones for the expected check."""
    if row["expect"] == "accept":
        principal = fixture_verifier.verify(row["token"])
        assert principal == Principal(
            id="jwt:test-client", name="test-client", roles=frozenset({"predict"})
        )
    else:
        assert refused(fixture_verifier, row["token"]) == FIXTURE_REASONS[row["name"]]


@pytest.mark.skipif(FIXTURES is None, reason="needs ../shared/fixtures")
def test_verifier_shared_refusals_have_identical_bodies(fixture_verifier):
    """Refused shared tokens share status, slug, title and detail; only the log reason differs."""
    bodies, reasons = set(), set()
    for row in _fixture_tokens():
        if row["expect"] == "refuse":
            with pytest.raises(RequestRejected) as info:
                fixture_verifier.verify(row["token"])
            bodies.add(json.dumps(public(info.value), sort_keys=True))
            reasons.add(info.value.log_reason)
    assert len(bodies) == 1
    assert json.loads(bodies.pop())[:4] == [
        401,
        "unauthorized",
        "Unauthorized",
        "invalid credentials",
    ]
    assert len(reasons) == len(set(FIXTURE_REASONS.values()))


# ---------------------------------------------------------------- acceptance


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed-1", "ed448-1"])
def test_verifier_accepts_each_key_type(verifier, keys, kid):
    """RS256, ES256 and EdDSA tokens signed by their JWKS key yield the principal of ``sub``."""
    principal = verifier.verify(mint(keys, kid))
    assert principal == Principal(id="jwt:client-7", name="client-7", roles=frozenset({"predict"}))


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed-1"])
def test_verifier_refuses_a_flipped_signature_bit(verifier, keys, kid):
    """One changed bit in the signature fails verification, for every key type."""
    head, body, sig = mint(keys, kid).split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[5] ^= 0x01
    assert refused(verifier, f"{head}.{body}.{b64(bytes(raw))}") == "jwt-bad-signature"


def test_verifier_refuses_a_changed_payload(verifier, keys):
    """Claims changed after signing (role raised to admin) do not verify."""
    head, _, sig = mint(keys).split(".")
    assert refused(verifier, f"{head}.{segment(claims(role='admin'))}.{sig}") == "jwt-bad-signature"


# ---------------------------------------------------------------- header rules


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_verifier_refuses_alg_none(verifier, alg):
    """An unsigned token (alg none, empty signature) is refused however ``none`` is spelled."""
    token = f"{segment({'alg': alg, 'kid': 'rsa-1'})}.{segment(claims())}."
    assert refused(verifier, token) == "jwt-alg-none"


@pytest.mark.parametrize(
    ("alg", "digest"), [("HS256", "sha256"), ("HS384", "sha384"), ("HS512", "sha512")]
)
def test_verifier_refuses_hmac_signed_with_the_public_key(verifier, keys, alg, digest):
    """Key confusion: HMAC keyed with the RSA public key PEM bytes is refused before any key use."""
    pem = (
        keys["rsa-1"][0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing_input = f"{segment({'alg': alg, 'kid': 'rsa-1'})}.{segment(claims())}"
    mac = hmac.new(pem, signing_input.encode(), getattr(hashlib, digest)).digest()
    assert refused(verifier, f"{signing_input}.{b64(mac)}") == "jwt-alg-hmac"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://evil.test/jwks.json"),
        ("x5u", "https://evil.test/cert.pem"),
        ("x5c", ["MIIB"]),
        ("jwk", {"kty": "oct", "k": "c2VjcmV0"}),
        ("crit", ["exp"]),
    ],
)
def test_verifier_refuses_forbidden_header_parameters(verifier, keys, name, value):
    """Jku/x5u/x5c/jwk (keys from the token) and any crit are refused, even validly signed."""
    header = {"alg": "RS256", "typ": "JWT", "kid": "rsa-1", name: value}
    token = rs256(keys, header, json.dumps(claims()).encode())
    assert refused(verifier, token) == f"jwt-header-{name}"


@pytest.mark.parametrize("limit", [512, 8192])
def test_verifier_refuses_oversize_tokens(keys, jwks_path, limit):
    """A token longer than max_token_bytes is refused before decoding; at the limit it passes."""
    token = mint(keys, filler="x" * limit)
    small = JWTVerifier(jwks_file=jwks_path, issuer=ISS, audience=AUD, max_token_bytes=limit)
    assert refused(small, token) == "jwt-too-large"
    roomy = JWTVerifier(
        jwks_file=jwks_path, issuer=ISS, audience=AUD, max_token_bytes=len(token), clock=lambda: NOW
    )
    assert roomy.verify(token).name == "client-7"


@pytest.mark.parametrize("kid", [None, "", 7])
def test_verifier_refuses_missing_kid(verifier, keys, kid):
    """Without a usable kid the token is refused; no key is tried."""
    header = {"alg": "RS256"} if kid is None else {"alg": "RS256", "kid": kid}
    assert (
        refused(verifier, rs256(keys, header, json.dumps(claims()).encode())) == "jwt-kid-missing"
    )


def test_verifier_refuses_unknown_kid_signed_by_a_known_key(verifier, keys):
    """A kid not in the JWKS is refused even though a JWKS key would verify the signature."""
    token = mint(keys, "rsa-1", headers={"kid": "no-such-key"})
    assert refused(verifier, token) == "jwt-kid-unknown"


@pytest.mark.parametrize(
    ("signer", "kid", "alg"),
    [("ec-1", "rsa-1", "ES256"), ("rsa-1", "ec-1", "RS256"), ("ed-1", "rsa-1", "EdDSA")],
)
def test_verifier_refuses_alg_that_does_not_fit_the_key(verifier, keys, signer, kid, alg):
    """The header's alg must be the algorithm of the key its kid names."""
    token = mint(keys, signer, alg=alg, headers={"kid": kid})
    assert refused(verifier, token) == "jwt-alg-key-mismatch"


@pytest.mark.parametrize("alg", ["ES256", "RS384", "PS256"])
def test_verifier_refuses_algorithms_outside_the_allow_list(tmp_path, keys, alg):
    """With algorithms=["RS256"], any other alg is refused, whatever the key."""
    path = write_jwks(tmp_path / "jwks.json", [keys["rsa-1"][1]])
    only_rs = JWTVerifier(jwks_file=path, issuer=ISS, audience=AUD, algorithms=["RS256"])
    signer = "ec-1" if alg == "ES256" else "rsa-1"
    token = mint(keys, signer, alg=alg, headers={"kid": "rsa-1"})
    assert refused(only_rs, token) == "jwt-alg-not-allowed"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("a.b.c", "jwt-malformed-header"),
        (f"{b64(b'not json')}.e30.", "jwt-malformed-header"),
        (f"{b64(b'[1]')}.e30.", "jwt-malformed-header"),
        (f"{b64(DUPLICATE_ALG)}.e30.", "jwt-malformed-header"),
        ("eyJ.e30", "jwt-malformed"),
        ("ey J.e30.x", "jwt-malformed"),
        ("ss_0123456789ab_" + "A" * 43, "jwt-malformed"),
    ],
)
def test_verifier_refuses_malformed_tokens(verifier, token, reason):
    """Garbage, a non-object header and a header with a repeated member are refused."""
    assert refused(verifier, token) == reason


def test_verifier_refuses_a_non_string_token(verifier):
    """Anything but a str (a caller bug) is refused, not crashed on."""
    assert refused(verifier, None) == "jwt-malformed"  # type: ignore[arg-type]


def test_verifier_refuses_header_without_alg(verifier, keys):
    """A header with no alg is refused."""
    assert refused(verifier, rs256(keys, {"kid": "rsa-1"}, b"{}")) == "jwt-alg-missing"


@pytest.mark.parametrize("mutation", ["short-signature", "b64-false"])
def test_verifier_refuses_what_pyjwt_cannot_parse(verifier, keys, mutation):
    """A signature that is not valid base64url, or a b64=false header, ends as jwt-malformed."""
    if mutation == "short-signature":
        head, body, _ = mint(keys).split(".")
        token = f"{head}.{body}.A"
    else:
        token = rs256(keys, {"alg": "RS256", "kid": "rsa-1", "b64": False}, b"{}")
    assert refused(verifier, token) == "jwt-malformed"


def test_verifier_refuses_exp_beyond_float_range(verifier, keys):
    """A NumericDate too large for a float (1e999) makes the payload malformed."""
    payload = json.dumps(claims(exp=0)).replace('"exp": 0', '"exp": 1e999').encode()
    token = rs256(keys, {"alg": "RS256", "kid": "rsa-1"}, payload)
    assert refused(verifier, token) == "jwt-malformed-payload"


def test_verifier_accepts_a_huge_integer_exp(verifier, keys):
    """A huge integer exp is compared exactly: it is simply far in the future."""
    assert verifier.verify(mint(keys, exp=10**400)).name == "client-7"


@pytest.mark.parametrize(
    "payload",
    [b"[1, 2]", b"not json", b'{"sub": "a", "sub": "admin"}'],
    ids=["not-object", "not-json", "duplicate-member"],
)
def test_verifier_refuses_malformed_signed_payloads(verifier, keys, payload):
    """Validly signed payloads that are not one unambiguous JSON object are refused."""
    token = rs256(keys, {"alg": "RS256", "kid": "rsa-1"}, payload)
    assert refused(verifier, token) == "jwt-malformed-payload"


# ---------------------------------------------------------------- claim rules


@pytest.mark.parametrize("iss", ["https://evil.test", ISS + "/", ISS.upper(), ..., 1, [ISS]])
def test_verifier_refuses_wrong_issuer(verifier, keys, iss):
    """Iss must be exactly the configured issuer (no prefix, case or type games; required)."""
    assert refused(verifier, mint(keys, iss=iss)) == "jwt-iss-mismatch"


@pytest.mark.parametrize(
    "aud", ["not-secureserve", ["other", "x"], ..., 1, "secureserve2", [["secureserve"]]]
)
def test_verifier_refuses_wrong_audience(verifier, keys, aud):
    """Aud must be our audience or a list containing it; it is required."""
    assert refused(verifier, mint(keys, aud=aud)) == "jwt-aud-mismatch"


def test_verifier_accepts_audience_list_containing_ours(verifier, keys):
    """A token for several audiences is accepted when ours is one of them."""
    assert verifier.verify(mint(keys, aud=["other", AUD])).name == "client-7"


@pytest.mark.parametrize(("skew", "ok"), [(-29, True), (-30, False), (-31, False), (3600, True)])
def test_verifier_expiry_honours_the_leeway(jwks_path, keys, skew, ok):
    """Exp is accepted up to leeway (30 s) after it passed, refused from then on."""
    v = JWTVerifier(jwks_file=jwks_path, issuer=ISS, audience=AUD, clock=lambda: NOW)
    token = mint(keys, exp=NOW + skew)
    if ok:
        assert v.verify(token).name == "client-7"
    else:
        assert refused(v, token) == "jwt-expired"


@pytest.mark.parametrize(
    ("claim", "reason"), [("nbf", "jwt-not-yet-valid"), ("iat", "jwt-iat-in-future")]
)
@pytest.mark.parametrize(("skew", "ok"), [(30, True), (31, False), (86400, False)])
def test_verifier_nbf_and_iat_honour_the_leeway(verifier, keys, claim, reason, skew, ok):  # noqa: PLR0917
    """Nbf and iat in the future are tolerated up to the leeway, refused beyond it."""
    token = mint(keys, **{claim: NOW + skew})
    if ok:
        assert verifier.verify(token).name == "client-7"
    else:
        assert refused(verifier, token) == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": ...}, "jwt-exp-missing"),
        ({"exp": str(NOW + 3600)}, "jwt-exp-invalid"),
        ({"exp": True}, "jwt-exp-invalid"),
        ({"nbf": "0"}, "jwt-nbf-invalid"),
        ({"iat": None}, "jwt-iat-invalid"),
    ],
    ids=["exp-missing", "exp-string", "exp-bool", "nbf-string", "iat-null"],
)
def test_verifier_refuses_missing_or_non_numeric_dates(verifier, keys, changes, reason):
    """Exp is required; exp, nbf and iat must be JSON numbers."""
    assert refused(verifier, mint(keys, **changes)) == reason


def test_verifier_accepts_without_nbf_and_iat(verifier, keys):
    """Nbf and iat are optional."""
    assert verifier.verify(mint(keys, nbf=..., iat=...)).name == "client-7"


@pytest.mark.parametrize(
    ("sub", "reason"),
    [
        (..., "jwt-sub-missing"),
        ("", "jwt-sub-missing"),
        (42, "jwt-sub-missing"),
        ("x" * 257, "jwt-sub-too-long"),
    ],
)
def test_verifier_refuses_missing_or_bad_subject(verifier, keys, sub, reason):
    """Sub is required: a non-empty string of at most 256 characters."""
    assert refused(verifier, mint(keys, sub=sub)) == reason


def test_verifier_accepts_a_256_character_subject(verifier, keys):
    """256 characters is the limit, inclusive; the principal id is prefixed with jwt:."""
    principal = verifier.verify(mint(keys, sub="s" * 256))
    assert principal.id == "jwt:" + "s" * 256


@pytest.mark.parametrize(
    ("role", "roles"),
    [
        ("predict", {"predict"}),
        (["predict", "admin"], {"predict", "admin"}),
        (
            ["metrics", "analyst", "not a role", "x" * 65, "Admin", "admin\n"],
            {"metrics", "analyst"},
        ),
        ("bad/role", set()),
        ([], set()),
        (..., set()),
    ],
    ids=["string", "list", "malformed-dropped", "only-malformed", "empty", "absent"],
)
def test_verifier_roles_claim_string_or_list(verifier, keys, role, roles):
    """Roles: a string or a list; custom roles kept, malformed names dropped.

    None left: authenticated, with no roles.
    """
    assert verifier.verify(mint(keys, role=role)).roles == frozenset(roles)


@pytest.mark.parametrize("role", [1, {"predict": True}, ["predict", 1], ["r"] * 65])
def test_verifier_refuses_a_malformed_roles_claim(verifier, keys, role):
    """A roles claim that is neither a string nor a list of strings is refused."""
    assert refused(verifier, mint(keys, role=role)) == "jwt-roles-claim-invalid"


@pytest.mark.parametrize(("models", "expected"), [(..., None), (["iris"], {"iris"}), ([], set())])
def test_verifier_models_claim_list_or_absent(verifier, keys, models, expected):
    """No models claim allows every model; a list allows exactly those."""
    got = verifier.verify(mint(keys, models=models)).models
    assert got == (None if expected is None else frozenset(expected))


@pytest.mark.parametrize("models", ["iris", None, {"iris": 1}, ["iris", 2]])
def test_verifier_refuses_a_malformed_models_claim(verifier, keys, models):
    """A models claim that is not a list of strings is refused (never read as 'all models')."""
    assert refused(verifier, mint(keys, models=models)) == "jwt-models-claim-invalid"


def test_verifier_reads_configured_claim_names(jwks_path, keys):
    """roles_claim and models_claim choose which claims hold roles and models."""
    v = JWTVerifier(
        jwks_file=jwks_path,
        issuer=ISS,
        audience=AUD,
        roles_claim="scp",
        models_claim="ss_models",
        clock=lambda: NOW,
    )
    principal = v.verify(mint(keys, scp=["admin"], ss_models=["iris"], models="ignored"))
    assert principal.roles == frozenset({"admin"})
    assert principal.models == frozenset({"iris"})


# ---------------------------------------------------------------- JWKS reloads


@pytest.fixture
def instant_reload(monkeypatch):
    monkeypatch.setattr(tokens, "_RELOAD_EVERY_S", 0.0)


def test_verifier_reload_picks_up_added_key(tmp_path, keys, instant_reload):
    """A key added to the JWKS file is used once the file changes."""
    path = write_jwks(tmp_path / "jwks.json", [keys["rsa-1"][1]])
    v = JWTVerifier(jwks_file=path, issuer=ISS, audience=AUD, clock=lambda: NOW)
    assert refused(v, mint(keys, "ec-1")) == "jwt-kid-unknown"
    write_jwks(path, [keys["rsa-1"][1], keys["ec-1"][1]])
    assert v.verify(mint(keys, "ec-1")).name == "client-7"
    assert v.last_error is None


def test_verifier_reload_refuses_tokens_of_removed_key(jwks_path, keys, verifier, instant_reload):
    """A key removed from the JWKS file stops verifying its tokens; the others still work."""
    token = mint(keys, "ed-1")
    assert verifier.verify(token).name == "client-7"
    write_jwks(jwks_path, [keys["rsa-1"][1]])
    assert refused(verifier, token) == "jwt-kid-unknown"
    assert verifier.verify(mint(keys, "rsa-1")).name == "client-7"


def test_verifier_reload_checks_at_most_once_per_interval(jwks_path, keys, verifier, monkeypatch):
    """Within the reload interval the file is not looked at again (one stat per second at most)."""
    monkeypatch.setattr(tokens, "_RELOAD_EVERY_S", 3600.0)
    token = mint(keys, "ed-1")
    write_jwks(jwks_path, [keys["rsa-1"][1]])
    assert verifier.verify(token).name == "client-7"  # still the keys of the last read


@pytest.mark.parametrize("damage", ["garbage", "empty-keys", "deleted", "oct-key"])
def test_verifier_corrupted_jwks_fails_closed(jwks_path, keys, verifier, instant_reload, damage):
    """A JWKS file turning invalid refuses every token and sets last_error; fixing it recovers."""
    if damage == "garbage":
        jwks_path.write_text("{not json")
    elif damage == "empty-keys":
        write_jwks(jwks_path, [])
    elif damage == "deleted":
        jwks_path.unlink()
    else:
        write_jwks(jwks_path, [keys["rsa-1"][1], {"kty": "oct", "kid": "k", "k": "c2VjcmV0"}])
    for kid in keys:
        assert refused(verifier, mint(keys, kid)) == "jwt-jwks-invalid"
    assert verifier.last_error is not None
    assert str(jwks_path) in verifier.last_error
    write_jwks(jwks_path, [jwk for _, jwk, _ in keys.values()])
    assert verifier.verify(mint(keys, "ec-1")).name == "client-7"
    assert verifier.last_error is None


# ---------------------------------------------------------------- construction


def _config_error(path: Path, document: Any, **kwargs: Any) -> str:
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(ConfigError) as info:
        JWTVerifier(jwks_file=path, issuer=ISS, audience=AUD, **kwargs)
    return str(info.value)


def test_verifier_init_refuses_missing_file(tmp_path):
    """A missing JWKS file stops start-up with a message naming it."""
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError, match=r"absent\.json"):
        JWTVerifier(jwks_file=path, issuer=ISS, audience=AUD)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda k: "{", "not valid JSON"),
        (lambda k: {"keys": []}, '"keys" list'),
        (lambda k: [k["rsa-1"][1]], '"keys" list'),
        (lambda k: '{"keys": [], "keys": []}', "repeats"),
        (lambda k: {"keys": [{**k["rsa-1"][1], "kid": None}]}, 'no "kid"'),
        (lambda k: {"keys": [k["rsa-1"][1], {**k["ec-1"][1], "kid": "rsa-1"}]}, "appears twice"),
        (lambda k: {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}, "symmetric"),
        (lambda k: {"keys": [{**k["rsa-1"][1], "alg": "RS384"}]}, "fits none"),
        (lambda k: {"keys": [{**k["ec-1"][1], "alg": "RS256"}]}, "fits none"),
        (lambda k: {"keys": [{**k["rsa-1"][1], "use": "enc"}]}, "not a signature key"),
        (lambda k: {"keys": [{**k["rsa-1"][1], "key_ops": ["encrypt"]}]}, "not a signature key"),
        (lambda k: {"keys": [{**k["rsa-1"][1], "d": "AQAB"}]}, "private key"),
        (lambda k: {"keys": [tiny_rsa_jwk()]}, "RSA key of 1024 bits"),
        (lambda k: {"keys": [{**k["ec-1"][1], "x": "AA"}]}, "not a usable key"),
        (lambda k: {"keys": ["rsa"]}, "JSON object"),
    ],
    ids=[
        "not-json",
        "no-keys",
        "not-object",
        "duplicate-member",
        "no-kid",
        "duplicate-kid",
        "oct",
        "rsa-wrong-alg",
        "ec-claims-rs256",
        "use-enc",
        "key-ops-encrypt",
        "private",
        "tiny-rsa",
        "broken-ec",
        "key-not-object",
    ],
)
def test_verifier_init_refuses_invalid_jwks(tmp_path, keys, build, fragment):
    """Each unusable JWKS stops start-up with a ConfigError naming the file and the problem."""
    path = tmp_path / "jwks.json"
    message = _config_error(path, build(keys))
    assert str(path) in message
    assert fragment in message


def test_verifier_init_refuses_key_type_outside_the_allowed_algorithms(tmp_path, keys):
    """An EC key in the JWKS while only RS256 is allowed is a configuration error."""
    message = _config_error(
        tmp_path / "jwks.json", {"keys": [keys["rsa-1"][1], keys["ec-1"][1]]}, algorithms=["RS256"]
    )
    assert "'ec-1'" in message
    assert "RS256" in message


@pytest.mark.parametrize(
    "algorithms", [["HS256"], ["RS256", "HS512"], ["none"], ["RS384"], [], "RS256"]
)
def test_verifier_init_refuses_algorithms_outside_rs256_es256_eddsa(jwks_path, algorithms):
    """HMAC, none, other algorithms, an empty list or a bare string never configure a verifier."""
    with pytest.raises(ConfigError, match="JWT algorithms"):
        JWTVerifier(jwks_file=jwks_path, issuer=ISS, audience=AUD, algorithms=algorithms)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"issuer": ""},
        {"audience": ""},
        {"leeway_s": -1},
        {"leeway_s": 301},
        {"max_token_bytes": 0},
        {"roles_claim": ""},
    ],
)
def test_verifier_init_refuses_bad_settings(jwks_path, kwargs):
    """Empty issuer/audience/claim names and out-of-range numbers stop start-up."""
    settings: dict[str, Any] = {"issuer": ISS, "audience": AUD, **kwargs}
    with pytest.raises(ConfigError):
        JWTVerifier(jwks_file=jwks_path, **settings)


def test_verifier_keys_under_the_real_clock(jwks_path, keys):
    """With the default clock, a fresh token is accepted and one expired an hour ago is not."""
    import time

    v = JWTVerifier(jwks_file=jwks_path, issuer=ISS, audience=AUD)
    now = int(time.time())
    assert v.verify(mint(keys, iat=now, nbf=now, exp=now + 60)).name == "client-7"
    assert refused(v, mint(keys, iat=now - 7200, nbf=now - 7200, exp=now - 3600)) == "jwt-expired"


# ---------------------------------------------------------------- looks_like_jwt


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        ("eyJh.eyJz.sig", True),
        ("eyJh.eyJz.", True),
        ("a-b_c.d.e", True),
        ("ss_0123456789ab_" + "A" * 43, False),
        ("a.b", False),
        ("a.b.c.d", False),
        (".b.c", False),
        ("a.b.c=", False),
        ("a+b.c.d", False),
        ("é.b.c", False),
        ("", False),
    ],
)
def test_looks_like_jwt_checks_the_shape(credential, expected):
    """Three base64url segments (signature may be empty) and nothing else."""
    assert looks_like_jwt(credential) is expected


def test_verifier_symlinked_jwks_reloads_on_target_change(tmp_path, keys, instant_reload):
    """A JWKS behind a symlink (Kubernetes secret volumes) reloads when the link is swapped."""
    first = write_jwks(tmp_path / "a.json", [keys["rsa-1"][1]])
    second = write_jwks(tmp_path / "b.json", [keys["ec-1"][1]])
    link = tmp_path / "jwks.json"
    link.symlink_to(first)
    v = JWTVerifier(jwks_file=link, issuer=ISS, audience=AUD, clock=lambda: NOW)
    assert v.verify(mint(keys, "rsa-1")).name == "client-7"
    tmp_link = tmp_path / "jwks.tmp"
    tmp_link.symlink_to(second)
    tmp_link.replace(link)
    assert refused(v, mint(keys, "rsa-1")) == "jwt-kid-unknown"
    assert v.verify(mint(keys, "ec-1")).name == "client-7"
