"""secureserve.features and Model.features: instances as rows of numbers, with names."""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
import pytest

import secureserve as ss
from secureserve.errors import ConfigError
from secureserve.features import MAX_FEATURES, NoFeatureViewError, feature_view


def fixed(kind: object, n: int) -> object:
    return Annotated[list[kind], msgspec.Meta(min_length=n, max_length=n)]  # type: ignore[valid-type]


class Size(msgspec.Struct):
    width: float
    height: int


class Applicant(msgspec.Struct):
    age: int
    scores: fixed(float, 3)  # type: ignore[valid-type]
    size: Size
    member: bool
    pair: tuple[float, float]
    grid: fixed(fixed(int, 2), 2)  # type: ignore[valid-type]
    renamed: float = msgspec.field(name="Renamed")


APPLICANT = Applicant(
    age=40,
    scores=[0.5, 1.5, 2.5],
    size=Size(width=3.0, height=4),
    member=True,
    pair=(7.0, 8.0),
    grid=[[1, 2], [3, 4]],
    renamed=9.5,
)


def test_default_view_flattens_numeric_fields_in_declaration_order():
    """Numbers, fixed lists (nested too), tuples and nested Structs; names follow the JSON."""
    view = feature_view(Applicant)
    assert view.names == (
        "age",
        "scores[0]",
        "scores[1]",
        "scores[2]",
        "size.width",
        "size.height",
        "member",
        "pair[0]",
        "pair[1]",
        "grid[0][0]",
        "grid[0][1]",
        "grid[1][0]",
        "grid[1][1]",
        "Renamed",
    )
    rows = view([APPLICANT, APPLICANT])
    assert rows.dtype == np.float64
    assert rows.shape == (2, 14)
    assert rows[0].tolist() == [40, 0.5, 1.5, 2.5, 3.0, 4, 1.0, 7.0, 8.0, 1, 2, 3, 4, 9.5]


def test_one_list_field_is_read_directly():
    """The common shape (one fixed list of floats) gives the same rows by the fast path."""

    class Flower(msgspec.Struct):
        features: fixed(float, 4)  # type: ignore[valid-type]

    view = feature_view(Flower)
    assert view.names == ("features[0]", "features[1]", "features[2]", "features[3]")
    rows = view([Flower([1.0, 2.0, 3.0, 4.0]), Flower([5.0, 6.0, 7.0, 8.5])])
    assert rows.tolist() == [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.5]]


class Text(msgspec.Struct):
    text: str


class Ragged(msgspec.Struct):
    values: list[float]


class Maybe(msgspec.Struct):
    value: float | None = None


class Empty(msgspec.Struct):
    pass


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        (Text, "`text`"),
        (Ragged, "`values`"),
        (Maybe, "`value`"),
        (Empty, "no numeric field"),
        (list[float], "not a msgspec Struct"),
    ],
    ids=["text", "any-length-list", "optional", "empty", "not-a-struct"],
)
def test_fields_that_are_not_numbers_are_named(kind, named):
    """The error names the field and says what to do."""
    with pytest.raises(NoFeatureViewError, match=named) as caught:
        feature_view(kind)
    assert "feature_names" in str(caught.value)


def test_a_view_is_bounded():
    """An input of more than MAX_FEATURES numbers gets no default view (guard memory bound)."""

    class Huge(msgspec.Struct):
        pixels: fixed(float, MAX_FEATURES + 1)  # type: ignore[valid-type]

    with pytest.raises(NoFeatureViewError, match=str(MAX_FEATURES)):
        feature_view(Huge)


class Echo(msgspec.Struct):
    text: str


class Out(msgspec.Struct):
    n: int


def test_model_features_default_and_columns():
    """Model.features uses the default view; feature_columns names its columns."""

    class Scorer(ss.Model[Applicant, Out]):
        name = "scorer"

        def predict(self, batch: list[Applicant]) -> list[Out]:
            return [Out(1) for _ in batch]

    Scorer.check_definition()
    assert Scorer.feature_columns()[:2] == ("age", "scores[0]")
    assert Scorer().features([APPLICANT]).shape == (1, 14)


def test_a_text_model_without_features_is_still_a_valid_handler():
    """No view is not a definition error: the defenses that need one stay off."""

    class Talker(ss.Model[Echo, Out]):
        name = "talker"

        def predict(self, batch: list[Echo]) -> list[Out]:
            return [Out(len(e.text)) for e in batch]

    Talker.check_definition()
    with pytest.raises(NoFeatureViewError, match="`text`"):
        Talker.feature_columns()


def test_handler_defined_features_need_their_names():
    """features() defined by the handler: feature_names must name its columns."""

    class Talker(ss.Model[Echo, Out]):
        name = "talker"
        feature_names = ("length", "spaces")

        def features(self, batch: list[Echo]) -> np.ndarray:
            return np.array([[len(e.text), e.text.count(" ")] for e in batch], dtype=np.float64)

        def predict(self, batch: list[Echo]) -> list[Out]:
            return [Out(len(e.text)) for e in batch]

    Talker.check_definition()
    assert Talker.feature_columns() == ("length", "spaces")
    assert Talker().features([Echo("a b")]).tolist() == [[3.0, 1.0]]

    with pytest.raises(ConfigError, match="from_features"):  # no silent default inverse
        Talker().from_features(np.zeros((1, 2)))

    class Unnamed(Talker):
        feature_names = ()

    with pytest.raises(ConfigError, match="feature_names must be a tuple"):
        Unnamed.check_definition()

    class Twice(Talker):
        feature_names = ("a", "a")

    with pytest.raises(ConfigError, match="distinct"):
        Twice.check_definition()


def test_feature_names_without_features_is_refused():
    """Names for the default view would silently mislabel columns: refused."""

    class Renamer(ss.Model[Applicant, Out]):
        name = "renamer"
        feature_names = ("a",)

        def predict(self, batch: list[Applicant]) -> list[Out]:
            return [Out(1) for _ in batch]

    with pytest.raises(ConfigError, match="define features"):
        Renamer.check_definition()


def test_json_instance_inverts_the_default_view():
    """Rows back to instances: the input schema then judges them (CSV and .npy profiles)."""
    view = feature_view(Applicant)
    (row,) = view([APPLICANT])
    assert msgspec.convert(view.json_instance(row), Applicant) == APPLICANT
    row = row.copy()
    row[0] = 40.5  # age is an int: left as a float for the schema to refuse
    with pytest.raises(msgspec.ValidationError, match="age"):
        msgspec.convert(view.json_instance(row), Applicant)
