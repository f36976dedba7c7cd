"""secureserve.defenses: what runs at start-up, and models without a feature view."""

from __future__ import annotations

import io

import msgspec
import pytest
from app_helpers import asgi_client, build_app, json_lines, json_logs, unlimited_iris_settings
from conftest import load_iris
from defense_helpers import digits_handler, digits_settings

import secureserve as ss
from secureserve.errors import ConfigError
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
