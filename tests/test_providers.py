"""secureserve.providers: onnxruntime execution providers chosen, checked and logged at start."""

from __future__ import annotations

import importlib.metadata
import io

import pytest
from app_helpers import json_lines, json_logs, replaced, unlimited_iris_settings
from conftest import EXAMPLES, load_iris

from secureserve.config import load_settings
from secureserve.errors import ConfigError
from secureserve.providers import CPU, check_onnxruntime_distribution, choose_providers
from secureserve.serving import load_model

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


def test_the_default_is_the_cpu_alone():
    settings = load_settings(project_dir=EXAMPLES / "iris")
    assert settings.model.providers == (CPU,)
    assert choose_providers(settings.model.providers, model="iris") == (CPU,)


def test_the_listed_ones_that_exist_in_the_listed_order():
    chosen = choose_providers([TENSORRT, CUDA, CPU], model="m", available=[CPU, CUDA, TENSORRT])
    assert chosen == (TENSORRT, CUDA, CPU)


def test_a_missing_provider_falls_back_only_to_a_listed_one_and_says_so():
    buffer = io.BytesIO()
    with json_logs(buffer):
        chosen = choose_providers([CUDA, CPU], model="iris", available=[CPU])
    assert chosen == (CPU,)
    (line,) = [entry for entry in json_lines(buffer) if entry.get("setting") == "model.providers"]
    assert line["level"] == "warning"
    assert line["missing"] == [CUDA]
    assert line["running"] == [CPU]


def test_none_available_stops_start_up_naming_what_there_is():
    with pytest.raises(ConfigError) as caught:
        choose_providers([CUDA], model="iris", available=[CPU, "AzureExecutionProvider"])
    message = str(caught.value)
    assert f"none of {CUDA}" in message
    assert f"it has {CPU}, AzureExecutionProvider" in message
    assert f'"{CPU}"' in message  # how to allow the fallback


def test_a_served_model_runs_on_the_fallback_and_the_log_says_which(monkeypatch):
    settings = replaced(unlimited_iris_settings(), model={"providers": (CUDA, CPU)})
    buffer = io.BytesIO()
    with json_logs(buffer):
        loaded = load_model(load_iris(), settings)
    assert loaded.instance.session.get_providers() == [CPU]
    lines = json_lines(buffer)
    assert any(entry.get("missing") == [CUDA] for entry in lines)
    (sessions,) = [entry for entry in lines if entry["event"] == "onnx sessions"]
    assert sessions["providers"] == {"iris.onnx": [CPU]}


def test_a_served_model_with_only_a_missing_provider_does_not_start():
    settings = replaced(unlimited_iris_settings(), model={"providers": (CUDA,)})
    with pytest.raises(ConfigError, match=f"none of {CUDA}; it has .*{CPU}"):
        load_model(load_iris(), settings)


@pytest.mark.parametrize(
    ("providers", "problem"),
    [
        ('["cuda"]', "ExecutionProvider$'"),
        ("[]", "length >= 1"),
        (f'["{CPU}", "{CPU}"]', f"lists {CPU} twice"),
        ('["CPUExecutionProvider; rm -rf /"]', "expected `str` matching regex"),
    ],
)
def test_bad_provider_lists_are_refused_naming_the_key(tmp_path, providers, problem):
    config = tmp_path / "secureserve.toml"
    config.write_text(f'[model]\nhandler = "app:X"\nproviders = {providers}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "providers" in str(caught.value)
    assert problem in str(caught.value)


def test_two_onnxruntime_builds_installed_together_stop_start_up():
    versions = {"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0"}

    def installed(name: str) -> str:
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    with pytest.raises(ConfigError) as caught:
        check_onnxruntime_distribution(installed)
    message = str(caught.value)
    assert "onnxruntime 1.22.0, onnxruntime-gpu 1.22.0" in message
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in message
    versions.pop("onnxruntime")
    check_onnxruntime_distribution(installed)  # one build alone is fine


def test_this_environment_has_one_onnxruntime():
    check_onnxruntime_distribution()
