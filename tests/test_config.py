"""Settings: file, environment and flags, strict types, named keys in every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from secureserve.config import Settings, load_settings
from secureserve.errors import ConfigError


def _write(folder: Path, text: str) -> Path:
    path = folder / "secureserve.toml"
    path.write_text(text)
    return path


def test_load_settings_defaults_match_design(tmp_path):
    """Without a file the defaults of DESIGN.md apply, paths resolved in the project."""
    settings = load_settings(project_dir=tmp_path, environ={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8443
    assert settings.server.max_body_bytes == 1_048_576
    assert settings.server.max_instances == 32
    assert settings.server.max_in_flight == 256
    assert settings.server.predict_timeout_s == 10
    assert settings.server.body_timeout_s == 10
    assert settings.tls.min_version == "1.2"
    assert settings.auth.keys_file == tmp_path.resolve() / "secrets" / "api_keys.toml"
    assert settings.model.dir == tmp_path.resolve() / "models"
    assert settings.model.onnx_threads == 1
    assert settings.logging.level == "info"


def test_load_settings_reads_file_and_resolves_paths_against_it(tmp_path):
    """Relative paths in the file are relative to the file's folder, not the working directory."""
    project = tmp_path / "proj"
    project.mkdir()
    config = _write(
        project, '[tls]\ncert = "c/cert.pem"\nkey = "c/key.pem"\n[server]\nport = 9443\n'
    )
    settings = load_settings(config, project_dir=tmp_path, environ={})
    assert settings.server.port == 9443
    assert settings.tls.cert == project.resolve() / "c" / "cert.pem"
    assert settings.project_dir == project.resolve()


def test_load_settings_environment_overrides_file_and_flags_override_both(tmp_path):
    """Precedence: flags > SECURESERVE_<SECTION>__<KEY> > secureserve.toml."""
    _write(tmp_path, "[server]\nport = 9000\nmax_instances = 8\n")
    env = {"SECURESERVE_SERVER__PORT": "9001", "SECURESERVE_SERVER__MAX_INSTANCES": "16"}
    settings = load_settings(
        project_dir=tmp_path, environ=env, overrides={"server": {"port": 9002}}
    )
    assert settings.server.port == 9002
    assert settings.server.max_instances == 16


def test_load_settings_environment_lists_are_json(tmp_path):
    """A list from the environment is written as JSON."""
    env = {"SECURESERVE_SERVER__TRUSTED_PROXIES": '["10.0.0.1", "10.1.0.0/16"]'}
    settings = load_settings(project_dir=tmp_path, environ=env)
    assert settings.server.trusted_proxies == ("10.0.0.1", "10.1.0.0/16")


def test_load_settings_ignores_environment_names_without_double_underscore(tmp_path):
    """SECURESERVE_FOO is not configuration (DESIGN.md), so it is neither applied nor an error."""
    settings = load_settings(project_dir=tmp_path, environ={"SECURESERVE_PORT": "1"})
    assert settings.server.port == 8443


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\nprot = 1\n", "[server] prot"),
        ("[sever]\nport = 1\n", "[sever]"),
        ('[server]\nport = "8443"\n', "[server] port"),
        ("[server]\nport = 0\n", "[server] port"),
        ("[server]\nmax_body_bytes = -1\n", "[server] max_body_bytes"),
        ('[tls]\nmin_version = "1.1"\n', "[tls] min_version"),
        ("[server]\npredict_timeout_s = 0\n", "[server] predict_timeout_s"),
        ('[logging]\nlevel = "trace"\n', "[logging] level"),
        ("port = 8443\n", "`port`"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_load_settings_refuses_bad_file_naming_the_key(tmp_path, text, named):
    """Unknown keys, wrong types, out-of-range values and bad TOML stop start-up, naming the key."""
    _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(project_dir=tmp_path, environ={})
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SECURESERVE_SERVER__NOPE": "1"}, "SECURESERVE_SERVER__NOPE"),
        ({"SECURESERVE_NOSECTION__PORT": "1"}, "SECURESERVE_NOSECTION__PORT"),
        ({"SECURESERVE_SERVER__PORT": "eighty"}, "SECURESERVE_SERVER__PORT"),
        ({"SECURESERVE_SERVER__PORT": '"8443"'}, "[server] port"),
    ],
)
def test_load_settings_refuses_bad_environment_naming_the_variable(tmp_path, env, named):
    """A misspelt or mistyped environment variable is an error that names it."""
    with pytest.raises(ConfigError) as info:
        load_settings(project_dir=tmp_path, environ=env)
    assert named in str(info.value)


TWO_MODELS = '[models.iris]\nhandler = "app:Iris"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sever]\nport = 1\n", "[sever] is not a secureserve section; did you mean `[server]`?"),
        (
            "[Logging]\nlevel = 'info'\n",
            "[Logging] is not a secureserve section; did you mean `[logging]`?",
        ),
        (
            "[server]\nprot = 1\n",
            "[server] prot is not a secureserve setting; did you mean `port`?",
        ),
        (
            "[server]\nmax_instance = 1\n",
            "[server] max_instance is not a secureserve setting; did you mean `max_instances`?",
        ),
        (
            "[model]\nhandlr = 'a:B'\n",
            "[model] handlr is not a secureserve setting; did you mean `handler`?",
        ),
        (
            "[model.gaurd]\nmode = 'off'\n",
            "[model] gaurd is not a secureserve setting; did you mean `guard`?",
        ),
        (
            "[model.drift]\nwindw = 600\n",
            "[model.drift] windw is not a secureserve setting; did you mean `window`?",
        ),
        (
            TWO_MODELS + "[models.iris.outptu]\npolicy = 'full'\n",
            "[models.iris] outptu is not a secureserve setting; did you mean `output`?",
        ),
        (
            TWO_MODELS + "[models.iris.output]\npolcy = 'full'\n",
            "[models.iris.output] polcy is not a secureserve setting; did you mean `policy`?",
        ),
        (
            TWO_MODELS + "[models.iris.limits]\nquot = 'off'\n",
            "[models.iris.limits] quot is not a secureserve setting; did you mean `quota`?",
        ),
        (
            "[[auth.client_certificates]]\nsubject = 'CN=a'\nroels = ['predict']\n",
            (
                "[[auth.client_certificates]] roels is not a secureserve setting; "
                "did you mean `roles`?"
            ),
        ),
        (
            "[check]\nmax_drift = 1\n",
            "[check] max_drift is not a secureserve setting; did you mean `max_drift_psi`?",
        ),
        (
            "[model.iris]\nhandler = 'app:Iris'\n",
            "[model] iris is not a secureserve setting; did you mean `[models.iris]`?",
        ),
        (
            "[models]\nhandler = 'app:Iris'\n",
            (
                "[models] handler is not a secureserve setting; did you mean `[model]`, "
                "or `[models.<name>]` (one table per model)?"
            ),
        ),
    ],
)
def test_load_settings_unknown_names_in_the_file_get_did_you_mean(tmp_path, text, message):
    """A misspelt section or key (at any depth) is named with the close known name."""
    _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(project_dir=tmp_path, environ={})
    assert str(info.value) == f"secureserve.toml: {message} See docs/configuration.md."


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[zzzzzz]\na = 1\n", "[zzzzzz] is not a secureserve section; check the spelling."),
        (
            "[server]\nqqqqqq = 1\n",
            "[server] qqqqqq is not a secureserve setting; check the spelling.",
        ),
        ('[server]\n"evil\\u001b[2J\\n" = 1\n', "[server] 'evil\\x1b[2J\\n' is not a secureserve"),
    ],
)
def test_load_settings_unknown_names_without_a_close_one(tmp_path, text, named):
    """Nothing close: the message says to check the spelling; odd names are shown escaped."""
    _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(project_dir=tmp_path, environ={})
    assert named in str(info.value)
    assert "did you mean" not in str(info.value)
    assert "\x1b" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "close"),
    [
        ("SECURESERVE_SERVER__PROT", "SECURESERVE_SERVER__PORT"),
        ("SECURESERVE_SEVER__PORT", "SECURESERVE_SERVER__PORT"),
        ("SECURESERVE_MODL__GAURD__MODE", "SECURESERVE_MODEL__GUARD__MODE"),
        ("SECURESERVE_MODELS__IRIS__OUTPTU__POLICY", "SECURESERVE_MODELS__IRIS__OUTPUT__POLICY"),
        ("SECURESERVE_TLS__CLIENTCA", "SECURESERVE_TLS__CLIENT_CA"),
        ("SECURESERVE_server__prot", "SECURESERVE_SERVER__PORT"),
    ],
)
def test_load_settings_unknown_environment_variable_gets_did_you_mean(tmp_path, name, close):
    """A misspelt variable is named with the variable it was probably meant to be."""
    with pytest.raises(ConfigError) as info:
        load_settings(project_dir=tmp_path, environ={name: "1"})
    assert str(info.value) == (
        f"{name} is not a secureserve setting; did you mean {close}? Otherwise unset it "
        "(see docs/configuration.md)."
    )


@pytest.mark.parametrize(
    "name",
    [
        "SECURESERVE_SERVER__QQQQQQ",  # nothing close
        "SECURESERVE_MODEL__DIR__DEEPER",  # below a plain value
        "SECURESERVE_SERVER__PROT__DEEPER",  # the close name is not a table
    ],
)
def test_load_settings_environment_suggests_only_a_setting(tmp_path, name):
    """No suggestion unless the corrected variable is a setting."""
    with pytest.raises(ConfigError) as info:
        load_settings(project_dir=tmp_path, environ={name: "1"})
    assert name in str(info.value)
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    "text", ['[explain]\nmethod = "shap"\n', '[model]\ndrift_profile = "p.json"\n']
)
def test_load_settings_refuses_planned_features_instead_of_ignoring_them(
    tmp_path, monkeypatch, text
):
    """Settings for planned features are refused with that reason, never silently accepted."""
    monkeypatch.setattr(
        "secureserve.config._PLANNED",
        {"explain": "explanations", "model.drift_profile": "drift monitoring"},
    )
    _write(tmp_path, text)
    with pytest.raises(ConfigError, match="does not provide yet"):
        load_settings(project_dir=tmp_path, environ={})


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[server]\ntrusted_proxies = ["0.0.0.0/0"]\n', "trusted_proxies"),
        ('[server]\ntrusted_proxies = ["::/0"]\n', "trusted_proxies"),
        ('[server]\ntrusted_proxies = ["not-an-ip"]\n', "trusted_proxies"),
        ('[tls]\ncert = "c.pem"\n', "[tls] cert and key"),
        ("[server]\nworkers = 2\n", "[server] workers"),
        ('[model]\ndir = "."\n', "[model] dir"),
        ('[model]\ndir = ".."\n', "[model] dir"),
        ('[model]\nonnx_allowed_domains = [""]\n', "onnx_allowed_domains"),
    ],
)
def test_load_settings_refuses_insecure_combinations(tmp_path, text, named):
    """Trusting every proxy, half a TLS pair, several workers: refused with the fix named."""
    _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(project_dir=tmp_path, environ={})
    assert named in str(info.value)


def test_load_settings_missing_explicit_file_is_an_error(tmp_path):
    """--config naming a file that does not exist is refused (a default file may be absent)."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_settings_are_frozen():
    """Settings cannot be changed after start-up."""
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[limits]\nper_principal = "10/second;100/minute"\n', "[limits] per_principal"),
        ('[limits]\nquota = "lots"\n', "[limits] quota"),
        ('[limits]\nstorage = "mongodb://x"\n', "[limits] storage"),
        ('[limits]\nkey_prefix = "a b"\n', "[limits] key_prefix"),
        ('[auth]\njwks_file = "j.json"\n', "jwt_issuer, jwt_audience missing"),
        (
            '[[auth.client_certificates]]\nsubject = "CN=a"\nroles = ["predict"]\n',
            "[tls] client_ca",
        ),
        ('[audit]\non_write_error = "ignore"\n', "[audit] on_write_error"),
    ],
)
def test_load_settings_refuses_bad_access_settings(tmp_path, text, named):
    """Rates, storage, JWT settings and certificate mappings are checked at start-up."""
    _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(project_dir=tmp_path, environ={})
    assert named in str(info.value)


def test_load_settings_rate_off_and_null_switch_limits_off(tmp_path):
    """The word off in the file and null in the environment both switch a limit off."""
    _write(tmp_path, '[limits]\nquota = "off"\n')
    settings = load_settings(
        project_dir=tmp_path, environ={"SECURESERVE_LIMITS__PER_PRINCIPAL": "null"}
    )
    assert settings.limits.quota == "off"
    assert settings.limits.per_principal is None


def test_load_settings_storage_error_never_echoes_credentials(tmp_path):
    """An unsupported storage URL is named by its scheme only (it may hold a password)."""
    _write(tmp_path, '[limits]\nstorage = "mongodb://admin:hunter2@db:27017"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(project_dir=tmp_path, environ={})
    assert "hunter2" not in str(info.value)
    assert "mongodb" in str(info.value)


@pytest.mark.parametrize(
    ("limits", "key"),
    [
        ('per_principal = "10/minute"', "per_principal"),
        ('per_model = "5/second"', "per_model"),
        ('quota = "20/day"', "quota"),
    ],
)
def test_load_settings_refuses_limits_below_max_instances(tmp_path, limits, key):
    """A rate that admits fewer predictions than one request may carry is refused at start-up."""
    (tmp_path / "secureserve.toml").write_text(
        f"[server]\nmax_instances = 32\n[limits]\n{limits}\n"
    )
    with pytest.raises(ConfigError, match=rf"\[limits\] {key} .* max_instances = 32"):
        load_settings(project_dir=tmp_path, environ={})
    (tmp_path / "secureserve.toml").write_text(f"[server]\nmax_instances = 5\n[limits]\n{limits}\n")
    assert load_settings(project_dir=tmp_path, environ={}).server.max_instances == 5


def test_model_defense_tables_from_file_and_environment(tmp_path):
    """[model.output], [model.guard], [model.drift]: each __ of a variable goes a table down."""
    (tmp_path / "secureserve.toml").write_text(
        '[model.output]\npolicy = "label_only"\n\n[model.output.roles]\nanalyst = "full"\n\n'
        "[model.drift]\nwindow = 1000\n"
    )
    settings = load_settings(
        project_dir=tmp_path,
        environ={
            "SECURESERVE_MODEL__OUTPUT__ROLES__AUDITOR": "top_k",
            "SECURESERVE_MODEL__OUTPUT__DECIMALS": "3",
            "SECURESERVE_MODEL__GUARD__MODE": "refuse",
            "SECURESERVE_MODEL__DRIFT__ENABLED": "false",
        },
    )
    output = settings.model.output
    assert (output.policy, output.decimals) == ("label_only", 3)
    assert output.roles == {"analyst": "full", "auditor": "top_k"}  # merged, not replaced
    assert settings.model.guard.mode == "refuse"
    assert (settings.model.drift.window, settings.model.drift.enabled) == (1000, False)


@pytest.mark.parametrize(
    ("text", "env", "named"),
    [
        ('[model.output]\npolicy = "all"\n', {}, "[model.output] policy"),
        ("[model.output]\ntop_k = 0\n", {}, "[model.output] top_k"),
        ('[model.output.roles]\n"two words" = "full"\n', {}, "[model.output] roles"),
        ("[model.guard]\nmood = 1\n", {}, "[model.guard] mood is not a secureserve setting"),
        ("[model.drift]\nmax_share = 0\n", {}, "[model.drift] max_share"),
        ("", {"SECURESERVE_MODEL__OUTPUT__NOPE": "1"}, "SECURESERVE_MODEL__OUTPUT__NOPE"),
        ("", {"SECURESERVE_MODEL__DIR__DEEPER": "1"}, "SECURESERVE_MODEL__DIR__DEEPER"),
        ("", {"SECURESERVE_MODEL__GUARD__MARGIN": "wide"}, "SECURESERVE_MODEL__GUARD__MARGIN"),
        (
            "",
            {"SECURESERVE_MODEL__OUTPUT": "null", "SECURESERVE_MODEL__OUTPUT__POLICY": "full"},
            "set a table or its keys, once",
        ),
        (
            "",
            {"SECURESERVE_model__output": "{}", "SECURESERVE_MODEL__OUTPUT__POLICY": "full"},
            "set a table or its keys, once",
        ),
        ("", {"SECURESERVE_MODEL__OUTPUT": '"x"'}, "[model] output"),
    ],
)
def test_model_defense_tables_refuse_bad_values_naming_them(tmp_path, text, env, named):
    (tmp_path / "secureserve.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(project_dir=tmp_path, environ=env)
    assert named in str(caught.value)


def test_client_certificates_may_carry_custom_roles(tmp_path):
    entry = '[tls]\nclient_ca = "ca.pem"\n\n[[auth.client_certificates]]\nsubject = "CN=a"\n'
    (tmp_path / "secureserve.toml").write_text(entry + 'roles = ["predict", "analyst"]\n')
    settings = load_settings(project_dir=tmp_path)
    assert settings.auth.client_certificates[0].roles == ("predict", "analyst")
    (tmp_path / "secureserve.toml").write_text(entry + 'roles = ["ana lyst"]\n')
    with pytest.raises(ConfigError, match=r"\[auth.client_certificates\] roles"):
        load_settings(project_dir=tmp_path)
    (tmp_path / "secureserve.toml").write_text(entry + 'roles = ["predict\\n"]\n')
    with pytest.raises(ConfigError, match=r"\[auth.client_certificates\] roles"):
        load_settings(project_dir=tmp_path)
    (tmp_path / "secureserve.toml").write_text(entry + 'roles = ["Admin"]\n')
    with pytest.raises(ConfigError, match="only in case"):
        load_settings(project_dir=tmp_path)
