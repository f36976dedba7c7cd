"""secureserve.profile and ``secureserve profile``: the reference profile of training data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest
from conftest import EXAMPLES, copy_example
from defense_helpers import digits_handler, digits_rows
from two_models import copy_two_models

from secureserve.cli import main
from secureserve.config import load_settings
from secureserve.errors import ArtifactError, ConfigError
from secureserve.profile import MIN_ROWS, Profile, build_profile, schema_revision
from secureserve.serving import load_model


@pytest.fixture
def digits_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of examples/digits-safetensors as the working directory."""
    target = copy_example("digits-safetensors", tmp_path / "digits", monkeypatch)
    monkeypatch.chdir(target)
    return target


def run(*args: str) -> int:
    return main(["profile", *args])


def test_the_committed_profile_is_what_the_command_makes(digits_project, capsys):
    """Same data, same bytes: the example's profile is reproducible from its data."""
    committed = (digits_project / "models" / "profile.json").read_bytes()
    (digits_project / "models" / "profile.json").unlink()
    assert run("data/train.npy") == 0
    assert (digits_project / "models" / "profile.json").read_bytes() == committed
    out = capsys.readouterr().out
    assert "1438 instances, 64 features" in out
    assert "secureserve lock" in out


def test_the_same_data_as_jsonl_and_csv_gives_the_same_profile(digits_project):
    rows = digits_rows()
    names = [f"pixels[{i}]" for i in range(64)]
    with (digits_project / "train.jsonl").open("w") as out:
        for row in rows:
            out.write(json.dumps({"pixels": row.tolist()}) + "\n")
    order = list(reversed(range(64)))  # columns in another order: the header decides
    with (digits_project / "train.csv").open("w") as out:
        out.write(",".join(names[i] for i in order) + "\n")
        for row in rows:
            out.write(",".join(str(int(row[i])) for i in order) + "\n")
    assert run("train.jsonl", "--out", "a.json") == 0
    assert run("train.csv", "--out", "b.json") == 0
    committed = (digits_project / "models" / "profile.json").read_bytes()
    assert (digits_project / "a.json").read_bytes() == committed
    assert (digits_project / "b.json").read_bytes() == committed


def test_bad_rows_are_named_by_line_and_nothing_is_written(digits_project, capsys):
    lines = [json.dumps({"pixels": [0.0] * 64})] * 30
    lines[6] = json.dumps({"pixels": [0.0] * 63})
    lines[11] = json.dumps({"pixels": [0.0] * 63 + [17.0]})
    lines[20] = "{not json"
    (digits_project / "bad.jsonl").write_text("\n".join(lines) + "\n")
    assert run("bad.jsonl", "--out", "out.json") == 1
    err = capsys.readouterr().err
    assert "line 7: $.pixels: length must be >= 64" in err
    assert "line 12: $.pixels[63]: must be <= 16.0" in err
    assert "line 21: not valid JSON" in err
    assert not (digits_project / "out.json").exists()


def test_csv_and_npy_rows_go_through_the_input_schema(digits_project, capsys):
    rows = digits_rows()[:30].copy()
    rows[4, 3] = 99.0  # outside the schema's 0..16
    rows[9, 0] = np.nan
    np.save(digits_project / "bad.npy", rows, allow_pickle=False)
    assert run("bad.npy", "--out", "out.json") == 1
    err = capsys.readouterr().err
    assert "row 4: $.pixels[3]: must be <= 16.0" in err
    assert "row 9: not a finite number" in err
    (digits_project / "bad.csv").write_text("a,b\n1,2\n")
    assert run("bad.csv", "--out", "out.json") == 1
    assert "header must name each feature once" in capsys.readouterr().err
    np.save(digits_project / "narrow.npy", np.zeros((30, 3)), allow_pickle=False)
    assert run("narrow.npy", "--out", "out.json") == 1
    assert "shape (rows, 64)" in capsys.readouterr().err
    np.save(digits_project / "objects.npy", np.array([{}], dtype=object), allow_pickle=True)
    assert run("objects.npy", "--out", "out.json") == 1
    assert "not a numeric .npy array" in capsys.readouterr().err
    assert not (digits_project / "out.json").exists()


def test_too_little_data_and_unknown_formats_are_refused(digits_project, capsys):
    np.save(digits_project / "few.npy", digits_rows()[: MIN_ROWS - 1], allow_pickle=False)
    assert run("few.npy") == 1
    assert f"at least {MIN_ROWS}" in capsys.readouterr().err
    (digits_project / "data.parquet").write_bytes(b"PAR1")
    assert run("data.parquet") == 1
    assert ".jsonl" in capsys.readouterr().err


def test_the_profile_is_a_locked_artifact(digits_project):
    """Loaded through Artifacts: a changed profile fails the lock check at start-up."""
    settings = load_settings(project_dir=digits_project)
    loaded = load_model(digits_handler(), settings)
    assert loaded.profile is not None
    assert "profile.json" in loaded.opened
    path = digits_project / "models" / "profile.json"
    path.write_bytes(path.read_bytes().replace(b'"count": 1438', b'"count": 1439', 1))
    with pytest.raises(ArtifactError, match=r"profile\.json"):
        load_model(digits_handler(), settings)


def test_a_profile_of_another_schema_is_refused(digits_project):
    path = digits_project / "models" / "profile.json"
    data = msgspec.json.decode(path.read_bytes(), type=Profile)
    other = msgspec.structs.replace(data, schema_revision="0" * 16)
    path.write_bytes(msgspec.json.encode(other))
    assert main(["lock"]) == 0
    with pytest.raises(ConfigError, match="another input schema"):
        load_model(digits_handler(), load_settings(project_dir=digits_project))


def test_build_profile_statistics_and_histogram():
    rows = np.arange(100, dtype=np.float64).reshape(100, 1)
    profile = build_profile(rows, ["x"], model="m", revision=schema_revision(int))
    (feature,) = profile.features
    assert (feature.min, feature.max, feature.mean) == (0.0, 99.0, 49.5)
    assert feature.quantiles.q50 == 49.5
    assert len(feature.edges) == 9
    assert sum(feature.counts) == 100
    assert feature.counts == [10] * 10


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"count": 0}, "a profile needs"),
        ({"f.std": -1.0}, "out of order"),
        ({"f.min": 99.0}, "out of order"),
        ({"f.mean": 1e308, "f.std": 1e308}, "out of order"),
        ({"f.edges": [float(i) for i in range(200_000)]}, "at most 9"),
        ({"f.edges": [2.0, 1.0]}, "at most 9"),
        ({"f.counts": [-5, 1443]}, "does not add up"),
        ({"f.counts": [1, 1]}, "does not add up"),
    ],
)
def test_a_locked_but_unsound_profile_is_refused(digits_project, change, problem):
    """Locked is not sound: numbers the guard and drift divide by or allocate are checked."""
    path = digits_project / "models" / "profile.json"
    data = json.loads(path.read_text())
    feature = data["features"][5]
    for key, value in change.items():
        if key.startswith("f."):
            feature[key[2:]] = value
        else:
            data[key] = value
    if "f.edges" in change:
        feature["counts"] = [0] * len(feature["edges"]) + [data["count"]]
    path.write_text(json.dumps(data))
    assert main(["lock"]) == 0
    with pytest.raises(ConfigError, match=problem):
        load_model(digits_handler(), load_settings(project_dir=digits_project))


def test_a_number_no_float_can_hold_is_invalid_json(digits_project):
    path = digits_project / "models" / "profile.json"
    path.write_text(path.read_text().replace('"mean": 0.0', '"mean": 1e400', 1))
    assert main(["lock"]) == 0
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_model(digits_handler(), load_settings(project_dir=digits_project))


@pytest.fixture
def two_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The iris and digits examples as two ``[models.*]`` tables, as the working directory."""
    project = copy_two_models(tmp_path / "two", monkeypatch)
    shutil.copy(EXAMPLES / "digits-safetensors" / "data" / "train.npy", project / "train.npy")
    monkeypatch.chdir(project)
    return project


def test_several_models_profile_the_one_named_by_model(two_project, capsys):
    """``--model digits`` uses that model's handler and writes into its own folder."""
    committed = (two_project / "models" / "digits" / "profile.json").read_bytes()
    (two_project / "models" / "digits" / "profile.json").unlink()
    assert run("train.npy", "--model", "digits") == 0
    assert (two_project / "models" / "digits" / "profile.json").read_bytes() == committed
    assert not (two_project / "models" / "iris" / "profile.json").exists()
    assert "64 features" in capsys.readouterr().out


def test_several_models_profile_needs_model(two_project, capsys):
    """With several models and no ``--model``, the command names them and writes nothing."""
    assert run("train.npy") == 1
    err = capsys.readouterr().err
    assert "--model" in err
    assert "digits, iris" in err


def test_several_models_profile_unknown_model_is_named(two_project, capsys):
    """``--model`` with a name no table has is refused, listing the served names."""
    assert run("train.npy", "--model", "wine") == 1
    err = capsys.readouterr().err
    assert "[models.wine]" in err
    assert "digits, iris" in err


def test_several_models_profile_elsewhere_names_the_model_s_table(two_project, capsys):
    """A profile written under another name in the folder says which table to set."""
    assert run("train.npy", "--model", "digits", "--out", "models/digits/other.json") == 0
    assert '[models.digits] profile = "other.json"' in capsys.readouterr().out
