"""The iris handler: four flower measurements in, a species and its probability out.

Serve it with ``secureserve run --dev`` from this folder (``secureserve.toml``
names ``app:Iris``). The model is the ONNX file written by ``train.py``.
"""

from typing import Annotated

import msgspec
import numpy as np

import secureserve as ss


class Flower(msgspec.Struct, forbid_unknown_fields=True):
    """One flower: sepal length, sepal width, petal length, petal width (cm).

    The bounds are part of the schema: a request outside them is a 422 before the
    model sees it. Real measurements are a few centimetres; 50 is a generous ceiling.
    """

    features: Annotated[
        list[Annotated[float, msgspec.Meta(ge=0, le=50)]],
        msgspec.Meta(min_length=4, max_length=4),
    ]


class Species(msgspec.Struct):
    """The most likely species and its probability.

    ``ss.Label`` and ``ss.Score`` say what the fields are, so the output policy can act
    on them: with this example's settings a caller with role ``predict`` receives the
    label only, and one that also holds the custom role ``analyst`` the probability too,
    rounded to 2 decimals (``[model.output]`` in secureserve.toml). A field a policy
    may leave out must be optional.
    """

    label: ss.Label
    score: ss.Score | None = None


class Iris(ss.Model[Flower, Species]):
    """Multinomial logistic regression over the Iris data, run by onnxruntime."""

    name = "iris"
    version = "1.0.0"

    def load(self, artifacts: ss.Artifacts) -> None:
        """Open the hash-verified ONNX session and the class labels."""
        self.session = artifacts.onnx("iris.onnx")
        self.labels: list[str] = artifacts.json("labels.json")

    def predict(self, batch: list[Flower]) -> list[Species]:
        """Classify a batch of flowers in one onnxruntime call."""
        x = np.array([flower.features for flower in batch], dtype=np.float32)
        (probs,) = self.session.run(["probs"], {"x": x})
        best = probs.argmax(axis=1)
        return [
            Species(label=self.labels[i], score=float(row[i]))
            for i, row in zip(best, probs, strict=True)
        ]
