"""A user's handler as DESIGN.md shows it; test_typing.py checks that mypy --strict accepts it."""

from __future__ import annotations

from typing import Annotated

import msgspec

import secureserve as ss


class Flower(msgspec.Struct, forbid_unknown_fields=True):
    """Input."""

    features: Annotated[
        list[Annotated[float, msgspec.Meta(ge=0, le=50)]], msgspec.Meta(min_length=4, max_length=4)
    ]


class Species(msgspec.Struct):
    """Output."""

    label: str
    score: float


class Iris(ss.Model[Flower, Species]):
    """Sync predict."""

    name = "iris"

    def load(self, artifacts: ss.Artifacts) -> None:
        """Load nothing."""
        self.labels: list[str] = ["a", "b", "c"]

    def predict(self, batch: list[Flower]) -> list[Species]:
        """Predict."""
        return [Species(label=self.labels[0], score=f.features[0]) for f in batch]


class AsyncIris(ss.Model[Flower, Species]):
    """Async predict is allowed too."""

    name = "async-iris"

    async def predict(self, batch: list[Flower]) -> list[Species]:
        """Predict."""
        return [Species(label="a", score=1.0) for _ in batch]


app = ss.create_app(Iris, config=ss.Settings())
