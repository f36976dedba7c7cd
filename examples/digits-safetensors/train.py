"""Train the digits classifier with numpy alone and export it as safetensors.

A small multi-layer perceptron (64 -> 32 ReLU -> 10 softmax) is trained by plain
mini-batch gradient descent on the 8x8 digits that ship inside scikit-learn (no
download; pixel values 0..16). scikit-learn only provides the data; it is a
training (dev) dependency, and serving needs numpy and safetensors alone.

The exported ``W1`` takes raw 0..16 pixels: the input scaling used in training
(``pixels / 16``) is folded into it, so the served forward pass is just
``softmax(relu(x @ W1 + b1) @ W2 + b2)``.

The output is byte-for-byte reproducible: fixed seed and split, a fixed number of
steps, weights rounded to a fixed grid before export (so last-bit differences
between BLAS builds do not leak into the file), and no metadata that changes.

Run from anywhere: ``python train.py`` writes ``models/digits.safetensors``
next to this file, the training images as ``data/train.npy`` (uint8 pixels), from
which ``secureserve profile`` makes the reference profile, and the held-out images
with their labels as ``data/check.jsonl`` for ``secureserve check``. Its ``cohort``
column is synthetic: drawn from a fixed seed, independent of the images, so that the
fairness check has a group column to show (the digits have no real one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from sklearn.datasets import load_digits

SEED = 0
TEST_SHARE = 0.2
HIDDEN = 32
CLASSES = 10
PIXEL_MAX = 16.0
EPOCHS = 60
BATCH_SIZE = 32
LEARNING_RATE = 0.1
DECIMALS = 4  # weights are rounded to this grid before export
COHORTS = ("a", "b")  # the synthetic group column of data/check.jsonl
MODELS_DIR = Path(__file__).resolve().parent / "models"
DATA_DIR = Path(__file__).resolve().parent / "data"

Weights = dict[str, np.ndarray]


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, x_test, y_train, y_test)``, raw pixels, from a fixed shuffled split."""
    data = load_digits()
    x = data.data.astype(np.float64)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    n_test = round(len(y) * TEST_SHARE)
    test, train = order[:n_test], order[n_test:]
    return x[train], x[test], y[train], y[test]


def forward(weights: Weights, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the hidden activations and the class probabilities of the rows of ``x``."""
    hidden = np.maximum(x @ weights["W1"] + weights["b1"], 0.0)
    logits = hidden @ weights["W2"] + weights["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return hidden, exp / exp.sum(axis=1, keepdims=True)


def train(x: np.ndarray, y: np.ndarray) -> Weights:
    """Fit the network to ``x`` (already scaled to 0..1) with mini-batch gradient descent."""
    rng = np.random.default_rng(SEED)
    n_inputs = x.shape[1]
    weights = {
        "W1": rng.normal(0.0, np.sqrt(2.0 / n_inputs), (n_inputs, HIDDEN)),  # He init for ReLU
        "b1": np.zeros(HIDDEN),
        "W2": rng.normal(0.0, np.sqrt(1.0 / HIDDEN), (HIDDEN, CLASSES)),
        "b2": np.zeros(CLASSES),
    }
    one_hot = np.eye(CLASSES)[y]
    for _ in range(EPOCHS):
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            xb, yb = x[rows], one_hot[rows]
            hidden, probs = forward(weights, xb)
            # Gradients of the mean cross-entropy, layer by layer.
            d_logits = (probs - yb) / len(rows)
            d_hidden = (d_logits @ weights["W2"].T) * (hidden > 0)
            grads = {
                "W2": hidden.T @ d_logits,
                "b2": d_logits.sum(axis=0),
                "W1": xb.T @ d_hidden,
                "b1": d_hidden.sum(axis=0),
            }
            for name, grad in grads.items():
                weights[name] -= LEARNING_RATE * grad
    return weights


def export_weights(weights: Weights) -> Weights:
    """Fold the ``/ 16`` input scaling into ``W1``, round to the grid and cast to float32."""
    rounded = {name: np.round(value, DECIMALS) for name, value in weights.items()}
    rounded["W1"] = rounded["W1"] / PIXEL_MAX  # exact: 16 is a power of two
    return {name: value.astype(np.float32) for name, value in rounded.items()}


def accuracy(weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows of ``x`` (raw pixels) classified as ``y`` by the exported weights."""
    _, probs = forward(weights, x.astype(np.float32))
    return float(np.mean(probs.argmax(axis=1) == y))


def export(models_dir: Path, data_dir: Path | None = None) -> float:
    """Train, write ``digits.safetensors`` into ``models_dir``; return the held-out accuracy.

    With ``data_dir``, also write the training images there as ``train.npy`` and the
    held-out ones, labelled, as ``check.jsonl``.
    """
    x_train, x_test, y_train, y_test = load_split()
    weights = export_weights(train(x_train / PIXEL_MAX, y_train))
    models_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, models_dir / "digits.safetensors")
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        np.save(data_dir / "train.npy", x_train.astype(np.uint8), allow_pickle=False)
        write_check_data(data_dir / "check.jsonl", x_test, y_test)
    return accuracy(weights, x_test, y_test)


def write_check_data(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write labelled rows for ``secureserve check``, each with a synthetic ``cohort``."""
    cohorts = np.random.default_rng(SEED + 1).choice(COHORTS, size=len(y))
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for pixels, label, cohort in zip(x.astype(int), y, cohorts, strict=True):
            row = {
                "instance": {"pixels": pixels.tolist()},
                "label": int(label),
                "group": {"cohort": str(cohort)},
            }
            out.write(json.dumps(row, separators=(",", ":")) + "\n")


def main() -> None:
    """Export into ``models/`` beside this file and report the held-out accuracy."""
    test_accuracy = export(MODELS_DIR, DATA_DIR)
    print(f"held-out accuracy: {test_accuracy:.4f}")
    print(f"wrote {MODELS_DIR / 'digits.safetensors'}, {DATA_DIR / 'train.npy'} and check.jsonl")


if __name__ == "__main__":
    main()
