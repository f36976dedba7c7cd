"""The inference queue: off-loop predict, batching, timeouts, isolation of failing jobs."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import msgspec
import pytest

from secureserve.errors import ModelError, RequestRejected
from secureserve.model import Model
from secureserve.runner import InferenceRunner
from secureserve.schema import ModelSchema


class In(msgspec.Struct):
    x: int


class Out(msgspec.Struct):
    y: int


class Recorder(Model[In, Out]):
    name = "rec"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()

    def predict(self, batch: list[In]) -> list[Out]:
        self.threads.add(threading.get_ident())
        self.batches.append([i.x for i in batch])
        time.sleep(self.delay)
        if any(i.x < 0 for i in batch):
            raise ValueError("negative input")
        return [Out(i.x * 2) for i in batch]


class AsyncModel(Model[In, Out]):
    name = "async"

    async def predict(self, batch: list[In]) -> list[Out]:
        await asyncio.sleep(0.5 if batch[0].x == 99 else 0)
        return [Out(i.x + 1) for i in batch]


def _runner(model: Model, *, max_batch: int = 8, timeout: float = 5.0) -> InferenceRunner:
    return InferenceRunner(
        model, ModelSchema(In, Out, max_instances=max_batch), max_batch=max_batch, timeout=timeout
    )


def test_runner_runs_sync_predict_off_the_event_loop():
    """A sync predict never runs on the event loop's thread."""
    model = Recorder()
    runner = _runner(model)

    async def main() -> tuple[bytes, int]:
        return await runner.submit([In(1)]), threading.get_ident()

    body, loop_thread = asyncio.run(main())
    runner.close()
    assert msgspec.json.decode(body) == {"predictions": [{"y": 2}]}
    assert loop_thread not in model.threads


def test_runner_batches_concurrent_requests_and_keeps_each_callers_outputs():
    """Requests queued while predict is busy are merged, and each caller gets its own outputs."""
    model = Recorder(delay=0.05)
    runner = _runner(model)

    async def main() -> list[bytes]:
        return await asyncio.gather(*(runner.submit([In(i), In(i + 100)]) for i in range(8)))

    bodies = asyncio.run(main())
    assert len(runner._deadlines) == 0  # each answered job's timeout is gone
    runner.close()
    for i, body in enumerate(bodies):
        assert msgspec.json.decode(body) == {"predictions": [{"y": 2 * i}, {"y": 2 * (i + 100)}]}
    assert len(model.batches) < 8
    assert max(len(b) for b in model.batches) <= 8


def test_runner_isolates_a_failing_job_from_its_batch():
    """When a merged batch fails, jobs are retried alone: only the bad request fails."""
    model = Recorder(delay=0.02)
    runner = _runner(model)

    async def main() -> list[object]:
        jobs = [runner.submit([In(i)]) for i in (1, 2, -1, 3)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(main())
    runner.close()
    assert isinstance(results[2], ModelError)
    assert "negative input" not in str(results[2])  # the client-facing error carries no text
    assert isinstance(results[2].__cause__, ValueError)
    for result in (results[0], results[1], results[3]):
        assert isinstance(result, bytes)


def test_runner_times_out_with_504():
    """A predict that outlives the budget answers 504 instead of hanging the caller."""
    runner = _runner(Recorder(delay=0.5), timeout=0.05)

    async def main() -> None:
        await runner.submit([In(1)])

    started = time.monotonic()
    with pytest.raises(RequestRejected) as info:
        asyncio.run(main())
    assert time.monotonic() - started < 0.45  # answered long before predict ends
    assert len(runner._deadlines) == 0
    runner.close()
    assert info.value.status == 504


def test_runner_used_from_another_loop_still_answers_504():
    """Reused from a second event loop without close(), a job is not kept forever.

    Its result goes back to the first loop, which is gone; the timeout fires on the
    loop that waits for it.
    """
    runner = _runner(Recorder(), timeout=0.2)
    asyncio.run(runner.submit([In(1)]))  # the thread starts, answering on this loop

    async def again() -> bytes:
        return await asyncio.wait_for(runner.submit([In(2)]), 10)

    with pytest.raises(RequestRejected) as info:
        asyncio.run(again())
    runner.close()
    assert info.value.status == 504


def test_runner_async_predict_and_its_timeout():
    """An async predict runs on the loop; past the budget it is cancelled with 504."""
    runner = _runner(AsyncModel(), timeout=0.1)

    async def main() -> tuple[bytes, BaseException | bytes]:
        ok = await runner.submit([In(1)])
        slow = await asyncio.gather(runner.submit([In(99)]), return_exceptions=True)
        return ok, slow[0]

    ok, slow = asyncio.run(main())
    assert msgspec.json.decode(ok) == {"predictions": [{"y": 2}]}
    assert isinstance(slow, RequestRejected)
    assert slow.status == 504


def test_runner_close_finishes_queued_work():
    """close() lets queued jobs finish before the thread stops."""
    model = Recorder(delay=0.01)
    runner = _runner(model, max_batch=1)

    async def main() -> list[bytes]:
        return await asyncio.gather(*(runner.submit([In(i)]) for i in range(5)))

    assert len(asyncio.run(main())) == 5
    runner.close()
    assert runner._thread is None


FDS = Path("/proc/self/fd")


def _open_fds() -> int:
    return sum(1 for _ in FDS.iterdir())


@pytest.mark.skipif(not FDS.is_dir(), reason="needs Linux's /proc")
def test_stopped_runners_close_their_wake_up_pipes():
    """Each runner's results pipe is closed once its thread ends (reloads start many)."""

    async def cycle() -> bool:
        before = _open_fds()  # the event loop's own descriptors included
        runner = _runner(Recorder())
        assert await runner.submit([In(1)])
        assert _open_fds() == before + 2  # the pipe, while the thread lives
        runner.stop()  # as a retired deployment does, on the loop
        for _ in range(400):  # the thread ends, then the loop closes the pipe
            await asyncio.sleep(0.005)
            if _open_fds() == before:
                return True
        return False

    assert all(asyncio.run(cycle()) for _ in range(3))
    before = _open_fds()
    runner = _runner(Recorder())
    asyncio.run(runner.submit([In(1)]))  # the loop is gone when the thread ends
    runner.close()
    assert _open_fds() == before


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
def test_the_inference_thread_does_not_preempt_the_loop():
    """It runs under SCHED_BATCH: handing it work does not preempt the event loop."""
    seen: list[int] = []

    class Policy(Recorder):
        def predict(self, batch: list[In]) -> list[Out]:
            seen.append(os.sched_getscheduler(threading.get_native_id()))
            return super().predict(batch)

    runner = _runner(Policy())
    asyncio.run(runner.submit([In(1)]))
    runner.close()
    assert seen == [os.SCHED_BATCH]
    assert os.sched_getscheduler(0) != os.SCHED_BATCH  # the caller's thread is untouched


def test_the_inference_thread_survives_an_error_of_its_own():
    """An exception outside predict (a bug, MemoryError) fails that batch, not the thread."""
    from secureserve.runner import BatchRunner

    class Flaky(BatchRunner[int, int]):
        calls = 0

        def _run(self, jobs):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise MemoryError
            return [(job, job.work * 2) for job in jobs]

        async def double(self, n: int) -> int:
            return (await self._submit(n, 1)).future.result()

    runner = Flaky(max_batch=4, timeout=5, name="flaky")

    async def main():
        first = await asyncio.gather(runner.double(1), return_exceptions=True)
        return first, await runner.double(2)

    (first,), second = asyncio.run(main())
    runner.close()
    assert isinstance(first, ModelError)
    assert second == 4
