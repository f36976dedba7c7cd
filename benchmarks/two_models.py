"""Idle RSS of one process serving the iris and digits examples together, and each alone.

    .venv/bin/python benchmarks/two_models.py [--runs 3]

Builds, in a temporary folder, three projects from the examples: iris alone, digits
alone, and both as ``[models.iris]`` and ``[models.digits]`` of one secureserve.toml
(the layout docs/models.md shows). Each is locked and served with ``secureserve run
--dev`` on a free loopback port; the ``VmRSS`` of the server process 0.5 s after
``/readyz`` first answers 200 is the figure. Prints a markdown table of the medians
over ``--runs`` starts, for docs/performance.md. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import client_context, ready_once, rss_kib

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CLI = str(Path(sys.executable).with_name("secureserve"))
_CA = re.compile(r"^\s*CA:\s+(\S+)\s*$", re.MULTILINE)
SINGLE = '[model]\nhandler = "{module}:{cls}"\ndir = "models/{name}"\n'
TABLE = '[models.{name}]\nhandler = "{module}:{cls}"\ndir = "models/{name}"\n'
MODELS = {
    "iris": ("iris", "Iris"),
    "digits": ("digits-safetensors", "Digits"),
}


def project(root: Path, names: list[str]) -> Path:
    """A locked project serving ``names`` (one: ``[model]``; more: ``[models.<name>]``)."""
    root.mkdir()
    text = ""
    for name in names:
        example, cls = MODELS[name]
        shutil.copy(EXAMPLES / example / "app.py", root / f"{name}_app.py")
        shutil.copytree(EXAMPLES / example / "models", root / "models" / name)
        form = SINGLE if len(names) == 1 else TABLE
        text += form.format(module=f"{name}_app", cls=cls, name=name)
    (root / "secureserve.toml").write_text(text)
    subprocess.run([CLI, "lock"], cwd=root, check=True, capture_output=True)
    return root


def idle_rss(folder: Path) -> float:
    """MiB resident 0.5 s after the server in ``folder`` first answers ready."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stderr = folder / "stderr.txt"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [CLI, "run", "--dev", "--port", str(port)],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while (found := _CA.search(stderr.read_text())) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server in {folder} did not start:\n{stderr.read_text()}")
            time.sleep(0.05)
        ctx = client_context(Path(found.group(1)))
        while not ready_once(port, ctx):
            if time.monotonic() > deadline:
                sys.exit(f"the server in {folder} did not become ready")
            time.sleep(0.01)
        time.sleep(0.5)
        return rss_kib(proc.pid) / 1024
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    """Measure the three projects ``--runs`` times each, alternating; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cases = {"iris alone": ["iris"], "digits alone": ["digits"], "both": ["iris", "digits"]}
    with tempfile.TemporaryDirectory(prefix="ss-two-models-") as temporary:
        folders = {
            label: project(Path(temporary) / str(i), names)
            for i, (label, names) in enumerate(cases.items())
        }
        figures: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(args.runs):
            for label, folder in folders.items():
                figures[label].append(idle_rss(folder))
    print(f"| served | idle RSS (MiB, median of {args.runs}) |")
    print("| --- | ---: |")
    for label, values in figures.items():
        print(f"| {label} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
