"""The schema fuzzing check: the served app against its own OpenAPI document.

The project's app (``create_app``, as ``secureserve run`` builds it) is driven in
process over ASGI with schemathesis (``[check]`` extra), as a principal of its own: a
key made for the run (role ``predict``), a temporary audit log, and no rate limits or
extraction actions, so the check never touches a running server's files or counters.
Requests to the predict operation are generated from the document, valid ones
(``[check] fuzz_examples`` of them) and invalid ones (as many): no answer may be a
5xx, and every answer must be documented (status, content type, body schema).

A handler that fails on some valid input fails this check; the first inputs that did
it are kept in the report (``details.failures``) to replay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec
import structlog

from secureserve.check.progress import Advance, Progress
from secureserve.check.results import CheckResult, Figure
from secureserve.errors import ConfigError
from secureserve.keys import KeyStore, mint_key
from secureserve.logs import configure_logging
from secureserve.model import Model
from secureserve.settings import ModelSettings, Settings

__all__ = ["fuzz", "without_lifespan"]

_KEPT: Final = 5  # failing inputs kept in the report
_BASE: Final = "https://testserver"


def fuzz(
    cls: type[Model[Any, Any]],
    settings: Settings,
    model_settings: ModelSettings | None = None,
    progress: Progress | None = None,
) -> CheckResult:
    """Generated requests to ``POST /v1/models/{name}:predict``; every answer judged.

    ``model_settings``: the checked model's table of a several-model project (default:
    ``[model]``); the app then serves that model alone.
    """
    progress = progress or Progress()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import schemathesis  # noqa: PLC0415 - the [check] extra
            from hypothesis import HealthCheck, Phase, given  # noqa: PLC0415
            from hypothesis import settings as hypothesis_settings  # noqa: PLC0415
            from schemathesis import GenerationMode  # noqa: PLC0415
            from schemathesis.checks import not_a_server_error  # noqa: PLC0415
            from schemathesis.specs.openapi.checks import (  # noqa: PLC0415
                content_type_conformance,
                response_schema_conformance,
                status_code_conformance,
            )
            from starlette.testclient import TestClient  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "the fuzz check needs schemathesis: pip install 'secureserve[check]'."
        ) from None
    from secureserve.app import create_app  # noqa: PLC0415 - the whole app, only here

    key = mint_key(name="secureserve-check", roles=("predict",))
    headers = {"Authorization": f"Bearer {key.secret}"}
    examples = settings.check.fuzz_examples
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    failures: list[dict[str, Any]] = []
    runs = 0
    with (
        tempfile.TemporaryDirectory(prefix="secureserve-check-") as temporary,
        _logs_to(Path(temporary) / "server.log"),
        _hypothesis_home(Path(temporary) / "hypothesis"),
    ):
        own = _own_principal(
            settings, model_settings or settings.model, Path(temporary), name=cls.name
        )
        app = create_app(
            {cls.name: cls} if own.models else cls,
            config=own,
            keys=KeyStore(None, records=[key.record]),
            audit_key=os.urandom(32),
        )
        with TestClient(app, base_url=_BASE) as client:  # runs the app's lifespan
            document = client.get("/openapi.json", headers=headers).json()
            schema = schemathesis.openapi.from_dict(document)
            schema.app = without_lifespan(app)
            operation = schema[f"/v1/models/{cls.name}:predict"]["POST"]
            modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            with progress.part("fuzz", examples * len(modes)) as advance:
                for mode in modes:
                    judge = _Judge(mode.value, headers, checks, failures, advance)
                    run = given(case=operation.as_strategy(generation_mode=mode))(
                        hypothesis_settings(
                            max_examples=examples,
                            deadline=None,
                            database=None,
                            derandomize=True,
                            phases=[Phase.generate],
                            suppress_health_check=list(HealthCheck),
                        )(_plain(judge))
                    )
                    run()
                    runs += judge.runs
    passed = not failures
    if failures:
        more = "+" if len(failures) == _KEPT else ""
        summary = f"{runs} generated requests, {len(failures)}{more} answered wrongly"
    else:
        summary = f"{runs} generated requests, every answer documented"
    figures = [Figure("failures", float(len(failures)), 0.0, passed), Figure("requests", runs)]
    return CheckResult("fuzz", passed, summary, figures, {"failures": failures})


class _Judge:
    """Sends one generated case and keeps the first failures (with their bodies)."""

    def __init__(
        self,
        mode: str,
        headers: dict[str, str],
        checks: list[Any],
        failures: list[Any],
        advance: Advance,
    ) -> None:
        self.mode, self.headers, self.checks, self.failures = mode, headers, checks, failures
        self.advance = advance
        self.runs = 0

    def __call__(self, case: Any) -> None:
        self.runs += 1
        self.advance(1)
        try:
            case.call_and_validate(base_url=_BASE, headers=self.headers, checks=self.checks)
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - each failure is a finding
            if len(self.failures) < _KEPT:
                self.failures.append(
                    {
                        "mode": self.mode,
                        "body": msgspec.to_builtins(case.body),
                        "problem": _describe(exc),
                    }
                )


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """The app's logs (an access line per generated request) to ``path``, not stdout.

    The logging set-up of before (structlog's, and the root logger's handlers and level)
    is restored afterwards: nothing is left writing to the closed file.
    """
    was_configured, before = structlog.is_configured(), structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with path.open("wb") as sink:
        configure_logging("warning", stream=sink)
        try:
            yield
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
            if was_configured:
                structlog.configure(**before)
            else:
                structlog.reset_defaults()


@contextlib.contextmanager
def _hypothesis_home(path: Path) -> Iterator[None]:
    """Hypothesis keeps its files (examples, the constants of local modules) in ``path``.

    By default it would write ``.hypothesis/`` in the working directory, project
    strings included; the folder of before is restored afterwards.
    """
    from hypothesis import configuration  # noqa: PLC0415 - the [check] extra

    before = getattr(configuration, "__hypothesis_home_directory", None)
    configuration.set_hypothesis_home_dir(path)
    try:
        yield
    finally:
        configuration.set_hypothesis_home_dir(before)


def _describe(exc: BaseException) -> str:
    """What went wrong, in a line: the titles of schemathesis' failures (e.g. Server error)."""
    if isinstance(exc, BaseExceptionGroup):
        titles = [getattr(e, "title", type(e).__name__) for e in exc.exceptions]
        return "; ".join(dict.fromkeys(titles))[:300]
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _plain(judge: _Judge) -> Any:
    """``judge`` as a plain function: what hypothesis decorates."""

    def one(case: Any) -> None:
        judge(case)

    return one


def _own_principal(
    settings: Settings, model: ModelSettings, folder: Path, *, name: str
) -> Settings:
    """The project's settings for a run of its own: its audit log, no limits, no actions.

    With several models, the checked model's table is the only one left.
    """
    replace = msgspec.structs.replace
    checked = replace(model, extraction=replace(model.extraction, action="off"))
    served = {"models": {name: checked}}
    return replace(
        settings,
        audit=replace(settings.audit, path=folder / "audit.jsonl", digest_key_file=None),
        limits=replace(
            settings.limits,
            storage="memory://",
            per_principal=None,
            per_model=None,
            quota=None,
            auth_failures_per_ip=None,
            explain_per_principal=None,
        ),
        **(served if settings.models else {"model": checked}),
    )


def without_lifespan(app: Any) -> Any:
    """``app`` for schemathesis, whose lifespan a TestClient already runs.

    schemathesis would start the lifespan of the app it is given once for the whole
    process; whoever holds the app stops it (closing its audit log) instead.
    """

    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                phase = (await receive())["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{phase}.complete"})
                if phase == "shutdown":
                    return
        await app(scope, receive, send)

    return wrapper
