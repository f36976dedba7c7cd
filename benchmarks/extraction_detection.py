"""How soon extraction detection flags synthetic attackers, and whether it leaves benign callers be.

Victim: the digits example (examples/digits-safetensors) loaded in process with
``load_model`` and the example's settings (its profile, its ``[model.output]`` policy:
top_k 3, 2 decimals). Every request goes through what the server does around
``predict``: the feature view (``Model.features``), the input guard's check
(``InputGuard`` with the example's ``[model.guard]``; its verdicts are the coverage
signal's "outside"), ``predict``, the labels as the runner takes them
(``ModelSchema.labels_of``), ``ExtractionMonitor.observe(principal, rows, labels,
outside)`` with the example's ``[model.extraction]`` table (none: the defaults), and the
answer encoded under the output policy (``encode_predictions``), which is all an
attacker reads. Requests carry 10 instances. Volume cannot fire here: it needs a
principal seen for 10 minutes, and everybody sends at one steady pace.

Attackers, 3,000 queries each, sent in full (``action = "flag"`` does not stop them):

- (a) uniform: every pixel drawn uniformly from the schema's box 0..16 and rounded to
  a whole grey level (as real digits are);
- (b) perturbation: one of 10 known images (one per digit, drawn from train.py's
  training split) plus Gaussian noise, sd sigma grey levels per pixel (``--sigmas``,
  default 1, 2 and 4: one row each), rounded to whole grey levels and clipped to 0..16;
- (c) Jacobian-style augmentation (Papernot et al., 2017) from the same 10 seeds: the
  attacker trains a surrogate (below; ``--jacobian-steps``, default 300) on every answer
  so far, then adds, for each point x it has, ``clip(x + lambda * sign(d p_c(x) / dx),
  0, 16)``, where c is the digit the victim answered for x and ``p_c`` the surrogate's
  probability of it (the gradient of the surrogate, not finite differences against the
  served scores); lambda = 1.6 grey levels (Papernot's 0.1 of the pixel range), not
  rounded. The set doubles every round (10, 20, 40, ...); the last round is cut at the
  budget.

Benign callers: 10 traces of 1,000 queries, each a different random subset and order of
the real images nobody attacks with (train.py's 359 held-out test images, all of them,
plus 641 drawn from the 1,428 training images that are not attacker seeds), each image
once per trace. Replayed (i) alone, one principal per trace; (ii) interleaved: traces
0+1, 2+3, ... as two principals whose requests alternate (one monitor for all); (iii)
one key shared by two callers: the same pairs merged into one principal's 2,000
queries (images both traces hold, at least the 359 test images, then come twice:
exact repeats, left out of PRADA but counted).

Per run, after every request, the principal's statistics from the monitor's admin view
(``page``): when it was flagged (``on_suspect``) and why, and when each signal alone
first crossed its setting (PRADA W < ``threshold``, OOD share >= ``max_ood_share``).

Surrogate fidelity: benchmarks/extraction.py's surrogate (64 -> 64 ReLU -> 10 softmax,
numpy, full-batch Adam, ``--steps`` steps) trained on the attacker's first N queries and
what it was answered (top_k 3 scores, the rest of 1 spread over the hidden digits);
fidelity = agreement with the victim's labels on the 1,787 real images no attacker sent.
N = when it was flagged, and the whole budget for comparison. ``--seeds`` seeds per
attacker (queries, surrogate initialisation); the seeds' values are listed, fidelity is
their mean ± (max - min) / 2. Every draw is seeded: a run repeats the figures exactly.

BLAS is limited to one thread (threadpoolctl, which comes with scikit-learn).

Run from the project root (under a minute on 2 cores; needs scikit-learn, for
train.py's data)::

    .venv/bin/python benchmarks/extraction_detection.py
    .venv/bin/python benchmarks/extraction_detection.py --seeds 1 --sigmas 0.5,8
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits-safetensors"
PIXEL_MAX = 16.0
CLASSES = 10
REQUEST = 10  # instances per request
BUDGET = 3000  # queries per attacker
SEEDS_KNOWN = 10  # images the perturbation and Jacobian attackers start from
LAMBDA = 0.1 * PIXEL_MAX  # Jacobian augmentation step (Papernot et al.: 0.1 of the range)
TRACES = 10
TRACE_LEN = 1000
GOAL = 500  # every attacker flagged before this many queries

Array = npt.NDArray[np.float64]


def _import(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# benchmarks/extraction.py: the example's modules, the surrogate and the attacker's targets
bench = _import("bench_extraction", Path(__file__).resolve().parent / "extraction.py")


# --------------------------------------------------------------------------- victim


class Server:
    """The example as served: guard verdicts, predict, extraction monitor, output policy."""

    def __init__(self, app_module: Any, settings: Any) -> None:
        from secureserve.guard import InputGuard
        from secureserve.outputs import OutputPolicies
        from secureserve.schema import ModelSchema
        from secureserve.serving import load_model

        cls = app_module.Digits
        loaded = load_model(cls, settings)
        assert loaded.profile is not None
        self.model: Any = loaded.instance
        self.digit = app_module.Digit
        self.width = len(cls.feature_columns())
        self.guard = InputGuard(loaded.profile, settings.model.guard)
        self.settings = settings.model.extraction
        self.schema = ModelSchema(cls.input_type, cls.output_type, max_instances=REQUEST)
        self.view = OutputPolicies(cls.output_type, settings.model.output, where="bench").default

    def labels(self, pixels: Array) -> npt.NDArray[np.int64]:
        """The victim's digits (fidelity is measured against these)."""
        instances = [self.digit(pixels=row.tolist()) for row in pixels]
        return np.array([p.digit for p in self.model.predict(instances)], dtype=np.int64)

    def request(self, monitor: Monitor, principal: str, pixels: Array) -> list[dict[str, Any]]:
        """One predict request: what the server records, and the body the caller reads."""
        instances = [self.digit(pixels=row.tolist()) for row in pixels]
        rows = self.model.features(instances)
        outside = {f.index for f in self.guard.check(rows)}
        outputs = self.model.predict(instances)
        labels = self.schema.labels_of(outputs)
        monitor.observe(principal, rows, labels, [i in outside for i in range(len(rows))])
        body = self.schema.encode_predictions(outputs, len(outputs), self.view)
        answers: list[dict[str, Any]] = msgspec.json.decode(body)["predictions"]
        return answers


@dataclass
class Watch:
    """What one principal's statistics did over a run."""

    flagged_at: int | None = None
    reasons: tuple[str, ...] = ()
    prada_at: int | None = None
    coverage_at: int | None = None
    lowest_prada: float | None = None
    highest_ood: float | None = None
    outside: int = 0


@dataclass
class Monitor:
    """An ``ExtractionMonitor`` with the example's settings, and a watch per principal."""

    server: Server
    watches: dict[str, Watch] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from secureserve.extraction import ExtractionMonitor

        self.monitor = ExtractionMonitor(
            self.server.settings,
            width=self.server.width,
            model="digits",
            on_suspect=self._suspect,
        )

    def _suspect(self, principal: str, stats: Any) -> None:
        watch = self.watches.setdefault(principal, Watch())
        watch.flagged_at, watch.reasons = stats.queries, tuple(stats.reasons)

    def observe(self, principal: str, rows: Array, labels: Any, outside: list[bool]) -> None:
        self.monitor.observe(principal, rows, labels, outside)
        watch = self.watches.setdefault(principal, Watch())
        watch.outside += sum(outside)
        settings = self.server.settings
        page = self.monitor.page(0, settings.max_principals)
        stats = next(s for s in page.principals if s.principal == principal)
        if stats.prada is not None:
            low = watch.lowest_prada
            watch.lowest_prada = stats.prada if low is None else min(low, stats.prada)
            if stats.prada < settings.threshold and watch.prada_at is None:
                watch.prada_at = stats.queries
        if stats.ood_share is not None:
            watch.highest_ood = max(stats.ood_share, watch.highest_ood or 0.0)
            if stats.ood_share >= settings.max_ood_share and watch.coverage_at is None:
                watch.coverage_at = stats.queries


def send(server: Server, monitor: Monitor, principal: str, pixels: Array) -> list[dict[str, Any]]:
    """``pixels`` in requests of 10; the answers, in order."""
    answers = []
    for start in range(0, len(pixels), REQUEST):
        answers += server.request(monitor, principal, pixels[start : start + REQUEST])
    return answers


# --------------------------------------------------------------------------- attackers


def uniform(rng: np.random.Generator) -> Array:
    return np.rint(rng.uniform(0.0, PIXEL_MAX, (BUDGET, 64)))


def perturbed(rng: np.random.Generator, known: Array, sigma: float) -> Array:
    picks = known[rng.integers(0, len(known), BUDGET)]
    return np.clip(np.rint(picks + rng.normal(0.0, sigma, picks.shape)), 0.0, PIXEL_MAX)


def class_gradient_sign(surrogate: Any, x: Array, labels: npt.NDArray[np.int64]) -> Array:
    """sign(d p_c / dx) of the surrogate, per row, for the class c the victim answered."""
    p = surrogate.params
    scaled = x / PIXEL_MAX
    pre = scaled @ p["w1"] + p["b1"]
    h = np.maximum(pre, 0.0)
    logits = h @ p["w2"] + p["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    chosen = probs[np.arange(len(x)), labels]
    # d p_c / d logits = p_c (e_c - p)
    d_logits = -chosen[:, None] * probs
    d_logits[np.arange(len(x)), labels] += chosen
    d_x = ((d_logits @ p["w2"].T) * (pre > 0)) @ p["w1"].T
    return np.sign(d_x)


def jacobian(
    server: Server, monitor: Monitor, principal: str, known: Array, *, seed: int, steps: int
) -> tuple[Array, list[dict[str, Any]]]:
    """Papernot's augmentation from ``known``, queried as it grows, up to the budget."""
    points = known.copy()
    answers = send(server, monitor, principal, points)
    rnd = 0
    while len(points) < BUDGET:
        surrogate = bench.Surrogate(np.random.default_rng(2000 + 100 * seed + rnd))
        surrogate.fit(points, bench.targets(answers), steps=steps)
        labels = np.array([a["digit"] for a in answers], dtype=np.int64)
        new = np.clip(
            points + LAMBDA * class_gradient_sign(surrogate, points, labels), 0.0, PIXEL_MAX
        )[: BUDGET - len(points)]
        answers += send(server, monitor, principal, new)
        points = np.concatenate([points, new])
        rnd += 1
    return points, answers


# --------------------------------------------------------------------------- runs


@dataclass
class AttackRun:
    watch: Watch
    fidelity_flagged: float | None
    fidelity_budget: float


def fidelity(
    rows: Array, answers: list[dict[str, Any]], n: int, *, seed: int, steps: int, truth: Any
) -> float:
    surrogate = bench.Surrogate(np.random.default_rng(1000 + seed))
    surrogate.fit(rows[:n], bench.targets(answers[:n]), steps=steps)
    evaluation, labels = truth
    return float(np.mean(surrogate.predict(evaluation) == labels))


def attack(
    server: Server,
    kind: str | float,
    seed: int,
    *,
    known: Array,
    args: argparse.Namespace,
    truth: Any,
) -> AttackRun:
    rng = np.random.default_rng(seed)
    monitor = Monitor(server)
    who = f"attacker-{kind}-{seed}"
    if isinstance(kind, float):  # perturbation, with this sigma
        rows = perturbed(rng, known, kind)
        answers = send(server, monitor, who, rows)
    elif kind == "jacobian":
        rows, answers = jacobian(server, monitor, who, known, seed=seed, steps=args.jacobian_steps)
    else:
        rows = uniform(rng)
        answers = send(server, monitor, who, rows)
    watch = monitor.watches[who]
    at = watch.flagged_at
    how: dict[str, Any] = {"seed": seed, "steps": args.steps, "truth": truth}
    flagged = None if at is None else fidelity(rows, answers, at, **how)
    return AttackRun(watch, flagged, fidelity(rows, answers, BUDGET, **how))


def benign_traces(x_test: Array, rest: Array) -> Iterator[Array]:
    for t in range(TRACES):
        rng = np.random.default_rng(100 + t)
        extra = rest[rng.choice(len(rest), TRACE_LEN - len(x_test), replace=False)]
        images = np.concatenate([x_test, extra])
        yield images[rng.permutation(len(images))]


def benign(server: Server, traces: list[Array]) -> dict[str, list[Watch]]:
    """Per mode, one watch per principal."""
    out: dict[str, list[Watch]] = {}
    alone = Monitor(server)
    for t, trace in enumerate(traces):
        send(server, alone, f"benign-{t}", trace)
    out["alone, one principal per trace"] = list(alone.watches.values())

    mixed = Monitor(server)
    shared = Monitor(server)
    for t in range(0, len(traces), 2):
        a, b = traces[t], traces[t + 1]
        for start in range(0, TRACE_LEN, REQUEST):
            for who, trace in ((f"benign-{t}", a), (f"benign-{t + 1}", b)):
                chunk = trace[start : start + REQUEST]
                server.request(mixed, who, chunk)
                server.request(shared, f"shared-{t // 2}", chunk)
    out["interleaved: two principals, requests alternating"] = list(mixed.watches.values())
    out["one key shared by two callers (2,000 queries)"] = list(shared.watches.values())
    return out


# --------------------------------------------------------------------------- report


def queries(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    array = np.array(values) * 100
    return f"{array.mean():.1f} ± {(array.max() - array.min()) / 2:.1f}"


def listed(values: list[int | None]) -> str:
    return " / ".join(queries(v) for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per attacker (default 3)")
    parser.add_argument(
        "--sigmas",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[1.0, 2.0, 4.0],
        help="perturbation attackers' noise sd, grey levels (default 1,2,4)",
    )
    parser.add_argument(
        "--steps", type=int, default=600, help="Adam steps of the fidelity surrogate"
    )
    parser.add_argument(
        "--jacobian-steps", type=int, default=300, help="Adam steps per augmentation round"
    )
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # scikit-learn's

    from secureserve.config import load_settings
    from secureserve.logs import configure_logging

    threadpool_limits(1)
    started = time.perf_counter()
    load_start = os.getloadavg()
    devnull = Path(os.devnull).open("wb")  # noqa: SIM115 - open for the whole run
    configure_logging("warning", stream=devnull)
    app_module, train = bench.import_example()
    x_train, x_test, y_train, _ = train.load_split()
    server = Server(app_module, load_settings(project_dir=DIGITS))

    pick = np.random.default_rng(0)
    seeds = np.array([pick.choice(np.flatnonzero(y_train == d)) for d in range(SEEDS_KNOWN)])
    known = x_train[seeds]
    rest = np.delete(x_train, seeds, axis=0)
    evaluation = np.concatenate([x_test, rest])
    truth = (evaluation, server.labels(evaluation))

    kinds: dict[str | float, str] = {
        "uniform": "(a) uniform in 0..16, whole grey levels",
        **{s: f"(b) 10 known images + N(0, {s:g}²), rounded" for s in args.sigmas},
        "jacobian": f"(c) Jacobian augmentation from 10 seeds, lambda {LAMBDA:g}",
    }
    runs = {
        kind: [
            attack(server, kind, seed, known=known, args=args, truth=truth)
            for seed in range(args.seeds)
        ]
        for kind in kinds
    }
    benign_runs = benign(server, list(benign_traces(x_test, rest)))

    settings = server.settings
    load = os.getloadavg()
    print("# Extraction detection on examples/digits-safetensors (in process)\n")
    print(
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, numpy {np.__version__}; load average at the start "
        f"{load_start[0]:.2f}, at the end {load[0]:.2f}; took "
        f"{time.perf_counter() - started:.0f} s"
    )
    print(
        f"- [model.extraction] defaults: history {settings.history:,}, min_queries "
        f"{settings.min_queries}, threshold {settings.threshold}, max_ood_share "
        f"{settings.max_ood_share}, action {settings.action}; requests of {REQUEST}; "
        f"output policy top_k 3, 2 decimals"
    )
    print(
        f"- attackers: {BUDGET:,} queries each, seeds {', '.join(map(str, range(args.seeds)))} "
        "(values listed per seed); fidelity: surrogate == victim on the "
        f"{len(evaluation):,} images no attacker sent, %, mean ± (max - min) / 2\n"
    )
    print(
        "| attacker | flagged after (queries) | first signal | PRADA W < threshold after "
        f"| OOD share >= {settings.max_ood_share} after | lowest PRADA W "
        f"| fidelity when flagged | fidelity at {BUDGET:,} |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for kind, label in kinds.items():
        done = runs[kind]
        watches = [r.watch for r in done]
        reasons = sorted({"+".join(w.reasons) for w in watches if w.reasons})
        lowest = " / ".join(
            "-" if w.lowest_prada is None else f"{w.lowest_prada:.2f}" for w in watches
        )
        print(
            f"| {label} | {listed([w.flagged_at for w in watches])} "
            f"| {', '.join(reasons) or 'not flagged'} "
            f"| {listed([w.prada_at for w in watches])} "
            f"| {listed([w.coverage_at for w in watches])} | {lowest} "
            f"| {spread([r.fidelity_flagged for r in done if r.fidelity_flagged is not None])} "
            f"| {spread([r.fidelity_budget for r in done])} |"
        )

    print(
        f"\n| benign traffic ({TRACES} traces of {TRACE_LEN:,}) | principals | false flags "
        "| lowest PRADA W (any principal, any test) | median of each principal's lowest W "
        "| highest OOD share | guard-flagged queries |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, watches in benign_runs.items():
        lows = [w.lowest_prada for w in watches if w.lowest_prada is not None]
        oods = [w.highest_ood for w in watches if w.highest_ood is not None]
        flags = sum(1 for w in watches if w.flagged_at is not None)
        why = sorted({"+".join(w.reasons) for w in watches if w.reasons})
        print(
            f"| {label} | {len(watches)} | {flags}{' (' + ', '.join(why) + ')' if why else ''} "
            f"| {min(lows):.3f} | {statistics.median(lows):.3f} | {max(oods):.3f} "
            f"| {sum(w.outside for w in watches)} |"
        )
    attackers = [r.watch.flagged_at for done in runs.values() for r in done]
    caught = all(a is not None and a < GOAL for a in attackers)
    false = sum(1 for watches in benign_runs.values() for w in watches if w.flagged_at is not None)
    print(
        f"\ngoal (every attacker flagged before {GOAL} queries; no benign principal flagged): "
        f"attackers {'met' if caught else 'NOT met'}, benign {'met' if not false else 'NOT met'}"
    )
    devnull.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
