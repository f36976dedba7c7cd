"""What secureserve can be told: the sections of ``secureserve.toml`` as frozen Structs.

Each section is a strict msgspec Struct (unknown keys are errors, values are typed and
bounded) with its secure defaults as named constants; :class:`Settings` holds them all.
This module only declares; :mod:`secureserve.config` reads files and the environment
into these types and refuses insecure combinations.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from secureserve.providers import CPU, MAX_PROVIDERS, ProviderName

__all__ = [
    "BUILTIN_ROLES",
    "RATE_OFF",
    "SECTIONS",
    "AuditSettings",
    "AuthSettings",
    "CheckSettings",
    "ClientCertificate",
    "DriftSettings",
    "ExplainSettings",
    "ExtractionSettings",
    "GuardSettings",
    "LimitsSettings",
    "LoggingSettings",
    "ModelSettings",
    "OutputSettings",
    "PolicyName",
    "RoleName",
    "Section",
    "ServerSettings",
    "Settings",
    "TLSSettings",
]

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

#: The roles that grant routes. Any other role name is a custom role: it grants no route
#: by itself and can select an output policy (``[model.output.roles]``).
BUILTIN_ROLES: Final = ("predict", "explain", "metrics", "admin")
#: A role name, built-in or custom, as API keys, JWTs and mTLS identities may carry it.
ROLE_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}\Z"  # \Z: "$" would let a final newline in
RoleName = Annotated[str, msgspec.Meta(pattern=ROLE_PATTERN)]
_ROLE_RE: Final = re.compile(ROLE_PATTERN)


def is_role_name(name: str) -> bool:
    """A well-formed role name that is not a case variant of a built-in one (``Admin``)."""
    return bool(_ROLE_RE.match(name)) and (
        name in BUILTIN_ROLES or name.lower() not in BUILTIN_ROLES
    )


#: What callers see of a model's score fields, from most to least revealing.
PolicyName = Literal["full", "top_k", "label_only"]
#: Range slack of the input guard, in interquartile ranges (Tukey's fences use 1.5).
DEFAULT_GUARD_MARGIN: Final = 1.5
#: Largest normalised distance (root mean squared z-score) the guard lets through.
DEFAULT_GUARD_MAX_DISTANCE: Final = 4.0
DEFAULT_DRIFT_WINDOW: Final = 500
DEFAULT_DRIFT_THRESHOLD: Final = 0.2
DEFAULT_DRIFT_MAX_SHARE: Final = 0.2
#: Queries kept per principal for the PRADA distance test (float32 feature vectors).
DEFAULT_EXTRACTION_HISTORY: Final = 2000
DEFAULT_EXTRACTION_MIN_QUERIES: Final = 100
#: Shapiro-Wilk W below this flags a principal (PRADA's default for its own models).
DEFAULT_EXTRACTION_THRESHOLD: Final = 0.90
DEFAULT_THROTTLE_RATE: Final = "10/minute"
DEFAULT_EXTRACTION_PRINCIPALS: Final = 1000
#: Share of a principal's recent queries the input guard would flag before it is suspected.
DEFAULT_MAX_OOD_SHARE: Final = 0.5
#: This many times its usual rate (per minute) in the last minute makes a principal suspect.
DEFAULT_MAX_RATE_RATIO: Final = 20.0


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Strict base: a typo in a key is an error, not a silently ignored setting."""


PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


DEFAULT_MAX_ELEMENTS: Final = 1 << 20


class ServerSettings(Section, frozen=True):
    """``[server]``: where to listen and how much one request may cost."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8443
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    max_body_bytes: Annotated[int, msgspec.Meta(ge=64, le=1 << 30)] = DEFAULT_MAX_BODY_BYTES
    max_instances: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = DEFAULT_MAX_INSTANCES
    #: /v2 tensors: values in one request, all inputs together (checked before decoding)
    max_elements: Annotated[int, msgspec.Meta(ge=1, le=1 << 28)] = DEFAULT_MAX_ELEMENTS
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


class TLSSettings(Section, frozen=True):
    """``[tls]``: the server certificate, and client CAs for mutual TLS."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"


class ClientCertificate(Section, frozen=True):
    """One ``[[auth.client_certificates]]`` entry: a certificate subject mapped to a principal."""

    subject: str
    roles: tuple[RoleName, ...]
    models: tuple[str, ...] | None = None


class AuthSettings(Section, frozen=True):
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


class LimitsSettings(Section, frozen=True):
    """``[limits]``: rate limits and quotas (``limits`` rate strings such as ``"60/minute"``)."""

    storage: str = "memory://"
    per_principal: RateString | None = "60/minute"
    per_model: RateString | None = None
    auth_failures_per_ip: RateString | None = "10/minute"
    quota: RateString | None = "10000/day"
    on_storage_error: Literal["refuse", "memory"] = "refuse"
    storage_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = DEFAULT_STORAGE_TIMEOUT_S
    #: explained instances per principal (explanations leak more than predictions)
    explain_per_principal: RateString | None = "10/minute"
    key_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "secureserve"


class AuditSettings(Section, frozen=True):
    """``[audit]``: the hash-chained audit log."""

    path: Path = Path("audit/audit.jsonl")
    digest_key_file: Path | None = None
    max_bytes: Annotated[int, msgspec.Meta(ge=4096, le=1 << 40)] = 100 * 1024 * 1024
    max_files: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = DEFAULT_AUDIT_MAX_FILES
    refusal_window_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = DEFAULT_REFUSAL_WINDOW_S
    on_write_error: Literal["refuse", "continue"] = "refuse"


class OutputSettings(Section, frozen=True):
    """``[model.output]``: what callers see of the ``ss.Score`` and ``ss.Scores`` fields.

    ``policy`` unset means ``top_k`` when the output type has score fields. ``roles``
    maps a role to its own policy; a caller gets the most permissive policy among the
    roles it holds that have one, and ``policy`` when it holds none of them.
    """

    policy: PolicyName | None = None
    top_k: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    decimals: Annotated[int, msgspec.Meta(ge=0, le=12)] = 2
    roles: dict[RoleName, PolicyName] = msgspec.field(default_factory=dict)


class GuardSettings(Section, frozen=True):
    """``[model.guard]``: instances scored against the reference profile before predict.

    ``mode`` unset means ``flag`` when the model has a profile and ``off`` without.
    """

    mode: Literal["refuse", "flag", "off"] | None = None
    margin: Annotated[float, msgspec.Meta(ge=0, le=1000)] = DEFAULT_GUARD_MARGIN
    max_distance: Annotated[float, msgspec.Meta(gt=0, le=1e6)] = DEFAULT_GUARD_MAX_DISTANCE


class DriftSettings(Section, frozen=True):
    """``[model.drift]``: what callers send, compared with the profile over a sliding window.

    Runs whenever the model has a profile, unless ``enabled = false``.
    """

    enabled: bool = True
    window: Annotated[int, msgspec.Meta(ge=50, le=1_000_000)] = DEFAULT_DRIFT_WINDOW
    threshold: Annotated[float, msgspec.Meta(gt=0, le=100)] = DEFAULT_DRIFT_THRESHOLD
    max_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = DEFAULT_DRIFT_MAX_SHARE


class ExtractionSettings(Section, frozen=True):
    """``[model.extraction]``: noticing a principal that queries to copy the model.

    Runs whenever the model has a feature view, unless ``action = "off"``.
    """

    action: Literal["flag", "throttle", "block", "off"] = "flag"
    history: Annotated[int, msgspec.Meta(ge=50, le=100_000)] = DEFAULT_EXTRACTION_HISTORY
    min_queries: Annotated[int, msgspec.Meta(ge=20, le=100_000)] = DEFAULT_EXTRACTION_MIN_QUERIES
    threshold: Annotated[float, msgspec.Meta(gt=0, lt=1)] = DEFAULT_EXTRACTION_THRESHOLD
    throttle_rate: RateString = DEFAULT_THROTTLE_RATE
    max_principals: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = DEFAULT_EXTRACTION_PRINCIPALS
    max_ood_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = DEFAULT_MAX_OOD_SHARE
    max_rate_ratio: Annotated[float, msgspec.Meta(gt=1, le=1e6)] = DEFAULT_MAX_RATE_RATIO


class ExplainSettings(Section, frozen=True):
    """``[model.explain]``: how ``:explain`` attributes a prediction to the features.

    ``occlusion`` (built in) replaces one feature at a time by the profile's median;
    ``kernelshap`` needs ``pip install 'secureserve[explain]'`` and runs ``samples``
    model evaluations per instance against the same background.
    """

    method: Literal["occlusion", "kernelshap"] = "occlusion"
    samples: Annotated[int, msgspec.Meta(ge=16, le=100_000)] = 512


ArtifactName = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class ModelLimitsSettings(Section, frozen=True):
    """``[models.<name>.limits]``: one model's own limits, on top of ``[limits]``.

    Counted in predictions of this model, per principal, like ``[limits]
    per_principal`` and ``quota`` (which still count every model together).
    """

    per_principal: RateString | None = None
    quota: RateString | None = None


class ModelSettings(Section, frozen=True):
    """``[model]``: which handler to serve, where its files are, and its defenses.

    One model's settings: the ``[models.<name>]`` tables of a several-model server
    take exactly these keys.
    """

    handler: str | None = None
    dir: Path = Path("models")
    signing_public_key: Path | None = None
    encryption_key_file: Path | None = None
    max_artifact_bytes: Annotated[int, msgspec.Meta(ge=1, le=1 << 40)] = 2 * 1024**3
    onnx_allowed_domains: tuple[str, ...] = ()
    onnx_threads: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    onnx_max_nodes: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000
    onnx_optimization: Literal["disabled", "basic", "extended", "all"] = "all"
    #: onnxruntime execution providers, in order of preference (secureserve.providers)
    providers: Annotated[
        tuple[ProviderName, ...], msgspec.Meta(min_length=1, max_length=MAX_PROVIDERS)
    ] = (CPU,)
    #: The reference profile, an artifact name; unset: ``profile.json`` if the lock has one.
    profile: ArtifactName | None = None
    output: OutputSettings = msgspec.field(default_factory=OutputSettings)
    guard: GuardSettings = msgspec.field(default_factory=GuardSettings)
    drift: DriftSettings = msgspec.field(default_factory=DriftSettings)
    extraction: ExtractionSettings = msgspec.field(default_factory=ExtractionSettings)
    explain: ExplainSettings = msgspec.field(default_factory=ExplainSettings)
    limits: ModelLimitsSettings = msgspec.field(default_factory=ModelLimitsSettings)
    #: several models only: a model that fails to load is logged and not ready, and the
    #: others serve (else a failing model stops start-up)
    optional: bool = False


Share = Annotated[float, msgspec.Meta(ge=0, le=1)]


class CheckSettings(Section, frozen=True):
    """``[check]``: the thresholds of ``secureserve check`` (see docs/check.md)."""

    #: fairness: groups smaller than this are reported, not judged
    min_group_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 20
    max_demographic_parity_difference: Share = 0.2
    max_equalized_odds_difference: Share = 0.2
    #: the label counted as the favourable outcome (binary outputs need none)
    positive_label: str | None = None
    #: data drift: the largest PSI of any feature between --data and the profile
    max_drift_psi: Annotated[float, msgspec.Meta(gt=0, le=100)] = DEFAULT_DRIFT_THRESHOLD
    #: robustness: rows attacked, the attack's budget, and the judged figure
    robustness_samples: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 20
    robustness_max_iter: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    robustness_max_eval: Annotated[int, msgspec.Meta(ge=10, le=100_000)] = 1000
    #: the perturbation the model must withstand, in fractions of each feature's range
    epsilon: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.05
    min_robust_accuracy: Share = 0.5
    #: schema fuzzing: generated valid requests (and as many invalid ones)
    fuzz_examples: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 50
    #: load: how long and how many connections drive the real server, and the bounds
    load_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    load_connections: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8
    max_p99_ms: Annotated[float, msgspec.Meta(gt=0, le=600_000)] = 250.0
    max_error_rate: Share = 0.0


class LoggingSettings(Section, frozen=True):
    """``[logging]``: lines on stdout at this level, as JSON or for a console.

    ``format`` unset means: ``console`` under ``secureserve run --dev``, else ``json``.
    """

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] | None = None


#: A ``[models.<name>]`` table name: the served name, addressable from the environment
#: (``SECURESERVE_MODELS__<NAME>__...``, lower-cased): letters and digits, single ``_``
#: between them (``__`` is the environment's separator).
ServedName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$", max_length=63)]
MAX_MODELS: Final = 64  # models one process serves, at most


class Settings(Section, frozen=True):
    """All settings; ``project_dir`` is the folder relative paths were resolved against."""

    project_dir: Path = Path()
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    tls: TLSSettings = msgspec.field(default_factory=TLSSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    #: several models: ``[models.<name>]``, each with every key of ``[model]``
    models: dict[ServedName, ModelSettings] = msgspec.field(default_factory=dict)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    check: CheckSettings = msgspec.field(default_factory=CheckSettings)

    def served(self) -> dict[str | None, ModelSettings]:
        """Each served model's settings by its served name.

        ``[models.<name>]`` tables when there are any; else ``[model]`` alone, under
        None: its name comes from the handler class.
        """
        if not self.models:
            return {None: self.model}
        served: dict[str | None, ModelSettings] = {}
        served.update(self.models)
        return served

    def table(self, name: str | None) -> str:
        """Where a served model's keys live, for messages: ``[model]`` or ``[models.NAME]``."""
        return "[model]" if name is None else f"[models.{name}]"


SECTIONS: Final[dict[str, Any]] = {
    "server": ServerSettings,
    "tls": TLSSettings,
    "auth": AuthSettings,
    "limits": LimitsSettings,
    "audit": AuditSettings,
    "model": ModelSettings,
    "models": dict[str, ModelSettings],
    "logging": LoggingSettings,
    "check": CheckSettings,
}
