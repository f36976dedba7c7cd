"""The __project_name__ handler: two numbers in, the class of the larger one out.

Serve it with ``secureserve run --dev`` from this folder (``secureserve.toml``
names ``app:__ProjectName__``). The model is ``models/model.onnx``, a tiny
logistic regression written by ``secureserve new``; replace it with your own
ONNX file, then run ``secureserve lock`` and ``secureserve sign``.
"""

from typing import Annotated

import msgspec
import numpy as np
import secureserve as ss


class Features(msgspec.Struct, forbid_unknown_fields=True):
    """One instance: exactly two numbers, each between -1000 and 1000.

    The bounds are part of the schema: a request outside them is a 422 before the
    model sees it.
    """

    features: Annotated[
        list[Annotated[float, msgspec.Meta(ge=-1000, le=1000)]],
        msgspec.Meta(min_length=2, max_length=2),
    ]


class Prediction(msgspec.Struct):
    """The most likely class and its probability.

    ``ss.Label`` and ``ss.Score`` tell the output policy what each field is: by default
    callers see the score rounded to 2 decimals, and ``[model.output]`` in
    secureserve.toml can hide it (``label_only``, then make it ``ss.Score | None = None``)
    or show it to a custom role only.
    """

    label: ss.Label
    score: ss.Score


class __ProjectName__(ss.Model[Features, Prediction]):
    """softmax(x @ W + b) over two classes, run by onnxruntime."""

    name = "__project_name__"
    version = "0.1.0"

    def load(self, artifacts: ss.Artifacts) -> None:
        """Open the hash-verified ONNX session and the class labels."""
        self.session = artifacts.onnx("model.onnx")
        self.labels: list[str] = artifacts.json("labels.json")

    def predict(self, batch: list[Features]) -> list[Prediction]:
        """Classify a batch in one onnxruntime call."""
        x = np.array([item.features for item in batch], dtype=np.float32)
        (probs,) = self.session.run(["probs"], {"x": x})
        best = probs.argmax(axis=1)
        return [
            Prediction(label=self.labels[i], score=float(row[i]))
            for i, row in zip(best, probs, strict=True)
        ]
