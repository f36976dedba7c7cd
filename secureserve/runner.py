"""Hands work to ``predict``: one inference thread drains a queue of jobs in batches.

A sync ``predict`` never runs on the event loop. Jobs submitted during one loop
iteration are handed over together, and jobs that wait while the thread is busy
are merged into one ``predict`` call (up to ``max_batch`` instances), so one
thread hop serves many requests; the thread also validates and encodes each
job's outputs, keeping that work off the loop.
The queue cannot grow without bound: the app admits at most ``max_in_flight``
requests. A job that outlives ``timeout`` is answered 504 (at most
:data:`~secureserve.deadlines.RESOLUTION_S` later) and skipped if the thread has not
reached it yet. When a merged batch fails, each job is retried
alone, so one hostile request cannot fail other callers' requests.

The hop to the thread and back is on every request's path, so it is kept cheap:
results come back through a pipe the loop watches (``os.write`` releases the GIL,
so the loop wakes to a free GIL, where ``call_soon_threadsafe`` would wake it while
the thread still holds it), and on Linux the thread runs under ``SCHED_BATCH``, so
handing it work does not preempt the loop before the loop has gone to sleep (the
thread could not take the GIL before that anyway). See docs/performance.md.

An ``async def predict`` runs on the event loop, one request at a time, under
the same timeout.

:class:`BatchRunner` is that machinery for any kind of job; :class:`InferenceRunner`
runs an ``ss.Model``'s ``predict`` on it, and
:class:`secureserve.tensor_serving.TensorRunner` a tensor model's ONNX session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections import deque
from typing import Any, Final, Generic, TypeVar

from secureserve.deadlines import Deadlines, on_loop
from secureserve.errors import ModelError, RequestRejected, SecureServeError
from secureserve.logs import get_logger
from secureserve.model import Model
from secureserve.outputs import OutputView
from secureserve.schema import ModelSchema

__all__ = ["BatchRunner", "InferenceRunner", "Job"]

_STOP: Final = object()
_W = TypeVar("_W")  # what a job asks for
_R = TypeVar("_R")  # what it gets back


class Job(Generic[_W, _R]):
    """One request's work: ``work`` of ``size`` rows, answered through ``future``."""

    __slots__ = ("abandoned", "extra", "future", "size", "work")

    def __init__(self, work: _W, size: int, future: asyncio.Future[_R]) -> None:
        self.work = work
        self.size = size
        self.future = future
        self.extra: Any = None  # set by the thread before the future resolves (labels, ...)
        self.abandoned = False  # set on the loop when the request timed out


_Results = list[tuple[Job[Any, Any], Any]]


class _Outbox:
    """Results from the inference thread to the event loop: a queue and a wake-up pipe.

    The thread appends a batch's results and writes one byte; the loop's reader drains
    every batch waiting. Both ends are non-blocking: a full pipe means a wake-up is
    already pending, so the thread never blocks on it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._results: deque[_Results] = deque()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        try:
            loop.add_reader(self._read_fd, self._drain)
        except BaseException:
            self._close_fds()
            raise

    def put(self, results: _Results) -> None:
        """Inference thread: hand ``results`` to the loop and wake it."""
        self._results.append(results)
        with contextlib.suppress(BlockingIOError):  # full: the loop has a wake-up to read
            os.write(self._write_fd, b"\0")

    def detach(self) -> None:
        """Inference thread, last act: the loop delivers what is left and closes the pipe."""
        try:
            self._loop.call_soon_threadsafe(self._close)
        except RuntimeError:  # the loop is closed: no reader left to remove
            self._close_fds()

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._read_fd, 4096)
        while self._results:
            _deliver(self._results.popleft())

    def _close(self) -> None:
        self._loop.remove_reader(self._read_fd)
        self._drain()
        self._close_fds()

    def _close_fds(self) -> None:
        os.close(self._read_fd)
        os.close(self._write_fd)


class BatchRunner(Generic[_W, _R]):
    """One inference thread that runs jobs in batches (see the module docstring).

    A subclass says how a batch runs (:meth:`_run`); :meth:`_submit` queues one job
    and waits for its result.
    """

    def __init__(self, *, max_batch: int, timeout: float, name: str) -> None:
        self._max_batch = max_batch
        self._timeout = timeout
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._deadlines: Deadlines[Job[_W, _R]] | None = None  # each job's timeout
        self._start_lock = threading.Lock()
        self._pending: list[Job[_W, _R]] = []  # submitted during this loop iteration

    async def _submit(
        self, work: _W, size: int, loop: asyncio.AbstractEventLoop | None = None
    ) -> Job[_W, _R]:
        """Queue ``work`` (``size`` rows) and wait: the job, its future resolved (or raises).

        ``loop`` is the running loop, when the caller has it at hand (asking for it costs
        a system call on 3.11).
        """
        # this request's loop, never one kept from an earlier call: used from another
        # loop, a job still gets its 504 on that loop
        loop = loop or asyncio.get_running_loop()
        if self._thread is None:
            self._start(loop)
        job: Job[_W, _R] = Job(work, size, loop.create_future())
        deadlines = self._deadlines = on_loop(self._deadlines, loop)
        deadlines.add(job, self._timeout, self._expire)
        if not self._pending:
            loop.call_soon(self._hand_over)
        self._pending.append(job)
        try:
            await job.future
        except asyncio.CancelledError:
            job.abandoned = True  # nobody waits for it: the thread skips it, a run may stop
            raise
        finally:
            deadlines.cancel(job)
        return job

    def _run(self, jobs: list[Job[_W, _R]]) -> list[tuple[Job[_W, _R], _R | BaseException]]:
        """Inference thread: run ``jobs`` (one batch); each job's result or error.

        When a merged call fails, the subclass retries its jobs alone (those not yet
        abandoned), so one hostile request cannot fail other callers' requests.
        """
        raise NotImplementedError

    def _expire(self, job: Job[_W, _R]) -> None:
        """On the loop, at the timeout: answer 504 (the thread skips it if not yet started)."""
        job.abandoned = True
        if not job.future.done():
            job.future.set_exception(_timed_out())

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued jobs, then stop the thread (waiting at most ``timeout`` s)."""
        thread = self._thread
        if thread is not None:
            self._hand_over()
            self._queue.put(_STOP)
            thread.join(timeout)
            self._thread = None

    def stop(self) -> None:
        """Like ``close`` without waiting: queued jobs finish, then the thread ends."""
        if self._thread is not None:
            self._hand_over()
            self._queue.put(_STOP)
            self._thread = None

    def _hand_over(self) -> None:
        """Give the thread every job submitted in this loop iteration, in one put (one wake-up)."""
        if self._pending:
            jobs, self._pending = self._pending, []
            self._queue.put(jobs)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._start_lock:
            if self._thread is None:
                outbox = _Outbox(loop)
                thread = threading.Thread(
                    target=self._serve, args=(outbox,), name=self._name, daemon=True
                )
                thread.start()
                self._thread = thread

    def _serve(self, outbox: _Outbox) -> None:
        _batch_scheduling()
        try:
            self._serve_jobs(outbox)
        finally:
            outbox.detach()

    def _serve_jobs(self, outbox: _Outbox) -> None:
        backlog: deque[Job[_W, _R]] = deque()
        stopping = False
        while True:
            if not backlog:
                if stopping:
                    return
                item = self._queue.get()
                if item is _STOP:
                    return
                backlog.extend(item)
            stopping = self._drain_queue(backlog) or stopping
            jobs = [job for job in _take_batch(backlog, self._max_batch) if not job.abandoned]
            if jobs:
                try:
                    results = self._run(jobs)
                except Exception as exc:  # noqa: BLE001 - the thread lives on; the jobs get 500s
                    get_logger().exception("inference batch failed", thread=self._name)
                    results = [(job, _model_failed(exc)) for job in jobs]
                outbox.put(results)

    def _drain_queue(self, backlog: deque[Job[_W, _R]]) -> bool:
        """Move everything already queued into ``backlog``; True if the stop marker came."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            backlog.extend(item)


#: What an ``ss.Model`` job asks for: instances, the caller's output policy, labels or not.
_Predict = tuple[list[Any], OutputView | None, bool]


class InferenceRunner(BatchRunner[_Predict, bytes]):
    """Runs a model's ``predict`` off the event loop and returns encoded responses.

    The jobs of one batch may differ in output policy: each is encoded as its caller
    may see it.
    """

    def __init__(
        self, model: Model[Any, Any], schema: ModelSchema, *, max_batch: int, timeout: float
    ) -> None:
        super().__init__(max_batch=max_batch, timeout=timeout, name="secureserve-inference")
        self._model = model
        self._schema = schema
        self._is_async = type(model).is_async()

    async def submit(self, instances: list[Any], view: OutputView | None = None) -> bytes:
        """Predict ``instances``; the encoded ``{"predictions": [...]}`` as ``view`` shows them."""
        body, _ = await self.submit_labelled(instances, view, want_labels=False)
        return body

    async def submit_labelled(
        self,
        instances: list[Any],
        view: OutputView | None,
        *,
        want_labels: bool,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> tuple[bytes, list[Any] | None]:
        """:meth:`submit`, and with ``want_labels`` the predicted label of each instance.

        ``loop``: the running loop, if the caller knows it.
        """
        if self._is_async:
            return await self._predict_async(instances, view, want_labels=want_labels)
        job = await self._submit((instances, view, want_labels), len(instances), loop)
        return job.future.result(), job.extra

    def _run(self, jobs: list[Job[_Predict, bytes]]) -> list[tuple[Job[_Predict, bytes], Any]]:
        results = self._predict(jobs)
        if len(jobs) > 1 and any(isinstance(r, BaseException) for _, r in results):
            return [pair for job in jobs if not job.abandoned for pair in self._predict([job])]
        return results

    def _predict(self, jobs: list[Job[_Predict, bytes]]) -> list[tuple[Job[_Predict, bytes], Any]]:
        batch = jobs[0].work[0] if len(jobs) == 1 else [i for j in jobs for i in j.work[0]]
        try:
            outputs = self._model.predict(batch)
        except Exception as exc:  # noqa: BLE001 - any handler failure becomes a redacted 500
            error = exc if isinstance(exc, SecureServeError) else _model_failed(exc)
            return [(job, error) for job in jobs]
        if not isinstance(outputs, list) or len(outputs) != len(batch):
            got = f"{len(outputs)} outputs" if isinstance(outputs, list) else type(outputs).__name__
            wrong = ModelError(f"predict returned {got} for a batch of {len(batch)} inputs")
            return [(job, wrong) for job in jobs]
        results: list[tuple[Job[_Predict, bytes], Any]] = []
        start = 0
        for job in jobs:
            end = start + job.size
            _, view, want_labels = job.work
            try:
                body = self._schema.encode_predictions(outputs[start:end], end - start, view)
                if want_labels:
                    job.extra = self._schema.labels_of(outputs[start:end])
                results.append((job, body))
            except ModelError as exc:
                results.append((job, exc))
            except Exception as exc:  # noqa: BLE001 - e.g. an output type's __post_init__ raising
                results.append((job, _model_failed(exc)))  # the thread must live on
            start = end
        return results

    async def _predict_async(
        self, instances: list[Any], view: OutputView | None, *, want_labels: bool
    ) -> tuple[bytes, list[Any] | None]:
        try:
            async with asyncio.timeout(self._timeout):
                outputs = await self._model.predict(instances)  # type: ignore[misc]
        except TimeoutError:
            raise _timed_out() from None
        except SecureServeError:
            raise
        except Exception as exc:
            raise _model_failed(exc) from exc
        try:
            body = self._schema.encode_predictions(outputs, len(instances), view)
            labels = self._schema.labels_of(outputs) if want_labels else None
        except SecureServeError:
            raise
        except Exception as exc:
            raise _model_failed(exc) from exc
        return body, labels


def _take_batch(backlog: deque[Job[_W, _R]], max_batch: int) -> list[Job[_W, _R]]:
    """The oldest jobs, up to ``max_batch`` rows (always at least one job)."""
    jobs = [backlog.popleft()]
    count = jobs[0].size
    while backlog and count + backlog[0].size <= max_batch:
        job = backlog.popleft()
        jobs.append(job)
        count += job.size
    return jobs


def _batch_scheduling() -> None:
    """Linux: this thread does not preempt the event loop when work is handed to it.

    ``SCHED_BATCH`` (priority 0, allowed without privileges) only drops the wake-up
    preemption: the loop finishes its iteration and releases the GIL by going to sleep,
    then this thread runs, instead of waking first only to wait for the GIL. Where the
    call is missing or refused (another OS, a seccomp profile), scheduling stays as it was.
    """
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, policy, os.sched_param(0))


def _model_failed(exc: Exception) -> ModelError:
    error = ModelError(f"predict raised {type(exc).__name__}")
    error.__cause__ = exc
    return error


def _timed_out() -> RequestRejected:
    return RequestRejected(504, "timeout", "The model did not answer in time")


def _deliver(results: _Results) -> None:
    for job, result in results:
        if job.future.done():
            continue
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
