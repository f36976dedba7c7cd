"""Train the iris classifier and export it as ONNX.

A multinomial logistic regression is fitted with scikit-learn on the Iris data
that ships inside scikit-learn (no download) and written out as a three-node
ONNX graph built by hand with ``onnx.helper``::

    x float32 [N, 4] -> MatMul(W) -> Add(b) -> Softmax -> probs float32 [N, 3]

The output is byte-for-byte reproducible: fixed split, a solver that converges
to the unique optimum, weights rounded to a fixed grid (so last-bit differences
between BLAS builds do not leak into the file), and no timestamps or library
versions in the model. scikit-learn is a
training (dev) dependency only; serving needs onnxruntime alone.

Run from anywhere: ``python train.py`` writes ``models/iris.onnx`` and
``models/labels.json`` next to this file, and ``data/check.jsonl`` for
``secureserve check``: all 150 flowers with their species (120 of them were trained
on; the 30 held out alone are too few to split into groups of ``[check]
min_group_size``) and a ``site`` column that is synthetic: drawn from a fixed seed,
independent of the flowers, so that the fairness check has a group column to show.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

LABELS = ["setosa", "versicolor", "virginica"]
SEED = 0
OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; onnxruntime 1.20+ reads it
DECIMALS = 4  # weights are rounded to this grid before export
MODELS_DIR = Path(__file__).resolve().parent / "models"
DATA_DIR = Path(__file__).resolve().parent / "data"
SITES = ("east", "west")  # the synthetic group column of data/check.jsonl


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, x_test, y_train, y_test)``: a fixed, stratified 80/20 split."""
    data = load_iris()
    x = data.data.astype(np.float64)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=SEED, stratify=y
    )
    return x_train, x_test, y_train, y_test


def train(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit the classifier and return its weights ``W`` [4, 3] and bias ``b`` [3] as float32."""
    # With more than two classes and this solver, scikit-learn fits the multinomial
    # (softmax) model, which is exactly what the ONNX graph computes. A Newton
    # solver run to a tight tolerance lands on the (unique) optimum to ~1e-12 on any
    # BLAS build, so the rounded weights are the same everywhere; lbfgs would stop
    # at a point that differs in the 5th decimal between CPUs.
    clf = LogisticRegression(solver="newton-cg", tol=1e-10, max_iter=1000, random_state=SEED)
    clf.fit(x, y)
    weights = np.round(clf.coef_.T, DECIMALS).astype(np.float32)
    bias = np.round(clf.intercept_, DECIMALS).astype(np.float32)
    return weights, bias


def build_onnx(weights: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """Build and check the ONNX graph ``softmax(x @ W + b)``."""
    n_features, n_classes = weights.shape
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["x", "W"], ["logits_raw"], name="matmul"),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"], name="add"),
            helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
        ],
        name="iris_logistic_regression",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_features])],
        outputs=[helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_classes])],
        initializer=[
            numpy_helper.from_array(weights, name="W"),
            numpy_helper.from_array(bias, name="b"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="secureserve-examples-iris",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def accuracy(weights: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows of ``x`` whose argmax of ``x @ W + b`` equals ``y``."""
    return float(np.mean(np.argmax(x @ weights + bias, axis=1) == y))


def export(models_dir: Path) -> float:
    """Train, write ``iris.onnx`` and ``labels.json`` into ``models_dir``; return test accuracy."""
    x_train, x_test, y_train, y_test = load_split()
    weights, bias = train(x_train, y_train)
    models_dir.mkdir(parents=True, exist_ok=True)
    model = build_onnx(weights, bias)
    (models_dir / "iris.onnx").write_bytes(model.SerializeToString(deterministic=True))
    (models_dir / "labels.json").write_text(json.dumps(LABELS) + "\n", encoding="utf-8")
    return accuracy(weights, bias, x_test, y_test)


def write_check_data(path: Path) -> None:
    """Write every flower, labelled, for ``secureserve check``, with a synthetic ``site``."""
    data = load_iris()
    sites = np.random.default_rng(SEED + 1).choice(SITES, size=len(data.target))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for features, target, site in zip(data.data, data.target, sites, strict=True):
            row = {
                "instance": {"features": [float(v) for v in features]},
                "label": LABELS[int(target)],
                "group": {"site": str(site)},
            }
            out.write(json.dumps(row, separators=(",", ":")) + "\n")


def main() -> None:
    """Export into ``models/`` and ``data/`` beside this file; report the held-out accuracy."""
    test_accuracy = export(MODELS_DIR)
    write_check_data(DATA_DIR / "check.jsonl")
    print(f"held-out accuracy: {test_accuracy:.4f}")
    print(f"wrote {MODELS_DIR / 'iris.onnx'}, {MODELS_DIR / 'labels.json'} and data/check.jsonl")


if __name__ == "__main__":
    main()
