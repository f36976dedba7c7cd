"""``secureserve check`` on the digits example with default settings: the sample report.

    .venv/bin/python benchmarks/check_report.py [--out docs/check-sample] [--runs 1]

Runs the real command, as a user would, in examples/digits-safetensors::

    secureserve check --data data/check.jsonl --sensitive cohort --report OUT

(all five checks, the example's [check] settings: the defaults) and writes the report
into OUT, by default the sample report committed under docs/check-sample/. It prints
the wall time of each run and the median, the figure docs/check.md quotes (the goal:
under 60 s on 2 cores). The command's exit code must be 0: the example passes its
checks, or this script fails.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits-safetensors"


def main() -> None:
    """Run the check ``--runs`` times into ``--out``; print the times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "check-sample")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    out = args.out.resolve()
    command = [
        str(Path(sys.executable).with_name("secureserve")),
        "check",
        "--data",
        "data/check.jsonl",
        "--sensitive",
        "cohort",
        "--report",
        str(out),
    ]
    times = []
    for run in range(1, args.runs + 1):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=EXAMPLE, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            sys.exit(f"secureserve check exited {done.returncode}:\n{done.stdout}{done.stderr}")
        print(f"run {run}: {times[-1]:.1f} s")
        print(done.stdout, end="")
    print(f"median of {len(times)}: {statistics.median(times):.1f} s; report in {out}")


if __name__ == "__main__":
    main()
