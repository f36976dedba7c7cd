"""Tests of secureserve.endpoints: the predict route end to end, hostile bodies, handlers."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import threading
import time

import httpx2
import msgspec
import pytest
from app_helpers import (
    Echo,
    Number,
    asgi_client,
    bearer,
    build_app,
    json_lines,
    json_logs,
    replaced,
)
from conftest import EXAMPLES, load_iris, shared_fixtures

import secureserve as ss
from secureserve.config import Settings, load_settings
from secureserve.keys import mint_key
from secureserve.schema import WRAPPER_HINT
from secureserve.testing import TestClient

PREDICT = "/v1/models/iris:predict"
PROBLEM = "application/problem+json"
PROBLEM_KEYS = {"type", "title", "status", "request_id", "error", "detail"}
# What a client must never see in an error body: stack traces, library and class names, paths.
LEAKS = (
    "Traceback",
    "traceback",
    "msgspec",
    "starlette",
    "uvicorn",
    "secureserve.",
    "onnx",
    "numpy",
    "Error",
    "Exception",
    "/work",
    "/tmp",  # noqa: S108 - a path fragment that must not appear
    "/home",
    "/usr",
    "site-packages",
    ".py",
    'File "',
    "line ",
)


Iris = load_iris()


def _input_rows():
    """Rows of ../shared/fixtures/inputs.jsonl, or none when the fixtures are absent."""
    folder = shared_fixtures()
    if folder is None:
        return []
    rows = [json.loads(line) for line in (folder / "inputs.jsonl").read_text().splitlines()]
    return [pytest.param(row, id=row["name"]) for row in rows]


INPUT_ROWS = _input_rows()


def _body(row):
    """The row's body bytes, built from its recipe when it is too large to store."""
    if row["body"] is not None:
        return row["body"].encode()
    body = "".join(s * n for s, n in row["body_parts"]).encode()
    assert len(body) == row["body_bytes"]
    assert hashlib.sha256(body).hexdigest() == row["body_sha256"]
    return body


def _assert_safe_problem(response, status=None):
    """A problem+json whose body holds only Problem's keys and nothing that leaks internals."""
    if status is not None:
        assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert set(body) <= PROBLEM_KEYS
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["x-request-id"]
    for leak in LEAKS:
        assert leak not in response.text, leak
    return body


@pytest.fixture(scope="module")
def iris():
    """One iris TestClient (predict role) shared by the read-only request matrices.

    Its limits are raised: the matrices send more predictions than a minute's default.
    """
    config = _limited_iris(per_principal="100000/minute", quota="1000000/day", max_instances=32)
    with TestClient(Iris, config=config) as client:
        yield client


@pytest.fixture
def log_output():
    """Route secureserve's JSON logs into a buffer; returns a function parsing the lines."""
    with json_logs(io.BytesIO()) as buffer:

        def lines():
            return json_lines(buffer)

        lines.raw = buffer
        yield lines


# --- the hostile inputs matrix -------------------------------------------------------


def _send(client, row):
    headers = {} if row["content_type"] is None else {"content-type": row["content_type"]}
    return client.post(PREDICT, content=_body(row), headers=headers)


#: The rows of inputs.jsonl whose refusal names an unknown field, and their whole detail.
UNKNOWN_FIELD_DETAILS = {
    "unknown_field_instance": "$.instances[0]: unknown field 'debug'",
    "unknown_field_top": f"$: unknown field 'return_internals'; {WRAPPER_HINT}",
}


@pytest.mark.parametrize("row", INPUT_ROWS)
def test_endpoints_inputs_matrix(iris, row):
    """Every hostile row of inputs.jsonl gets a safe 4xx problem; the control gets 200."""
    response = _send(iris, row)
    if row["expect"] == "2xx":
        assert response.status_code == 200
        assert len(response.json()["predictions"]) == 1
        return
    assert 400 <= response.status_code < 500
    body = _assert_safe_problem(response)
    if row["status_hint"] in {400, 413, 415, 422}:
        assert response.status_code == row["status_hint"]
    named = UNKNOWN_FIELD_DETAILS.get(row["name"])
    if named is not None:  # an unknown field's name is the one thing a detail may quote
        assert body["detail"] == named
        return
    for word in ("debug", "return_internals", "5.1,3.5", "AAAA", "[[[", "1.0, 1.0"):
        assert word not in body.get("detail", ""), word


@pytest.mark.skipif(shared_fixtures() is None, reason="needs ../shared/fixtures")
def test_endpoints_keeps_serving_after_every_hostile_row(iris_project):
    """After all hostile rows on one app, a valid request still gets 200."""
    with TestClient(Iris, project_dir=iris_project) as client:
        for param in INPUT_ROWS:
            assert _send(client, param.values[0]).status_code < 500
        response = client.post(PREDICT, json={"instances": [{"features": [5.1, 3.5, 1.4, 0.2]}]})
    assert response.status_code == 200


# --- decoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [{"features": [1, 2, 3, 4], "features": [1, 2, 3, 4]}]}',
        b'{"instances": [{"features": [1, 2, 3, 4]}], "instances": [{"features": [1, 2, 3, 4]}]}',
        b'{"instances": [{"features": [1, 2, 3, 4], "f\\u0065atures": [1, 2, 3, 4]}]}',
        b'{"instances":[{"features":[9,9,9,9]}],"\\u0069nstances":[{"features":[1,2,3,4]}]}',
        b'{"instances":[{"features":[1,2,3,4]},{"features":[9,9,9,9],"features":[4,3,2,1]}]}',
    ],
    ids=["instance", "top", "escaped-instance", "escaped-top", "second-instance"],
)
def test_endpoints_duplicate_keys_are_422(iris, body):
    """An object that repeats a key (also via escapes) is refused with 422, not last-wins.

    Both values of the repeated key are valid, so only the duplicate check can refuse it.
    """
    response = iris.post(PREDICT, content=body, headers={"content-type": "application/json"})
    problem = _assert_safe_problem(response, 422)
    assert "repeats a key" in problem["detail"]


def test_endpoints_same_key_in_sibling_objects_is_fine(iris):
    """The same key in different objects (one per instance) is not a duplicate."""
    body = b'{"instances": [{"features": [1, 2, 3, 4]}, {"features": [4, 3, 2, 1]}]}'
    response = iris.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 2


@pytest.mark.parametrize(
    ("instances", "detail"),
    [
        ([{"features": [1, 2, 3, 4]}] * 33, "$.instances: length must be <= 32"),
        ([], "$.instances: length must be >= 1"),
        ([{"features": [1, 2, 3, 51]}], "$.instances[0].features[3]: must be <= 50"),
        ([{"features": [1, 2, 3, 4]}, {"features": [1, 2, 3]}], "$.instances[1].features"),
        ([{"features": [1, 2, 3, 4]}, {}], "$.instances[1]: missing required field 'features'"),
        (
            [{"features": [1, 2, 3, 4], "secret_field": "secret-value"}],
            "$.instances[0]: unknown field 'secret_field'",
        ),
    ],
    ids=["33-instances", "empty", "out-of-range", "short-second", "missing", "unknown"],
)
def test_endpoints_validation_detail_names_the_field(iris, instances, detail):
    """Schema violations are 422 whose detail names the failing path and echoes no input."""
    problem = _assert_safe_problem(iris.post(PREDICT, json={"instances": instances}), 422)
    assert problem["detail"].startswith(detail)
    assert "secret-value" not in problem["detail"]


def test_endpoints_unknown_field_is_named_escaped_and_cut_short(iris):
    """Over HTTP, an unknown field's name arrives escaped (ANSI, newline, quote) and cut."""
    name = "\x1b[31m\n'" + "n" * 200
    instance = {"features": [1, 2, 3, 4], name: 1}
    problem = _assert_safe_problem(iris.post(PREDICT, json={"instances": [instance]}), 422)
    assert problem["detail"] == "$.instances[0]: unknown field '\\x1b[31m\\n\\'" + "n" * 57 + "'..."
    assert "\x1b" not in problem["detail"]
    assert "\n" not in problem["detail"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"features": [1, 2, 3, 4]}, "$: unknown field 'features'"),
        ([{"features": [1, 2, 3, 4]}], "$: expected object, got array"),
    ],
    ids=["bare-instance", "bare-list"],
)
def test_endpoints_body_without_the_wrapper_gets_a_hint(iris, body, problem):
    """A bare instance or list is a 422 saying the body must be {"instances": [...]}."""
    answer = _assert_safe_problem(iris.post(PREDICT, json=body), 422)
    assert (
        answer["detail"] == f'{problem}; the body must be {{"instances": [...]}}, with the '
        "instances in the list and no other member"
    )


def test_endpoints_max_instances_boundary_is_accepted(iris):
    """Exactly max_instances (32) instances are served, one prediction each."""
    response = iris.post(PREDICT, json={"instances": [{"features": [1, 2, 3, 4]}] * 32})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 32


# --- handler contracts ---------------------------------------------------------------


class MaybeOut(msgspec.Struct):
    """One optional number out."""

    y: float | None = None


class Raises(ss.Model[Number, Echo]):
    """predict raises with a message that must stay in the log."""

    name = "toy"

    def predict(self, batch):
        """Fail loudly."""
        raise ValueError("secret-internal-detail at /work/model/weights.py")


class TooFew(ss.Model[Number, Echo]):
    """One output short."""

    name = "toy"

    def predict(self, batch):
        """Drop the last output."""
        return [Echo(y=i.x) for i in batch][:-1]


class TooMany(ss.Model[Number, Echo]):
    """One output too many."""

    name = "toy"

    def predict(self, batch):
        """Add an output."""
        return [Echo(y=i.x) for i in batch] + [Echo(y=0.0)]


class WrongStruct(ss.Model[Number, Echo]):
    """Returns objects that do not match the output type."""

    name = "toy"

    def predict(self, batch):
        """Strings where Echo structs belong."""
        return ["not an Out" for _ in batch]


class WrongFieldType(ss.Model[Number, Echo]):
    """Returns a struct-shaped dict with a wrongly typed field."""

    name = "toy"

    def predict(self, batch):
        """A string where a float belongs."""
        return [{"y": "1.0"} for _ in batch]


class NotAList(ss.Model[Number, Echo]):
    """Returns a tuple instead of a list."""

    name = "toy"

    def predict(self, batch):
        """A tuple."""
        return tuple(Echo(y=i.x) for i in batch)


class Unencodable(ss.Model[Number, Echo]):
    """Returns an object msgspec cannot encode."""

    name = "toy"

    def predict(self, batch):
        """Plain objects."""
        return [object() for _ in batch]


class NaNOut(ss.Model[Number, Echo]):
    """Returns NaN."""

    name = "toy"

    def predict(self, batch):
        """NaN for every input."""
        return [Echo(y=math.nan) for _ in batch]


class InfOut(ss.Model[Number, Echo]):
    """Returns -Infinity."""

    name = "toy"

    def predict(self, batch):
        """-inf for every input."""
        return [Echo(y=-math.inf) for _ in batch]


class OptionalNaN(ss.Model[Number, MaybeOut]):
    """Returns NaN in an Optional[float] field (which would otherwise encode as null)."""

    name = "toy"

    def predict(self, batch):
        """NaN for every input."""
        return [MaybeOut(y=math.nan) for _ in batch]


class AsyncRaises(ss.Model[Number, Echo]):
    """An async predict that raises."""

    name = "toy"

    async def predict(self, batch):
        """Fail."""
        raise ValueError("secret-internal-detail at /work/model/weights.py")


class AsyncNaN(ss.Model[Number, Echo]):
    """An async predict that returns NaN."""

    name = "toy"

    async def predict(self, batch):
        """NaN for every input."""
        return [Echo(y=math.nan) for _ in batch]


class Slow(ss.Model[Number, Echo]):
    """A sync predict over its time budget."""

    name = "toy"

    def predict(self, batch):
        """Sleep past the timeout."""
        time.sleep(0.3)
        return [Echo(y=i.x) for i in batch]


class AsyncSlow(ss.Model[Number, Echo]):
    """An async predict over its time budget."""

    name = "toy"

    async def predict(self, batch):
        """Sleep past the timeout."""
        await asyncio.sleep(2)
        return [Echo(y=i.x) for i in batch]  # pragma: no cover - cancelled


class AsyncDouble(ss.Model[Number, Echo]):
    """A well-behaved async predict."""

    name = "toy"

    async def predict(self, batch):
        """Double each input."""
        await asyncio.sleep(0)
        return [Echo(y=2 * i.x) for i in batch]


class OptionalNone(ss.Model[Number, MaybeOut]):
    """A legitimate None in an Optional[float] field."""

    name = "toy"

    def predict(self, batch):
        """None for every input."""
        return [MaybeOut(y=None) for _ in batch]


TOY = "/v1/models/toy:predict"
TOY_BODY = {"instances": [{"x": 1.0}, {"x": 2.0}]}


def _toy_app(model, tmp_path, **server):
    """create_app(model) with default settings (``server`` overrides) and its predict key."""
    key = mint_key(name="toy", roles=("predict",))
    return build_app(model, replaced(Settings(project_dir=tmp_path), server=server), key), key


def _toy_client(model, tmp_path, **server):
    app, key = _toy_app(model, tmp_path, **server)
    return asgi_client(app, key)


@pytest.mark.parametrize(
    "model",
    [
        Raises,
        TooFew,
        TooMany,
        WrongStruct,
        WrongFieldType,
        NotAList,
        Unencodable,
        NaNOut,
        InfOut,
        OptionalNaN,
        AsyncRaises,
        AsyncNaN,
    ],
)
def test_endpoints_handler_contract_violation_is_redacted_500(tmp_path, log_output, model):
    """A handler that raises or returns the wrong count/type/non-finite value is a bare 500.

    The client sees no detail; the log line with the same request id holds the error.
    """
    with _toy_client(model, tmp_path) as client:
        response = client.post(TOY, json=TOY_BODY)
        follow_up = client.get("/healthz")
    body = _assert_safe_problem(response, 500)
    assert "detail" not in body
    assert "secret-internal-detail" not in response.text
    assert follow_up.status_code == 200
    rid = response.headers["x-request-id"]
    failures = [line for line in log_output() if line.get("event") == "request failed"]
    assert [line["request_id"] for line in failures] == [rid]
    assert failures[0]["model_error"] is True
    assert failures[0]["level"] == "error"
    access = [line for line in log_output() if line.get("event") == "request"]
    assert [(a["request_id"], a["status"]) for a in access if a["path"] == TOY] == [(rid, 500)]


@pytest.mark.parametrize("model", [Raises, AsyncRaises])
def test_endpoints_handler_exception_is_logged_with_request_id(tmp_path, log_output, model):
    """The exception type, message and traceback go to the log line carrying the request id."""
    with _toy_client(model, tmp_path) as client:
        response = client.post(TOY, json=TOY_BODY, headers={"X-Request-ID": "trace-me-123"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-me-123"
    (failure,) = [line for line in log_output() if line.get("event") == "request failed"]
    assert failure["request_id"] == "trace-me-123"
    rendered = json.dumps(failure)
    assert "ValueError" in rendered
    assert "secret-internal-detail" in rendered
    assert "frames" in rendered  # the stack trace, as structured data


@pytest.mark.parametrize(("model", "expected"), [(OptionalNone, None), (AsyncDouble, 2.0)])
def test_endpoints_valid_outputs_are_served(tmp_path, model, expected):
    """A legitimate None in an Optional field and an async predict are served with 200."""
    with _toy_client(model, tmp_path) as client:
        response = client.post(TOY, json={"instances": [{"x": 1.0}]})
    assert response.status_code == 200
    assert response.json() == {"predictions": [{"y": expected}]}


@pytest.mark.parametrize("model", [Slow, AsyncSlow])
def test_endpoints_handler_over_time_budget_is_504(tmp_path, model):
    """A sync or async predict that outlives predict_timeout_s is answered 504, promptly."""
    with _toy_client(model, tmp_path, predict_timeout_s=0.05) as client:
        start = time.perf_counter()
        response = client.post(TOY, json=TOY_BODY)
        elapsed = time.perf_counter() - start
    body = _assert_safe_problem(response, 504)
    assert "detail" not in body
    assert elapsed < 0.25


# --- threading and batching ------------------------------------------------------------


class ThreadRecorder(ss.Model[Number, Echo]):
    """Records the thread each predict call runs on."""

    name = "toy"
    threads: set[int] = set()  # noqa: RUF012 - reset by the test

    def predict(self, batch):
        """Remember the thread."""
        type(self).threads.add(threading.get_ident())
        return [Echo(y=i.x) for i in batch]


def test_endpoints_sync_predict_runs_off_the_event_loop(tmp_path):
    """A sync predict never runs on the thread that runs the event loop."""
    ThreadRecorder.threads = set()
    app, key = _toy_app(ThreadRecorder, tmp_path)
    loop_threads = set()

    async def recording(scope, receive, send):
        loop_threads.add(threading.get_ident())
        await app(scope, receive, send)

    with asgi_client(recording, key) as client:
        for _ in range(3):
            assert client.post(TOY, json=TOY_BODY).status_code == 200
    assert ThreadRecorder.threads
    assert loop_threads
    assert not ThreadRecorder.threads & loop_threads


class Gated(ss.Model[Number, Echo]):
    """Blocks in its first predict call until released; records every batch; marks fail."""

    name = "toy"
    MARKER = 13.0

    def __init__(self):
        self.calls = []
        self.started = threading.Event()
        self.release = threading.Event()

    def predict(self, batch):
        """Wait for the test on the first call, then answer y = 2x (or fail on the marker)."""
        self.calls.append([i.x for i in batch])
        self.started.set()
        self.release.wait(5)
        time.sleep(0.05)
        if any(i.x == self.MARKER for i in batch):
            raise ValueError("marker")
        return [Echo(y=2 * i.x) for i in batch]


async def _gated_burst(model, app, headers, bodies):
    """Send one blocker, then ``bodies`` concurrently once they are all queued behind it."""
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(
        transport=transport, base_url="https://testserver", headers=headers
    ) as client:
        blocker = asyncio.ensure_future(client.post(TOY, json={"instances": [{"x": 0.5}]}))
        assert await asyncio.to_thread(model.started.wait, 5)
        rest = [asyncio.ensure_future(client.post(TOY, json=b)) for b in bodies]
        runner = next(iter(app.state.models)).runner
        deadline = time.monotonic() + 5
        # The queue is filled from the event loop and drained by the inference thread:
        # polling its size is the simplest way to know every request is waiting.
        while runner._queue.qsize() < len(bodies) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        model.release.set()
        responses = await asyncio.gather(blocker, *rest)
    runner.close()
    return responses


def test_endpoints_concurrent_requests_are_batched(tmp_path):
    """Concurrent requests share predict calls, and each caller gets its own outputs in order."""
    model = Gated()
    app, key = _toy_app(model, tmp_path)
    bodies = [{"instances": [{"x": float(i)}, {"x": i + 0.25}]} for i in range(1, 8)]
    responses = asyncio.run(_gated_burst(model, app, bearer(key), bodies))
    assert [r.status_code for r in responses] == [200] * 8
    assert responses[0].json() == {"predictions": [{"y": 1.0}]}
    for i, response in enumerate(responses[1:], start=1):
        assert response.json() == {"predictions": [{"y": 2.0 * i}, {"y": 2 * i + 0.5}]}
    assert len(model.calls) < 8
    assert sum(len(c) for c in model.calls) == 15


def test_endpoints_bad_instance_in_merged_batch_fails_only_its_request(tmp_path):
    """A request that makes a merged predict fail gets 500; the others still get 200."""
    model = Gated()
    app, key = _toy_app(model, tmp_path)
    bodies = [{"instances": [{"x": float(i)}]} for i in range(1, 7)]
    bodies.insert(3, {"instances": [{"x": Gated.MARKER}]})
    responses = asyncio.run(_gated_burst(model, app, bearer(key), bodies))
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 200, 500, 200, 200, 200]
    assert any(Gated.MARKER in c and len(c) > 1 for c in model.calls)  # it was really merged
    good = [r for r in responses if r.status_code == 200][1:]
    assert [r.json()["predictions"][0]["y"] for r in good] == [2.0 * i for i in range(1, 7)]


# --- limits count predictions ------------------------------------------------------------


def _limited_iris(*, per_principal="5/minute", quota="1000/day", max_instances=4):
    return replaced(
        load_settings(project_dir=EXAMPLES / "iris"),
        limits={"per_principal": per_principal, "quota": quota, "auth_failures_per_ip": None},
        server={"max_instances": max_instances},
    )


FLOWER = {"features": [5.1, 3.5, 1.4, 0.2]}


def test_predict_unknown_model_names_count_against_the_principal():
    """404s for models the caller cannot see spend its limit: probing names is throttled."""
    with TestClient(Iris, config=_limited_iris()) as client:
        for _ in range(5):
            assert (
                client.post("/v1/models/other:predict", json={"instances": [FLOWER]}).status_code
                == 404
            )
        refused = client.post("/v1/models/other:predict", json={"instances": [FLOWER]})
        body = _assert_safe_problem(refused, 429)
        assert body["type"].endswith(":rate-limited")
        assert refused.headers["retry-after"].isdigit()
        assert client.predict([FLOWER]).status_code == 429  # the same principal's budget


def test_predict_charges_every_instance_and_refuses_a_request_that_would_cross():
    """4 + 1 instances fit in 5/minute; then a 2-instance request is refused whole."""
    with TestClient(Iris, config=_limited_iris()) as client:
        assert client.predict([FLOWER] * 4).status_code == 200
        refused = client.predict([FLOWER] * 2)
        _assert_safe_problem(refused, 429)
        assert refused.headers["ratelimit-remaining"] == "0"  # admission took the fifth unit
        assert int(refused.headers["retry-after"]) > 0
        assert client.predict([FLOWER]).status_code == 429
        audited = [json.loads(line) for line in client.audit_path.read_text().splitlines()]
        predictions = [r for r in audited if r["event"] == "request" and r["status"] == 200]
        assert len(predictions) == 1  # the refused request never reached the model


def test_predict_quota_counts_instances():
    """The daily quota is spent by instances, not requests."""
    config = _limited_iris(per_principal="100/minute", quota="10/day")
    with TestClient(Iris, config=config) as client:
        assert client.predict([FLOWER] * 4).status_code == 200
        assert client.predict([FLOWER] * 4).status_code == 200
        refused = client.predict([FLOWER] * 4)
        assert refused.status_code == 429
        assert refused.json()["type"].endswith(":quota-exhausted")
        assert client.predict([FLOWER]).status_code == 200  # admission of the refused took 9
        assert client.predict([FLOWER]).status_code == 429


def test_predict_wrong_method_on_a_known_route_is_405_with_allow():
    """GET on :predict is 405 naming POST (not 404, not metadata of "iris:predict")."""
    with TestClient(Iris, project_dir=EXAMPLES / "iris", roles=("predict", "admin")) as client:
        response = client.get(PREDICT)
        _assert_safe_problem(response, 405)
        assert response.headers["allow"] == "POST"
        assert client.get("/v1/models/iris").status_code == 200  # metadata still answers
