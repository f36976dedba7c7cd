"""The per-request cost of the model defenses and output policies, on the digits example.

Everything runs in this process (no network, no server): the handler, its settings,
its weights and its reference profile come from examples/digits-safetensors exactly as
``secureserve run`` would load them (``load_model``: lock verified, profile checked).

Five measurements, each in µs per request (and per instance where it matters):

(a) ``Defenses.screen(principal, instances, request_id)``, the call the predict route
    makes once per request on the event loop (feature view, then the input guard, then
    the drift monitor), for requests of 1 and 32 instances, under four settings: the
    example's (guard ``flag`` + drift, window 500), guard only, drift only, both off.
    Extraction detection is switched off in all four (``[model.extraction] action =
    "off"``; it runs after predict, in ``after_predict``, and has its own rows in (d)),
    so these figures compare with those from before it existed.
    Also its parts alone (``features``, ``InputGuard.check``, ``DriftMonitor.observe``)
    and one request whose only instance the guard flags (it then writes a log line,
    here to /dev/null). The issue's target: the guard at most 20 µs per instance of
    64 features.
(b) ``ModelSchema.encode_predictions`` (output validation + encoding, the work the
    inference thread does for every answer) with no output policy (``view=None``)
    and under ``full``, ``top_k`` (k=3, the example's) and ``label_only``, for 1 and 32
    outputs. The example's ``Prediction`` requires ``score``, so ``label_only`` over it
    is refused at start-up; that row uses the same type with ``score`` and ``scores``
    optional, beside its own ``view=None`` baseline.
(c) the predict endpoint as an ASGI app, called directly with a hand-made ``https``
    scope (no HTTP client, no middleware, no authentication: the principal is put in
    the scope as the authentication middleware would): body read, strict decode,
    rate-limit check (limits off), defenses, the inference thread, output policy,
    audit record (to a temporary file), response. Example settings (extraction off,
    as in (a)), the same with extraction detection on (its default ``flag``: labels
    come back from the inference thread, then ``after_predict``; 1,000 principals in
    turn, as below), and guard, drift and extraction all off, to see the defenses
    against the whole route. Expect the difference to be
    larger than (a): (a) is a tight loop with warm caches, while in the route the
    event loop waits for the inference thread between two screens, and a thread that
    gave up its core finds its caches cold (on a small shared machine, markedly so).
    (c) alternates which settings go first every run.
(d) ``Defenses.after_predict(principal, screened, labels)``, the call that feeds
    extraction detection after predict (``ExtractionMonitor.observe``: nearest
    neighbour among the principal's earlier queries with the same label, the
    Shapiro-Wilk test every 10 new distances once 100 are in, the coverage share),
    with the example's ``[model.extraction]`` (the defaults: history 2,000,
    max_principals 1,000), for 1 and 32 instances: (i) every request from a principal
    never seen before (beyond 1,000 tracked, each also drops the least recently seen);
    (ii) one principal whose history is already full (2,000 queries), so every
    instance searches 2,000 vectors and evicts the oldest. Rows are 20,000 distinct
    real images plus noise (sd 0.5), so no exact repeat skips the search; labels are
    the model's, ``outside`` the guard's verdicts. Also the Shapiro-Wilk test alone on
    that history's distances. The issue's target: at most 50 µs per instance of 64
    features with a full history.
(e) the whole per-request path of extraction detection, ``Defenses.screen`` then
    ``Defenses.after_predict`` (the feature rows and their check, the request's
    ``Screened``, the guard verdicts handed on, ``ExtractionMonitor.observe``), on a
    ``Defenses`` without a profile (so no guard and no drift: what extraction detection
    alone adds to a request, as on the iris example), ``[model.extraction]`` defaults,
    for an iris-like width of 4 (the iris example's ``Flower`` and its default feature
    view) and the digits width of 64 (``Digit``). Five cases each: 1 and 32 instances
    from a principal never seen before (beyond 1,000 tracked, each also drops the least
    recently seen); 1 instance that repeats the principal's previous query (an exact
    repeat: no search, but it is still hashed and kept); 1 and 32 instances against a
    full history of 2,000 distinct queries. Rows are scikit-learn's iris and digits data
    plus Gaussian noise (sd 0.1 cm; 2 grey levels, clipped to 0..16), 19,968 of each, so
    no row repeats; labels are the class of the row the noise was added to (what a good
    model answers: the nearest earlier query has the same one 99 % of the time). No
    principal becomes suspect (W about 0.97-0.99; with less noise PRADA flags the digits
    rows, as it should). One more case gives the same labels to unrelated rows (the
    nearest earlier query mostly has another label: the costly case of the search). Also
    the feature view alone (``features()``, the handler's own code, which the path
    includes). Run it alone with ``--only-path``; with ``PYTHONPATH=<a copy of another
    version's package>`` the same cases measure that version, to compare before and
    after.

Instances are the 356 held-out test images (train.py's ``load_split``) that the guard
does not flag (3 of the 359 are flagged; the flagged case has its own row). Requests
cycle through them. Drift sees a different principal on every request (1,000 ids in
turn): one principal may hold only ``max_share`` (20 %) of the window, and once it holds
that its instances overwrite its own oldest, a different path from many callers'.

Timing: ``time.perf_counter_ns`` (``--cpu-time``: ``time.thread_time_ns``) around a loop
of n calls, n chosen so that one run takes about ``--target-ms``; a warm-up run first;
``--repeats`` runs per case (default 5), the cases interleaved run by run so that
background load hits them alike; the table gives the median run and the min-max of the
runs. The garbage collector runs as usual.

Run from the project root::

    .venv/bin/python benchmarks/defenses.py            # about a minute
    .venv/bin/python benchmarks/defenses.py --skip-asgi --repeats 7
    .venv/bin/python benchmarks/defenses.py --only-path --repeats 7   # (e) alone, seconds
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, MutableMapping
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits-safetensors"
PRINCIPALS = [f"bench-{i}" for i in range(1000)]
#: Distinct rows the extraction cases cycle through (more than a history holds).
EXTRACTION_POOL = 20_000
#: Temporary folders (audit logs), removed when the run ends.
_FOLDERS: list[Path] = []


def fresh_audit_path() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ss-bench-audit-"))
    _FOLDERS.append(folder)
    return folder / "audit.jsonl"


# --------------------------------------------------------------------------- setup


def import_example() -> tuple[Any, Any]:
    """The example's ``app`` and ``train`` modules (train.py needs scikit-learn for the data)."""
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


def example_settings() -> Any:
    """The example's settings, with the audit log in a fresh folder and rate limits off."""
    from secureserve.config import load_settings

    settings = load_settings(project_dir=DIGITS)
    audit = fresh_audit_path()
    return msgspec.structs.replace(
        settings,
        audit=msgspec.structs.replace(settings.audit, path=audit),
        limits=msgspec.structs.replace(
            settings.limits, per_principal=None, quota=None, auth_failures_per_ip=None
        ),
    )


def model_variants(model: Any) -> dict[str, Any]:
    """``[model]`` settings: the example's, guard only, drift only, both off.

    Extraction detection is off in all four (``action = "off"``), so that these rows
    measure the guard and drift alone, comparable with the figures before it existed.
    """
    replace = msgspec.structs.replace
    model = replace(model, extraction=replace(model.extraction, action="off"))
    guard_off = replace(model.guard, mode="off")
    drift_off = replace(model.drift, enabled=False)
    return {
        "example: guard flag + drift": model,
        "guard flag only": replace(model, drift=drift_off),
        "drift only": replace(model, guard=guard_off),
        "both off": replace(model, guard=guard_off, drift=drift_off),
    }


class _NoAudit:
    """Stands in for the audit log, which gets an admin record when the drift alert changes."""

    def admin(self, **_: Any) -> None:
        return None


def make_defenses(loaded: Any, model_settings: Any) -> Any:
    """``Defenses`` as the server builds it: feature view, metrics, audit, memory limits."""
    from secureserve.defenses import Defenses, FeatureSource
    from secureserve.metrics import Metrics
    from secureserve.ratelimit import RateLimiter

    audit: Any = _NoAudit()
    limiter = RateLimiter(
        storage="memory://", per_principal=None, quota=None, auth_failures_per_ip=None
    )
    return Defenses(
        FeatureSource.of(loaded.instance, has_view=True),
        loaded.profile,
        model_settings,
        metrics=Metrics(),
        audit=lambda: audit,
        limiter=lambda: limiter,
    )


# --------------------------------------------------------------------------- timing


#: The clock runs are timed by: wall time, or with ``--cpu-time`` this thread's CPU time
#: (what other processes on the core take is then left out).
CLOCK: list[Callable[[], int]] = [time.perf_counter_ns]


def per_call_ns(fn: Callable[[int], object], n: int) -> float:
    now = CLOCK[0]
    start = now()
    for i in range(n):
        fn(i)
    return (now() - start) / n


def calibrate(fn: Callable[[int], object], target_ms: float) -> int:
    """Warm up, then the number of calls that takes about ``target_ms``."""
    n = 1
    while True:
        start = time.perf_counter_ns()
        per_call_ns(fn, n)
        elapsed = time.perf_counter_ns() - start
        if elapsed > 20e6:  # at least 20 ms of warm-up
            return max(20, int(n * target_ms * 1e6 / elapsed))
        n *= 4


def run_cases(
    cases: dict[str, Callable[[int], object]], repeats: int, target_ms: float
) -> dict[str, list[float]]:
    """µs per call of every case, ``repeats`` runs each, interleaved."""
    sizes = {name: calibrate(fn, target_ms) for name, fn in cases.items()}
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            gc.collect()
            results[name].append(per_call_ns(fn, sizes[name]) / 1000)
    return results


def cell(runs: list[float], per: int = 1) -> str:
    values = [r / per for r in runs]
    fmt = "{:.2f}" if max(values) < 10 else "{:.1f}" if max(values) < 1000 else "{:.0f}"
    median, low, high = (
        fmt.format(v) for v in (statistics.median(values), min(values), max(values))
    )
    return f"{median} ({low}-{high})"


# --------------------------------------------------------------------------- (a) screen


def _screen(defenses: Any, instances: list[Any], principal: str) -> object:
    return defenses.screen(principal, instances, "bench")


def screen_cases(
    loaded: Any, settings: Any, requests: dict[int, list[list[Any]]], flagged: list[Any]
) -> tuple[dict[str, Callable[[int], object]], dict[str, int]]:
    cases: dict[str, Callable[[int], object]] = {}
    sizes: dict[str, int] = {}

    def add(label: str, size: int, fn: Callable[[Any, str], object], items: list[Any]) -> None:
        def call(i: int) -> object:  # the i-th request: its instances and its principal
            return fn(items[i % len(items)], PRINCIPALS[i % len(PRINCIPALS)])

        cases[f"{label} | {size}"] = call
        sizes[f"{label} | {size}"] = size

    variants = model_variants(settings.model)
    for label, model_settings in variants.items():
        variant = make_defenses(loaded, model_settings)
        for size, pool in requests.items():
            add(label, size, partial(_screen, variant), pool)

    example_settings = variants["example: guard flag + drift"]
    example = make_defenses(loaded, example_settings)
    guard, drift = example.guard, example.drift
    assert guard is not None
    assert drift is not None
    features = loaded.instance.features
    for size, pool in requests.items():
        rows = [features(instances) for instances in pool]
        add("part: feature view (features())", size, lambda x, _: features(x), pool)
        add("part: InputGuard.check", size, lambda x, _: guard.check(x), rows)
        add("part: DriftMonitor.observe", size, lambda x, who: drift.observe(who, x), rows)
    add(
        "part: DriftMonitor.evaluate (every window/20 = 25 instances)",
        1,
        lambda *_: drift.evaluate(),
        [0],
    )

    label = "example, the instance flagged (log line)"
    add(label, 1, partial(_screen, make_defenses(loaded, example_settings)), [[f] for f in flagged])
    return cases, sizes


# --------------------------------------------------------------------------- (b) encode


def optional_scores_type(app_module: Any) -> type[msgspec.Struct]:
    """The example's ``Prediction`` with its score fields optional, as ``label_only`` needs.

    The example's own type has ``score: ss.Score`` (required), so a ``label_only``
    policy over it is refused at start-up; this is the type a deployment that wants
    ``label_only`` would declare.
    """
    import secureserve as ss

    return msgspec.defstruct(
        "PredictionOptionalScores",
        [
            ("digit", Annotated[int, ss.Label]),
            ("score", ss.Score | None, None),
            ("scores", ss.Scores | None, None),
        ],
        module=app_module.__name__,
    )


def encode_cases(
    loaded: Any, settings: Any, cls: Any, app_module: Any, requests: dict[int, list[list[Any]]]
) -> dict[str, Callable[[int], object]]:
    from secureserve.outputs import OutputPolicies
    from secureserve.schema import ModelSchema
    from secureserve.settings import OutputSettings

    optional = optional_scores_type(app_module)
    example = settings.model.output
    top_k = f"top_k k={example.top_k} (example)"
    full = OutputSettings(policy="full", decimals=example.decimals)
    best = OutputSettings(policy="top_k", top_k=example.top_k, decimals=example.decimals)
    # (label, output type, output settings or None for view=None)
    rows: list[tuple[str, Any, OutputSettings | None]] = [
        ("no policy (view=None)", cls.output_type, None),
        (f"full ({example.decimals} decimals)", cls.output_type, full),
        (top_k, cls.output_type, best),
        ("no policy (view=None), optional-score type", optional, None),
        ("label_only, optional-score type", optional, OutputSettings(policy="label_only")),
    ]
    cases: dict[str, Callable[[int], object]] = {}
    for size, pool in requests.items():
        predictions = [loaded.instance.predict(instances) for instances in pool[:64]]
        as_optional = [[optional(p.digit, p.score, p.scores) for p in o] for o in predictions]
        for label, kind, output in rows:
            schema = ModelSchema(cls.input_type, kind, max_instances=settings.server.max_instances)
            view = None if output is None else OutputPolicies(kind, output, where="bench").default
            outputs = predictions if kind is cls.output_type else as_optional

            def call(
                i: int, s: Any = schema, o: list[Any] = outputs, v: Any = view, n: int = size
            ) -> object:
                return s.encode_predictions(o[i % len(o)], n, v)

            cases[f"{label} | {size}"] = call
    return cases


# --------------------------------------------------------------------------- (d) extraction


def extraction_pool(
    loaded: Any, settings: Any, digit: Any, images: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], list[Any], npt.NDArray[np.bool_]]:
    """Distinct feature rows, their predicted digits and the guard's verdicts on them.

    Real images plus Gaussian noise (sd 0.5 grey levels, clipped to 0..16), so that no
    row repeats within a history (an exact repeat skips the nearest-neighbour search).
    """
    from secureserve.guard import InputGuard

    rng = np.random.default_rng(0)
    picks = images[rng.integers(0, len(images), EXTRACTION_POOL)]
    noisy = np.clip(picks + rng.normal(0.0, 0.5, picks.shape), 0.0, 16.0)
    model = loaded.instance
    instances = [digit(pixels=row.tolist()) for row in noisy]
    rows = model.features(instances)
    labels = [p.digit for p in model.predict(instances)]
    assert loaded.profile is not None
    outside = np.zeros(len(rows), dtype=bool)
    outside[[f.index for f in InputGuard(loaded.profile, settings.model.guard).check(rows)]] = True
    return rows, labels, outside


def extraction_cases(
    loaded: Any,
    settings: Any,
    pool: tuple[npt.NDArray[np.float64], list[Any], npt.NDArray[np.bool_]],
    sizes: tuple[int, ...] = (1, 32),
) -> dict[str, Callable[[int], object]]:
    """``Defenses.after_predict`` with the example's ``[model.extraction]`` defaults."""
    from secureserve.defenses import Screened
    from secureserve.extraction import _shapiro

    rows, labels, outside = pool
    history = settings.model.extraction.history
    cases: dict[str, Callable[[int], object]] = {}

    def requests(size: int) -> list[tuple[Screened, list[Any]]]:
        return [
            (
                Screened(
                    rows=rows[i : i + size],
                    flagged=None,
                    outside=frozenset(np.flatnonzero(outside[i : i + size]).tolist()),
                ),
                labels[i : i + size],
            )
            for i in range(0, len(rows) - size + 1, size)
        ]

    for size in sizes:
        pool_requests = requests(size)
        # (i) every request from a principal never seen before: at most max_principals
        # (1,000) are tracked, so from the 1,001st on each also drops the least recent
        fresh = make_defenses(loaded, settings.model)
        taken = itertools.count()

        def new_principal(
            _: int, d: Any = fresh, c: Any = taken, r: list[Any] = pool_requests
        ) -> object:
            n = next(c)
            screened, answered = r[n % len(r)]
            return d.after_predict(f"new-{n}", screened, answered)

        cases[f"after_predict, a new principal per request | {size}"] = new_principal

        # (ii) one principal whose history is full: filled with the first rows of the pool,
        # then each request goes on through the pool (never an exact repeat in its history)
        full = make_defenses(loaded, settings.model)
        fill = history // size + 1
        for screened, answered in pool_requests[:fill]:
            full.after_predict("full", screened, answered)
        track = full.extraction._tracks["full"]  # noqa: SLF001 - its distances, for the part
        assert track.size == history
        going = itertools.count(fill)

        def full_history(
            _: int, d: Any = full, c: Any = going, r: list[Any] = pool_requests
        ) -> object:
            screened, answered = r[next(c) % len(r)]
            return d.after_predict("full", screened, answered)

        cases[f"after_predict, one principal, history full ({history:,}) | {size}"] = full_history

    distances = track.distances
    cases[f"part: Shapiro-Wilk of {len(distances):,} log distances | 1"] = lambda _: _shapiro(
        distances
    )
    return cases


# --------------------------------------------------------------------------- (e) the path


#: Distinct rows the path cases cycle through (a multiple of 32, more than a history holds).
PATH_POOL = 20_000 - 20_000 % 32
IRIS = ROOT / "examples" / "iris"
SPECIES = ("setosa", "versicolor", "virginica")


def import_handler(folder: Path, name: str) -> Any:
    """The ``app`` module of an example (no weights are loaded: ``features()`` needs none)."""
    spec = importlib.util.spec_from_file_location(name, folder / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _Path:
    """One width's requests (instances, their labels) and the ``Defenses`` they go to."""

    def __init__(
        self, handler: Any, model_settings: Any, instances: list[Any], labels: list[Any]
    ) -> None:
        self.handler = handler
        self.model_settings = model_settings
        self.instances = instances
        self.labels = labels
        shuffled = list(labels)
        random.Random(0).shuffle(shuffled)
        self.at_random = shuffled  # the same labels, each given to an unrelated row

    def defenses(self) -> Any:
        """A fresh ``Defenses``: the handler's feature view, no profile, extraction on."""
        from secureserve.defenses import Defenses, FeatureSource
        from secureserve.metrics import Metrics
        from secureserve.ratelimit import RateLimiter

        audit: Any = _NoAudit()
        limiter = RateLimiter(
            storage="memory://", per_principal=None, quota=None, auth_failures_per_ip=None
        )
        return Defenses(
            FeatureSource.of(self.handler, has_view=True),
            None,
            self.model_settings,
            metrics=Metrics(),
            audit=lambda: audit,
            limiter=lambda: limiter,
        )

    def request(
        self, defenses: Any, principal: str, start: int, size: int, *, at_random: bool = False
    ) -> None:
        """One request as the predict route makes it: ``screen``, then ``after_predict``."""
        start %= PATH_POOL
        labels = self.at_random if at_random else self.labels
        screened = defenses.screen(principal, self.instances[start : start + size], "bench")
        defenses.after_predict(principal, screened, labels[start : start + size])

    def full(self, history: int, size: int, *, at_random: bool = False) -> Callable[[int], object]:
        """Requests of ``size`` from one principal whose history is full (never a repeat)."""
        defenses = self.defenses()
        for start in range(0, history + size, size):
            self.request(defenses, "full", start, size, at_random=at_random)
        track = defenses.extraction._tracks["full"]  # noqa: SLF001 - it must be full
        assert track.size == history
        going = itertools.count(history // size + 2)
        return lambda _: self.request(
            defenses, "full", next(going) * size, size, at_random=at_random
        )

    def cases(self, history: int) -> dict[tuple[str, int], Callable[[int], object]]:
        cases: dict[tuple[str, int], Callable[[int], object]] = {}
        fresh, taken = self.defenses(), itertools.count()

        def new_principal(_: int) -> None:
            n = next(taken)
            self.request(fresh, f"new-{n}", n, 1)

        cases["a new principal per request", 1] = new_principal

        def new_principal_32(_: int) -> None:
            n = next(taken)
            self.request(fresh, f"new-{n}", n * 32, 32)

        cases["a new principal per request", 32] = new_principal_32
        same = self.defenses()
        self.request(same, "repeat", 0, 1)
        cases["the principal's previous query again", 1] = lambda _: self.request(
            same, "repeat", 0, 1
        )
        for size in (1, 32):
            cases[f"history full ({history:,})", size] = self.full(history, size)
        cases[f"history full ({history:,}), labels at random", 1] = self.full(
            history, 1, at_random=True
        )
        features = self.handler.features
        for size in (1, 32):
            chunks = [self.instances[i : i + size] for i in range(0, 64 * size, size)]
            cases["part: the feature view (features())", size] = partial(
                lambda i, c: features(c[i % len(c)]), c=chunks
            )
        return cases


def path_cases(
    model_settings: Any, history: int
) -> tuple[dict[str, Callable[[int], object]], dict[str, int]]:
    """``screen`` + ``after_predict`` with extraction detection alone, widths 4 and 64."""
    from sklearn.datasets import load_digits, load_iris

    replace = msgspec.structs.replace
    alone = replace(
        model_settings,
        guard=replace(model_settings.guard, mode="off"),
        drift=replace(model_settings.drift, enabled=False),
        extraction=type(model_settings.extraction)(),  # the defaults
    )
    iris = import_handler(IRIS, "bench_path_iris")
    digits = import_handler(DIGITS, "bench_path_digits")
    cases: dict[str, Callable[[int], object]] = {}
    sizes: dict[str, int] = {}
    # (width, handler, instance type and field, data, noise sd, upper bound, label names)
    shapes = (
        (4, iris.Iris(), iris.Flower, "features", load_iris(), 0.1, 50.0, SPECIES),
        (64, digits.Digits(), digits.Digit, "pixels", load_digits(), 2.0, 16.0, range(10)),
    )
    for width, handler, kind, field, data, sd, top, names in shapes:
        rng = np.random.default_rng(width)
        picks = rng.integers(0, len(data.data), PATH_POOL)
        rows = np.clip(data.data[picks] + rng.normal(0.0, sd, (PATH_POOL, width)), 0.0, top)
        instances = [kind(**{field: row}) for row in rows.tolist()]
        labels = [list(names)[y] for y in data.target[picks]]
        one = _Path(handler, alone, instances, labels)
        for (label, size), fn in one.cases(history).items():
            cases[f"w={width}: {label} | {size}"] = fn
            sizes[f"w={width}: {label} | {size}"] = size
    return cases, sizes


# --------------------------------------------------------------------------- (c) ASGI


def asgi_results(
    cls: Any, settings: Any, rows: npt.NDArray[np.float64], repeats: int, requests_per_run: int
) -> dict[str, list[float]]:
    """µs per request through the predict endpoint: example settings vs defenses off."""
    from secureserve.app import create_app
    from secureserve.auth import Principal
    from secureserve.endpoints import Predict
    from secureserve.keys import KeyStore
    from secureserve.middleware.context import RequestInfo

    variants = model_variants(settings.model)
    chosen = {
        "example: guard flag + drift": variants["example: guard flag + drift"],
        "example + extraction detection (flag)": settings.model,
        "both off": variants["both off"],
    }
    apps = {
        label: create_app(
            cls,
            config=msgspec.structs.replace(
                settings,
                model=model,
                audit=msgspec.structs.replace(
                    settings.audit,
                    path=fresh_audit_path(),
                ),
            ),
            keys=KeyStore(None, records=[]),
            audit_key=b"b" * 32,
        )
        for label, model in chosen.items()
    }
    endpoints = {label: Predict(app.state.models) for label, app in apps.items()}
    bodies = {
        size: [
            msgspec.json.encode({"instances": [{"pixels": r.tolist()} for r in rows[i : i + size]]})
            for i in range(0, len(rows) - size + 1, size)
        ]
        for size in (1, 32)
    }
    principals = [Principal(id=p, name=p, roles=frozenset({"predict"})) for p in PRINCIPALS]

    async def one(endpoint: Predict, body: bytes, principal: Principal) -> None:
        status = 0

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {
            "type": "http",
            "scheme": "https",
            "method": "POST",
            "path": "/v1/models/digits:predict",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "path_params": {"name": "digits"},
            "secureserve.principal": principal,
            "secureserve": RequestInfo("bench", time.perf_counter(), asyncio.get_running_loop()),
        }
        await endpoint(scope, receive, send)
        if status != 200:
            raise RuntimeError(f"predict answered {status}")

    async def timed(label: str, size: int, n: int) -> float:
        endpoint, pool = endpoints[label], bodies[size]
        start = time.perf_counter_ns()
        for i in range(n):
            await one(endpoint, pool[i % len(pool)], principals[i % 1000])
        return (time.perf_counter_ns() - start) / n / 1000

    async def main() -> dict[str, list[float]]:
        results: dict[str, list[float]] = {}
        for label in endpoints:
            for size in bodies:
                await timed(label, size, max(50, requests_per_run // 5))  # warm-up
                results[f"{label} | {size}"] = []
        for r in range(repeats):
            order = list(endpoints) if r % 2 == 0 else list(reversed(endpoints))
            for label in order:  # which goes first flips every run
                for size in bodies:
                    gc.collect()
                    n = requests_per_run if size == 1 else max(50, requests_per_run // 4)
                    results[f"{label} | {size}"].append(await timed(label, size, n))
        return results

    try:
        return asyncio.run(main())
    finally:
        for app in apps.values():
            state = app.state.models
            state.close()
            state.audit.close()


# --------------------------------------------------------------------------- report


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per case (default 5)")
    parser.add_argument(
        "--target-ms", type=float, default=150, help="length of one run of a case (default 150)"
    )
    parser.add_argument("--skip-screen", action="store_true", help="skip (a)")
    parser.add_argument("--skip-asgi", action="store_true", help="skip (c)")
    parser.add_argument("--skip-extraction", action="store_true", help="skip (d)")
    parser.add_argument("--skip-path", action="store_true", help="skip (e)")
    parser.add_argument("--only-path", action="store_true", help="run (e) alone")
    parser.add_argument("--skip-encode", action="store_true", help="skip (b)")
    parser.add_argument("--json", type=Path, help="also write every run's µs here, by section")
    parser.add_argument(
        "--cpu-time", action="store_true", help="time runs by this thread's CPU time, not wall"
    )
    parser.add_argument(
        "--asgi-requests", type=int, default=2000, help="1-instance requests per (c) run"
    )
    args = parser.parse_args(argv)
    if args.cpu_time:
        CLOCK[0] = time.thread_time_ns

    from secureserve.guard import InputGuard
    from secureserve.logs import configure_logging
    from secureserve.serving import load_model

    devnull = Path(os.devnull).open("wb")  # noqa: SIM115 - open for the whole run
    configure_logging("info", stream=devnull)  # flagged instances and start-up lines
    settings = example_settings()
    raw: dict[str, dict[str, list[float]]] = {}  # every run, for --json
    if args.only_path:
        print("# Extraction detection, the whole path (in process)\n")
        print(f"- machine: {machine()}")
        print(f"- package: {Path(secureserve_file()).parent}\n")
        raw["e"] = report_path(settings, args)
        finish(args, raw)
        devnull.close()
        return 0
    app_module, train = import_example()
    cls = app_module.Digits
    loaded = load_model(cls, settings)
    info = machine()

    x_train, x_test, _, _ = train.load_split()
    assert loaded.profile is not None
    guard = InputGuard(loaded.profile, settings.model.guard)
    bad = {f.index for f in guard.check(x_test)}
    clean = x_test[[i for i in range(len(x_test)) if i not in bad]]
    digit = app_module.Digit
    images = [digit(pixels=row.tolist()) for row in clean]
    requests = {
        1: [[image] for image in images],
        32: [images[i : i + 32] for i in range(0, len(images) - 31, 8)],
    }
    flagged = [digit(pixels=x_test[i].tolist()) for i in sorted(bad)]

    print("# Model defenses on examples/digits-safetensors (in process)\n")
    print(f"- machine: {info}")
    print(
        f"- {args.repeats} runs per case of ~{args.target_ms:g} ms each, interleaved; "
        "median (min-max of the runs)"
    )
    print(f"- package: {Path(secureserve_file()).parent}")
    print(
        f"- instances: {len(clean)} held-out test images the guard accepts "
        f"({len(bad)} of {len(x_test)} flagged, used only in the flagged row)\n"
    )

    cases, sizes = screen_cases(loaded, settings, requests, flagged)
    results = {} if args.skip_screen else run_cases(cases, args.repeats, args.target_ms)
    raw["a"] = results
    print("## (a) Defenses.screen, per request\n")
    print("| defenses | instances | µs per request | µs per instance |")
    print("| --- | ---: | ---: | ---: |")
    for key, runs in results.items():
        label, size = key.split(" | ")
        print(f"| {label} | {size} | {cell(runs)} | {cell(runs, sizes[key])} |")

    enc = raw["b"] = (
        {}
        if args.skip_encode
        else run_cases(
            encode_cases(loaded, settings, cls, app_module, requests), args.repeats, args.target_ms
        )
    )
    print("\n## (b) ModelSchema.encode_predictions, per request\n")
    print("| output policy | outputs | µs per request | vs no policy |")
    print("| --- | ---: | ---: | ---: |")
    for key, runs in enc.items():
        label, size = key.split(" | ")
        base_label = "no policy (view=None)" + (
            ", optional-score type" if "optional" in label else ""
        )
        base = statistics.median(enc[f"{base_label} | {size}"])
        print(f"| {label} | {size} | {cell(runs)} | {statistics.median(runs) - base:+.1f} |")

    if not args.skip_asgi:
        asgi = raw["c"] = asgi_results(cls, settings, clean, args.repeats, args.asgi_requests)
        print("\n## (c) predict endpoint (ASGI, called directly), per request\n")
        print("| settings | instances | µs per request | vs both off |")
        print("| --- | ---: | ---: | ---: |")
        for key, runs in asgi.items():
            label, size = key.split(" | ")
            base = statistics.median(asgi[f"both off | {size}"])
            print(f"| {label} | {size} | {cell(runs)} | {statistics.median(runs) - base:+.1f} |")
    if not args.skip_extraction:
        pool = extraction_pool(loaded, settings, digit, np.concatenate([x_train, x_test]))
        extraction = raw["d"] = run_cases(
            extraction_cases(loaded, settings, pool), args.repeats, args.target_ms
        )
        ex = settings.model.extraction
        print("\n## (d) extraction detection: Defenses.after_predict, per request\n")
        print(
            f"[model.extraction] defaults: history {ex.history:,}, min_queries "
            f"{ex.min_queries}, threshold {ex.threshold}, max_principals "
            f"{ex.max_principals:,}, action {ex.action}; target: at most 50 µs per "
            "instance with a full history\n"
        )
        print("| case | instances | µs per request | µs per instance |")
        print("| --- | ---: | ---: | ---: |")
        for key, runs in extraction.items():
            label, size = key.split(" | ")
            print(f"| {label} | {size} | {cell(runs)} | {cell(runs, int(size))} |")
    if not args.skip_path:
        raw["e"] = report_path(settings, args)
    finish(args, raw)
    devnull.close()
    return 0


def finish(args: argparse.Namespace, raw: dict[str, dict[str, list[float]]]) -> None:
    """The load average now; with ``--json``, every run of every section to that file."""
    print(f"\nload average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json is not None:
        args.json.write_text(json.dumps({"package": secureserve_file(), "runs": raw}))


def secureserve_file() -> str:
    """Where the package measured comes from (``PYTHONPATH`` may point at another copy)."""
    import secureserve

    return str(secureserve.__file__)


def report_path(settings: Any, args: argparse.Namespace) -> dict[str, list[float]]:
    """Run and print (e); every run's µs, by case."""
    history = settings.model.extraction.history
    cases, sizes = path_cases(settings.model, history)
    results = run_cases(cases, args.repeats, args.target_ms)
    print("\n## (e) extraction detection alone: Defenses.screen + after_predict, per request\n")
    print(
        "No profile (no guard, no drift); [model.extraction] defaults (history "
        f"{history:,}); the feature view's own cost is the `part` row\n"
    )
    print("| case | instances | µs per request | µs per instance |")
    print("| --- | ---: | ---: | ---: |")
    for key, runs in results.items():
        label, size = key.split(" | ")
        print(f"| {label} | {size} | {cell(runs)} | {cell(runs, sizes[key])} |")
    return results


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for folder in _FOLDERS:
            shutil.rmtree(folder, ignore_errors=True)
