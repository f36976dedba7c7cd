"""secureserve.doctor.defenses: output policies, the profile and the feature view."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import copy_example
from two_models import copy_two_models

from secureserve.cli import main
from secureserve.config import load_settings
from secureserve.doctor import Severity, diagnose
from secureserve.release import lock_project

TEXT_HANDLER = """
import msgspec
import secureserve as ss


class Text(msgspec.Struct):
    text: str


class Verdict(msgspec.Struct):
    label: ss.Label
    score: ss.Score


class Moderator(ss.Model[Text, Verdict]):
    name = "moderator"

    def predict(self, batch):
        return [Verdict("ok", 0.9) for _ in batch]
"""


def codes(report, severity: Severity | None = None) -> set[str]:
    return {f.code for f in report.findings if severity is None or f.severity == severity}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the digits example (it has a profile) to change."""
    return copy_example("digits-safetensors", tmp_path / "digits", monkeypatch)


def configure(project: Path, text: str) -> None:
    with (project / "secureserve.toml").open("a") as out:
        out.write(text)


def test_a_profile_and_top_k_give_no_defense_finding(project):
    report = diagnose(project, handler=True)
    assert not codes(report) & {
        "output-full-scores",
        "output-full-scores-role",
        "profile-missing",
        "defenses-off",
        "output-unmarked",
    }


def test_full_scores_for_every_caller_is_a_warning(project):
    text = (project / "secureserve.toml").read_text().replace('policy = "top_k"', 'policy = "full"')
    (project / "secureserve.toml").write_text(text)
    assert "output-full-scores" in codes(diagnose(project), Severity.WARNING)


def test_full_scores_for_a_custom_role_is_a_warning_naming_it(project):
    configure(project, '\n[model.output.roles]\nanalyst = "full"\nadmin = "full"\n')
    report = diagnose(project)
    (finding,) = [f for f in report.findings if f.code == "output-full-scores-role"]
    assert finding.severity == Severity.WARNING
    assert "analyst" in finding.message
    assert "admin" not in finding.message


def test_no_profile_is_reported(project):
    (project / "models" / "profile.json").unlink()
    text = (project / "secureserve.lock").read_text()
    (project / "secureserve.lock").write_text(text.replace("profile.json", "gone.json"))
    assert "profile-missing" in codes(diagnose(project), Severity.INFO)


def test_the_handler_is_imported_only_when_asked(project):
    (project / "app.py").write_text(TEXT_HANDLER)
    configure(project, "")
    text = (project / "secureserve.toml").read_text().replace("app:Digits", "app:Moderator")
    (project / "secureserve.toml").write_text(text)
    assert "feature-view-missing" not in codes(diagnose(project))
    report = diagnose(project, handler=True)
    # the digits profile is there, so the missing feature view is an error, not a warning
    assert "feature-view-missing" in codes(report, Severity.ERROR)
    (project / "models" / "profile.json").unlink()
    lock = (project / "secureserve.lock").read_text().replace("profile.json", "gone.json")
    (project / "secureserve.lock").write_text(lock)
    report = diagnose(project, handler=True)
    assert "feature-view-missing" in codes(report, Severity.ERROR)  # guard mode = "flag"
    text = (project / "secureserve.toml").read_text().replace('mode = "flag"', "")
    (project / "secureserve.toml").write_text(text)
    report = diagnose(project, handler=True)
    assert "defenses-off" in codes(report, Severity.WARNING)
    assert "feature-view-missing" not in codes(report)


def test_a_policy_the_server_would_refuse_is_an_error(project):
    (project / "app.py").write_text(TEXT_HANDLER)
    text = (project / "secureserve.toml").read_text().replace("app:Digits", "app:Moderator")
    text = text.replace('policy = "top_k"', 'policy = "label_only"')
    (project / "secureserve.toml").write_text(text)
    report = diagnose(project, handler=True)
    (finding,) = [f for f in report.findings if f.code == "output-policy-invalid"]
    assert "optional" in finding.message


@pytest.fixture
def two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The iris and digits examples served together (``[models.iris]``, ``[models.digits]``)."""
    project = copy_two_models(tmp_path / "two", monkeypatch)
    lock_project(load_settings(project_dir=project, environ={}))
    return project


def test_two_models_findings_name_each_model_s_table(two):
    """Each model is judged on its own keys; findings name ``[models.NAME...]``."""
    text = (two / "secureserve.toml").read_text()
    (two / "secureserve.toml").write_text(text.replace('policy = "label_only"', 'policy = "full"'))
    report = diagnose(two)
    [full] = [f for f in report.findings if f.code == "output-full-scores"]
    assert full.subject == "[models.iris.output] policy"
    assert "[models.iris.output.roles]" in full.fix
    # iris has no profile, digits has one in its folder's section of the lock
    [missing] = [f for f in report.findings if f.code == "profile-missing"]
    assert missing.subject == "[models.iris] profile"
    assert "--model iris --out models/iris/profile.json" in missing.fix


def test_two_models_each_handler_is_imported_and_checked(two):
    """With ``handler=True`` every model's handler is checked, and a bad one is named."""
    assert "handler-invalid" not in codes(diagnose(two, handler=True))
    text = (two / "secureserve.toml").read_text().replace("digits_app:Digits", "digits_app:Nope")
    (two / "secureserve.toml").write_text(text)
    [finding] = [f for f in diagnose(two, handler=True).findings if f.code == "handler-invalid"]
    assert finding.subject == "[models.digits] handler"


def test_a_tensor_model_is_named_as_such_not_given_ss_model_advice(tmp_path, monkeypatch):
    """--handler on a TensorModel: its full scores and missing profile, no ss.Model advice."""
    project = copy_example("iris-tensor", tmp_path / "tensor", monkeypatch)
    report = diagnose(project, handler=True)
    found = codes(report)
    [scores] = [f for f in report.findings if f.code == "tensor-scores-full"]
    assert "(probs)" in scores.message
    assert "profile-missing" in found
    assert "defenses-off" not in found  # x is FP32 [-1, 4]: a feature view
    assert "handler-invalid" not in found
    assert "output-unmarked" not in found


def test_a_tensor_graph_without_a_feature_input_is_reported(tmp_path, monkeypatch):
    """--handler opens the graph: two inputs leave the defenses off (a warning naming why)."""
    from test_tensor_serving import two_input_graph

    project = copy_example("iris-tensor", tmp_path / "tensor", monkeypatch)
    two_input_graph(project / "models" / "iris.onnx")
    monkeypatch.chdir(project)
    assert main(["lock"]) == 0
    [finding] = [f for f in diagnose(project, handler=True).findings if f.code == "defenses-off"]
    assert "iris.onnx has 2 inputs" in finding.message
