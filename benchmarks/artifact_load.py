"""Load-time cost of verification for a large safetensors file.

Writes a ~100 MB safetensors file into a temporary model folder, locks it (and, for
the encrypted case, encrypts it), then times, over several runs each (median):

* ``safetensors.numpy.load_file``, the bare library, as the baseline;
* ``hashlib.sha256`` over the file's bytes alone;
* ``Artifacts.safetensors`` checked against the lock: one read, sha256, format
  sniffing, header validation, the lock comparison and the library's parse;
* the same for the encrypted file (decryption in memory added).

Run: ``.venv/bin/python benchmarks/artifact_load.py [--mb 100] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.numpy

from secureserve.artifacts import Artifacts
from secureserve.config import load_settings
from secureserve.encryption import encrypt_file, generate_key, load_key
from secureserve.lockfile import parse_lock
from secureserve.release import lock_project


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        models = project / "models"
        models.mkdir()
        rng = np.random.default_rng(0)
        per_tensor = 4 * 1024 * 1024  # 4 MiB tensors, like layers of a mid-size network
        count = max(1, args.mb * 1024 * 1024 // per_tensor)
        tensors = {
            f"layer{i}.weight": rng.standard_normal(per_tensor // 4, dtype=np.float32)
            for i in range(count)
        }
        path = models / "model.safetensors"
        safetensors.numpy.save_file(tensors, str(path))
        size_mb = path.stat().st_size / 1e6

        settings = load_settings(project_dir=project, environ={})
        lock_project(settings)
        lock = parse_lock((project / "secureserve.lock").read_bytes())

        def verified() -> object:
            return Artifacts(models, lock=lock).safetensors("model.safetensors")

        results = {
            "safetensors.numpy.load_file (baseline)": _median_ms(
                lambda: safetensors.numpy.load_file(str(path)), args.runs
            ),
            "sha256 of the bytes alone": _median_ms(
                lambda: hashlib.sha256(path.read_bytes()).hexdigest(), args.runs
            ),
            "Artifacts.safetensors, lock-checked": _median_ms(verified, args.runs),
        }

        key_file = project / "model.key"
        generate_key(key_file)
        key = load_key(key_file=key_file)
        encrypt_file(path, models / "model.safetensors.enc", key)
        path.unlink()
        lock_project(settings)
        lock = parse_lock((project / "secureserve.lock").read_bytes())
        results["Artifacts.safetensors, lock-checked, encrypted"] = _median_ms(
            lambda: Artifacts(models, lock=lock, decryption_key=key).safetensors(
                "model.safetensors"
            ),
            args.runs,
        )

    baseline = results["safetensors.numpy.load_file (baseline)"]
    print(f"file: {size_mb:.1f} MB, {count} float32 tensors; median of {args.runs} runs\n")
    print("| what | ms | vs baseline |")
    print("| --- | ---: | ---: |")
    for what, ms in results.items():
        print(f"| {what} | {ms:.0f} | {ms / baseline:.2f}x |")


if __name__ == "__main__":
    main()
