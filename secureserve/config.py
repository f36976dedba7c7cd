"""Typed, frozen settings: ``secureserve.toml``, then ``SECURESERVE_<SECTION>__<KEY>``, then flags.

Every section is a strict msgspec Struct, so an unknown key or a wrong type stops
start-up with a message that names the key (``[server] port``) or the environment
variable and says what to do. Relative paths are resolved against the folder of
the configuration file (the project folder), never against a later working
directory. Insecure combinations are refused in :func:`check_settings`, which
``create_app`` also runs on settings built in code.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from types import UnionType
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Final,
    Literal,
    Union,
    get_args,
    get_origin,
)

import msgspec

from secureserve.errors import ConfigError
from secureserve.secretfiles import read_regular

if TYPE_CHECKING:
    from limits import RateLimitItem

__all__ = [
    "CONFIG_FILENAME",
    "AuthSettings",
    "LoggingSettings",
    "ModelSettings",
    "ServerSettings",
    "Settings",
    "TLSSettings",
    "check_settings",
    "load_settings",
    "parse_rate",
    "read_config_file",
    "resolve_paths",
]

CONFIG_FILENAME: Final = "secureserve.toml"
ENV_PREFIX: Final = "SECURESERVE_"
# Secrets passed in the environment: read where they are used, never part of Settings.
_SECRET_VARIABLES: Final = frozenset({"SECURESERVE_MODEL__ENCRYPTION_KEY"})

_MAX_CONFIG_BYTES: Final = 1024 * 1024
DEFAULT_MAX_BODY_BYTES: Final = 1_048_576
DEFAULT_MAX_INSTANCES: Final = 32
DEFAULT_MAX_IN_FLIGHT: Final = 256
DEFAULT_TIMEOUT_S: Final = 10.0
DEFAULT_KEEP_ALIVE_S: Final = 5
DEFAULT_MAX_CONNECTIONS: Final = 1024
DEFAULT_HEADER_TIMEOUT_S: Final = 10.0
DEFAULT_IDLE_TIMEOUT_S: Final = 10.0
DEFAULT_HANDSHAKE_TIMEOUT_S: Final = 10.0
DEFAULT_MAX_HEADERS: Final = 100
DEFAULT_MAX_HEAD_BYTES: Final = 16384
DEFAULT_MAX_CONNECTIONS_PER_IP: Final = 128
#: Rotated audit files kept: with the default max_bytes the log peaks at (9 + 1) x 100 MiB,
#: inside the 1 GiB volume that `secureserve new` gives it in Kubernetes.
DEFAULT_AUDIT_MAX_FILES: Final = 9
#: Refusals of unauthenticated callers are counted per address for this long, then written.
DEFAULT_REFUSAL_WINDOW_S: Final = 60.0
DEFAULT_STORAGE_TIMEOUT_S: Final = 0.5

# Sections and keys that DESIGN.md names but this version does not implement yet.
# Accepting them silently would suggest a protection that is not there.
_PLANNED: Final[dict[str, str]] = {}


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Strict base: a typo in a key is an error, not a silently ignored setting."""


PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class ServerSettings(_Section, frozen=True):
    """``[server]``: where to listen and how much one request may cost."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8443
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    max_body_bytes: Annotated[int, msgspec.Meta(ge=64, le=1 << 30)] = DEFAULT_MAX_BODY_BYTES
    max_instances: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = DEFAULT_MAX_INSTANCES
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = DEFAULT_MAX_IN_FLIGHT
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = DEFAULT_MAX_CONNECTIONS
    predict_timeout_s: PositiveSeconds = DEFAULT_TIMEOUT_S
    body_timeout_s: PositiveSeconds = DEFAULT_TIMEOUT_S
    keep_alive_s: Annotated[int, msgspec.Meta(ge=1, le=300)] = DEFAULT_KEEP_ALIVE_S
    header_timeout_s: PositiveSeconds = DEFAULT_HEADER_TIMEOUT_S
    idle_timeout_s: PositiveSeconds = DEFAULT_IDLE_TIMEOUT_S
    handshake_timeout_s: PositiveSeconds = DEFAULT_HANDSHAKE_TIMEOUT_S
    max_headers: Annotated[int, msgspec.Meta(ge=8, le=10_000)] = DEFAULT_MAX_HEADERS
    max_head_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 20)] = DEFAULT_MAX_HEAD_BYTES
    max_connections_per_ip: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = (
        DEFAULT_MAX_CONNECTIONS_PER_IP
    )
    trusted_proxies: tuple[str, ...] = ()


class TLSSettings(_Section, frozen=True):
    """``[tls]``: the server certificate, and client CAs for mutual TLS."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"


class ClientCertificate(_Section, frozen=True):
    """One ``[[auth.client_certificates]]`` entry: a certificate subject mapped to a principal."""

    subject: str
    roles: tuple[Literal["predict", "explain", "metrics", "admin"], ...]
    models: tuple[str, ...] | None = None


class AuthSettings(_Section, frozen=True):
    """``[auth]``: API key records (hashes only), JWT verification, mTLS identities."""

    keys_file: Path = Path("secrets/api_keys.toml")
    jwks_file: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: tuple[Literal["RS256", "ES256", "EdDSA"], ...] = ("RS256", "ES256", "EdDSA")
    jwt_roles_claim: str = "role"
    jwt_models_claim: str = "models"
    jwt_leeway_s: Annotated[int, msgspec.Meta(ge=0, le=300)] = 30
    client_certificates: tuple[ClientCertificate, ...] = ()


RateString = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
#: The value that switches a limit off in secureserve.toml (TOML has no null).
RATE_OFF: Final = "off"


class LimitsSettings(_Section, frozen=True):
    """``[limits]``: rate limits and quotas (``limits`` rate strings such as ``"60/minute"``)."""

    storage: str = "memory://"
    per_principal: RateString | None = "60/minute"
    per_model: RateString | None = None
    auth_failures_per_ip: RateString | None = "10/minute"
    quota: RateString | None = "10000/day"
    on_storage_error: Literal["refuse", "memory"] = "refuse"
    storage_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = DEFAULT_STORAGE_TIMEOUT_S
    key_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "secureserve"


class AuditSettings(_Section, frozen=True):
    """``[audit]``: the hash-chained audit log."""

    path: Path = Path("audit/audit.jsonl")
    digest_key_file: Path | None = None
    max_bytes: Annotated[int, msgspec.Meta(ge=4096, le=1 << 40)] = 100 * 1024 * 1024
    max_files: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = DEFAULT_AUDIT_MAX_FILES
    refusal_window_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = DEFAULT_REFUSAL_WINDOW_S
    on_write_error: Literal["refuse", "continue"] = "refuse"


class ModelSettings(_Section, frozen=True):
    """``[model]``: which handler to serve and where its files are."""

    handler: str | None = None
    dir: Path = Path("models")
    signing_public_key: Path | None = None
    encryption_key_file: Path | None = None
    max_artifact_bytes: Annotated[int, msgspec.Meta(ge=1, le=1 << 40)] = 2 * 1024**3
    onnx_allowed_domains: tuple[str, ...] = ()
    onnx_threads: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    onnx_max_nodes: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000
    onnx_optimization: Literal["disabled", "basic", "extended", "all"] = "all"


class LoggingSettings(_Section, frozen=True):
    """``[logging]``: JSON lines on stdout at this level."""

    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section, frozen=True):
    """All settings; ``project_dir`` is the folder relative paths were resolved against."""

    project_dir: Path = Path()
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    tls: TLSSettings = msgspec.field(default_factory=TLSSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)


_SECTIONS: Final[dict[str, type[_Section]]] = {
    "server": ServerSettings,
    "tls": TLSSettings,
    "auth": AuthSettings,
    "limits": LimitsSettings,
    "audit": AuditSettings,
    "model": ModelSettings,
    "logging": LoggingSettings,
}
_field_types: Final = {
    struct: {f.name: f.type for f in msgspec.structs.fields(struct)}
    for struct in _SECTIONS.values()
}
_PATH_KEYS: Final = (
    ("tls", "cert"),
    ("tls", "key"),
    ("tls", "client_ca"),
    ("auth", "keys_file"),
    ("auth", "jwks_file"),
    ("audit", "path"),
    ("audit", "digest_key_file"),
    ("model", "dir"),
    ("model", "signing_public_key"),
    ("model", "encryption_key_file"),
)


def load_settings(
    config: Path | None = None,
    *,
    project_dir: Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Read settings from the file, then the environment, then ``overrides`` (CLI flags).

    ``config`` defaults to ``secureserve.toml`` in ``project_dir`` (default: the
    working directory); a missing default file means "all defaults", a missing
    explicit file is an error. Relative paths resolve against the file's folder.
    """
    base = (project_dir or Path.cwd()).resolve()
    raw: dict[str, dict[str, Any]] = {}
    if config is not None:
        config = config if config.is_absolute() else base / config
        if not config.exists():
            raise ConfigError(f"configuration file {config} does not exist; check --config.")
        base = config.resolve().parent
        raw = read_config_file(config)
    elif (base / CONFIG_FILENAME).exists():  # a folder or FIFO there is refused, not skipped
        raw = read_config_file(base / CONFIG_FILENAME)
    source = str(config) if config is not None else CONFIG_FILENAME
    _refuse_planned(raw, source)
    _merge(raw, _from_environ(os.environ if environ is None else environ))
    _merge(raw, overrides or {})
    try:
        settings = msgspec.convert(
            {"project_dir": str(base), **raw}, Settings, strict=True, dec_hook=_path_hook
        )
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    settings = resolve_paths(settings)
    check_settings(settings)
    return settings


def resolve_paths(settings: Settings) -> Settings:
    """Make every relative path absolute against the project folder (idempotent)."""
    base = settings.project_dir.resolve()
    sections: dict[str, Any] = {"project_dir": base}
    for section, key in _PATH_KEYS:
        current = sections.get(section, getattr(settings, section))
        value = getattr(current, key)
        if value is not None and not value.is_absolute():
            sections[section] = msgspec.structs.replace(current, **{key: base / value})
    return msgspec.structs.replace(settings, **sections)


def _path_hook(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str) and value and "\0" not in value:
        return Path(value)
    raise NotImplementedError


def read_config_file(path: Path) -> dict[str, dict[str, Any]]:
    """The tables of a settings file, read once and bounded; ``ConfigError`` if unusable."""
    try:
        raw = read_regular(path, max_bytes=_MAX_CONFIG_BYTES, source=str(path))
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: does not exist; check --config.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax.") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be settings; fix the file.") from None
    for section, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(
                f"{path}: `{section}` must be a [section] table; every setting lives in one "
                "(see docs/configuration.md)."
            )
    return data


def _refuse_planned(raw: dict[str, dict[str, Any]], source: str) -> None:
    for section, body in raw.items():
        for name in (section, *(f"{section}.{key}" for key in body)):
            if name in _PLANNED:
                shown = f"[{section}]" if name == section else f"[{section}] {name.split('.')[1]}"
                raise ConfigError(
                    f"{source}: {shown} configures {_PLANNED[name]}, which this version of "
                    "secureserve does not provide yet; remove it rather than rely on a "
                    "protection that is not there."
                )


def _from_environ(environ: dict[str, str] | os._Environ[str]) -> dict[str, dict[str, Any]]:
    """Turn ``SECURESERVE_SECTION__KEY`` variables into a nested dict.

    Names without ``__`` are not configuration and are ignored.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name or name in _SECRET_VARIABLES:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if f"{section}.{key}" in _PLANNED or section in _PLANNED:
            raise ConfigError(
                f"{name} configures {_PLANNED.get(section) or _PLANNED[f'{section}.{key}']}, "
                "which this version does not provide yet; unset it."
            )
        struct = _SECTIONS.get(section)
        if struct is None or key not in struct.__struct_fields__:
            raise ConfigError(
                f"{name} is not a secureserve setting; check the spelling "
                "(SECURESERVE_<SECTION>__<KEY>, see docs/configuration.md) or unset it."
            )
        out.setdefault(section, {})[key] = _env_value(name, value, struct, key)
    return out


def _env_value(name: str, value: str, struct: type[_Section], key: str) -> Any:
    """Strings stay strings for text and path keys; everything else is read as JSON.

    ``null`` unsets an optional key (e.g. ``SECURESERVE_LIMITS__QUOTA=null``).
    """
    hint = _field_types[struct][key]
    if value == "null" and type(None) in get_args(hint):
        return None
    if _is_text(hint):
        return value
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        raise ConfigError(
            f"{name}={value!r} is not valid here; numbers, booleans and lists "
            'are written as JSON (e.g. 8443, true, ["a"]).'
        ) from None


def _is_text(hint: Any) -> bool:
    """True for ``str``, ``Path``, ``Literal[...]`` and optional versions of them."""
    if hint in (str, Path) or get_origin(hint) is Literal:
        return True
    if get_origin(hint) is Annotated:
        return _is_text(get_args(hint)[0])
    args = [a for a in get_args(hint) if a is not type(None)]
    return get_origin(hint) in (Union, UnionType) and len(args) == 1 and _is_text(args[0])


def _merge(into: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]]) -> None:
    for section, values in extra.items():
        into.setdefault(section, {}).update(values)


_PATH_RE: Final = re.compile(r"\$\.?([A-Za-z_]*)\.?([A-Za-z_]*)")


def _describe(exc: msgspec.ValidationError) -> str:
    """Rewrite msgspec's ``... - at `$.server.port``` into ``[server] port: ...`` plus a fix."""
    message, _, where = str(exc).partition(" - at ")
    match = _PATH_RE.match(where.strip("`"))
    section, key = (match.group(1), match.group(2)) if match else ("", "")
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        place = f"[{section}] {field}" if section else f"[{field}]"
        return (
            f"{place} is not a secureserve setting; check the spelling (see docs/configuration.md)."
        )
    place = f"[{section}] {key}" if key else f"[{section}]"
    reason = f"{message[0].lower()}{message[1:]}"
    return f"{place}: {reason}; see docs/configuration.md for the allowed values."


def check_settings(settings: Settings) -> None:
    """Refuse insecure or unservable combinations with a ``ConfigError`` naming the keys."""
    for proxy in settings.server.trusted_proxies:
        try:
            network = ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"[server] trusted_proxies: {proxy!r} is not an IP address or "
                "network; list your load balancers' addresses."
            ) from None
        if network.prefixlen == 0:
            raise ConfigError(
                f"[server] trusted_proxies: {proxy!r} would let any client forge "
                "X-Forwarded-For; list your load balancers' addresses only."
            )
    for domain in settings.model.onnx_allowed_domains:
        if not domain or domain in {"ai.onnx", "ai.onnx.ml"}:
            raise ConfigError(
                f"[model] onnx_allowed_domains: {domain!r} is not needed; the "
                "standard ONNX domains are always allowed."
            )
    if settings.server.workers > 1:
        raise ConfigError(
            "[server] workers: this version serves from one process; run one "
            "process per container and scale with replicas (set workers = 1)."
        )
    _check_auth(settings.auth)
    if settings.auth.client_certificates and settings.tls.client_ca is None:
        raise ConfigError(
            "[auth] client_certificates maps certificate subjects, but [tls] client_ca is not "
            "set, so no client certificate is ever verified: set client_ca or remove the mapping."
        )
    _check_limits(settings.limits, settings.server.max_instances)
    if settings.project_dir.is_relative_to(settings.model.dir.resolve()):
        raise ConfigError(
            f"[model] dir is {settings.model.dir}, which holds the project folder itself: the "
            "model would see secureserve.toml, secrets/ and the lock. Keep the model files in "
            "their own folder, such as models/."
        )
    tls = settings.tls
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError(
            "[tls] cert and key go together; set both (or use `secureserve run "
            "--dev` for a local development certificate)."
        )


def _check_auth(auth: AuthSettings) -> None:
    jwt = {
        "jwks_file": auth.jwks_file,
        "jwt_issuer": auth.jwt_issuer,
        "jwt_audience": auth.jwt_audience,
    }
    given = [key for key, value in jwt.items() if value is not None]
    if given and len(given) != len(jwt):
        missing = ", ".join(key for key in jwt if key not in given)
        raise ConfigError(
            f"[auth] JWT verification needs jwks_file, jwt_issuer and jwt_audience together; "
            f"{missing} missing. Set all three, or none to accept API keys only."
        )
    if not auth.jwt_algorithms:
        raise ConfigError(
            "[auth] jwt_algorithms is empty; list at least one of RS256, ES256, EdDSA."
        )
    subjects = [entry.subject for entry in auth.client_certificates]
    if len(set(subjects)) != len(subjects):
        raise ConfigError("[auth] client_certificates lists a subject twice; keep one entry each.")


def parse_rate(key: str, value: str) -> RateLimitItem:
    """The one positive rate ``value`` of ``[limits] key``, or a ``ConfigError`` naming it."""
    from limits import parse_many  # noqa: PLC0415 - importing limits is slow; only needed here

    try:
        items = parse_many(value)
    except ValueError:
        items = []
    if len(items) != 1 or items[0].amount < 1:
        raise ConfigError(
            f'[limits] {key} = {value!r} is not one rate such as "60/minute" or '
            f'"10000/day"; write "{RATE_OFF}" to switch this limit off.'
        )
    return items[0]


def _check_limits(limits: LimitsSettings, max_instances: int) -> None:
    for key in ("per_principal", "per_model", "auth_failures_per_ip", "quota"):
        value = getattr(limits, key)
        if value is not None and value != RATE_OFF:
            amount = parse_rate(key, value).amount
            if key != "auth_failures_per_ip" and amount < max_instances:
                raise ConfigError(
                    f"[limits] {key} = {value!r} admits {amount} predictions per window, but "
                    f"[server] max_instances = {max_instances} lets one request ask for more: "
                    "such a request could never be served. Lower max_instances to at most "
                    f"{amount} or raise {key}."
                )
    schemes = ("memory://", "redis://", "rediss://", "async+redis://", "async+rediss://")
    if not limits.storage.startswith(schemes):
        scheme = limits.storage.partition("://")[0][:40]  # never echo a URL with a password
        raise ConfigError(
            f'[limits] storage: unsupported scheme {scheme!r}; use "memory://" (one process) '
            'or "redis://host:port/db" (shared by replicas).'
        )
