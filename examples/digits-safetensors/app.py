"""The digits handler: an 8x8 grey-level image in, the digit it shows out.

Serve it with ``secureserve run --dev`` from this folder (``secureserve.toml``
names ``app:Digits``). The weights are the safetensors file written by
``train.py``; the forward pass is plain numpy.
"""

from typing import Annotated

import msgspec
import numpy as np

import secureserve as ss


class Digit(msgspec.Struct, forbid_unknown_fields=True):
    """One 8x8 image as 64 pixel intensities, row by row, each 0 (white) to 16 (black)."""

    pixels: Annotated[
        list[Annotated[float, msgspec.Meta(ge=0, le=16)]],
        msgspec.Meta(min_length=64, max_length=64),
    ]


class Prediction(msgspec.Struct):
    """The most likely digit, its probability, and the probability of every digit.

    The annotations say what each field is, so the output policy knows what to hide:
    with this example's settings callers see the three most likely digits, rounded to
    2 decimals (``[model.output]`` in secureserve.toml).
    """

    digit: Annotated[int, ss.Label]
    score: ss.Score
    scores: ss.Scores  # "0" .. "9" -> probability


class Digits(ss.Model[Digit, Prediction]):
    """A 64 -> 32 ReLU -> 10 softmax perceptron over scikit-learn's 8x8 digits."""

    name = "digits"
    version = "1.0.0"

    def load(self, artifacts: ss.Artifacts) -> None:
        """Read the hash-verified weights ``W1``, ``b1``, ``W2``, ``b2``."""
        weights = artifacts.safetensors("digits.safetensors")
        self.w1, self.b1 = weights["W1"], weights["b1"]
        self.w2, self.b2 = weights["W2"], weights["b2"]

    def predict(self, batch: list[Digit]) -> list[Prediction]:
        """Classify a batch of images with one forward pass."""
        x = np.array([digit.pixels for digit in batch], dtype=np.float32)
        hidden = np.maximum(x @ self.w1 + self.b1, 0.0)
        logits = hidden @ self.w2 + self.b2
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (exp / exp.sum(axis=1, keepdims=True)).tolist()
        return [
            Prediction(
                digit=(best := max(range(10), key=row.__getitem__)),
                score=row[best],
                scores={str(d): p for d, p in enumerate(row)},
            )
            for row in probs
        ]
