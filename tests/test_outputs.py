"""secureserve.outputs: output policies per role, through real requests and on their own."""

from __future__ import annotations

import math
from typing import Annotated, Any, Self

import msgspec
import pytest
from app_helpers import asgi_client, bearer, build_app, unlimited_iris_settings

import secureserve as ss
from secureserve.errors import ConfigError, ModelError
from secureserve.keys import mint_key
from secureserve.outputs import OutputPolicies
from secureserve.settings import OutputSettings

PREDICT = "/v1/models/species:predict"
SCORES = {"setosa": 0.1234, "versicolor": 0.6789, "virginica": 0.1977}


class Flower(msgspec.Struct):
    x: float


class Species(msgspec.Struct):
    label: ss.Label
    score: ss.Score | None = None
    scores: ss.Scores | None = None


class Classifier(ss.Model[Flower, Species]):
    """Answers SCORES for every flower (or, for x = -1, a score outside [0, 1])."""

    name = "species"

    def predict(self, batch: list[Flower]) -> list[Species]:
        out = []
        for flower in batch:
            score = 1.5 if flower.x == -1 else 0.678912
            out.append(Species(label="versicolor", score=score, scores=dict(SCORES)))
        return out


PREDICTOR = mint_key(name="predictor", roles=("predict",))
ANALYST = mint_key(name="analyst", roles=("predict", "analyst"))
ONLY_ANALYST = mint_key(name="no-predict", roles=("analyst",))
AUDITOR = mint_key(name="auditor", roles=("predict", "auditor"))


def app_with(**output: Any) -> Any:
    settings = unlimited_iris_settings()
    model = msgspec.structs.replace(settings.model, output=OutputSettings(**output))
    settings = msgspec.structs.replace(settings, model=model)
    return build_app(Classifier, settings, PREDICTOR, ANALYST, ONLY_ANALYST, AUDITOR)


class Served:
    """One app, one client (the app's audit log closes with its client), any caller."""

    def __init__(self, **output: Any) -> None:
        self.client = asgi_client(app_with(**output))

    def __enter__(self) -> Self:
        self.client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)

    def predict(self, key: Any, x: float = 1.0) -> Any:
        return self.client.post(PREDICT, json={"instances": [{"x": x}]}, headers=bearer(key))

    def openapi(self, key: Any) -> Any:
        return self.client.get("/openapi.json", headers=bearer(key)).json()


def test_default_policy_is_top_1_rounded_to_2_decimals():
    """Secure by default: a handler with score fields answers top_k, k = 1, 2 decimals."""
    with Served() as served:
        response = served.predict(PREDICTOR)
    assert response.status_code == 200
    assert response.json() == {
        "predictions": [{"label": "versicolor", "score": 0.68, "scores": {"versicolor": 0.68}}]
    }


def test_per_role_policies_pick_the_most_permissive_override():
    """label_only for everyone, full for analyst; a caller with both roles gets full."""
    with Served(policy="label_only", roles={"analyst": "full", "auditor": "top_k"}, top_k=2) as s:
        predictor, analyst, auditor = s.predict(PREDICTOR), s.predict(ANALYST), s.predict(AUDITOR)
    assert predictor.json() == {"predictions": [{"label": "versicolor"}]}
    assert analyst.json() == {
        "predictions": [
            {
                "label": "versicolor",
                "score": 0.68,
                "scores": {"setosa": 0.12, "versicolor": 0.68, "virginica": 0.2},
            }
        ]
    }
    assert auditor.json()["predictions"][0]["scores"] == {
        "versicolor": 0.68,
        "virginica": 0.2,
    }


def test_a_custom_role_grants_no_route():
    """``analyst`` alone selects a policy but may not predict (403)."""
    with Served(roles={"analyst": "full"}) as served:
        assert served.predict(ONLY_ANALYST).status_code == 403


def test_decimals_apply_to_every_policy():
    with Served(policy="full", decimals=3) as served:
        body = served.predict(PREDICTOR).json()["predictions"][0]
    assert body["score"] == 0.679
    assert body["scores"] == {"setosa": 0.123, "versicolor": 0.679, "virginica": 0.198}


def test_an_out_of_range_score_is_a_500_not_a_rounded_value():
    """The round trip refuses 1.5 (ss.Score has bounds); nothing is clipped into range."""
    with Served(policy="full") as served:
        response = served.predict(PREDICTOR, x=-1)
    assert response.status_code == 500
    assert "1.5" not in response.text


def test_openapi_describes_what_each_caller_receives():
    """label_only callers see a schema without score fields; full callers see them."""
    with Served(policy="label_only", roles={"analyst": "full"}) as served:
        limited, full = served.openapi(PREDICTOR), served.openapi(ANALYST)
    assert set(limited["components"]["schemas"]["Species"]["properties"]) == {"label"}
    assert set(full["components"]["schemas"]["Species"]["properties"]) == {
        "label",
        "score",
        "scores",
    }
    assert "Labels only" in limited["paths"][PREDICT]["post"]["description"]
    assert "rounded to 2 decimals" in full["paths"][PREDICT]["post"]["description"]


# --------------------------------------------------------------------------- policies alone


class Candidate(msgspec.Struct, rename="camel"):
    class_name: Annotated[int, ss.Label]
    class_score: ss.Score | None = None


class Ranked(msgspec.Struct):
    best: Candidate
    others: list[Candidate]
    probs: Annotated[list[float], ss.Scores] | None = None
    note: str = "kept"


RANKED = Ranked(
    best=Candidate(3, 0.91234),
    others=[Candidate(1, 0.05), Candidate(7, 0.03766)],
    probs=[0.01, 0.98999, 0.00001],
)


def encode(policies: OutputPolicies, roles: frozenset[str] = frozenset()) -> Any:
    view = policies.for_roles(roles)
    assert view is not None
    return msgspec.json.decode(msgspec.json.encode(view.apply([RANKED])))[0]


def test_nested_structs_lists_and_renamed_fields():
    """Policies reach nested Structs and lists of them; encoded names are kept."""
    full = OutputPolicies(Ranked, OutputSettings(policy="full"), where="t")
    assert encode(full) == {
        "best": {"className": 3, "classScore": 0.91},
        "others": [{"className": 1, "classScore": 0.05}, {"className": 7, "classScore": 0.04}],
        "probs": [0.01, 0.99, 0.0],
        "note": "kept",
    }
    only = OutputPolicies(Ranked, OutputSettings(policy="label_only"), where="t")
    assert encode(only) == {
        "best": {"className": 3},
        "others": [{"className": 1}, {"className": 7}],
        "note": "kept",
    }


def test_the_handlers_objects_are_not_changed():
    policies = OutputPolicies(Ranked, OutputSettings(policy="full", decimals=0), where="t")
    encode(policies)
    assert RANKED.best.class_score == 0.91234


def test_top_k_keeps_the_best_entries_with_ties_in_their_order():
    class Out(msgspec.Struct):
        scores: ss.Scores

    policies = OutputPolicies(Out, OutputSettings(top_k=2), where="t")
    assert policies.default is not None
    (shown,) = policies.default.apply([Out({"a": 0.2, "b": 0.4, "c": 0.4})])
    assert shown.scores == {"b": 0.4, "c": 0.4}


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({}, "default policy top_k cannot cut"),
        ({"policy": "top_k"}, "top_k cannot cut"),
        ({"policy": "full", "roles": {"x": "top_k"}}, "top_k cannot cut"),
    ],
)
def test_top_k_over_a_list_of_scores_is_refused_at_start(output, message):
    with pytest.raises(ConfigError, match=message):
        OutputPolicies(Ranked, OutputSettings(**output), where="t")


def test_label_only_needs_optional_score_fields():
    class Strict(msgspec.Struct):
        label: ss.Label
        score: ss.Score

    with pytest.raises(ConfigError, match=r"`score`.*optional"):
        OutputPolicies(Strict, OutputSettings(roles={"guest": "label_only"}), where="t")
    assert OutputPolicies(Strict, OutputSettings(), where="t").default is not None


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan, math.inf])
def test_a_score_out_of_range_is_a_model_error(bad):
    """Marked fields without bounds are still checked: never rounded into range."""

    class Loose(msgspec.Struct):
        scores: Annotated[list[float], ss.Scores]

    policies = OutputPolicies(Loose, OutputSettings(policy="full"), where="t")
    assert policies.default is not None
    with pytest.raises(ModelError, match="outside"):
        policies.default.apply([Loose([0.5, bad])])


def test_an_output_without_score_fields_has_no_policy():
    class Plain(msgspec.Struct):
        label: ss.Label
        size: float

    policies = OutputPolicies(Plain, OutputSettings(policy="label_only"), where="t")
    assert policies.for_roles(frozenset({"predict"})) is None
    assert not policies.has_scores


def test_scores_on_something_else_is_refused():
    class Odd(msgspec.Struct):
        scores: Annotated[str, ss.Scores]

    with pytest.raises(ConfigError, match="neither a mapping"):
        OutputPolicies(Odd, OutputSettings(), where="t")


def test_one_merged_batch_answers_each_caller_under_its_own_policy():
    """Jobs of different callers merged into one predict call keep their own policies."""
    import asyncio

    from secureserve.runner import InferenceRunner
    from secureserve.schema import ModelSchema

    policies = OutputPolicies(
        Species, OutputSettings(policy="label_only", roles={"analyst": "full"}), where="t"
    )
    schema = ModelSchema(Flower, Species, max_instances=8)
    calls: list[int] = []

    class Counting(Classifier):
        def predict(self, batch: list[Flower]) -> list[Species]:
            calls.append(len(batch))
            return super().predict(batch)

    runner = InferenceRunner(Counting(), schema, max_batch=8, timeout=5)

    async def both() -> list[bytes]:
        return await asyncio.gather(
            runner.submit([Flower(1.0)], policies.for_roles(frozenset({"predict"}))),
            runner.submit([Flower(1.0)], policies.for_roles(frozenset({"predict", "analyst"}))),
        )

    try:
        limited, full = asyncio.run(both())
    finally:
        runner.close()
    assert calls == [2]  # one predict call for both callers
    assert msgspec.json.decode(limited) == {"predictions": [{"label": "versicolor"}]}
    assert msgspec.json.decode(full)["predictions"][0]["score"] == 0.68


class Cat(msgspec.Struct, tag=True):
    scores: ss.Scores


class Dog(msgspec.Struct, tag=True):
    scores: ss.Scores


class Node(msgspec.Struct):
    score: ss.Score | None = None
    children: list[Node] = []


class InDict(msgspec.Struct):
    by_name: dict[str, Species]


class InTuple(msgspec.Struct):
    pair: tuple[Species, Species]


@pytest.mark.parametrize(
    ("output", "where"),
    [(Cat | Dog, "a union"), (InDict, "by_name"), (InTuple, "pair"), (Node, "contains itself")],
    ids=["union", "dict", "tuple", "recursive"],
)
def test_score_fields_a_policy_cannot_reach_are_refused_at_start(output, where):
    """A policy that skipped them would send the scores it is meant to hide."""
    with pytest.raises(ConfigError, match=where):
        OutputPolicies(output, OutputSettings(policy="label_only"), where="t")


class Checked(msgspec.Struct):
    label: ss.Label
    scores: ss.Scores

    def __post_init__(self) -> None:
        if abs(sum(self.scores.values()) - 1) > 0.01:
            raise RuntimeError("scores must add up to 1")


class CheckedModel(ss.Model[Flower, Checked]):
    name = "species"

    def predict(self, batch: list[Flower]) -> list[Checked]:
        return [Checked("a", {"a": 0.5, "b": 0.5} if f.x > 0 else {"a": 0.4}) for f in batch]


def test_an_output_type_that_raises_is_a_500_and_the_model_serves_on():
    """User code in the output type (its __post_init__) never kills the inference thread."""
    settings = unlimited_iris_settings()
    model = msgspec.structs.replace(settings.model, output=OutputSettings())  # top_k, k = 1
    app = build_app(CheckedModel, msgspec.structs.replace(settings, model=model), PREDICTOR)
    with asgi_client(app, PREDICTOR) as client:
        bad = client.post(PREDICT, json={"instances": [{"x": -1}]})
        good = client.post(PREDICT, json={"instances": [{"x": 1}, {"x": 2}]})
    assert bad.status_code == 500
    assert good.status_code == 200
    # top_k k=1 cuts the mapping; the policy never runs the handler's __post_init__
    assert good.json()["predictions"][0]["scores"] == {"a": 0.5}


def test_role_overrides_on_an_output_without_scores_change_nothing():
    class Plain(msgspec.Struct):
        size: float

    policies = OutputPolicies(Plain, OutputSettings(roles={"analyst": "full"}), where="t")
    assert policies.for_roles(frozenset({"predict", "analyst"})) is None
