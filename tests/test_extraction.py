"""secureserve.extraction: noticing a principal that queries to copy the model."""

from __future__ import annotations

import secrets
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np
import pytest
from app_helpers import asgi_client, bearer
from defense_helpers import PREDICT, audit_lines, digits_app, digits_rows, digits_settings

from secureserve.extraction import ExtractionMonitor, PrincipalStats
from secureserve.keys import mint_key
from secureserve.settings import ExtractionSettings


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
