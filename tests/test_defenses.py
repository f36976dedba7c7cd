"""secureserve.defenses: what runs at start-up, and models without a feature view."""

from __future__ import annotations

import io
from typing import Any

import msgspec
import numpy as np
import pytest
from app_helpers import asgi_client, build_app, json_lines, json_logs, unlimited_iris_settings
from conftest import load_iris
from defense_helpers import digits_handler, digits_settings

import secureserve as ss
from secureserve.defenses import FeatureSource
from secureserve.errors import ConfigError, ModelError
from secureserve.keys import mint_key
from secureserve.serving import load_model
from secureserve.settings import GuardSettings

CALLER = mint_key(name="caller", roles=("predict",))


class Text(msgspec.Struct):
    text: str


class Length(msgspec.Struct):
    n: int


class Talker(ss.Model[Text, Length]):
    name = "talker"

    def predict(self, batch: list[Text]) -> list[Length]:
        return [Length(len(t.text)) for t in batch]


def test_a_text_model_starts_with_the_defenses_off_and_says_why():
    with json_logs(io.BytesIO()) as logs:
        app = build_app(Talker, unlimited_iris_settings(), CALLER)
        with asgi_client(app, CALLER) as client:
            response = client.post(
                "/v1/models/talker:predict", json={"instances": [{"text": "hi"}]}
            )
    assert response.json() == {"predictions": [{"n": 2}]}
    (line,) = [x for x in json_lines(logs) if "feature view" in x["event"]]
    assert "`text`" in line["reason"]


@pytest.mark.parametrize(
    "model",
    [{"profile": "profile.json"}, {"guard": GuardSettings(mode="flag")}],
    ids=["profile", "guard"],
)
def test_a_defense_switched_on_explicitly_needs_the_feature_view(model):
    settings = unlimited_iris_settings()
    settings = msgspec.structs.replace(
        settings, model=msgspec.structs.replace(settings.model, **model)
    )
    with pytest.raises(ConfigError, match=r"feature view.*`text`"):
        load_model(Talker, settings)


def test_an_explicit_guard_without_a_profile_is_refused():
    """The iris example has no profile: mode = "refuse" would protect nothing."""
    settings = unlimited_iris_settings()
    guard = GuardSettings(mode="refuse")
    settings = msgspec.structs.replace(
        settings, model=msgspec.structs.replace(settings.model, guard=guard)
    )
    with pytest.raises(ConfigError, match="secureserve profile"):
        load_model(load_iris(), settings)


def test_the_digits_example_runs_guard_and_drift():
    loaded = load_model(digits_handler(), digits_settings())
    assert loaded.profile is not None
    assert loaded.no_features is None


def test_start_up_says_which_defenses_run_and_warns_about_full_scores():
    settings = digits_settings(output={"policy": "full"})
    with json_logs(io.BytesIO()) as logs:
        build_app(digits_handler(), settings, CALLER)
    lines = json_lines(logs)
    (line,) = [x for x in lines if x["event"] == "model defenses"]
    assert (line["output_policy"], line["guard"], line["drift"]) == ("full", "flag", "on")
    assert line["profile_features"] == 64
    assert any("full scores" in x["event"] for x in lines if x["level"] == "warning")


class Columns(ss.Model[Text, Length]):
    """A handler whose ``features()`` returns whatever the test put in ``returned``."""

    name = "columns"
    feature_names = ("a", "b", "c")
    returned: Any = None

    def predict(self, batch: list[Text]) -> list[Length]:
        return [Length(len(t.text)) for t in batch]

    def features(self, batch: list[Text]) -> Any:
        return self.returned


HUGE = np.finfo(np.float64).max


@pytest.mark.parametrize(
    ("rows", "finite"),
    [
        ([[1.0, -2.0, 3.0]], True),
        ([[HUGE, HUGE, -HUGE]], True),  # their sum overflows, not they
        ([[np.nan, 0.0, 0.0]], False),
        ([[np.inf, 0.0, 0.0]], False),
        ([[-np.inf, np.inf, 0.0]], False),
        ([[1.0, 2.0, 3.0]] * 5 + [[1e200, -1e200, 0.0]], True),  # 18 values, squares overflow
        ([[1.0, 2.0, 3.0]] * 5 + [[0.0, np.nan, 0.0]], False),
        ([[1.0, 2.0, 3.0]] * 5 + [[0.0, 0.0, -np.inf]], False),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, "F"])
def test_feature_rows_must_be_finite(rows, finite, dtype):
    """``FeatureSource.of`` passes finite rows through as they are; NaN or inf is a ModelError.

    Float64 (C and Fortran order) and float32, a few values and more, sums that overflow.
    """
    with np.errstate(over="ignore"):
        array = np.array(rows, dtype=np.float64 if dtype == "F" else dtype)
    if dtype == "F":
        array = np.asfortranarray(array)
    model = Columns()
    model.returned = array
    source = FeatureSource.of(model, has_view=True)
    instances = [Text("x")] * len(rows)
    if finite and np.isfinite(array).all():
        assert source.rows(instances) is array
    else:
        with pytest.raises(ModelError, match="expected finite numbers of shape"):
            source.rows(instances)


@pytest.mark.parametrize(
    "returned",
    [np.zeros((2, 3)), np.zeros((1, 4)), [[0.0, 0.0, 0.0]]],
    ids=["rows", "columns", "list"],
)
def test_feature_rows_of_the_wrong_shape_or_kind_are_a_model_error(returned):
    """One row per instance and one column per feature name, as an array."""
    model = Columns()
    model.returned = returned
    with pytest.raises(ModelError, match="expected finite numbers of shape"):
        FeatureSource.of(model, has_view=True).rows([Text("x")])
