"""``secureserve check``: fairness and data drift as a gate that can fail."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_example
from defense_helpers import digits_rows
from two_models import copy_two_models

from secureserve.check import run_check
from secureserve.check.fairness import fairness
from secureserve.check.progress import Progress
from secureserve.cli import main
from secureserve.errors import ConfigError
from secureserve.settings import CheckSettings

HANDLER = """
import msgspec
import secureserve as ss


class Applicant(msgspec.Struct, forbid_unknown_fields=True):
    income: float
    group: int


class Decision(msgspec.Struct):
    label: ss.Label
    score: ss.Score


class Lender(ss.Model[Applicant, Decision]):
    name = "lender"

    def predict(self, batch):
        return [
            Decision("approve" if KEY else "deny", 0.9)
            for a in batch
        ]
"""
FAIR = "a.income > 50"
UNFAIR = "a.group == 1"  # keys on the sensitive column


def lender_project(root: Path, rule: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delitem(sys.modules, "app", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    root.mkdir()
    (root / "app.py").write_text(HANDLER.replace("KEY", rule))
    (root / "secureserve.toml").write_text('[model]\nhandler = "app:Lender"\n')
    (root / "models").mkdir()
    rng = np.random.default_rng(0)
    with (root / "data.jsonl").open("w") as out:
        for i in range(400):
            group = i % 2
            income = float(rng.uniform(0, 100))
            label = "approve" if income > 50 else "deny"
            out.write(
                json.dumps(
                    {
                        "instance": {"income": income, "group": group},
                        "label": label,
                        "group": {"group": "b" if group else "a"},
                    }
                )
                + "\n"
            )
    return root


def test_a_fair_model_passes_and_the_report_says_what_was_checked(tmp_path, monkeypatch):
    project = lender_project(tmp_path / "fair", FAIR, monkeypatch)
    report = run_check(project, project / "data.jsonl", sensitive=("group",), only=("fairness",))
    assert report.passed
    (fairness,) = report.checks
    assert fairness.passed is True
    names = {f.name for f in fairness.figures}
    assert names == {"group: demographic_parity_difference", "group: equalized_odds_difference"}
    assert fairness.details["columns"]["group"]["a"]["accuracy"] == 1.0
    assert report.model == "lender"


def test_a_model_that_keys_on_the_sensitive_column_fails_and_exits_1(tmp_path, monkeypatch, capsys):
    project = lender_project(tmp_path / "unfair", UNFAIR, monkeypatch)
    report_dir = tmp_path / "report"
    code = main(
        [
            "check",
            str(project),
            "--data",
            str(project / "data.jsonl"),
            "--sensitive",
            "group",
            "--only",
            "fairness",
            "--report",
            str(report_dir),
        ]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL  fairness" in out
    saved = json.loads((report_dir / "report.json").read_text())
    assert saved["passed"] is False
    parity = next(f for f in saved["checks"][0]["figures"] if "demographic" in f["name"])
    assert parity["value"] == 1.0
    assert parity["passed"] is False
    assert "**fail**" in (report_dir / "report.md").read_text()


def test_small_groups_are_reported_not_judged(tmp_path, monkeypatch):
    project = lender_project(tmp_path / "small", UNFAIR, monkeypatch)
    (project / "secureserve.toml").write_text(
        '[model]\nhandler = "app:Lender"\n\n[check]\nmin_group_size = 1000\n'
    )
    report = run_check(project, project / "data.jsonl", sensitive=("group",), only=("fairness",))
    (fairness,) = report.checks
    assert fairness.passed is None
    assert report.passed  # nothing judged is not a failure
    assert fairness.figures[0].note == "fewer than two groups large enough"


def test_data_drift_against_the_profile(tmp_path, monkeypatch):
    """The digits training images match their profile; shifted ones do not."""
    project = copy_example("digits-safetensors", tmp_path / "digits", monkeypatch)

    def write(name: str, rows: np.ndarray) -> Path:
        path = project / name
        with path.open("w") as out:
            for row in rows:
                instance = {"pixels": np.clip(row, 0, 16).tolist()}
                out.write(json.dumps({"instance": instance, "label": 0}) + "\n")
        return path

    same = run_check(project, write("same.jsonl", digits_rows()), only=("drift",))
    moved = digits_rows().copy()
    moved[:, 46] += 8
    shifted = run_check(project, write("moved.jsonl", moved), only=("drift",))
    assert same.passed
    assert same.checks[0].figures[0].value < 0.01
    assert not shifted.passed
    assert shifted.checks[0].figures[0].note == "pixels[46]"


def test_bad_rows_unknown_checks_and_columns_are_clear_errors(tmp_path, monkeypatch, capsys):
    project = lender_project(tmp_path / "bad", FAIR, monkeypatch)
    lines = (project / "data.jsonl").read_text().splitlines()
    lines[3] = json.dumps({"instance": {"income": "high", "group": 1}, "label": "deny"})
    lines[7] = "{"
    (project / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"line 4: \$\.income: expected float, got str") as caught:
        run_check(project, project / "bad.jsonl")
    assert "line 8: not valid JSON" in str(caught.value)
    with pytest.raises(ConfigError, match="--only speed: there is no such check"):
        run_check(project, project / "data.jsonl", only=("speed",))
    with pytest.raises(ConfigError, match="--sensitive age"):
        run_check(project, project / "data.jsonl", sensitive=("age",))
    with pytest.raises(SystemExit) as usage:
        main(["check", str(project)])  # --data is required
    assert usage.value.code == 2


def test_csv_data_with_feature_columns_a_label_and_groups(tmp_path, monkeypatch):
    project = lender_project(tmp_path / "csv", UNFAIR, monkeypatch)
    rows = [json.loads(line) for line in (project / "data.jsonl").read_text().splitlines()]
    with (project / "data.csv").open("w") as out:
        out.write("income,group,outcome,team\n")
        for row in rows:
            i = row["instance"]
            out.write(f"{i['income']},{i['group']},{row['label']},{row['group']['group']}\n")
    report = run_check(
        project,
        project / "data.csv",
        label_column="outcome",
        sensitive=("team",),
        only=("fairness",),
    )
    assert not report.passed
    assert report.checks[0].details["columns"]["team"]["b"]["size"] == 200


ROBUST = "a.income > 50"
BRITTLE = "int(a.income * 10) % 2 == 0"  # flips every 0.1 of income


def lender_with_profile(root: Path, rule: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The lender with a locked profile, its data far from the income boundary of 50.

    The rows are labelled by the model itself, so every one starts correct.
    """
    project = lender_project(root, rule, monkeypatch)
    rng = np.random.default_rng(1)
    incomes = np.concatenate([rng.uniform(0, 30, 100), rng.uniform(70, 100, 100)])
    with (project / "data.jsonl").open("w") as data, (project / "x.jsonl").open("w") as xs:
        for i, income in enumerate(incomes):
            instance = {"income": float(income), "group": i % 2}
            a = type("A", (), instance)
            label = "approve" if eval(rule, {}, {"a": a}) else "deny"  # noqa: S307 - the rule above
            data.write(json.dumps({"instance": instance, "label": label}) + "\n")
            xs.write(json.dumps(instance) + "\n")
    monkeypatch.chdir(project)
    assert main(["profile", "x.jsonl"]) == 0
    assert main(["lock"]) == 0
    return project


def test_a_smooth_model_is_robust(tmp_path, monkeypatch):
    project = lender_with_profile(tmp_path / "smooth", ROBUST, monkeypatch)
    report = run_check(project, project / "data.jsonl", only=("robustness",))
    (robustness,) = report.checks
    assert robustness.passed is True
    figures = {f.name: f for f in robustness.figures}
    assert figures["robust_accuracy"].value == 1.0
    assert figures["noise_accuracy@0.0"].value == 1.0


def test_a_model_with_a_steep_boundary_near_the_data_fails_robustness(tmp_path, monkeypatch):
    project = lender_with_profile(tmp_path / "brittle", BRITTLE, monkeypatch)
    report = run_check(project, project / "data.jsonl", only=("robustness",))
    (robustness,) = report.checks
    assert robustness.passed is False
    assert not report.passed
    figures = {f.name: f for f in robustness.figures}
    assert figures["robust_accuracy"].value < 0.5
    assert figures["median_minimal_perturbation"].value < 0.05


def test_fuzzing_passes_a_sound_handler(tmp_path, monkeypatch):
    project = lender_project(tmp_path / "sound", FAIR, monkeypatch)
    (project / "secureserve.toml").write_text(
        '[model]\nhandler = "app:Lender"\n\n[check]\nfuzz_examples = 15\n'
    )
    monkeypatch.chdir(project)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    progress = RecordingProgress()
    report = run_check(project, project / "data.jsonl", only=("fuzz",), progress=progress)
    (fuzz,) = report.checks
    assert fuzz.passed is True
    assert {f.name: f.value for f in fuzz.figures}["requests"] >= 15
    assert progress.parts["fuzz"][0] == 30  # fuzz_examples valid and as many invalid
    # nothing left behind: no .hypothesis/ with the project's strings, logging as it was
    assert sorted(p.name for p in project.iterdir() if p.name != "__pycache__") == [
        "app.py",
        "data.jsonl",
        "models",
        "secureserve.toml",
    ]
    assert (root.handlers, root.level) == (handlers, level)


def test_a_handler_that_fails_on_a_rare_valid_input_fails_fuzzing_naming_it(tmp_path, monkeypatch):
    rule = "((a.income > 50) if abs(a.income) < 1e6 else 1 / 0)"  # huge incomes crash it
    project = lender_project(tmp_path / "crashing", rule, monkeypatch)
    (project / "secureserve.toml").write_text(
        '[model]\nhandler = "app:Lender"\n\n[check]\nfuzz_examples = 40\n'
    )
    report = run_check(project, project / "data.jsonl", only=("fuzz",))
    (fuzz,) = report.checks
    assert fuzz.passed is False
    failure = fuzz.details["failures"][0]
    assert abs(failure["body"]["instances"][0]["income"]) >= 1e6  # the input, for replay
    assert "500" in failure["problem"] or "Server error" in failure["problem"]


def test_load_on_the_real_server_passes_a_quick_handler(tmp_path, monkeypatch):
    project = lender_project(tmp_path / "quick", FAIR, monkeypatch)
    (project / "secureserve.toml").write_text(
        '[model]\nhandler = "app:Lender"\n\n[check]\nload_seconds = 1.0\nload_connections = 2\n'
    )
    report = run_check(project, project / "data.jsonl", only=("load",))
    (load,) = report.checks
    figures = {f.name: f for f in load.figures}
    assert load.passed is True, load.summary
    assert figures["error_rate"].value == 0.0
    assert figures["requests_per_second"].value > 10


def test_a_handler_that_sleeps_fails_load(tmp_path, monkeypatch):
    rule = "(__import__('time').sleep(0.2) or a.income > 50)"
    project = lender_project(tmp_path / "slow", rule, monkeypatch)
    (project / "secureserve.toml").write_text(
        '[model]\nhandler = "app:Lender"\n\n[check]\nload_seconds = 1.0\n'
        "load_connections = 2\nmax_p99_ms = 100\n"
    )
    report = run_check(project, project / "data.jsonl", only=("load",))
    (load,) = report.checks
    assert load.passed is False
    assert {f.name: f for f in load.figures}["p99_ms"].value > 100


class RecordingProgress(Progress):
    """Keeps each part's description, total and how far it was advanced."""

    def __init__(self) -> None:
        self.parts: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def part(self, description, total):
        done = self.parts.setdefault(description, [total, 0.0])
        yield lambda amount: done.__setitem__(1, done[1] + amount)


def test_robustness_is_the_same_twice_and_shows_its_progress(tmp_path, monkeypatch):
    project = lender_with_profile(tmp_path / "again", BRITTLE, monkeypatch)
    progress = RecordingProgress()
    first = run_check(project, project / "data.jsonl", only=("robustness",), progress=progress)
    second = run_check(project, project / "data.jsonl", only=("robustness",))
    assert first.checks[0].figures == second.checks[0].figures  # seeded: a gate that never flaps
    total, done = progress.parts["robustness: HopSkipJump"]
    assert total == done == 20  # [check] robustness_samples rows, each attacked
    assert progress.parts["robustness: noise"] == [6, 6]


THREE_LABELS = HANDLER.replace(
    '"approve" if KEY else "deny"', '("review" if a.group == 1 else "approve") if KEY else "deny"'
)


def test_fairness_with_three_labels_judges_each_against_the_rest(tmp_path, monkeypatch):
    project = lender_project(tmp_path / "three", FAIR, monkeypatch)
    (project / "app.py").write_text(THREE_LABELS.replace("KEY", FAIR))
    report = run_check(project, project / "data.jsonl", sensitive=("group",), only=("fairness",))
    (fairness,) = report.checks
    assert fairness.passed is False
    parity = next(f for f in fairness.figures if "demographic" in f.name)
    # group b is never "approve"d and always "review"ed when a is approved
    assert parity.value > 0.4
    assert parity.note in {
        "largest for label 'approve' against the rest",
        "largest for label 'review' against the rest",
    }
    assert fairness.details["positive_labels"] == ["approve", "deny", "review"]
    assert set(fairness.details["columns"]["group"]["a"]["selection_rate"]) == {
        "approve",
        "deny",
        "review",
    }


def test_an_unknown_positive_label_names_the_labels(tmp_path, monkeypatch):
    project = lender_project(tmp_path / "typo", FAIR, monkeypatch)
    (project / "secureserve.toml").write_text(
        '[model]\nhandler = "app:Lender"\n\n[check]\npositive_label = "aprove"\n'
    )
    with pytest.raises(ConfigError, match=r"positive_label 'aprove' .* 'approve', 'deny'\."):
        run_check(project, project / "data.jsonl", sensitive=("group",), only=("fairness",))


def test_an_async_handler_is_checked_like_a_plain_one(tmp_path, monkeypatch):
    project = lender_project(tmp_path / "async", FAIR, monkeypatch)
    handler = HANDLER.replace("def predict", "async def predict").replace("KEY", FAIR)
    loops = "\nimport asyncio\nLOOPS = set()\n"  # every loop a call ran on
    handler = handler.replace(
        "        return [", "        LOOPS.add(id(asyncio.get_running_loop()))\n        return ["
    )
    (project / "app.py").write_text(handler + loops)
    report = run_check(project, project / "data.jsonl", sensitive=("group",), only=("fairness",))
    assert report.passed
    assert report.checks[0].details["columns"]["group"]["a"]["accuracy"] == 1.0
    assert len(sys.modules["app"].LOOPS) == 1  # 13 batches, one event loop for the check


def test_the_command_exits_2_when_the_check_cannot_run(tmp_path, monkeypatch, capsys):
    project = lender_project(tmp_path / "usage", FAIR, monkeypatch)
    with pytest.raises(SystemExit) as usage:
        main(["check", str(project), "--data", str(project / "data.jsonl"), "--only", "speed"])
    assert usage.value.code == 2
    assert "'speed' is not a check; choose from robustness,fairness" in capsys.readouterr().err
    (project / "bad.jsonl").write_text("{\n")
    code = main(["check", str(project), "--data", str(project / "bad.jsonl"), "--only", "drift"])
    assert code == 2
    assert "line 1: not valid JSON" in capsys.readouterr().err
    assert not (project / "check-report").exists()  # nothing half-written
    taken = tmp_path / "taken"
    taken.write_text("a file where the report folder would go")
    data = ["--data", str(project / "data.jsonl"), "--sensitive", "group", "--only", "fairness"]
    assert main(["check", str(project), *data, "--report", str(taken)]) == 2
    assert "the check could not run" in capsys.readouterr().err
    (project / "app.py").write_text(HANDLER.replace("KEY", "1 / 0"))
    monkeypatch.delitem(sys.modules, "app")
    assert main(["check", str(project), *data, "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "the check could not run: ZeroDivisionError: division by zero" in err
    assert "Traceback" not in err


def test_an_older_report_is_removed_when_a_new_run_cannot_finish(tmp_path, monkeypatch, capsys):
    project = lender_project(tmp_path / "stale", FAIR, monkeypatch)
    data = ["--data", str(project / "data.jsonl"), "--sensitive", "group", "--only", "fairness"]
    out = tmp_path / "report"
    assert main(["check", str(project), *data, "--report", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
    (project / "bad.jsonl").write_text("{\n")
    bad = ["--data", str(project / "bad.jsonl"), "--only", "drift", "--report", str(out)]
    assert main(["check", str(project), *bad]) == 2
    assert list(out.iterdir()) == []


def test_the_command_logs_the_run_to_mlflow(tmp_path, monkeypatch, capsys):
    mlflow = pytest.importorskip("mlflow", reason="the [mlflow] extra")
    project = lender_project(tmp_path / "tracked", FAIR, monkeypatch)
    monkeypatch.chdir(tmp_path)  # MLflow keeps a SQLite store's artifacts under ./mlruns
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["check", str(project), "--data", str(project / "data.jsonl"), "--sensitive", "group"]
    code = main([*argv, "--only", "fairness", "--report", "out", "--mlflow", store])
    assert code == 0
    out = capsys.readouterr().out
    assert "report: out/report.html" in out
    run_id = out.split("mlflow run: ")[1].split()[0]
    run = mlflow.MlflowClient(tracking_uri=store).get_run(run_id)
    assert run.data.tags["secureserve.check.fairness"] == "pass"
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    parity = saved["checks"][0]["figures"][0]
    assert parity["name"] == "group: demographic_parity_difference"
    assert run.data.metrics["fairness.group: demographic_parity_difference"] == parity["value"]


def test_a_label_missing_from_a_group_is_not_judged_for_equalized_odds():
    """A perfect model: a label no row of group a has must not count as a rate of 0 there."""
    truth = ["x"] * 5 + ["y"] * 95 + ["z"] * 50 + ["y"] * 50
    groups = {"site": ["b"] * 100 + ["a"] * 100}
    result = fairness(truth, list(truth), groups, CheckSettings())
    figures = {f.name: f for f in result.figures}
    odds = figures["site: equalized_odds_difference"]
    assert odds.passed is True  # (parity fails: z is half of a and none of b)
    assert odds.value == 0.0
    assert odds.note == (
        "largest for label 'y' against the rest; 2 label(s) not judged: rows with and "
        "without the label are needed in every group"
    )
    assert figures["site: demographic_parity_difference"].value == 0.5  # z: 0.5 in a, 0 in b


def test_a_project_of_several_models_is_checked_one_model_at_a_time(tmp_path, monkeypatch, capsys):
    project = copy_two_models(tmp_path / "two", monkeypatch)
    with (project / "secureserve.toml").open("a") as config:
        config.write("\n[check]\nfuzz_examples = 10\n")
    monkeypatch.chdir(project)
    assert main(["lock"]) == 0
    with (project / "digits.jsonl").open("w") as out:
        for row in digits_rows()[:100]:
            out.write(json.dumps({"instance": {"pixels": row.tolist()}, "label": 0}) + "\n")
    argv = ["check", "--data", "digits.jsonl", "--only", "drift,fuzz", "--report", "r"]
    assert main(argv) == 2
    assert "several models (iris, digits): choose one with --model NAME" in capsys.readouterr().err
    assert main([*argv, "--model", "digits"]) == 0
    saved = json.loads((project / "r" / "report.json").read_text())
    assert saved["model"] == "digits"
    assert [c["passed"] for c in saved["checks"]] == [True, True]
    assert main([*argv, "--model", "irs"]) == 2
    assert (
        "--model irs: there is no [models.irs] table; choose iris, digits"
        in capsys.readouterr().err
    )
