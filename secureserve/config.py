"""Reading settings: ``secureserve.toml``, then ``SECURESERVE_<SECTION>__<KEY>``, then flags.

The sections themselves are declared in :mod:`secureserve.settings` (re-exported here).
Every section is a strict msgspec Struct, so an unknown key or a wrong type stops
start-up with a message that names the key (``[server] port``) or the environment
variable and says what to do. Relative paths are resolved against the folder of
the configuration file (the project folder), never against a later working
directory. Insecure combinations are refused in :func:`check_settings`, which
``create_app`` also runs on settings built in code.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
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
from secureserve.settings import (
    MAX_MODELS,
    RATE_OFF,
    SECTIONS,
    AuditSettings,
    AuthSettings,
    ClientCertificate,
    LimitsSettings,
    LoggingSettings,
    ModelSettings,
    ServerSettings,
    Settings,
    TLSSettings,
    is_role_name,
)

if TYPE_CHECKING:
    from limits import RateLimitItem

__all__ = [
    "CONFIG_FILENAME",
    "RATE_OFF",
    "AuditSettings",
    "AuthSettings",
    "ClientCertificate",
    "LimitsSettings",
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
_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MODEL_KEYS: Final = frozenset(f.name for f in msgspec.structs.fields(ModelSettings))

# Sections and keys that DESIGN.md names but this version does not implement yet.
# Accepting them silently would suggest a protection that is not there.
_PLANNED: Final[dict[str, str]] = {}

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
    raw: dict[str, Any] = {}
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
    _refuse_unknown(raw, source)
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
    sections["models"] = {
        name: _resolved_model(model, base) for name, model in settings.models.items()
    }
    return msgspec.structs.replace(settings, **sections)


def _resolved_model(model: ModelSettings, base: Path) -> ModelSettings:
    """A ``[models.<name>]`` table with its paths made absolute against ``base``."""
    changes = {
        key: base / value
        for section, key in _PATH_KEYS
        if section == "model"
        and (value := getattr(model, key)) is not None
        and not value.is_absolute()
    }
    return msgspec.structs.replace(model, **changes) if changes else model


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


def _from_environ(environ: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    """Turn ``SECURESERVE_SECTION__KEY[__SUBKEY...]`` variables into a nested dict.

    Every ``__`` goes one level down: ``SECURESERVE_MODEL__OUTPUT__POLICY`` is
    ``[model.output] policy``, and below a table of names (``[model.output.roles]``)
    the last part is the name, lower-cased. Names without ``__`` are not configuration
    and are ignored.
    """
    out: dict[str, Any] = {}
    given: dict[tuple[str, ...], str] = {}  # path -> variable, to refuse a table and its keys
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name or name in _SECRET_VARIABLES:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        path = tuple(parts)
        for other_path, other in given.items():
            shorter = min(len(path), len(other_path))
            if other_path[:shorter] == path[:shorter]:
                raise ConfigError(
                    f"{other} and {name} both set {'.'.join(path[:shorter])}: set a table "
                    "or its keys, once."
                )
        given[path] = name
        planned = _PLANNED.get(parts[0]) or _PLANNED.get(".".join(parts[:2]))
        if planned is not None:
            raise ConfigError(
                f"{name} configures {planned}, which this version does not provide yet; unset it."
            )
        hint = _setting_type(parts)
        if hint is None:
            close = _close_variable(parts)
            if close is not None:
                raise ConfigError(
                    f"{name} is not a secureserve setting; did you mean {close}? Otherwise "
                    "unset it (see docs/configuration.md)."
                )
            raise ConfigError(
                f"{name} is not a secureserve setting; check the spelling "
                "(SECURESERVE_<SECTION>__<KEY>, see docs/configuration.md) or unset it."
            )
        table = out
        for part in parts[:-1]:
            table = table.setdefault(part, {})
        table[parts[-1]] = _env_value(name, value, hint)
    return out


def _refuse_unknown(raw: Mapping[str, Any], source: str) -> None:
    """Refuse a section or key of the file that is no setting, saying which name is close.

    Walks the tables along the declared types, so the message names the table as written
    (``[models.iris.output] polcy``, ``[[auth.client_certificates]] roels``); values of
    the wrong type are left for the decoder to name.
    """
    for section, body in raw.items():
        hint = SECTIONS.get(section)
        if hint is None:
            close = _close(section, SECTIONS)
            fix = f"did you mean `[{close}]`?" if close else "check the spelling."
            raise ConfigError(
                f"{source}: [{_shown(section)}] is not a secureserve section; {fix} "
                "See docs/configuration.md."
            )
        _refuse_unknown_in(body, hint, section, source, array=False)


def _refuse_unknown_in(value: Any, hint: Any, table: str, source: str, *, array: bool) -> None:
    """The unknown-key check of one value of type ``hint``, found in ``table``."""
    inner = _bare(hint)
    if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
        if not isinstance(value, dict):
            return
        fields = _struct_fields(inner)
        for key, item in value.items():
            if key not in fields:
                raise ConfigError(_unknown_key(table, key, item, fields, source, array=array))
            _refuse_unknown_in(item, fields[key], f"{table}.{key}", source, array=False)
    elif get_origin(inner) is dict and isinstance(value, dict):
        for name, item in value.items():
            if table == "models" and name in _MODEL_KEYS and not isinstance(item, dict):
                raise ConfigError(
                    f"{source}: [models] {_shown(name)} is not a secureserve setting; did you "
                    "mean `[model]`, or `[models.<name>]` (one table per model)? See "
                    "docs/configuration.md."
                )
            _refuse_unknown_in(
                item, get_args(inner)[1], f"{table}.{_shown(name)}", source, array=False
            )
    elif get_origin(inner) is tuple and isinstance(value, list):
        for item in value:
            _refuse_unknown_in(item, get_args(inner)[0], table, source, array=True)


def _unknown_key(
    table: str, key: str, value: Any, known: Mapping[str, Any], source: str, *, array: bool
) -> str:
    """The message for ``key``, which the ``table`` it is in does not have."""
    place = f"[[{table}]]" if array else f"[{table}]"
    is_table = isinstance(value, dict)
    # a table is compared with the tables first, a value with the values
    alike = {name: hint for name, hint in known.items() if _is_table(hint) == is_table}
    close = _close(key, alike) or _close(key, known)
    if table == "model" and is_table and value and set(value) <= _MODEL_KEYS:
        fix = f"did you mean `[models.{_shown(key)}]`?"  # a model's table under [model]
    elif close is not None:
        fix = f"did you mean `{close}`?"
    else:
        fix = "check the spelling."
    return (
        f"{source}: {place} {_shown(key)} is not a secureserve setting; {fix} "
        "See docs/configuration.md."
    )


def _is_table(hint: Any) -> bool:
    """Whether a setting of this type is written as a table (a section or a mapping)."""
    inner = _bare(hint)
    return get_origin(inner) is dict or (
        isinstance(inner, type) and issubclass(inner, msgspec.Struct)
    )


def _close(name: str, known: Mapping[str, Any]) -> str | None:
    """The known name closest to ``name`` (difflib's ratio of at least 0.6), if any."""
    found = difflib.get_close_matches(name.lower(), list(known), n=1)
    return found[0] if found else None


def _shown(name: str) -> str:
    """A name from the file as a message shows it: as is when plain, else quoted and cut."""
    return name if _KEY_RE.fullmatch(name) else repr(name[:64])


def _close_variable(parts: list[str]) -> str | None:
    """The environment variable closest to ``SECURESERVE_<parts>``, if each part has one.

    Parts are corrected one level at a time against the names known there; a name in a
    table of names (a model's, a role's) is kept. None unless the result is a setting.
    """
    corrected: list[str] = []
    hint: Any = None
    for part in parts:
        inner = _bare(hint)
        if hint is None and not corrected:
            known: Mapping[str, Any] | None = SECTIONS
        elif isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            known = _struct_fields(inner)
        elif get_origin(inner) is dict:
            known = None  # any name
        else:
            return None  # below a plain value: nothing to correct to
        name = part if known is None or part in known else _close(part, known)
        if name is None:
            return None
        corrected.append(name)
        hint = get_args(inner)[1] if known is None else known[name]
    if _setting_type(corrected) is None:
        return None
    return ENV_PREFIX + "__".join(corrected).upper()


def _setting_type(parts: list[str]) -> Any:
    """The declared type at ``section.key.subkey...``, or None if there is no such setting."""
    hint: Any = SECTIONS.get(parts[0])
    for part in parts[1:]:
        inner = _bare(hint)
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            hint = _struct_fields(inner).get(part)
        elif get_origin(inner) is dict and part:
            hint = get_args(inner)[1]
        else:
            return None
        if hint is None:
            return None
    return hint if len(parts) > 1 else None


def _struct_fields(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(struct)}


def _bare(hint: Any) -> Any:
    """``hint`` without ``Annotated`` and without ``| None``."""
    if get_origin(hint) is Annotated:
        return _bare(get_args(hint)[0])
    if get_origin(hint) in (Union, UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return _bare(args[0]) if len(args) == 1 else hint
    return hint


def _env_value(name: str, value: str, hint: Any) -> Any:
    """Strings stay strings for text and path keys; everything else is read as JSON.

    ``null`` unsets an optional key (e.g. ``SECURESERVE_LIMITS__QUOTA=null``).
    """
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


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Deep merge: tables merge key by key, any other value replaces."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _describe(exc: msgspec.ValidationError) -> str:
    """Rewrite msgspec's ``... - at `$.model.output.policy``` into ``[model.output] policy``."""
    message, _, where = str(exc).partition(" - at ")
    parts = [p.partition("[")[0] for p in where.strip("`").removeprefix("$").split(".")]
    parts = [p for p in parts if _KEY_RE.fullmatch(p)]  # no list indexes, nothing odd
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        place = f"[{'.'.join(parts)}] {field}" if parts else f"[{field}]"
        return (
            f"{place} is not a secureserve setting; check the spelling (see docs/configuration.md)."
        )
    place = f"[{'.'.join(parts[:-1])}] {parts[-1]}" if len(parts) > 1 else f"[{''.join(parts)}]"
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
    _check_models(settings)
    if settings.server.workers > 1:
        raise ConfigError(
            "[server] workers: this version serves from one process; run one "
            "process per container and scale with replicas (set workers = 1)."
        )
    _check_auth(settings.auth)
    _check_roles(settings)
    if settings.auth.client_certificates and settings.tls.client_ca is None:
        raise ConfigError(
            "[auth] client_certificates maps certificate subjects, but [tls] client_ca is not "
            "set, so no client certificate is ever verified: set client_ca or remove the mapping."
        )
    _check_limits(settings.limits, settings.server.max_instances)
    tls = settings.tls
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError(
            "[tls] cert and key go together; set both (or use `secureserve run "
            "--dev` for a local development certificate)."
        )


def _check_models(settings: Settings) -> None:
    """``[model]`` or ``[models.<name>]`` tables (not both), each servable on its own."""
    untouched = (ModelSettings(), _resolved_model(ModelSettings(), settings.project_dir.resolve()))
    if settings.models and settings.model not in untouched:
        raise ConfigError(
            "[model] and [models.<name>] are both set: serve one model with [model], or "
            "several with one [models.<name>] table each (move [model] into one of them)."
        )
    if len(settings.models) > MAX_MODELS:
        raise ConfigError(
            f"[models]: {len(settings.models)} models; one process serves at most {MAX_MODELS}."
        )
    if settings.model.optional:
        raise ConfigError(
            "[model] optional: only one of several models can be optional; a server of one "
            "model that failed to load would serve nothing. Remove it."
        )
    keys = {model.signing_public_key for model in settings.models.values()}
    if len(keys) > 1:
        raise ConfigError(
            "[models.<name>] signing_public_key differs between models, but one lock file "
            "covers them all and is signed once: set the same key on every model."
        )
    for name, model in settings.served().items():
        table = settings.table(name)
        _check_onnx(model, table)
        _check_model_limits(model, table, settings.server.max_instances)
        if settings.project_dir.is_relative_to(model.dir.resolve()):
            raise ConfigError(
                f"{table} dir is {model.dir}, which holds the project folder itself: the "
                "model would see secureserve.toml, secrets/ and the lock. Keep the model "
                "files in their own folder, such as models/."
            )


def _check_onnx(model: ModelSettings, table: str) -> None:
    """The ONNX keys of a model: no standard domain allowed again, no provider twice."""
    for domain in model.onnx_allowed_domains:
        if not domain or domain in {"ai.onnx", "ai.onnx.ml"}:
            raise ConfigError(
                f"{table} onnx_allowed_domains: {domain!r} is not needed; the "
                "standard ONNX domains are always allowed."
            )
    providers = model.providers
    if len(set(providers)) != len(providers):
        repeated = next(name for name in providers if providers.count(name) > 1)
        raise ConfigError(f"{table} providers lists {repeated} twice; list each provider once.")


def _check_roles(settings: Settings) -> None:
    """Role names in settings: no case variants of built-in roles (``Admin``)."""
    named = [
        ("[[auth.client_certificates]] roles", role)
        for entry in settings.auth.client_certificates
        for role in entry.roles
    ]
    named += [
        (f"{settings.table(name)[:-1]}.output.roles]", role)
        for name, model in settings.served().items()
        for role in model.output.roles
    ]
    for where, role in named:
        if not is_role_name(role):
            raise ConfigError(
                f"{where}: {role!r} differs from a built-in role only in case; write "
                f"{role.lower()!r}, or choose another name for a custom role."
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


def parse_rate(key: str, value: str, *, section: str = "limits") -> RateLimitItem:
    """The one positive rate ``value`` of ``[section] key``, or a ``ConfigError`` naming it."""
    from limits import parse_many  # noqa: PLC0415 - importing limits is slow; only needed here

    try:
        items = parse_many(value)
    except ValueError:
        items = []
    if len(items) != 1 or items[0].amount < 1:
        raise ConfigError(
            f'[{section}] {key} = {value!r} is not one rate such as "60/minute" or '
            '"10000/day"'
            + (f'; write "{RATE_OFF}" to switch this limit off.' if section == "limits" else ".")
        )
    return items[0]


def _check_model_limits(model: ModelSettings, table: str, max_instances: int) -> None:
    """A model's own limits: rates as ``[limits]`` takes them, each fitting a whole request."""
    section = f"{table[1:-1]}.limits"
    for key in ("per_principal", "quota"):
        value = getattr(model.limits, key)
        if value is None or value == RATE_OFF:
            continue
        amount = parse_rate(key, value, section=section).amount
        if amount < max_instances:
            raise ConfigError(
                f"[{section}] {key} = {value!r} admits {amount} instances per window, but "
                f"[server] max_instances = {max_instances} lets one request ask for more: "
                f"such a request could never be served. Lower max_instances to at most "
                f"{amount} or raise {key}."
            )


def _check_limits(limits: LimitsSettings, max_instances: int) -> None:
    for key in (
        "per_principal",
        "per_model",
        "auth_failures_per_ip",
        "quota",
        "explain_per_principal",
    ):
        value = getattr(limits, key)
        if value is not None and value != RATE_OFF:
            amount = parse_rate(key, value).amount
            # explain_per_principal is not here: :explain takes fewer instances instead
            if key in ("per_principal", "per_model", "quota") and amount < max_instances:
                raise ConfigError(
                    f"[limits] {key} = {value!r} admits {amount} instances per window, but "
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
