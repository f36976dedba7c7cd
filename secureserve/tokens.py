"""Bearer JWTs: verification as an OAuth2 resource server, against a local JWKS file.

A token is accepted only if every check passes, in this order: size, shape, the
JOSE header (``alg`` on the allow-list, never ``none`` or HMAC; no ``jwk``,
``jku``, ``x5u``, ``x5c`` or ``crit``; a ``kid`` naming a key in the file whose
type and ``alg`` fit the header's ``alg``), the signature, then the claims
(``iss`` exactly equal, ``aud`` containing ours, ``exp`` required, ``nbf`` and
``iat`` honoured with the leeway, ``sub`` a string of at most 256 characters).
Every failure raises the same 401 (``auth.unauthorized``); the reason, for the
log only, names the check. There is no network: keys come from the JWKS file,
which is re-read when it changes, and fail closed while it is invalid.

Why PyJWT: it is the most widely used JOSE library for Python, maintained
(regular releases, security advisories handled publicly), typed (``py.typed``),
small and pure Python, and it delegates all cryptography to ``cryptography``,
already a dependency, so it adds no native code. Its ``PyJWK`` binds each key to
one algorithm and refuses a token whose ``alg`` differs, which closes the
RS256/HS256 key-confusion class at the library level as well. We use it only
for what is easy to get wrong (JWK parsing, base64url and signature
verification); header policy and claim checks are ours, explicit and against an
injectable clock. python-jose (unmaintained, past algorithm-confusion CVEs)
and authlib/jwcrypto (larger surfaces than a resource server needs) were set
aside.
"""

from __future__ import annotations

import binascii
import math
import re
import time
from base64 import urlsafe_b64decode
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
import msgspec

from secureserve.auth import Principal, unauthorized
from secureserve.errors import ConfigError
from secureserve.secretfiles import read_regular
from secureserve.settings import is_role_name
from secureserve.strict_json import find_duplicate_key

__all__ = ["SUPPORTED_ALGORITHMS", "JWTVerifier", "looks_like_jwt"]

SUPPORTED_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")
#: Roles kept from one token; a claim listing more is refused (no role is guessed at).
MAX_ROLES: Final = 64
MAX_SUBJECT_CHARS: Final = 256
MIN_RSA_BITS: Final = 2048
_RELOAD_EVERY_S = 1.0  # at most one stat() per interval (tests shorten it)
_FORBIDDEN_HEADERS: Final = ("jwk", "jku", "x5u", "x5c", "crit")
_JWT_RE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Which key type (and curve) may verify which algorithm.
_FITS: Final[dict[str, tuple[str, frozenset[str | None]]]] = {
    "RS256": ("RSA", frozenset({None})),
    "ES256": ("EC", frozenset({"P-256"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
_MISSING: Final = (0, 0, 0)
_MAX_JWKS_BYTES: Final = 1024 * 1024


def looks_like_jwt(credential: str) -> bool:
    """Three base64url segments separated by dots (the last may be empty): a cheap shape check."""
    return _JWT_RE.fullmatch(credential) is not None


@dataclass(frozen=True, slots=True)
class _Key:
    algorithm: str
    jwk: jwt.PyJWK


class JWTVerifier:
    """Verifies bearer JWTs and turns them into a ``Principal``.

    The JWKS file is read now (``ConfigError`` if it is unusable) and re-read when
    its mtime, size or inode changes, checked at most once per second. If it turns
    invalid while serving, every token is refused and ``last_error`` says why.
    """

    def __init__(
        self,
        *,
        jwks_file: Path,
        issuer: str,
        audience: str,
        algorithms: Sequence[str] = SUPPORTED_ALGORITHMS,
        roles_claim: str = "role",
        models_claim: str = "models",
        leeway_s: int = 30,
        max_token_bytes: int = 8192,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._algorithms = _allowed(algorithms)
        for name, value in (
            ("issuer", issuer),
            ("audience", audience),
            ("roles_claim", roles_claim),
            ("models_claim", models_claim),
        ):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"JWT {name} must be a non-empty string.")
        if not 0 <= leeway_s <= 300:  # noqa: PLR2004 - the bound config.py enforces too
            raise ConfigError(f"JWT leeway_s={leeway_s}: choose 0 to 300 seconds.")
        if max_token_bytes < 1:
            raise ConfigError(f"JWT max_token_bytes={max_token_bytes}: must be positive.")
        self._path = jwks_file
        self._issuer = issuer
        self._audience = audience
        self._roles_claim = roles_claim
        self._models_claim = models_claim
        self._leeway = float(leeway_s)
        self._max_bytes = max_token_bytes
        self._clock = clock
        self._jws = jwt.PyJWS(options={"enforce_minimum_key_length": True})
        self._stamp = _stamp(jwks_file)
        self._keys = _read_jwks(jwks_file, self._algorithms)
        self._error: str | None = None
        self._checked = time.monotonic()

    @property
    def last_error(self) -> str | None:
        """Why the JWKS file could not be reloaded, or ``None`` when the keys are current."""
        return self._error

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; otherwise the uniform 401 ``RequestRejected``."""
        if not isinstance(token, str):
            raise unauthorized("jwt-malformed")
        if len(token) > self._max_bytes:
            raise unauthorized("jwt-too-large")
        if not looks_like_jwt(token):  # ASCII only, so len() is the byte count
            raise unauthorized("jwt-malformed")
        self._maybe_reload()
        if self._error is not None:
            raise unauthorized("jwt-jwks-invalid")
        header = _decode_segment(token.split(".", 1)[0], "header")
        key = self._key_for(header)
        try:
            payload = self._jws.decode_complete(token, key=key.jwk, algorithms=[key.algorithm])
        except jwt.InvalidSignatureError:
            raise unauthorized("jwt-bad-signature") from None
        except jwt.PyJWTError:
            raise unauthorized("jwt-malformed") from None
        claims = _json_object(payload["payload"], "payload")
        self._check_claims(claims)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise unauthorized("jwt-sub-missing")
        if len(sub) > MAX_SUBJECT_CHARS:
            raise unauthorized("jwt-sub-too-long")
        return Principal(
            id=f"jwt:{sub}",
            name=sub,
            roles=self._roles(claims),
            models=self._models(claims),
        )

    def _key_for(self, header: dict[str, Any]) -> _Key:
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise unauthorized("jwt-alg-missing")
        if alg.lower() == "none":
            raise unauthorized("jwt-alg-none")
        if alg.upper().startswith("HS"):
            raise unauthorized("jwt-alg-hmac")
        if alg not in self._algorithms:
            raise unauthorized("jwt-alg-not-allowed")
        for name in _FORBIDDEN_HEADERS:
            if name in header:
                raise unauthorized(f"jwt-header-{name}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise unauthorized("jwt-kid-missing")
        key = self._keys.get(kid)
        if key is None:
            raise unauthorized("jwt-kid-unknown")
        if key.algorithm != alg:
            raise unauthorized("jwt-alg-key-mismatch")
        return key

    def _check_claims(self, claims: dict[str, Any]) -> None:
        if claims.get("iss") != self._issuer:
            raise unauthorized("jwt-iss-mismatch")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or self._audience not in audiences:
            raise unauthorized("jwt-aud-mismatch")
        now = self._clock()
        exp = _numeric_date(claims, "exp")
        if exp is None:
            raise unauthorized("jwt-exp-missing")
        if exp <= now - self._leeway:
            raise unauthorized("jwt-expired")
        nbf = _numeric_date(claims, "nbf")
        if nbf is not None and nbf > now + self._leeway:
            raise unauthorized("jwt-not-yet-valid")
        iat = _numeric_date(claims, "iat")
        if iat is not None and iat > now + self._leeway:
            raise unauthorized("jwt-iat-in-future")

    def _roles(self, claims: dict[str, Any]) -> frozenset[str]:
        value = claims.get(self._roles_claim)
        if value is None:
            return frozenset()
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise unauthorized("jwt-roles-claim-invalid")
        if len(names) > MAX_ROLES:
            raise unauthorized("jwt-roles-claim-invalid")
        return frozenset(n for n in names if is_role_name(n))

    def _models(self, claims: dict[str, Any]) -> frozenset[str] | None:
        if self._models_claim not in claims:
            return None
        value = claims[self._models_claim]
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            raise unauthorized("jwt-models-claim-invalid")
        return frozenset(value)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < _RELOAD_EVERY_S:
            return
        self._checked = now
        stamp = _stamp(self._path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._keys = _read_jwks(self._path, self._algorithms)
            self._error = None
        except ConfigError as exc:
            self._keys = {}
            self._error = str(exc)


def _allowed(algorithms: Sequence[str]) -> tuple[str, ...]:
    if isinstance(algorithms, str):
        raise ConfigError(
            f"JWT algorithms must be a list such as [{algorithms!r}], not a bare string."
        )
    refused = [a for a in algorithms if a not in SUPPORTED_ALGORITHMS]
    if refused:
        raise ConfigError(
            f"JWT algorithms {refused!r} are not accepted (HMAC and 'none' never are); "
            f"choose from {', '.join(SUPPORTED_ALGORITHMS)}."
        )
    if not algorithms:
        raise ConfigError(
            f"JWT algorithms is empty; list one of {', '.join(SUPPORTED_ALGORITHMS)}."
        )
    return tuple(dict.fromkeys(algorithms))


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError:
        return _MISSING
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read_jwks(path: Path, algorithms: tuple[str, ...]) -> dict[str, _Key]:
    """Every key of the JWKS file by ``kid``; ``ConfigError`` naming the file and the fix."""
    fix = "publish the issuer's public signing keys there as a JWKS"
    try:
        data = read_regular(path, max_bytes=_MAX_JWKS_BYTES, source=f"JWKS file {path}")
    except FileNotFoundError:
        raise ConfigError(f"JWKS file {path}: does not exist; {fix}.") from None
    try:
        document = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise ConfigError(f"JWKS file {path}: not valid JSON; {fix}.") from None
    if find_duplicate_key(data):
        raise ConfigError(f"JWKS file {path}: an object repeats a member name; {fix}.")
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ConfigError(f'JWKS file {path}: needs a non-empty "keys" list; {fix}.')
    found: dict[str, _Key] = {}
    for index, jwk in enumerate(keys):
        key = _read_key(jwk, f"JWKS file {path}, key {index}", algorithms)
        kid = jwk["kid"]
        if kid in found:
            raise ConfigError(
                f"JWKS file {path}: kid {kid!r} appears twice; give each key its own kid."
            )
        found[kid] = key
    return found


def _read_key(jwk: object, where: str, algorithms: tuple[str, ...]) -> _Key:
    if not isinstance(jwk, dict):
        raise ConfigError(f"{where}: not a JSON object; each key must be a JWK.")
    kid, kty = jwk.get("kid"), jwk.get("kty")
    if not isinstance(kid, str) or not kid:
        raise ConfigError(f'{where}: no "kid"; tokens name their key by kid, so give it one.')
    where = f"{where} (kid {kid!r})"
    if kty == "oct":
        raise ConfigError(
            f"{where}: symmetric (oct) keys are refused, HMAC tokens are never accepted; remove it."
        )
    if "d" in jwk:
        raise ConfigError(f"{where}: holds private key material; keep only the public part here.")
    key_ops = jwk.get("key_ops", ["verify"])
    if jwk.get("use", "sig") != "sig" or not isinstance(key_ops, list) or "verify" not in key_ops:
        raise ConfigError(f"{where}: not a signature key (use/key_ops); remove it.")
    crv = jwk.get("crv")
    fitting = [a for a in algorithms if _FITS[a][0] == kty and crv in _FITS[a][1]]
    wanted = jwk.get("alg")
    if wanted is not None:
        fitting = [a for a in fitting if a == wanted]
    if not fitting:
        raise ConfigError(
            f"{where}: a {kty} key{f' ({crv})' if crv else ''}"
            f"{f' for {wanted}' if wanted else ''} fits none of the allowed algorithms "
            f"{', '.join(algorithms)}; remove it or allow its algorithm."
        )
    try:
        parsed = jwt.PyJWK(jwk, fitting[0])
    except jwt.PyJWTError as exc:
        raise ConfigError(f"{where}: not a usable key ({exc}); re-export it as a JWK.") from None
    size = getattr(parsed.key, "key_size", MIN_RSA_BITS)
    if kty == "RSA" and size < MIN_RSA_BITS:
        raise ConfigError(f"{where}: RSA key of {size} bits; use at least {MIN_RSA_BITS}.")
    return _Key(fitting[0], parsed)


def _decode_segment(segment: str, what: str) -> dict[str, Any]:
    if len(segment) % 4 == 1:
        raise unauthorized(f"jwt-malformed-{what}")
    try:
        raw = urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the shape check rules these out
        raise unauthorized(f"jwt-malformed-{what}") from None
    return _json_object(raw, what)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise unauthorized(f"jwt-malformed-{what}") from None
    if not isinstance(value, dict) or find_duplicate_key(raw):
        raise unauthorized(f"jwt-malformed-{what}")
    return value


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate claim (a JSON number, never a string or boolean), or ``None`` if absent."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise unauthorized(f"jwt-{name}-invalid")
    if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - msgspec
        raise unauthorized(f"jwt-{name}-invalid")
    return value
