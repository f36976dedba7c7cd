"""How far the output policy slows down a simple model-extraction attack on digits.

Victim: the digits example (examples/digits-safetensors) loaded in-process with
``load_model`` and the example's settings. Every query goes through ``predict`` and then
``ModelSchema.encode_predictions`` with the policy's view from
``OutputPolicies(output type, OutputSettings(...))``; the attacker reads the JSON body,
i.e. exactly what a caller under that policy would receive. Policies (columns):

- ``raw``: no policy at all (``view=None``, scores as the model computed them), for
  reference: what the server sent before output policies existed;
- ``full``: all 10 scores, rounded to 2 decimals;
- ``top_k 3``: the example's policy, the 3 best scores, 2 decimals;
- ``top_k 1``: the default policy (``policy`` unset: ``top_k``, k=1, 2 decimals);
- ``label_only``: the digit alone. The example's ``Prediction`` has ``score`` required,
  which ``label_only`` refuses at start-up, so this column serves the same predictions
  through the same type with ``score`` and ``scores`` optional.

Attacker: no training data. Its queries are the 359 held-out test images of train.py's
``load_split`` (shuffled, per seed) and, for budgets above 359, augmented copies of
them: a random test image shifted by up to one pixel in each direction (zero fill),
plus Gaussian noise (sd 1 grey level), rounded to whole grey levels and clipped to
0..16. Budget N takes the first N queries of that sequence, so larger budgets extend
smaller ones.

Surrogate: a 64 -> 64 ReLU -> 10 softmax network in numpy (inputs / 16), trained by
full-batch Adam (600 steps, learning rate 0.01, L2 1e-4) on cross-entropy against the
attacker's view: the probabilities where it sees all of them (raw, full: renormalised,
since rounding makes them sum to about 1); for top-k, the visible k probabilities and
what is left of 1 spread evenly over the classes it cannot see; for label_only, the
label one-hot.

Fidelity: agreement of the surrogate's and the victim's labels on the 1,438 training
images (train.py's ``x_train``), which the attacker never queried. Three seeds (query
order, augmentation, surrogate initialisation); the table gives the mean over seeds
± half the range (max - min) / 2.

BLAS is limited to one thread (threadpoolctl, which comes with scikit-learn).

Run from the project root (about a minute; needs scikit-learn, for train.py's data)::

    .venv/bin/python benchmarks/extraction.py
    .venv/bin/python benchmarks/extraction.py --budgets 50,100,200 --seeds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits-safetensors"
CLASSES = 10
PIXEL_MAX = 16.0
BATCH = 256  # instances per victim call (as a client would batch them)

Array = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- victim


def import_example() -> tuple[Any, Any]:
    """The example's ``app`` and ``train`` modules."""
    modules = []
    for name in ("app", "train"):
        spec = importlib.util.spec_from_file_location(f"bench_digits_{name}", DIGITS / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[0], modules[1]


@dataclass(frozen=True)
class Policy:
    """One column: how the victim's answers are shown to the attacker."""

    name: str
    output_type: Any
    view: Any  # OutputView, or None for the raw answers


def policies(app_module: Any) -> tuple[list[Policy], Any]:
    """The policies to compare, and the schema of each output type."""
    import secureserve as ss
    from secureserve.outputs import OutputPolicies
    from secureserve.settings import OutputSettings

    prediction = app_module.Prediction
    optional = msgspec.defstruct(
        "PredictionOptionalScores",
        [
            ("digit", Annotated[int, ss.Label]),
            ("score", ss.Score | None, None),
            ("scores", ss.Scores | None, None),
        ],
        module=app_module.__name__,
    )

    def view(kind: Any, settings: OutputSettings) -> Any:
        return OutputPolicies(kind, settings, where="extraction").default

    chosen = [
        Policy("raw (no policy)", prediction, None),
        Policy("full", prediction, view(prediction, OutputSettings(policy="full", decimals=2))),
        Policy(
            "top_k 3 (example)",
            prediction,
            view(prediction, OutputSettings(policy="top_k", top_k=3, decimals=2)),
        ),
        Policy("top_k 1 (default)", prediction, view(prediction, OutputSettings())),
        Policy("label_only", optional, view(optional, OutputSettings(policy="label_only"))),
    ]
    return chosen, optional


class Victim:
    """The served model: answers rows of pixels as a caller under each policy sees them."""

    def __init__(self, app_module: Any, settings: Any) -> None:
        from secureserve.schema import ModelSchema
        from secureserve.serving import load_model

        self.digit = app_module.Digit
        self.model: Any = load_model(app_module.Digits, settings).instance  # a sync predict
        self.policies, self.optional = policies(app_module)
        input_type = app_module.Digits.input_type
        self.schemas = {
            kind: ModelSchema(input_type, kind, max_instances=BATCH)
            for kind in {p.output_type for p in self.policies}
        }

    def labels(self, rows: Array) -> npt.NDArray[np.int64]:
        """The victim's own labels (for the fidelity of the surrogate)."""
        out = []
        for start in range(0, len(rows), BATCH):
            batch = [self.digit(pixels=r.tolist()) for r in rows[start : start + BATCH]]
            out += [p.digit for p in self.model.predict(batch)]
        return np.array(out, dtype=np.int64)

    def answers(self, rows: Array) -> dict[str, list[dict[str, Any]]]:
        """Per policy, the decoded ``predictions`` of the response bodies for ``rows``."""
        seen: dict[str, list[dict[str, Any]]] = {p.name: [] for p in self.policies}
        for start in range(0, len(rows), BATCH):
            batch = [self.digit(pixels=r.tolist()) for r in rows[start : start + BATCH]]
            outputs = self.model.predict(batch)
            for policy in self.policies:
                items = outputs
                if policy.output_type is self.optional:
                    items = [self.optional(p.digit, p.score, p.scores) for p in outputs]
                body = self.schemas[policy.output_type].encode_predictions(
                    items, len(items), policy.view
                )
                seen[policy.name] += msgspec.json.decode(body)["predictions"]
        return seen


def targets(answers: Sequence[dict[str, Any]]) -> Array:
    """The attacker's training targets: one distribution over the 10 digits per answer."""
    out = np.zeros((len(answers), CLASSES))
    for i, answer in enumerate(answers):
        scores = answer.get("scores")
        if not scores:  # label_only: the label, one-hot
            out[i, answer["digit"]] = 1.0
            continue
        for label, p in scores.items():
            out[i, int(label)] = p
        unseen = CLASSES - len(scores)
        if unseen:  # top_k: what is left of 1, spread over the classes not shown
            rest = max(0.0, 1.0 - sum(scores.values()))
            hidden = [d for d in range(CLASSES) if str(d) not in scores]
            out[i, hidden] = rest / unseen
        total = out[i].sum()
        if total > 0:
            out[i] /= total  # rounding: the shown scores need not sum to 1
        else:  # every shown score rounded to 0 (cannot happen with 10 classes)
            out[i, answer["digit"]] = 1.0
    return out


# --------------------------------------------------------------------------- attacker


def queries(x_test: Array, n: int, rng: np.random.Generator) -> Array:
    """The first ``n`` queries: the test images shuffled, then augmented copies of them."""
    base = x_test[rng.permutation(len(x_test))]
    if n <= len(base):
        return base[:n]
    extra = n - len(base)
    picks = x_test[rng.integers(0, len(x_test), extra)].reshape(extra, 8, 8)
    shifted = np.zeros_like(picks)
    for i, (dy, dx) in enumerate(rng.integers(-1, 2, size=(extra, 2))):
        # out[y + dy, x + dx] = in[y, x]; what moves out of the 8 x 8 frame is lost
        to_y, from_y = slice(max(dy, 0), 8 + min(dy, 0)), slice(max(-dy, 0), 8 + min(-dy, 0))
        to_x, from_x = slice(max(dx, 0), 8 + min(dx, 0)), slice(max(-dx, 0), 8 + min(-dx, 0))
        shifted[i][to_y, to_x] = picks[i][from_y, from_x]
    noisy = np.clip(np.rint(shifted + rng.normal(0.0, 1.0, shifted.shape)), 0, PIXEL_MAX)
    return np.concatenate([base, noisy.reshape(extra, 64)])


class Surrogate:
    """64 -> ``hidden`` ReLU -> 10 softmax, full-batch Adam on soft cross-entropy."""

    def __init__(self, rng: np.random.Generator, hidden: int = 64) -> None:
        self.params = {
            "w1": rng.normal(0.0, np.sqrt(2.0 / 64), (64, hidden)),
            "b1": np.zeros(hidden),
            "w2": rng.normal(0.0, np.sqrt(1.0 / hidden), (hidden, CLASSES)),
            "b2": np.zeros(CLASSES),
        }

    def _forward(self, x: Array) -> tuple[Array, Array]:
        p = self.params
        h = np.maximum(x @ p["w1"] + p["b1"], 0.0)
        logits = h @ p["w2"] + p["b2"]
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return h, e / e.sum(axis=1, keepdims=True)

    def fit(self, rows: Array, y: Array, *, steps: int, lr: float = 0.01, l2: float = 1e-4) -> None:
        x = rows / PIXEL_MAX
        p = self.params
        m = {k: np.zeros_like(v) for k, v in p.items()}
        v = {k: np.zeros_like(w) for k, w in p.items()}
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for t in range(1, steps + 1):
            h, probs = self._forward(x)
            d_logits = (probs - y) / len(x)
            d_h = (d_logits @ p["w2"].T) * (h > 0)
            grads = {
                "w2": h.T @ d_logits + l2 * p["w2"],
                "b2": d_logits.sum(axis=0),
                "w1": x.T @ d_h + l2 * p["w1"],
                "b1": d_h.sum(axis=0),
            }
            for k, g in grads.items():
                m[k] = beta1 * m[k] + (1 - beta1) * g
                v[k] = beta2 * v[k] + (1 - beta2) * g * g
                m_hat = m[k] / (1 - beta1**t)
                v_hat = v[k] / (1 - beta2**t)
                p[k] -= lr * m_hat / (np.sqrt(v_hat) + eps)

    def predict(self, rows: Array) -> npt.NDArray[np.int64]:
        labels: npt.NDArray[np.int64] = self._forward(rows / PIXEL_MAX)[1].argmax(axis=1)
        return labels


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budgets",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[50, 100, 200, 500, 1000, 2000],
        help="query budgets N (default 50,100,200,500,1000,2000)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    parser.add_argument("--steps", type=int, default=600, help="Adam steps per surrogate")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # scikit-learn's

    from secureserve.config import load_settings
    from secureserve.logs import configure_logging

    # One BLAS thread: on a small shared machine a multithreaded matmul of 2,000 x 64
    # is several times slower than a single-threaded one.
    threadpool_limits(1)
    started = time.perf_counter()
    devnull = Path(os.devnull).open("wb")  # noqa: SIM115 - open for the whole run
    configure_logging("warning", stream=devnull)
    app_module, train = import_example()
    x_train, x_test, _, y_test = train.load_split()
    victim = Victim(app_module, load_settings(project_dir=DIGITS))
    truth = victim.labels(x_train)  # the victim's labels on the evaluation set
    names = [p.name for p in victim.policies]
    budget = max(args.budgets)

    fidelity: dict[tuple[int, str], list[float]] = {}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        rows = queries(x_test, budget, rng)
        seen = victim.answers(rows)
        if seed == 0:
            shown = [a["scores"] for a in seen["full"]]
            certain = np.mean([max(sc.values()) >= 1.0 for sc in shown])
            nonzero = np.mean([sum(1 for p in sc.values() if p > 0) for sc in shown])
        for name in names:
            y = targets(seen[name])
            for n in args.budgets:
                surrogate = Surrogate(np.random.default_rng(1000 + seed))
                surrogate.fit(rows[:n], y[:n], steps=args.steps)
                agree = float(np.mean(surrogate.predict(x_train) == truth))
                fidelity.setdefault((n, name), []).append(agree)

    accuracy = float(np.mean(victim.labels(x_test) == y_test))
    load = os.getloadavg()
    print("# Model extraction on examples/digits-safetensors vs output policy\n")
    print(
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, numpy {np.__version__}; load average at the end "
        f"{load[0]:.2f}; took {time.perf_counter() - started:.0f} s"
    )
    print(
        f"- victim: held-out accuracy {accuracy:.3f}; attacker queries: the {len(x_test)} "
        "test images, then shifted + noisy copies of them"
    )
    print(
        f"- under full, {certain:.0%} of the {budget} seed-0 answers show a top score of 1.00; "
        f"an answer shows {nonzero:.2f} non-zero scores on average (2 decimals)"
    )
    print(
        f"- fidelity: surrogate label == victim label on the {len(x_train)} training images "
        f"(never queried), %, mean over {args.seeds} seeds ± (max - min) / 2\n"
    )
    print("| queries N | " + " | ".join(names) + " |")
    print("| ---: | " + " | ".join("---:" for _ in names) + " |")
    for n in args.budgets:
        cells = []
        for name in names:
            values = np.array(fidelity[(n, name)]) * 100
            cells.append(f"{values.mean():.1f} ± {(values.max() - values.min()) / 2:.1f}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("\nsmallest N of the grid whose mean fidelity reaches a level (-: none of them)\n")
    print("| fidelity | " + " | ".join(names) + " |")
    print("| ---: | " + " | ".join("---:" for _ in names) + " |")
    for level in (0.95, 0.97, 0.99):
        cells = []
        for name in names:
            reached = [n for n in args.budgets if np.mean(fidelity[(n, name)]) >= level]
            cells.append(str(min(reached)) if reached else "-")
        print(f"| {level:.0%} | " + " | ".join(cells) + " |")
    devnull.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
