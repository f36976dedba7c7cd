"""Latency of the minilm example's numpy forward pass, per sentence.

Loads examples/minilm's handler through ``Artifacts`` against its lock (the weights
must be in place: ``python examples/minilm/fetch_weights.py``), then times
``predict`` (tokenization, the forward pass, the output objects; no HTTP), median
and 90th percentile over ``--runs`` calls each:

* batch 1: one short sentence per call (the reference sentences, 3 to 23 tokens,
  in turn);
* batch 32: 32 short sentences per call, reported per sentence;
* the worst case the example's settings allow: 1 text of 256 tokens, and as many
  as ``[server] max_instances`` in one call (a request, or requests merged into
  one batch, never hold more).

Run: ``.venv/bin/python benchmarks/minilm.py [--runs 50]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from secureserve.artifacts import Artifacts
from secureserve.config import load_settings
from secureserve.lockfile import LOCK_FILENAME, read_lock

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minilm"


def _times_ms(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _p(times: list[float], q: int) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    sys.path.insert(0, str(EXAMPLE))
    import app  # examples/minilm/app.py

    lock, _ = read_lock(EXAMPLE / LOCK_FILENAME)
    model = app.MiniLM()
    start = time.perf_counter()
    model.load(Artifacts(EXAMPLE / "models", lock=lock))
    load_ms = (time.perf_counter() - start) * 1000

    reference = json.loads((EXAMPLE / "reference" / "embeddings.json").read_text("utf-8"))
    texts = [entry["text"] for entry in reference["sentences"]]
    short = [app.Sentence(text=t) for t in texts[:-1]]  # the last one is the long text
    long = app.Sentence(text=texts[-1])
    tokens = [len(model.tokenizer.encode(s.text).ids) for s in short]

    turn = iter(range(10**9))
    batch1 = _times_ms(lambda: model.predict([short[next(turn) % len(short)]]), args.runs)
    batch32 = [t / 32 for t in _times_ms(lambda: model.predict((short * 4)[:32]), args.runs)]
    long1 = _times_ms(lambda: model.predict([long]), max(5, args.runs // 5))
    most = load_settings(project_dir=EXAMPLE).server.max_instances
    long_most = _times_ms(lambda: model.predict([long] * most), max(3, args.runs // 10))

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} cores, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
    )
    print(f"load (lock check, safetensors, tokenizer): {load_ms:.0f} ms")
    print(f"short sentences: {min(tokens)}-{max(tokens)} tokens, mean {np.mean(tokens):.1f}")
    print("| case | p50 | p90 |")
    print("| --- | ---: | ---: |")
    rows = [
        ("batch 1, per sentence", batch1),
        ("batch 32, per sentence", batch32),
        ("256 tokens, batch 1", long1),
        (f"256 tokens, batch {most} (max_instances), whole call", long_most),
    ]
    for name, times in rows:
        print(f"| {name} | {_p(times, 50):.1f} ms | {_p(times, 90):.1f} ms |")


if __name__ == "__main__":
    main()
