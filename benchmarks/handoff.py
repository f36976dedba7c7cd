"""The floor of one request at a time: the hand-over to the inference thread and back.

The design keeps a sync ``predict`` off the event loop, so every request, however cheap
its model, pays one hand-over to the inference thread and one back. This measures that
price alone, with nothing else on the path: a uvloop event loop submits a job that does
nothing to secureserve's own :class:`~secureserve.runner.BatchRunner` (the machinery
every ``ss.Model`` runs on) and waits for it, one job at a time, as one client on one
connection does. For scale it measures the textbook way too, ``loop.run_in_executor``
with a one-thread pool, and the call with no thread at all (what ``predict`` inline on
the loop would cost, which the design forbids)::

    .venv/bin/python benchmarks/handoff.py --rounds 5

Each variant runs in a fresh process, **pinned** (``taskset -c 0``: the loop and the
thread share one CPU, as ``run.py``'s pinned server does) and **unpinned** (both CPUs,
as ``run.py --no-pin``); the two modes alternate ``--rounds`` times. A process times
``--jobs`` round trips three times after a warm-up and keeps its fastest run: the median
latency of one round trip (``perf_counter`` around the ``await``) and the CPU of the
whole process (every thread) per round trip. The table gives the median over rounds,
with the range. Results and their reading: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from secureserve.runner import BatchRunner, Job

VARIANTS = ("runner", "executor", "inline")
NAMES = {
    "runner": "secureserve's inference thread (`BatchRunner`)",
    "executor": "`loop.run_in_executor`, one-thread pool",
    "inline": "no thread (inline on the loop: forbidden by the design)",
}


class _Nothing(BatchRunner[int, int]):
    """A runner whose batch does no work: what is left is the hand-over itself."""

    def __init__(self) -> None:
        super().__init__(max_batch=64, timeout=30.0, name="handoff-bench")

    def _run(self, jobs: list[Job[int, int]]) -> list[tuple[Job[int, int], int]]:
        return [(job, job.work) for job in jobs]

    async def submit(self, work: int) -> int:
        job = await self._submit(work, 1)
        return job.future.result()


def _nothing(work: int) -> int:
    return work


async def _timed(variant: str, jobs: int) -> tuple[float, float]:
    """Median µs of one round trip and CPU µs per round trip (all threads)."""
    loop = asyncio.get_running_loop()
    runner = _Nothing()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    async def once(i: int) -> int:
        if variant == "runner":
            return await runner.submit(i)
        if variant == "executor":
            return await loop.run_in_executor(pool, _nothing, i)
        return _nothing(i)

    try:
        for i in range(max(jobs // 5, 100)):  # warm-up: threads started, caches filled
            await once(i)
        best: tuple[float, float] | None = None
        for _ in range(3):
            latencies = []
            cpu = time.process_time()
            for i in range(jobs):
                start = time.perf_counter()
                if await once(i) != i:
                    raise RuntimeError(f"{variant}: a job came back wrong")
                latencies.append(time.perf_counter() - start)
            cpu_us = (time.process_time() - cpu) / jobs * 1e6
            run = (statistics.median(latencies) * 1e6, cpu_us)
            best = run if best is None or run[0] < best[0] else best
        assert best is not None
        return best
    finally:
        runner.close()
        pool.shutdown()


def child(jobs: int) -> None:
    """Measure every variant in this process; print one JSON line."""
    import uvloop

    async def main() -> dict[str, tuple[float, float]]:
        return {variant: await _timed(variant, jobs) for variant in VARIANTS}

    print("HANDOFF " + json.dumps(uvloop.run(main())), flush=True)


def run_mode(*, pinned: bool, jobs: int) -> dict[str, list[float]]:
    cmd = [sys.executable, __file__, "--child", "--jobs", str(jobs)]
    if pinned:
        cmd = ["taskset", "-c", "0", *cmd]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("HANDOFF "):
            result: dict[str, list[float]] = json.loads(line.removeprefix("HANDOFF "))
            return result
    raise RuntimeError(f"the child failed ({done.returncode}):\n{done.stderr[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="processes per mode")
    parser.add_argument("--jobs", type=int, default=20_000, help="round trips per timed run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.jobs)
        return 0
    if not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        print("needs taskset (util-linux) and at least 2 CPUs", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, list[float]]]] = {"pinned": [], "unpinned": []}
    for r in range(args.rounds):
        modes = ["pinned", "unpinned"] if r % 2 == 0 else ["unpinned", "pinned"]
        for mode in modes:
            results[mode].append(run_mode(pinned=mode == "pinned", jobs=args.jobs))
            print(f"round {r + 1}: {mode} {results[mode][-1]}", file=sys.stderr)
    print("µs per round trip, one job at a time, from a uvloop event loop\n")
    print("| mode | way | p50 latency | CPU (all threads) |")
    print("| --- | --- | ---: | ---: |")
    for mode, runs in results.items():
        for variant in VARIANTS:
            cells = []
            for index in (0, 1):
                values = [run[variant][index] for run in runs]
                low, high = min(values), max(values)
                cells.append(f"{statistics.median(values):.1f} ({low:.1f}-{high:.1f})")
            print(f"| {mode} | {NAMES[variant]} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
