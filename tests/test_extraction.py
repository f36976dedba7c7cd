"""secureserve.extraction: noticing a principal that queries to copy the model."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import tracemalloc
import warnings
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np
import pytest
from app_helpers import asgi_client, bearer
from defense_helpers import PREDICT, audit_lines, digits_app, digits_rows, digits_settings

from secureserve.extraction import ExtractionMonitor, PrincipalStats, handle_of
from secureserve.keys import mint_key
from secureserve.settings import ExtractionSettings
from secureserve.shapiro import shapiro_w


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def monitor(clock: Clock | None = None, **settings: Any) -> tuple[ExtractionMonitor, list[Any]]:
    suspects: list[tuple[str, PrincipalStats]] = []
    extraction = ExtractionMonitor(
        ExtractionSettings(**settings),
        width=64,
        model="digits",
        on_suspect=lambda p, s: suspects.append((p, s)),
        clock=clock or Clock(),
    )
    return extraction, suspects


def labels_of(rows: np.ndarray) -> list[int]:
    """A stand-in for the model's label: which third of the ink total a row has."""
    return [int(total // 300) for total in rows.sum(axis=1)]


def send(extraction: ExtractionMonitor, rows: np.ndarray, *, who: str = "p", step: int = 8) -> int:
    """Queries in small requests; how many were sent when ``who`` became suspect (else -1)."""
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        extraction.observe(who, part, labels_of(part), [False] * len(part))
        if extraction.suspected(who):
            return start + len(part)
    return -1


@pytest.mark.parametrize("seed", range(5))
def test_benign_traffic_replaying_real_images_is_not_suspected(seed):
    """Real images, each once, in a random order: 1,000 queries, no flag."""
    data = digits_rows()
    rows = data[np.random.default_rng(seed).permutation(len(data))][:1000]
    extraction, suspects = monitor()
    assert send(extraction, rows) == -1
    assert suspects == []
    (stats,) = extraction.page(0, 10).principals
    assert stats.prada is not None
    assert stats.prada >= ExtractionSettings().threshold


def test_perturbed_seeds_are_suspected_by_prada_before_500_queries():
    rng = np.random.default_rng(7)
    seeds = digits_rows()[:10]
    rows = np.clip(seeds[rng.integers(0, 10, 1000)] + rng.normal(0, 0.5, (1000, 64)), 0, 16)
    extraction, suspects = monitor()
    assert 0 < send(extraction, rows) <= 500
    ((who, stats),) = suspects
    assert who == "p"
    assert "prada" in stats.reasons
    assert stats.prada is not None
    assert stats.prada < ExtractionSettings().threshold


def test_a_share_of_out_of_distribution_queries_is_suspected():
    extraction, suspects = monitor(min_queries=40)
    rows = digits_rows()[:100]
    for start in range(0, 100, 10):
        outside = [i % 2 == 0 for i in range(10)]  # half of them unlike the profile
        part = rows[start : start + 10]
        extraction.observe("p", part, labels_of(part), outside)
    ((_, stats),) = suspects
    assert stats.reasons == ["coverage"]
    assert stats.ood_share == 0.5


def test_a_burst_far_above_the_usual_rate_is_suspected():
    clock = Clock()
    extraction, suspects = monitor(clock, max_rate_ratio=20)
    rows = digits_rows()
    for minute in range(12):  # a dozen quiet minutes: 5 queries each
        clock.now += 60
        extraction.observe("p", rows[minute * 5 : minute * 5 + 5], None, [False] * 5)
    assert suspects == []
    clock.now += 60
    extraction.observe("p", rows[100:300], None, [False] * 200)
    ((_, stats),) = suspects
    assert "volume" in stats.reasons
    assert stats.rate_ratio is not None
    assert stats.rate_ratio >= 20


def test_exact_repeats_are_not_distances():
    extraction, _ = monitor()
    row = digits_rows()[:1]
    for _ in range(50):
        extraction.observe("p", row, [1], [False])
    (stats,) = extraction.page(0, 1).principals
    assert stats.queries == 50
    track = extraction._tracks["p"]
    assert len(track.distances) == 0


def test_the_history_and_the_principals_are_bounded():
    """10,000 distinct principals: at most max_principals tracked, the rest dropped."""
    extraction, _ = monitor(history=200, max_principals=1000)
    rows = digits_rows()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(10_000):
        extraction.observe(f"caller-{i}", rows[i % 1400 : i % 1400 + 3], [0, 1, 2], [False] * 3)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    page = extraction.page(0, 5)
    assert page.tracked == 1000
    assert page.dropped == 9000
    assert len(extraction._handles) == 1000
    assert grown < 64 * 1024 * 1024  # measured: ~30 MB for 1,000 principals of 3 queries
    one = extraction._tracks["caller-9999"]
    for _ in range(100):  # one principal past its history: the ring holds
        extraction.observe("caller-9999", rows[:8], list(range(8)), [False] * 8)
    assert one.size == 200
    assert len(one.hashes) == 200
    assert len(one.distances) <= 200


def test_clear_forgets_and_handles_are_opaque():
    extraction, _ = monitor(min_queries=20)
    rows = digits_rows()[:40]
    extraction.observe("jwt:user/with/slashes", rows, None, [True] * 40)
    assert extraction.suspected("jwt:user/with/slashes")
    (stats,) = extraction.page(0, 10).principals
    assert "/" not in stats.handle
    assert extraction.clear("no-such-handle") is None
    assert extraction.clear(stats.handle) == "jwt:user/with/slashes"
    assert not extraction.suspected("jwt:user/with/slashes")
    assert extraction.page(0, 10).principals[0].handle == stats.handle


# --------------------------------------------------------------------------- over HTTP

ADMIN = mint_key(name="admin", roles=("admin",))
THIEF = mint_key(name="thief", roles=("predict",))
OTHER = mint_key(name="other", roles=("predict",))
METRICS = mint_key(name="metrics", roles=("metrics",))
PRINCIPALS = "/v1/models/digits/principals"
NOISE = np.random.default_rng(0).uniform(0, 16, (40, 64)).round()


def _noise_body(start: int = 0) -> dict[str, Any]:
    return {"instances": [{"pixels": row.tolist()} for row in NOISE[start : start + 20]]}


def _served(action: str, **extra: Any) -> tuple[Any, Any]:
    settings = digits_settings(extraction={"action": action, "min_queries": 20, **extra})
    return settings, digits_app(settings, ADMIN, THIEF, OTHER, METRICS)


def test_flag_records_lists_and_clears_over_http():
    settings, app = _served("flag")
    with asgi_client(app) as client:
        first = client.post(PREDICT, json=_noise_body(), headers=bearer(THIEF))
        again = client.post(PREDICT, json=_noise_body(20), headers=bearer(THIEF))
        page = client.get(PRINCIPALS, headers=bearer(ADMIN)).json()
        denied = client.get(PRINCIPALS, headers=bearer(THIEF))
        (entry,) = [p for p in page["principals"] if p["suspected"]]
        cleared = client.post(f"{PRINCIPALS}/{entry['handle']}:clear", headers=bearer(ADMIN))
        unknown = client.post(f"{PRINCIPALS}/nope:clear", headers=bearer(ADMIN))
        after = client.get(PRINCIPALS, headers=bearer(ADMIN)).json()
        metrics = client.get("/metrics", headers=bearer(METRICS)).text
    assert (first.status_code, again.status_code) == (200, 200)  # flag serves on
    assert entry["principal"] == THIEF.record.id
    assert "coverage" in entry["reasons"]
    assert denied.status_code == 403
    assert cleared.status_code == 200
    assert unknown.status_code == 404
    assert not any(p["suspected"] for p in after["principals"])
    assert 'secureserve_extraction_flags_total{model="digits"} 1.0' in metrics
    assert THIEF.record.id not in metrics  # no label per principal
    actions = [r for r in audit_lines(settings) if r.get("action", "").startswith("extraction")]
    assert [r["action"] for r in actions] == ["extraction-suspected", "extraction-cleared"]
    assert actions[0]["principal"] == THIEF.record.id
    assert actions[1]["principal"] == ADMIN.record.id


def test_block_refuses_the_suspect_until_cleared():
    _, app = _served("block")
    with asgi_client(app) as client:
        client.post(PREDICT, json=_noise_body(), headers=bearer(THIEF)).raise_for_status()
        blocked = client.post(PREDICT, json=_noise_body(), headers=bearer(THIEF))
        bystander = client.post(PREDICT, json=_noise_body(), headers=bearer(OTHER))
        tracked = client.get(PRINCIPALS, headers=bearer(ADMIN)).json()["principals"]
        handle = next(p["handle"] for p in tracked if p["principal"] == THIEF.record.id)
        client.post(f"{PRINCIPALS}/{handle}:clear", headers=bearer(ADMIN)).raise_for_status()
        unblocked = client.post(PREDICT, json=_noise_body(), headers=bearer(THIEF))
    assert blocked.status_code == 403
    assert blocked.json()["type"].endswith("suspected-extraction")
    assert bystander.status_code == 200
    assert unblocked.status_code == 200


def test_throttle_limits_the_suspect_to_the_throttle_rate():
    _, app = _served("throttle", throttle_rate="20/minute")
    with asgi_client(app) as client:
        client.post(PREDICT, json=_noise_body(), headers=bearer(THIEF)).raise_for_status()
        within = client.post(
            PREDICT, json={"instances": _noise_body()["instances"][:5]}, headers=bearer(THIEF)
        )
        beyond = client.post(PREDICT, json=_noise_body(), headers=bearer(THIEF))
        bystander = client.post(PREDICT, json=_noise_body(), headers=bearer(OTHER))
    assert within.status_code == 200
    assert beyond.status_code == 429
    assert "Retry-After" in beyond.headers
    assert bystander.status_code == 200


@pytest.fixture
def redis_block_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Digits settings with ``action = "block"`` and limits (and marks) in the shared Redis.

    A fresh key prefix, deleted afterwards; replicas read the mark on every request.
    """
    import redis
    from server_helpers import HOST, need_redis, redis_answers

    import secureserve.defenses as defenses_module

    if not redis_answers(6379):
        need_redis(f"no Redis answers on {HOST}:6379")
    monkeypatch.setattr(defenses_module, "SHARED_READ_S", 0.0)
    prefix = f"sstest-{secrets.token_hex(6)}"
    settings = digits_settings(extraction={"action": "block", "min_queries": 20})
    limits = msgspec.structs.replace(
        settings.limits, storage=f"redis://{HOST}:6379/0", key_prefix=prefix
    )
    try:
        yield msgspec.structs.replace(settings, limits=limits)
    finally:
        client = redis.Redis(host=HOST, port=6379, db=0, socket_timeout=2)
        names = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if names:
            client.delete(*names)
        client.close()


def another_replica(settings: Any, name: str, *keys: Any) -> Any:
    """The same settings with its own audit file: a second process of the same model."""
    audit = msgspec.structs.replace(settings.audit, path=settings.audit.path.with_name(name))
    return digits_app(msgspec.structs.replace(settings, audit=audit), *keys)


def test_a_block_holds_on_every_replica_sharing_redis_until_cleared(redis_block_settings):
    """Two replicas share only Redis: A suspects and blocks, and B refuses too.

    A clear on A ends it on B. (A replica trusts what it read of the shared mark for
    SHARED_READ_S, set to 0 here.)
    """
    settings = redis_block_settings
    replica_a = digits_app(settings, ADMIN, THIEF, OTHER)
    replica_b = another_replica(settings, "audit-b.jsonl", ADMIN, THIEF, OTHER)
    with asgi_client(replica_a) as a, asgi_client(replica_b) as b:
        assert a.post(PREDICT, json=_noise_body(), headers=bearer(THIEF)).status_code == 200
        time.sleep(0.2)  # the mark is written by a task after the answer
        on_a = a.post(PREDICT, json=_noise_body(), headers=bearer(THIEF))
        on_b = b.post(PREDICT, json=_noise_body(), headers=bearer(THIEF))
        bystander = b.post(PREDICT, json=_noise_body(20), headers=bearer(OTHER))
        # B never saw the thief's queries: clear on A, see it end on B
        tracked = a.get(PRINCIPALS, headers=bearer(ADMIN)).json()["principals"]
        handle = next(p["handle"] for p in tracked if p["principal"] == THIEF.record.id)
        a.post(f"{PRINCIPALS}/{handle}:clear", headers=bearer(ADMIN)).raise_for_status()
        after_b = b.post(PREDICT, json=_noise_body(20), headers=bearer(THIEF))
    assert on_a.status_code == 403
    assert on_b.status_code == 403  # the block holds on the replica that saw nothing
    assert bystander.status_code == 200  # other principals are judged on their own
    assert after_b.status_code == 200


def test_the_coverage_count_follows_the_window():
    """The running count of guard verdicts equals their sum as old ones leave."""
    extraction, _ = monitor(history=50, min_queries=20, max_ood_share=0.99)
    rows = digits_rows()
    for start in range(0, 120, 10):
        outside = [(start + i) % 3 == 0 for i in range(10)]
        extraction.observe("p", rows[start : start + 10], None, outside)
    track = extraction._tracks["p"]
    assert len(track.ood) == 50
    assert track.ood_count == sum(track.ood)


def test_one_near_duplicate_does_not_flag_a_benign_caller():
    """A tiny distance (one pixel moved by 0.1) is clipped, not a verdict."""
    data = digits_rows()
    rows = data[np.random.default_rng(3).permutation(len(data))][:1000]
    twin = rows[10].copy()
    twin[20] += 0.1
    rows = np.vstack([rows[:500], twin[None, :], rows[500:]])
    extraction, suspects = monitor()
    assert send(extraction, rows) == -1
    assert suspects == []


def test_values_float32_cannot_square_are_left_out_of_the_distances():
    rng = np.random.default_rng(7)
    seeds = digits_rows()[:10]
    poison = np.full((1, 64), 1e20)
    rows = np.clip(seeds[rng.integers(0, 10, 1000)] + rng.normal(0, 0.5, (1000, 64)), 0, 16)
    extraction, _ = monitor()
    extraction.observe("p", poison, [0], [False])
    extraction.observe("p", np.array([[np.nan] * 64]), [0], [False])
    assert 0 < send(extraction, rows) <= 500  # PRADA still works
    assert all(np.isfinite(extraction._tracks["p"].distances))


def test_one_full_request_after_idle_minutes_is_not_a_burst():
    clock = Clock()
    extraction, suspects = monitor(clock)
    extraction.observe("p", digits_rows()[:1], None, [False])
    clock.now += 11 * 60  # eleven quiet minutes count as one active one
    extraction.observe("p", digits_rows()[1:33], None, [False] * 32)
    assert suspects == []


def test_a_suspect_is_never_dropped_to_make_room():
    extraction, _ = monitor(min_queries=20, max_principals=3)
    extraction.observe("thief", digits_rows()[:20], None, [True] * 20)
    assert extraction.suspected("thief")
    for i in range(5):
        extraction.observe(f"caller-{i}", digits_rows()[:1], None, [False])
    assert extraction.suspected("thief")
    assert extraction.dropped == 3


def test_handles_are_the_same_everywhere_and_name_no_one():
    from secureserve.extraction import handle_of

    handle = handle_of("digits", "jwt:alice@example.com/x")
    assert handle == handle_of("digits", "jwt:alice@example.com/x")
    assert handle != handle_of("iris", "jwt:alice@example.com/x")
    assert "/" not in handle
    assert "alice" not in handle


def test_explanations_go_through_the_same_defenses_as_predictions():
    """A blocked principal cannot explain; a guard that refuses refuses explanations."""
    explainer = mint_key(name="explainer", roles=("predict", "explain"))
    settings = digits_settings(extraction={"action": "block", "min_queries": 20})
    app = digits_app(settings, explainer, ADMIN)
    with asgi_client(app) as client:
        client.post(PREDICT, json=_noise_body(), headers=bearer(explainer)).raise_for_status()
        explain = client.post(
            "/v1/models/digits:explain",
            json={"instances": _noise_body()["instances"][:2]},
            headers=bearer(explainer),
        )
    assert explain.status_code == 403
    assert explain.json()["type"].endswith("suspected-extraction")
    guarded = digits_settings(guard={"mode": "refuse"}, extraction={"action": "off"})
    with asgi_client(digits_app(guarded, explainer)) as client:
        refused = client.post(
            "/v1/models/digits:explain",
            json={"instances": _noise_body()["instances"][:2]},
            headers=bearer(explainer),
        )
    assert refused.status_code == 422
    assert refused.json()["type"].endswith("out-of-distribution")


def test_a_page_offset_must_be_plain_digits():
    _, app = _served("flag")
    with asgi_client(app, ADMIN) as client:
        assert client.get(PRINCIPALS, params={"offset": "²"}).status_code == 422
        assert client.get(PRINCIPALS, params={"limit": "1001"}).status_code == 422
        assert client.get(PRINCIPALS, params={"offset": "0", "limit": "5"}).status_code == 200


def test_a_block_survives_a_restart_and_any_replica_can_clear_it(redis_block_settings):
    """The mark outlives the replica that set it; the handle is the same everywhere."""
    from secureserve.extraction import handle_of

    settings = redis_block_settings
    with asgi_client(digits_app(settings, ADMIN, THIEF)) as first:
        first.post(PREDICT, json=_noise_body(), headers=bearer(THIEF)).raise_for_status()
        time.sleep(0.2)
    restarted = another_replica(settings, "audit-restarted.jsonl", ADMIN, THIEF)
    with asgi_client(restarted) as again:
        still = again.post(PREDICT, json=_noise_body(20), headers=bearer(THIEF))
        page = again.get(PRINCIPALS, headers=bearer(ADMIN)).json()
        handle = handle_of("digits", THIEF.record.id)
        cleared = again.post(f"{PRINCIPALS}/{handle}:clear", headers=bearer(ADMIN))
        after = again.post(PREDICT, json=_noise_body(20), headers=bearer(THIEF))
    assert still.status_code == 403
    assert page["tracked"] == 0  # the restarted replica never saw the thief
    assert cleared.status_code == 200
    assert after.status_code == 200


# --------------------------------------------------------------------------- reference


class ReferenceTrack:
    """One principal's PRADA distances, signals and verdict, computed the plain way.

    Per query: left out of the distances if any value is NaN, infinite or at least 1e15
    in size (compared in the request's precision); else cast to float32 (the request at
    once: a Fortran-ordered one gives strided rows) and, unless its bytes repeat a query
    held, compared with every query held that got the same label (``|h|^2 + |x|^2 -
    2 h.x`` in float32, over the history in the order it is kept: slots filled in turn,
    then a ring whose oldest slot is replaced). The log of the smallest distance (at
    least 1e-9) is kept. Shapiro-Wilk of the last 5,000, clipped at the 1st and 99th
    percentiles, every tenth of ``min_queries`` new distances or of those held. Suspect
    when W is below ``threshold``, when the guard's share of the last ``history``
    queries reaches ``max_ood_share`` (after ``min_queries``), or when this minute's
    instances reach ``max_rate_ratio`` times the usual rate (an average over active
    minutes, never below ``min_queries / 10``, after 10 of them).
    """

    def __init__(self, settings: ExtractionSettings, width: int) -> None:
        self.settings = settings
        self.vectors = np.zeros((settings.history, width), dtype=np.float32)
        self.norms = np.zeros(settings.history, dtype=np.float32)
        self.labels = np.zeros(settings.history, dtype=np.int64)
        self.keys: list[bytes] = []
        self.next = 0
        self.distances: list[float] = []
        self.since_test = 0
        self.statistic: float | None = None
        self.ood: list[bool] = []
        self.queries = 0
        self.minute, self.this_minute, self.usual, self.minutes_seen = -1, 0, 0.0, 0
        self.signals: set[str] = set()  # those met now
        self.reasons: tuple[str, ...] = ()

    def observe(self, rows: np.ndarray, labels: list[int], outside: list[bool], now: float):
        """One request: ``labels`` are the answers' group ids."""
        settings = self.settings
        self.queries += len(rows)
        self.ood = (self.ood + outside)[-settings.history :]
        minute = int(now // 60)
        if minute != self.minute:
            if self.minute >= 0:
                self.usual = self.usual * 0.9 + 0.1 * self.this_minute
                self.minutes_seen += 1
            self.minute, self.this_minute = minute, 0
        self.this_minute += len(rows)
        with np.errstate(over="ignore"):  # the rows left out may not fit in float32
            vectors = rows.astype(np.float32)
        for row, vector, label in zip(rows, vectors, labels, strict=True):
            if (np.abs(row) < 1e15).all():  # in the row's precision
                self.add(vector, label)
        tested = len(self.distances)
        every = max(settings.min_queries // 10, tested // 10, 1)
        if self.since_test >= every and tested >= settings.min_queries:
            self.since_test = 0
            self.statistic = self.shapiro()
        reasons = []
        if self.statistic is not None and self.statistic < settings.threshold:
            reasons.append("prada")
        held = len(self.ood)
        if held >= settings.min_queries and sum(self.ood) / held >= settings.max_ood_share:
            reasons.append("coverage")
        usual = max(self.usual, settings.min_queries / 10)
        if self.minutes_seen >= 10 and self.this_minute / usual >= settings.max_rate_ratio:
            reasons.append("volume")
        self.signals = set(reasons)
        if reasons and not self.reasons:
            self.reasons = tuple(reasons)

    def add(self, vector: np.ndarray, label: int) -> None:
        size, key = len(self.keys), vector.tobytes()
        norm = float(vector @ vector)
        if key not in self.keys:
            same = self.labels[:size] == label
            if same.any():
                squared = self.norms[:size] + norm - 2.0 * (self.vectors[:size] @ vector)
                distance = math.sqrt(max(float(squared[same].min()), 0.0))
                self.distances = [*self.distances, math.log(max(distance, 1e-9))]
                self.distances = self.distances[-self.settings.history :]  # the last ones
                self.since_test += 1
        if size < self.settings.history:
            slot = size
            self.keys.append(key)
        else:
            slot, self.next = self.next, (self.next + 1) % size
            self.keys[slot] = key
        self.vectors[slot], self.norms[slot], self.labels[slot] = vector, norm, label

    def shapiro(self) -> float:
        """W of the clipped recent distances (W itself: tests/test_shapiro.py, against scipy)."""
        values = np.array(self.distances[-5000:])
        low, high = np.quantile(values, (0.01, 0.99))
        values = np.clip(values, low, high)
        if np.ptp(values) == 0:
            return 0.0
        statistic = shapiro_w(values)
        return statistic if math.isfinite(statistic) else 0.0


class ReferenceMonitor:
    """Principals tracked in order of their last request, at most ``max_principals``.

    A new one drops the least recently seen that is not suspect (the oldest if all
    are); labels are numbered as they first come (no labels: group 0).
    """

    def __init__(self, settings: ExtractionSettings, width: int) -> None:
        self.settings, self.width = settings, width
        self.tracks: dict[str, ReferenceTrack] = {}
        self.ids: dict[Any, int] = {}
        self.suspects: list[tuple[str, tuple[str, ...]]] = []
        self.signals: set[str] = set()  # every one met at some point

    def observe(self, who: str, rows: np.ndarray, labels: Any, outside: list[bool], now: float):
        if who not in self.tracks and len(self.tracks) >= self.settings.max_principals:
            calm = [p for p, t in self.tracks.items() if not t.reasons]
            del self.tracks[(calm or list(self.tracks))[0]]
        track = self.tracks.pop(who, None) or ReferenceTrack(self.settings, self.width)
        self.tracks[who] = track  # the most recent
        ids = [0] * len(rows)
        if labels is not None:
            ids = [self.ids.setdefault(label, len(self.ids)) for label in labels]
        was = track.reasons
        track.observe(rows, ids, outside, now)
        self.signals |= track.signals
        if track.reasons and not was:
            self.suspects.append((who, track.reasons))


#: Values float32 cannot square, and the largest it can.
ODD = [np.nan, np.inf, -np.inf, 1e15, -1e15, 1e20, 1e300, np.nextafter(1e15, 0)]


def query_stream(
    width: int, seed: int, labels: str
) -> Iterator[tuple[np.ndarray, list[Any] | None, list[bool]]]:
    """Requests of 1-5 instances (one in ten of 32): rows, labels (or None), guard verdicts.

    Natural-looking rows, then perturbations of a few seeds (PRADA's prey); among them
    exact repeats of recent and of long-gone queries, rows that differ only below
    float32 precision (repeats once cast), values float32 cannot square (NaN, inf,
    1e15, 1e20, 1e300), the largest usable one, float32 and Fortran-ordered requests.
    ``labels``: "few" (4, by the first and last value: nearest queries mostly share
    one) or "many" (100, at random).
    """
    rng = np.random.default_rng(seed)
    sent: list[np.ndarray] = []
    seeds = rng.uniform(0, 16, (4, width))
    for n in range(10_000):
        count = 32 if rng.random() < 0.1 else int(rng.integers(1, 6))
        if n < 200:
            rows = rng.uniform(0, 16, (count, width))
        else:
            rows = seeds[rng.integers(0, 4, count)] + rng.normal(0, 0.3, (count, width))
        _spoil(rows, sent, rng)
        sent.extend(rows)
        if rng.random() < 0.05:
            rows = np.asfortranarray(rows)
        elif rng.random() < 0.05:
            with np.errstate(over="ignore"):  # 1e300 becomes inf
                rows = rows.astype(np.float32)
        yield rows, _answers(rows, labels, rng), (rng.random(count) < 0.3).tolist()


def _spoil(rows: np.ndarray, sent: list[np.ndarray], rng: np.random.Generator) -> None:
    """Make some rows repeats (exact, or once cast to float32) or unusable, in place."""
    for i in range(len(rows)):
        draw = rng.random()
        if draw < 0.15 and sent:  # an exact repeat, recent or long gone
            rows[i] = sent[-int(rng.integers(1, min(len(sent), 400) + 1))]
        elif draw < 0.2 and sent:  # the same float32 bytes as an earlier query
            rows[i] = sent[-1] * (1 + 1e-12)
        elif draw < 0.27:  # one query in 14 unusable (or barely usable)
            rows[i, int(rng.integers(0, rows.shape[1]))] = ODD[int(rng.integers(0, len(ODD)))]


def _answers(rows: np.ndarray, labels: str, rng: np.random.Generator) -> list[Any] | None:
    """The labels of a request's answers: few, many, or none at all (one in ten)."""
    if rng.random() < 0.1:
        return None
    if labels == "few":
        return [f"class-{int(r[0] > 8) + 2 * int(r[-1] > 8)}" for r in rows]
    return rng.integers(0, 100, len(rows)).tolist()


@pytest.mark.parametrize("labels", ["few", "many"])
@pytest.mark.parametrize("width", [1, 4, 5, 64])
def test_observe_matches_a_reference_implementation(width, labels):
    """900 requests from two steady principals and one-off ones: the same numbers, bit for bit.

    After every request the tracked principals, and for each its distances, statistic,
    queries, guard share and verdict, equal a plain reimplementation's (the suspects
    too, in the same order), through exact and float32 repeats, unusable values, the
    history's ring turning over many times, principals dropped (and their storage
    reused), labels few and many, minutes passing and suspicions.
    """
    pair = _Paired(width, labels)
    extraction, reference, clock, suspects = (
        pair.extraction,
        pair.reference,
        pair.clock,
        pair.suspects,
    )
    for n in range(900):
        who, rows, answers, outside = pair.next_request(n)
        clock.now += float(pair.pick.uniform(0, 30))
        extraction.observe(who, rows, answers, outside)
        reference.observe(who, rows, answers, outside, clock.now)
        pair.assert_same(n)
    assert extraction.dropped > 50  # one-off principals came and went
    assert {who for who, _ in suspects} >= {"a", "b"}  # the steady ones were caught
    assert reference.signals >= {"prada", "volume"}  # both were met at some point


class _Paired:
    """The monitor and the reference, on the same small settings (drops, suspicions).

    ``next_request(n)`` draws who sends request ``n`` (steady "a" and "b", one-off "c...")
    and what, from that principal's stream of ``query_stream(width, ..., labels)``.
    """

    def __init__(self, width: int, labels: str) -> None:
        self._streams = {
            who: query_stream(width, seed, labels) for seed, who in enumerate(("a", "b", "c"))
        }
        self.pick = np.random.default_rng(width)
        self.settings = ExtractionSettings(
            history=80, min_queries=20, max_ood_share=0.99, max_rate_ratio=1.5, max_principals=3
        )
        self.clock = Clock()
        self.suspects: list[tuple[str, tuple[str, ...]]] = []
        self.extraction = ExtractionMonitor(
            self.settings,
            width=width,
            model="m",
            on_suspect=lambda p, s: self.suspects.append((p, tuple(s.reasons))),
            clock=self.clock,
        )
        self.reference = ReferenceMonitor(self.settings, width)

    def next_request(self, n: object) -> tuple[str, np.ndarray, Any, list[bool]]:
        draw = self.pick.random()
        who = "a" if draw < 0.45 else "b" if draw < 0.9 else f"c{n}"  # c...: one request
        rows, answers, outside = next(self._streams[who[0]])
        return who, rows, answers, outside

    def assert_same(self, n: int) -> None:
        """The tracked principals, each one's numbers and the suspects are the reference's."""
        extraction, reference, history = self.extraction, self.reference, self.settings.history
        assert list(extraction._tracks) == list(reference.tracks), n
        for name, expected in reference.tracks.items():
            track = extraction._tracks[name]
            assert list(track.distances) == expected.distances, n
            assert track.statistic == expected.statistic, n
            assert track.queries == expected.queries
            assert track.ood_count == sum(expected.ood)
            assert track.reasons == expected.reasons, n
            assert track.size == min(len(expected.keys), history)
            assert len(track.seen) <= track.size == len(track.hashes) <= history
        assert self.suspects == reference.suspects, n


def _merged(requests: list[tuple[str, Any, Any, list[bool]]]) -> list[tuple[str, Any, Any, Any]]:
    """One iteration's requests as the monitor observes them.

    Per principal, in the order of their last request: all as one request when their rows
    share a dtype and all or none have labels, else one by one.
    """
    by_principal: dict[str, list[tuple[str, Any, Any, list[bool]]]] = {}
    for request in requests:
        by_principal[request[0]] = [*by_principal.pop(request[0], []), request]
    observed: list[tuple[str, Any, Any, Any]] = []
    for who, mine in by_principal.items():
        labelled = {answers is not None for _, _, answers, _ in mine}
        if len(mine) > 1 and len({rows.dtype for _, rows, _, _ in mine}) == 1 == len(labelled):
            answers = [a for _, _, some, _ in mine for a in some] if labelled == {True} else None
            rows = np.concatenate([rows for _, rows, _, _ in mine])
            observed.append((who, rows, answers, [f for _, _, _, flags in mine for f in flags]))
        else:
            observed += mine
    return observed


@pytest.mark.parametrize("width", [1, 5])
def test_deferred_requests_are_observed_together_at_the_end_of_the_iteration(width):
    """Requests deferred in one loop iteration: as the reference observes them merged.

    Each principal's requests of an iteration as one (mixed dtypes or labelled-ness one
    by one), bit for bit, with principals dropped and suspected on the way.
    """
    pair = _Paired(width, "few")
    extraction, reference, clock, suspects = (
        pair.extraction,
        pair.reference,
        pair.clock,
        pair.suspects,
    )

    async def iterations() -> None:
        loop = asyncio.get_running_loop()
        merged = 0
        for n in range(300):
            requests = []
            for k in range(int(pair.pick.integers(1, 9))):
                who, rows, answers, outside = pair.next_request(f"{n}.{k}")
                requests.append((who, rows, answers, outside))
                extraction.defer(who, rows, answers, outside, loop)
            clock.now += float(pair.pick.uniform(0, 30))
            assert extraction._waiting  # nothing observed before the iteration ends
            await asyncio.sleep(0)
            assert not extraction._waiting
            observed = _merged(requests)
            merged += len(requests) - len(observed)
            for who, rows, answers, outside in observed:
                reference.observe(who, rows, answers, outside, clock.now)
            pair.assert_same(n)
        assert merged > 300  # most iterations merged requests

    asyncio.run(iterations())
    assert {who for who, _ in suspects} >= {"a", "b"}


def test_what_waits_is_observed_before_anything_is_read():
    """A deferred request counts at once for every reader: no verdict is read stale."""
    extraction, _ = monitor(min_queries=20)
    rows = np.random.default_rng(0).uniform(0, 16, (3, 64))
    loop = asyncio.new_event_loop()
    try:
        extraction.defer("p", rows, labels_of(rows), [False] * 3, loop)
        assert extraction._waiting
        (stats,) = extraction.page(0, 10).principals  # read without the loop having run
        assert stats.queries == 3
        extraction.defer("q", rows, labels_of(rows), [True] * 3, loop)
        assert not extraction.suspected("q")
        assert extraction.page(0, 10).tracked == 2
        extraction.defer("p", rows[:1], labels_of(rows[:1]), [False], loop)
        extraction.observe("p", rows[1:], labels_of(rows[1:]), [False] * 2)  # in order
        assert extraction.page(0, 10).principals[0].queries == 6
        loop.call_soon(loop.stop)
        loop.run_forever()  # the scheduled callbacks find nothing left
        assert extraction.page(0, 10).principals[0].queries == 6
    finally:
        loop.close()


@pytest.mark.parametrize(
    "rows",
    [
        [[1.0, -2.0, 3.0]],
        [[1e15, 0.0, 0.0]],
        [[-1e15, 0.0, 0.0]],
        [[np.nextafter(1e15, 0), 0.0, 0.0]],
        [[9e14, 9e14, 9e14]],  # each usable, their sum not
        [[np.nan, 0.0, 0.0]],
        [[np.inf, 0.0, 0.0]],
        [[-np.inf, np.inf, 0.0]],
        [[1e300, -1e300, 0.0]],
        [[0.0] * 3] * 5 + [[1e16, 0.0, 0.0]],  # 18 values: the dot product's turn
        [[5e14] * 3] * 6,
        [[1e154] * 3] * 6,  # the squares overflow
        [[np.nan] * 3] * 6,
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_usable_is_every_value_below_1e15(rows, dtype):
    """The quick check agrees with the plain one, value by value, in the rows' precision."""
    from secureserve.extraction import _all_usable

    with np.errstate(over="ignore"):
        array = np.array(rows, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says nothing about the values it rejects
        assert _all_usable(array) == bool((np.abs(array) < 1e15).all())
        assert _all_usable(np.asfortranarray(array)) == _all_usable(array)


def test_a_principal_in_a_dropped_principals_storage_starts_afresh():
    """The storage of a dropped principal is reused; nothing of it shows through.

    The newcomer's figures and distances are those it would have in a monitor of its own.
    """
    extraction, _ = monitor(max_principals=1)
    alone, _ = monitor()
    rows = digits_rows()
    extraction.observe("first", rows[:30], labels_of(rows[:30]), [True] * 30)
    old = extraction._tracks["first"]
    for start in range(30, 60, 5):
        part = rows[start : start + 5]
        extraction.observe("second", part, labels_of(part), [False] * 5)
        alone.observe("second", part, labels_of(part), [False] * 5)
    track = extraction._tracks["second"]
    assert track is old  # the same storage
    assert list(extraction._tracks) == ["second"]
    assert extraction.principal_of(handle_of("digits", "first")) is None
    fresh = alone._tracks["second"]
    assert list(track.distances) == list(fresh.distances)
    assert (track.queries, track.size, track.ood_count) == (30, 30, 0)
    assert track.seen == fresh.seen
    assert track.hashes == fresh.hashes
    assert extraction.page(0, 5).principals == alone.page(0, 5).principals


def test_a_grown_track_is_not_handed_on():
    """A dropped principal whose history grew frees it: a newcomer starts small."""
    extraction, _ = monitor(max_principals=1)
    rows = digits_rows()
    extraction.observe("first", rows[:100], None, [False] * 100)
    assert len(extraction._tracks["first"].vectors) > 64
    extraction.observe("second", rows[:1], None, [False])
    assert len(extraction._tracks["second"].vectors) == 64


def test_handles_are_computed_the_same_way_inside():
    """The monitor's own handle (its model's part hashed once) is ``handle_of``'s."""
    extraction, _ = monitor()
    for principal in ("key:abc", "jwt:alice@example.com/x", "cert:CN=Zoë,O=Ünï", ""):
        assert extraction._handle_of(principal) == handle_of("digits", principal)


def test_a_failing_deferred_observation_is_logged_and_the_others_go_on():
    """A suspect whose report fails: logged; the other principals are still observed."""
    rows = np.random.default_rng(1).uniform(0, 16, (1, 64))

    def report(principal: str, stats: PrincipalStats) -> None:
        raise RuntimeError("the report failed")

    extraction = ExtractionMonitor(
        ExtractionSettings(min_queries=20, max_ood_share=0.5),
        width=64,
        model="digits",
        on_suspect=report,
    )
    loop = asyncio.new_event_loop()
    try:
        for _ in range(19):
            extraction.observe("a", rows, [0], [True])
        extraction.defer("a", rows, [0], [True], loop)  # the 20th: suspect, the report fails
        extraction.defer("b", rows, [0], [False], loop)
        assert not extraction.suspected("b")  # the reader is not handed a's failure
        assert extraction.suspected("a")
        assert extraction.page(0, 10).tracked == 2  # b was observed after it
        extraction.forget("a")
        for _ in range(19):
            extraction.observe("a", rows, [0], [True])
        extraction.defer("a", rows, [0], [True], loop)  # alone in waiting: the same
        assert extraction.principal_of(handle_of("digits", "a")) == "a"
        assert extraction.suspected("a")
    finally:
        loop.close()


def test_what_waits_is_bounded_when_its_loop_never_comes_round():
    """Deferred on a loop that stops: a new loop gets its own callback, and the list a bound."""
    from secureserve import extraction as module

    extraction, _ = monitor()
    rows = np.random.default_rng(2).uniform(0, 16, (1, 64))
    gone = asyncio.new_event_loop()
    extraction.defer("p", rows, [0], [False], gone)
    gone.close()  # its callback never runs

    async def requests() -> None:
        extraction.defer("p", rows, [0], [False], asyncio.get_running_loop())
        await asyncio.sleep(0)
        assert not extraction._waiting  # this loop's own callback observed both

    asyncio.run(requests())
    stopped = asyncio.new_event_loop()
    try:
        for _ in range(module._MAX_WAITING + 10):
            extraction.defer("p", rows, [0], [False], stopped)
        assert len(extraction._waiting) <= module._MAX_WAITING
    finally:
        stopped.close()
    assert extraction.page(0, 10).principals[0].queries == module._MAX_WAITING + 12
