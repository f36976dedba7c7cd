"""Extraction detection: noticing a principal whose queries look like a model-copying attack.

Per principal, a bounded history of its recent queries (their feature vectors, float32,
at most ``[model.extraction] history``, oldest dropped) feeds three signals:

- **PRADA** (Juuti et al., 2019): each new query's smallest distance to the principal's
  earlier queries that got the same predicted label. Benign queries (natural data) give
  distances close to a known shape; synthetic ones (perturbations of a few seeds,
  Jacobian-style augmentation, grids) do not. Once ``min_queries`` distances are in, a
  Shapiro-Wilk statistic below ``threshold`` makes the principal suspect. The test is
  on the logarithm of the distances: nearest-neighbour distances of natural data are
  closer to log-normal than to normal (on the digits example, raw distances put benign
  traffic at W = 0.896, at the threshold; their logarithms at 0.972 or more, while
  perturbed seeds stay near 0.4). Exact repeats of an earlier query are left out
  (distance 0 says nothing) but still count for volume.
- **coverage**: the share of its recent queries the input guard would flag; uniform or
  box-corner sampling shows here long before PRADA has enough points. Suspect at
  ``max_ood_share`` (after ``min_queries`` queries).
- **volume**: instances in the current minute against its usual rate per minute (an
  exponentially weighted average over the minutes it has been seen); suspect at
  ``max_rate_ratio`` times, once it has been seen for 10 minutes.

At most ``max_principals`` principals are tracked, the least recently seen dropped (and
counted; a newcomer takes over the dropped one's storage if it never grew). Memory is
bounded by ``max_principals x history x (features x 4 + ~150)`` bytes (float32 vectors
grown as queries come, their norms, labels, hashes, distances and guard verdicts), plus
``history x 8`` bytes per model for one query's work: 0.8 MB for a full history of
2,000 queries of 64 features. The work per request is numpy's on the whole history
(one product per instance) and plain Python for the little around it.

The server hands each answered request over with :meth:`ExtractionMonitor.defer`: the
requests answered in one event-loop iteration are observed together at its end, those
of one principal as one request of all their instances (its clock read, its signals
judged, once). Under load the fixed cost of a request is then paid once per iteration
and principal; the instances are added in the order they came, as if one at a time. What
waits is at most the requests answered in one iteration (``[server] max_in_flight``), and
never more than 4,096; a failure is logged and does not stop the others. Every method
that reads or changes what is tracked observes what waits first. Each principal is named
on the admin route by an opaque random handle, never by its id in a URL (ids such as
``jwt:...`` or certificate subjects may hold ``/`` and personal data).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final, TypeVar, cast

import msgspec
import numpy as np
import numpy.typing as npt

from secureserve.logs import get_logger
from secureserve.settings import ExtractionSettings
from secureserve.shapiro import shapiro_w

__all__ = ["ExtractionMonitor", "PrincipalPage", "PrincipalStats"]

_T = TypeVar("_T")
#: One answered request: its principal, feature rows, predicted labels, guard verdicts.
_Observation = tuple[str, "npt.NDArray[np.float64]", "Sequence[Hashable] | None", "Sequence[bool]"]

#: The Shapiro-Wilk test is run again after this share of ``min_queries`` new distances.
_RETEST_SHARE: Final = 0.1
#: Distances the test looks at (the most recent): Royston's W is made for up to 5,000.
_MAX_TESTED: Final = 5000
#: Minutes a principal must have been seen before its volume can make it suspect.
_VOLUME_WARM_UP_MIN: Final = 10
_EWMA: Final = 0.1
#: Distinct labels told apart for PRADA; further ones share one group.
_MAX_LABELS: Final = 10_000
_INITIAL_ROWS: Final = 64
_HANDLE_SALT: Final = "secureserve-extraction"
_TINY: Final = 1e-9
_HUGE: Final = 1e15
_SAFE_SQUARES: Final = 0.99 * _HUGE**2
#: Share of the log distances clipped at each end before the test: one near-duplicate
#: query (a tiny distance, a huge negative logarithm) must not decide the verdict.
_CLIP_SHARE: Final = 0.01
#: Up to this many values a request's rows are checked in plain Python: numpy's call
#: overhead (about 1 µs a call) is more than the work on a handful of numbers.
_FEW_VALUES: Final = 16
#: Up to this many bytes a query's float32 bytes are its own key (no shorter than a digest).
_RAW_KEY_BYTES: Final = 16
#: Entries a deque holds in the block it starts with (CPython: half of 64).
_SHORT_DEQUE: Final = 32
#: Nearest queries of another label set aside before a query's label mask is built.
_NEAREST_TRIES: Final = 4
#: Requests waiting to be observed, at most: past it they are observed at once (the loop
#: that was to observe them at the end of its iteration is stopped or gone).
_MAX_WAITING: Final = 4096
#: Below this many queries held per label known, whether a history holds a query's label
#: at all is asked first (a short history, or one among many labels, may well not).
_SHORT_PER_LABEL: Final = 4


class PrincipalStats(msgspec.Struct, frozen=True):
    """One tracked principal, as the admin route shows it."""

    handle: str
    principal: str
    queries: int
    prada: float | None
    ood_share: float | None
    rate_ratio: float | None
    suspected: bool
    reasons: list[str]


class PrincipalPage(msgspec.Struct, frozen=True):
    """``GET /v1/models/{name}/principals``: one page of tracked principals."""

    model: str
    tracked: int
    dropped: int
    principals: list[PrincipalStats]
    next_offset: int | None


class _Track:
    """What is kept of one principal (all bounded by ``history``)."""

    __slots__ = (
        "distances",
        "handle",
        "hashes",
        "labels",
        "minute",
        "minutes_seen",
        "next",
        "norms",
        "ood",
        "ood_count",
        "queries",
        "reasons",
        "seen",
        "since_test",
        "size",
        "statistic",
        "suspected",
        "this_minute",
        "usual",
        "vectors",
    )

    def __init__(self, width: int, history: int, handle: str) -> None:
        rows = min(_INITIAL_ROWS, history)
        self.vectors = np.empty((rows, width), dtype=np.float32)
        self.norms = np.empty(rows, dtype=np.float32)
        self.labels = np.empty(rows, dtype=np.int64)
        self.hashes: list[bytes] = []  # of each slot's query
        self.seen: dict[bytes, int] = {}  # query hash -> slots holding it (exact repeats)
        self.size = 0
        self.next = 0
        self.distances: deque[float] = deque(maxlen=history)
        self.ood: deque[bool] = deque(maxlen=history)
        self.ood_count = 0  # True entries in ``ood``, kept as they come and go
        self.queries = 0
        self.since_test = 0
        self.statistic: float | None = None
        self.minute = -1
        self.this_minute = 0
        self.usual = 0.0
        self.minutes_seen = 0
        self.suspected = False
        self.reasons: tuple[str, ...] = ()
        self.handle = handle

    def renew(self, handle: str) -> bool:
        """Start afresh for another principal in the same storage, if it was never grown.

        Whether it could: a track whose arrays grew is not handed on (a new principal
        would hold memory it may never need). Nothing of the old principal can be read
        afterwards: every container is emptied, and an array row is written before it
        is read (only the first ``size`` rows are).
        """
        if len(self.vectors) > _INITIAL_ROWS:
            return False
        self.hashes.clear()
        self.seen.clear()
        self.size = self.next = 0
        self.distances = _emptied(self.distances)
        self.ood = _emptied(self.ood)
        self.ood_count = self.queries = self.since_test = 0
        self.statistic = None
        self.minute, self.this_minute, self.usual, self.minutes_seen = -1, 0, 0.0, 0
        self.suspected, self.reasons = False, ()
        self.handle = handle
        return True


class ExtractionMonitor:
    """The extraction signals of one model; every method runs on the event loop thread.

    ``on_suspect(principal, stats)`` is called once when a principal becomes suspect.
    """

    def __init__(
        self,
        settings: ExtractionSettings,
        *,
        width: int,
        model: str,
        on_suspect: Callable[[str, PrincipalStats], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.model = model
        self.width = width
        self.dropped = 0
        self._tracks: OrderedDict[str, _Track] = OrderedDict()
        self._handles: dict[str, str] = {}
        self._labels: dict[Hashable, int] = {}
        self._on_suspect = on_suspect
        self._clock = clock
        self._retest = max(1, math.floor(settings.min_queries * _RETEST_SHARE))
        # the usual rate is never taken below this, so one full request is not a burst
        self._rate_floor = settings.min_queries / 10
        self._history = settings.history
        self._handle_prefix = hashlib.sha256(f"{_HANDLE_SALT}\0{model}\0".encode())
        self._raw_keys = width * 4 <= _RAW_KEY_BYTES
        # one query's products and squared distances, reused (one thread: the event loop's)
        self._dots = np.empty(settings.history, dtype=np.float32)
        self._squared = np.empty(settings.history, dtype=np.float32)
        self._waiting: list[_Observation] = []  # deferred to the end of this loop iteration
        self._waking: asyncio.AbstractEventLoop | None = None  # where _observe_waiting is due

    # ----------------------------------------------------------------------- queries

    def defer(
        self,
        principal: str,
        rows: npt.NDArray[np.float64],
        labels: Sequence[Hashable] | None,
        outside: Sequence[bool],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """:meth:`observe` at the end of this iteration of ``loop``, with the others of it.

        The requests of one principal are observed as one (see the module docstring).
        """
        if len(self._waiting) >= _MAX_WAITING:  # its loop does not come round (stopped, closed)
            self._observe_waiting()
        if not self._waiting or loop is not self._waking:
            loop.call_soon(self._observe_waiting)
            self._waking = loop
        self._waiting.append((principal, rows, labels, outside))

    def observe(
        self,
        principal: str,
        rows: npt.NDArray[np.float64],
        labels: Sequence[Hashable] | None,
        outside: Sequence[bool],
    ) -> None:
        """Add one request's instances (``outside``: the guard would flag them)."""
        if self._waiting:
            self._observe_waiting()
        self._observe(principal, rows, labels, outside)

    def _observe_waiting(self) -> None:
        """Observe the deferred requests, those of one principal as one request.

        A principal's requests are merged only when their rows share a dtype (the bound
        is compared in the rows' own precision) and all have labels or none does;
        otherwise they are observed one by one, in order. Principals are taken in the
        order of their last request, so the least recently seen stays first.
        """
        waiting, self._waiting = self._waiting, []
        by_principal: dict[str, list[_Observation]] = {}
        for item in waiting:
            items = by_principal.pop(item[0], None) or []  # re-inserted: after the others
            items.append(item)
            by_principal[item[0]] = items
        for principal, items in by_principal.items():
            if len(items) == 1 or not _mergeable(items):
                for item in items:
                    self._observe_logged(item)
                continue
            merged: list[Any] | None = None
            if items[0][2] is not None:
                merged = [label for item in items for label in cast("Sequence[Any]", item[2])]
            rows = np.concatenate([item[1] for item in items])
            self._observe_logged((principal, rows, merged, [f for item in items for f in item[3]]))

    def _observe_logged(self, observation: _Observation) -> None:
        """:meth:`_observe`, a failure logged: it must not reach whoever reads next.

        Deferred observations run in a loop callback or in another request's reader (its
        ``block`` check, the admin route, ``/metrics``), which did not cause them; the
        other principals' observations go on.
        """
        try:
            self._observe(*observation)
        except Exception:  # noqa: BLE001 - logged with its traceback; the caller is someone else
            get_logger().exception("extraction detection failed", model=self.model)

    def _observe(
        self,
        principal: str,
        rows: npt.NDArray[np.float64],
        labels: Sequence[Hashable] | None,
        outside: Sequence[bool],
    ) -> None:
        track = self._track(principal)
        count = len(rows)
        track.queries += count
        _record(track, outside)
        self._count_minute(track, count)
        ids = self._label_ids(labels, count)
        add = self._add
        if _all_usable(rows):  # the common case: no verdict per row
            vectors = _float32(rows)
            for i in range(count):
                add(track, vectors[i], ids[i])
        else:
            # values float32 cannot square (or not numbers at all) say nothing about
            # distances; their rows are left out (and their cast may overflow: no warning)
            usable = cast("list[bool]", (np.abs(rows) < _HUGE).all(axis=1).tolist())
            with np.errstate(over="ignore"):
                vectors = _float32(rows)
            for i in range(count):
                if usable[i]:
                    add(track, vectors[i], ids[i])
        tested = len(track.distances)
        # a new test every tenth of min_queries new distances, or of the distances held
        if track.since_test >= self._retest and tested >= self.settings.min_queries:
            every = max(self._retest, math.floor(tested * _RETEST_SHARE))
            if track.since_test >= every:
                track.since_test = 0
                track.statistic = _shapiro(track.distances)
        if not track.suspected:  # a suspect stays one until cleared
            self._judge(principal, track)

    def _add(self, track: _Track, vector: npt.NDArray[np.float32], label: int) -> None:
        data = vector.tobytes()
        key = data if self._raw_keys else hashlib.blake2b(data, digest_size=16).digest()
        size = track.size
        norm = float(vector.dot(vector))
        seen = track.seen
        if size and key not in seen:  # an exact repeat says nothing
            squared = self._nearest(track, vector, norm, label)
            if squared is not None:
                distance = math.sqrt(max(squared, 0.0))
                track.distances.append(math.log(max(distance, _TINY)))
                track.since_test += 1
        history_len = self._history
        if size < history_len:
            if size == len(track.vectors):
                _grow(track, min(2 * size, history_len))
            slot = size
            track.size += 1
            track.hashes.append(key)
        else:  # full: the oldest query leaves
            slot = track.next
            track.next = (slot + 1) % history_len
            _forget(seen, track.hashes[slot])
            track.hashes[slot] = key
        seen[key] = seen.get(key, 0) + 1
        track.vectors[slot] = vector
        track.norms[slot] = norm
        track.labels[slot] = label

    def _nearest(
        self, track: _Track, vector: npt.NDArray[np.float32], norm: float, label: int
    ) -> float | None:
        """The smallest squared distance to an earlier query with ``label`` (None: none has).

        ``|h - x|^2 = |h|^2 + |x|^2 - 2 h.x``, one matrix-vector product for all ``h``,
        in float32, in this order and over the whole history as it lies (so the same
        numbers, to the last bit: a product over part of it may round differently).
        Then the nearest of all: when it has the same label, as a natural query's
        nearest neighbour mostly has, it is the answer; else it is set aside and the
        next nearest tried, a few times, before the other labels are masked out. When
        the history may well hold none with this label (it is short, or there are many
        labels), that is asked first.
        """
        size = track.size
        if size == len(self._dots):  # full: no views to make
            held, norms, vectors = track.labels, track.norms, track.vectors
            dots, squared = self._dots, self._squared
        else:
            held, norms, vectors = track.labels[:size], track.norms[:size], track.vectors[:size]
            dots, squared = self._dots[:size], self._squared[:size]
        other = None
        if size < _SHORT_PER_LABEL * len(self._labels):
            other = held != label
            if np.count_nonzero(other) == size:
                return None
        np.matmul(vectors, vector, out=dots)
        np.multiply(dots, 2.0, out=dots)
        np.add(norms, norm, out=squared)
        np.subtract(squared, dots, out=squared)
        best = int(squared.argmin())
        if held[best] == label:  # nothing with this label is nearer
            return float(squared[best])
        if other is None:  # (when it is known, masking costs less than trying)
            for _ in range(_NEAREST_TRIES):
                squared[best] = np.inf  # another label's: set aside
                best = int(squared.argmin())
                if held[best] == label:
                    return float(squared[best])
            other = held != label
            if np.count_nonzero(other) == size:
                return None
        np.putmask(squared, other, np.inf)  # the others never win
        return float(np.minimum.reduce(squared))

    def _count_minute(self, track: _Track, count: int) -> None:
        """The usual rate: an average over the minutes in which the principal sent anything."""
        minute = int(self._clock() // 60)
        if minute != track.minute:
            if track.minute >= 0:
                track.usual = track.usual * (1 - _EWMA) + _EWMA * track.this_minute
                track.minutes_seen += 1
            track.minute, track.this_minute = minute, 0
        track.this_minute += count

    def _label_ids(self, labels: Sequence[Hashable] | None, count: int) -> list[int]:
        if labels is None:
            return [0] * count
        ids = []
        for label in labels:
            known = self._labels.get(label)
            if known is None:
                known = len(self._labels) if len(self._labels) < _MAX_LABELS else -1
                if known >= 0:
                    self._labels[label] = known
            ids.append(known)
        return ids

    def _track(self, principal: str) -> _Track:
        track = self._tracks.get(principal)
        if track is None:
            handle = self._handle_of(principal)
            old = None
            if len(self._tracks) >= self.settings.max_principals:
                old = self._drop_one()
            if old is None or not old.renew(handle):  # a dropped track's storage, if small
                old = _Track(self.width, self._history, handle)
            track = self._tracks[principal] = old
            self._handles[handle] = principal
        else:
            self._tracks.move_to_end(principal)
        return track

    def _handle_of(self, principal: str) -> str:
        """``handle_of(self.model, principal)``, from the model's part hashed once."""
        digest = self._handle_prefix.copy()
        digest.update(principal.encode())
        return base64.urlsafe_b64encode(digest.digest()[:16]).decode().rstrip("=")

    def _drop_one(self) -> _Track:
        """Forget the least recently seen principal that is not suspect; its track.

        A suspect stays until cleared; only when every tracked principal is one does the
        oldest go.
        """
        victim = next(iter(self._tracks))  # if every one is a suspect
        for principal, track in self._tracks.items():
            if not track.suspected:
                victim = principal
                break
        old = self._tracks.pop(victim)
        del self._handles[old.handle]
        self.dropped += 1
        return old

    def touch(self, principal: str) -> None:
        """``principal`` was seen (a refused request too): it is the most recent now."""
        self._observe_waiting()
        if principal in self._tracks:
            self._tracks.move_to_end(principal)

    # ----------------------------------------------------------------------- judging

    def _judge(self, principal: str, track: _Track) -> None:
        """Suspect ``track`` if a signal says so (``_share`` and ``_ratio``, inline)."""
        settings = self.settings
        statistic, held = track.statistic, len(track.ood)
        reasons = []
        if statistic is not None and statistic < settings.threshold:
            reasons.append("prada")
        if held >= settings.min_queries and track.ood_count / held >= settings.max_ood_share:
            reasons.append("coverage")
        if (
            track.minutes_seen >= _VOLUME_WARM_UP_MIN
            and track.this_minute / max(track.usual, self._rate_floor) >= settings.max_rate_ratio
        ):
            reasons.append("volume")
        if reasons and not track.suspected:
            track.suspected, track.reasons = True, tuple(reasons)
            self._on_suspect(principal, self._stats(principal, track))

    def suspected(self, principal: str) -> bool:
        """Whether ``principal`` is suspect now (until an admin clears it)."""
        if self._waiting:
            self._observe_waiting()
        track = self._tracks.get(principal)
        return track is not None and track.suspected

    def clear(self, handle: str) -> str | None:
        """Forget what made the principal of ``handle`` suspect; its id, or None if unknown."""
        self._observe_waiting()
        principal = self._handles.get(handle)
        if principal is not None:
            self.forget(principal)
        return principal

    def forget(self, principal: str) -> None:
        """Start ``principal`` afresh (same handle): its history and statistics are gone."""
        self._observe_waiting()
        track = self._tracks.get(principal)
        if track is not None:
            self._tracks[principal] = _Track(self.width, self.settings.history, track.handle)

    def rebind(self, on_suspect: Callable[[str, PrincipalStats], None]) -> None:
        """Report new suspects to ``on_suspect`` (after a reload, the new deployment's)."""
        self._observe_waiting()  # what came before the reload, to the old one
        self._on_suspect = on_suspect

    def principal_of(self, handle: str) -> str | None:
        """The tracked principal of ``handle``, if any."""
        self._observe_waiting()
        return self._handles.get(handle)

    # ----------------------------------------------------------------------- reading

    def page(self, offset: int, limit: int) -> PrincipalPage:
        """Tracked principals, most recently seen first, ``limit`` from ``offset``."""
        self._observe_waiting()
        items = list(reversed(self._tracks.items()))
        chosen = items[offset : offset + limit]
        after = offset + len(chosen)
        return PrincipalPage(
            model=self.model,
            tracked=len(items),
            dropped=self.dropped,
            principals=[self._stats(p, t) for p, t in chosen],
            next_offset=after if after < len(items) else None,
        )

    def lowest_statistic(self) -> float | None:
        """The lowest PRADA statistic among tracked principals (the gauge)."""
        self._observe_waiting()
        values = [t.statistic for t in self._tracks.values() if t.statistic is not None]
        return min(values) if values else None

    def _stats(self, principal: str, track: _Track) -> PrincipalStats:
        share = _share(track, self.settings.min_queries)
        ratio = _ratio(track, self._rate_floor)
        return PrincipalStats(
            handle=track.handle,
            principal=principal,
            queries=track.queries,
            prada=None if track.statistic is None else round(track.statistic, 4),
            ood_share=None if share is None else round(share, 4),
            rate_ratio=None if ratio is None else round(ratio, 2),
            suspected=track.suspected,
            reasons=list(track.reasons),
        )


def handle_of(model: str, principal: str) -> str:
    """The opaque name of ``principal`` on the admin route.

    The same on every replica (a clear anywhere reaches the shared mark), with no ``/``
    and no personal data to put in a URL.
    """
    digest = hashlib.sha256(f"{_HANDLE_SALT}\0{model}\0{principal}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


def _mergeable(items: list[_Observation]) -> bool:
    """Whether requests can be observed as one: rows of one dtype, labels all or none."""
    dtype, labelled = items[0][1].dtype, items[0][2] is not None
    return all(
        rows.dtype == dtype and (labels is not None) == labelled for _, rows, labels, _ in items
    )


def _forget(seen: dict[bytes, int], key: bytes) -> None:
    left = seen[key] - 1
    if left:
        seen[key] = left
    else:
        del seen[key]


def _grow(track: _Track, rows: int) -> None:
    size = track.size
    for name in ("vectors", "norms", "labels"):
        old = getattr(track, name)
        new = np.empty((rows, *old.shape[1:]), dtype=old.dtype)
        new[:size] = old[:size]
        setattr(track, name, new)


def _shapiro(distances: deque[float]) -> float | None:
    """Shapiro-Wilk W of the most recent distances (None with fewer than 3)."""
    values = np.fromiter(distances, dtype=np.float64, count=len(distances))[-_MAX_TESTED:]
    if len(values) < 3:  # noqa: PLR2004 - the test's own minimum
        return None
    if not np.isfinite(values).all():  # never so far (logs of finite distances): no pass
        return 0.0
    low, high = np.quantile(values, (_CLIP_SHARE, 1 - _CLIP_SHARE))
    values = np.clip(values, low, high)
    if np.ptp(values) == 0:  # all alike: as far from normal as distances get
        return 0.0
    statistic = shapiro_w(values)
    return statistic if math.isfinite(statistic) else 0.0  # no verdict is not a pass


def _all_usable(rows: npt.NDArray[np.float64]) -> bool:
    """Whether every value is a number float32 can square (``|x| < 1e15``: not NaN or inf).

    The bound is compared in the rows' own precision (in float32, 1e15 rounds down).
    For float64 rows one sum settles the common case: a few values summed in Python,
    more by one dot product (numpy's call overhead would be most of the cost of more
    calls). A sum of magnitudes below the bound, or of squares below its square (less
    1 %, far more than the rounding), puts every value below it; NaN, inf or an overflow
    fails it; a sum above is settled value by value.
    """
    if rows.dtype == np.float64:
        if rows.size <= _FEW_VALUES:
            if sum(map(abs, rows.ravel().tolist())) < _HUGE:
                return True
        elif np.vdot(rows, rows) < _SAFE_SQUARES:  # vdot: no warning when it overflows
            return True
    elif rows.size and np.maximum.reduce(np.abs(rows), axis=None) < _HUGE:
        return True
    return bool((np.abs(rows) < _HUGE).all())


def _float32(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """``rows`` as float32: themselves when they already are (C order), else a copy."""
    if rows.dtype == np.float32 and rows.flags.c_contiguous:
        return cast("npt.NDArray[np.float32]", rows)
    return rows.astype(np.float32)


def _emptied(values: deque[_T]) -> deque[_T]:
    """``values`` emptied: in place if short, else a new deque in its stead.

    Popping a short deque leaves it as it was new (one block); ``clear()`` would allocate
    a block and keep the old one for reuse, memory no bound here counts.
    """
    if len(values) > _SHORT_DEQUE:
        return deque(maxlen=values.maxlen)
    while values:
        values.pop()
    return values


def _record(track: _Track, outside: Sequence[bool]) -> None:
    """Append the guard's verdicts, keeping ``ood_count`` equal to ``sum(ood)``."""
    flags = track.ood
    for flag in outside:
        if len(flags) == flags.maxlen and flags[0]:  # the oldest verdict leaves
            track.ood_count -= 1
        flags.append(flag)
        track.ood_count += flag


def _share(track: _Track, minimum: int) -> float | None:
    held = len(track.ood)
    return track.ood_count / held if held >= minimum else None


def _ratio(track: _Track, floor: float) -> float | None:
    if track.minutes_seen < _VOLUME_WARM_UP_MIN:
        return None
    return track.this_minute / max(track.usual, floor)
