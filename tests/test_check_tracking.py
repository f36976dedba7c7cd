"""secureserve.check.tracking: ``secureserve check --mlflow URI`` against a local SQLite store."""

from __future__ import annotations

import os
import traceback

import pytest
from test_check_report import sample_report

from secureserve.check.report import write_report
from secureserve.check.tracking import log_to_mlflow, metric_name
from secureserve.errors import ConfigError

mlflow = pytest.importorskip("mlflow", reason="the [mlflow] extra")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A SQLite tracking URI in tmp_path; MLflow puts artifacts under ./mlruns, so cd there."""
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_report_is_one_run_with_params_metrics_tags_and_files(tmp_path, store):
    report = sample_report()
    files = write_report(report, tmp_path / "report")
    run_id = log_to_mlflow(report, files, store)

    client = mlflow.MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == report.model
    data = run.data
    assert data.params["version"] == "1.0"
    assert data.params["check.max_p99_ms"] == "250.0"
    assert data.params["instances"] == "43"
    assert data.metrics["robustness.robust_accuracy"] == 0.8
    assert data.metrics["robustness.noise_accuracy_0.1"] == 0.9  # "@" is not taken in a name
    assert data.metrics["fairness.cohort: demographic_parity_difference"] == 0.05
    assert data.tags["secureserve.lock_sha256"] == "ab" * 32
    assert data.tags["secureserve.signature"] == "verified"
    assert data.tags["secureserve.passed"] == "false"
    assert data.tags["secureserve.check.fuzz"] == "fail"
    assert data.tags["mlflow.runName"] == f"check {report.model} 1.0"
    logged = sorted(a.path for a in client.list_artifacts(run_id))
    assert logged == ["report.html", "report.json", "report.md"]


def test_a_second_check_is_a_second_run_in_the_same_experiment(tmp_path, store):
    report = sample_report()
    files = write_report(report, tmp_path / "report")
    first, second = log_to_mlflow(report, files, store), log_to_mlflow(report, files, store)
    client = mlflow.MlflowClient(tracking_uri=store)
    assert first != second
    assert client.get_run(first).info.experiment_id == client.get_run(second).info.experiment_id


def test_plain_http_is_refused_off_the_loopback_and_passwords_are_never_shown(tmp_path):
    report = sample_report()
    with pytest.raises(ConfigError, match="use an https:// tracking URI") as caught:
        log_to_mlflow(report, [], "http://ci:s3cret@mlflow.example.com:5000")
    assert "s3cret" not in str(caught.value)
    assert "http://***@mlflow.example.com:5000" in str(caught.value)


def test_credentials_in_the_uri_stay_out_of_the_error_and_its_traceback(monkeypatch):
    uri = "https://alice:S3cr%2Ft@mlflow.example.com/api?token=T0KEN"

    class Refusing:
        def __init__(self, tracking_uri):
            raise OSError(f"cannot reach {tracking_uri} (password S3cr/t)")

    monkeypatch.setattr(mlflow, "MlflowClient", Refusing)
    with pytest.raises(ConfigError) as caught:
        log_to_mlflow(sample_report(), [], uri)
    shown = "".join(traceback.format_exception(caught.value))  # what --debug prints
    for secret in ("alice", "S3cr", "T0KEN"):
        assert secret not in shown
    assert "https://***@mlflow.example.com/api?***" in shown
    assert "OSError: cannot reach" in shown


def test_telemetry_is_off_while_logging_and_the_environment_is_put_back(store, monkeypatch):
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    seen = []
    real = mlflow.MlflowClient

    def watching(tracking_uri):
        seen.append(os.environ.get("MLFLOW_DISABLE_TELEMETRY"))
        return real(tracking_uri=tracking_uri)

    monkeypatch.setattr(mlflow, "MlflowClient", watching)
    log_to_mlflow(sample_report(), [], store)
    assert seen == ["true"]
    assert "MLFLOW_DISABLE_TELEMETRY" not in os.environ


def test_a_store_that_refuses_the_run_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file where the store's folder would be")
    uri = f"sqlite:///{tmp_path / 'taken' / 'mlflow.db'}"
    with pytest.raises(ConfigError, match="MLflow could not start a run there"):
        log_to_mlflow(sample_report(), [], uri)


@pytest.mark.parametrize(
    ("check", "figure", "name"),
    [
        ("robustness", "noise_accuracy@0.05", "robustness.noise_accuracy_0.05"),
        ("fairness", "sex: equalized_odds_difference", "fairness.sex: equalized_odds_difference"),
        ("fairness", "région/<x>", "fairness.r_gion_x_"),
    ],
)
def test_metric_names_keep_only_what_mlflow_takes(check, figure, name):
    assert metric_name(check, figure) == name
