"""The Model base class: types from generic parameters, definition checks, sync/async."""

from __future__ import annotations

import msgspec
import pytest

from secureserve.errors import ConfigError
from secureserve.model import Model


class In(msgspec.Struct):
    x: int


class Out(msgspec.Struct):
    y: int


class Good(Model[In, Out]):
    name = "good"
    version = "1.2.3"

    def predict(self, batch: list[In]) -> list[Out]:
        return [Out(i.x) for i in batch]


def test_model_types_come_from_generic_parameters():
    """Input and output types are read from Model[In, Out] and nowhere else."""
    assert Good.input_type is In
    assert Good.output_type is Out
    Good.check_definition()


def test_model_subclass_of_subclass_inherits_types():
    """A subclass of a concrete model keeps its types."""

    class Child(Good):
        name = "child"

    assert Child.input_type is In
    Child.check_definition()


def test_model_is_async_detects_coroutine_predict():
    """An async def predict is recognised; a plain def is not."""

    class A(Model[In, Out]):
        name = "a"

        async def predict(self, batch: list[In]) -> list[Out]:
            return []

    assert A.is_async()
    assert not Good.is_async()


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "../x"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({"name": "ok", "version": "1.0 beta"}, "version"),
        ({"name": "ok", "version": ""}, "version"),
    ],
)
def test_model_check_definition_refuses_bad_names(attrs, message):
    """Names and versions must be URL- and header-safe."""
    bad = type("Bad", (Good,), attrs)
    with pytest.raises(ConfigError, match=message):
        bad.check_definition()


def test_model_check_definition_requires_types_and_predict():
    """A model without generic parameters, or without predict, cannot be served."""

    class NoTypes(Model):  # type: ignore[type-arg]
        name = "x"

        def predict(self, batch):  # type: ignore[no-untyped-def]
            return batch

    class NoPredict(Model[In, Out]):
        name = "y"

    with pytest.raises(ConfigError, match="input and output types"):
        NoTypes.check_definition()
    with pytest.raises(ConfigError, match="predict"):
        NoPredict.check_definition()
