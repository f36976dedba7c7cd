"""``secureserve check --mlflow URI``: the report as one MLflow run.

The run goes into the experiment named after the model (created when missing), named
``check <model> <version>``, and holds:

- **params**: the model, its version, the data file and its size, the secureserve
  version, and every ``[check]`` threshold as ``check.<key>``;
- **metrics**: every measured figure as ``<check>.<figure>`` (characters MLflow does not
  take in a name become ``_``);
- **tags**: ``secureserve.lock_sha256``, ``secureserve.signature``, ``secureserve.passed``
  and ``secureserve.check.<check>`` (``pass``, ``fail`` or ``not judged``), so a model
  registry shows what was checked for which files;
- **artifacts**: the report files (``report.json``, ``report.md``, ``report.html``).

It uses ``mlflow.MlflowClient`` (no global active run). MLflow's usage telemetry is
switched off while the run is logged: the check makes no network call but to the
tracking URI it is given. A plain ``http://`` URI is refused unless its host is the
loopback (the run would cross the network unencrypted); use ``https://``. What may be a
credential in the URI (user name, password, query) is never printed, in an error
either. A run that fails half-way is marked ``FAILED``, never left running.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import msgspec

from secureserve.check.results import VERDICTS, Report
from secureserve.errors import ConfigError

__all__ = ["log_to_mlflow", "metric_name"]

_NOT_IN_A_NAME: Final = re.compile(r"[^A-Za-z0-9_.: -]+")
#: Loggers whose start-up chatter (creating tables, migrations) is kept below warnings.
_QUIET: Final = ("mlflow", "alembic")
_LOOPBACK_NAMES: Final = frozenset({"localhost"})
_TELEMETRY: Final = "MLFLOW_DISABLE_TELEMETRY"


def metric_name(check: str, figure: str) -> str:
    """``<check>.<figure>`` with what MLflow refuses in a name replaced by ``_``."""
    return _NOT_IN_A_NAME.sub("_", f"{check}.{figure}").strip() or "_"


def log_to_mlflow(report: Report, files: list[Path], uri: str) -> str:
    """Log ``report`` and its ``files`` as one run at tracking ``uri``; return the run id."""
    shown = _shown(uri)
    _check_uri(uri, shown)
    try:
        from mlflow import MlflowClient  # noqa: PLC0415 - the [mlflow] extra
        from mlflow.entities import Metric, Param, RunTag  # noqa: PLC0415
    except ImportError:
        raise ConfigError("--mlflow needs MLflow: pip install 'secureserve[mlflow]'.") from None
    now = int(time.time() * 1000)
    metrics = [
        Metric(metric_name(check.check, figure.name), float(figure.value), now, 0)
        for check in report.checks
        for figure in check.figures
        if figure.value is not None
    ]
    params = [Param(key, str(value)) for key, value in _params(report).items()]
    tags = [RunTag(key, value) for key, value in _tags(report).items()]
    with _quiet(), _telemetry_off():
        try:
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(report.model)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else client.create_experiment(report.model)
            )
            name = f"check {report.model} {report.version}"
            run = client.create_run(experiment_id, run_name=name)
        except Exception as exc:  # noqa: BLE001 - MLflow and its stores raise many types
            raise ConfigError(
                f"--mlflow {shown}: MLflow could not start a run there "
                f"({_redacted(exc, uri)}). The report files are written all the same."
            ) from None  # the cause's own text may hold the URI's credentials
        run_id: str = run.info.run_id
        try:
            client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
            for path in files:
                client.log_artifact(run_id, str(path))
        except Exception as exc:  # noqa: BLE001 - MLflow and its stores raise many types
            client.set_terminated(run_id, status="FAILED")
            raise ConfigError(
                f"--mlflow {shown}: run {run_id} could not be logged "
                f"({_redacted(exc, uri)}); it is marked FAILED. The report files are "
                "written all the same."
            ) from None  # the cause's own text may hold the URI's credentials
        client.set_terminated(run_id, status="FINISHED")
    return run_id


def _params(report: Report) -> dict[str, Any]:
    thresholds = msgspec.structs.asdict(report.thresholds)
    return {
        "model": report.model,
        "version": report.version,
        "data": report.data,
        "instances": report.instances,
        "secureserve": report.secureserve,
        **{f"check.{key}": value for key, value in thresholds.items()},
    }


def _tags(report: Report) -> dict[str, str]:
    return {
        "secureserve.lock_sha256": report.lock_sha256 or "no lock",
        "secureserve.signature": report.signature,
        "secureserve.passed": str(report.passed).lower(),
        **{f"secureserve.check.{c.check}": VERDICTS[c.passed] for c in report.checks},
    }


def _secrets_of(uri: str) -> list[str]:
    """What in ``uri`` may be a credential: the user name, the password, the query."""
    parts = urlsplit(uri)
    found = [parts.username, parts.password, parts.query]
    found += [value for _, value in parse_qsl(parts.query)]
    found += [unquote(text) for text in found if text]  # as the URI has it, and decoded
    return sorted({text for text in found if text}, key=len, reverse=True)


def _shown(uri: str) -> str:
    """``uri`` as it may be printed: user name, password and query replaced by ``***``."""
    parts = urlsplit(uri)
    shown = uri
    if "@" in parts.netloc:
        shown = shown.replace(parts.netloc, f"***@{parts.netloc.rpartition('@')[2]}", 1)
    if parts.query:
        shown = shown.replace(f"?{parts.query}", "?***", 1)
    return shown


def _redacted(exc: Exception, uri: str) -> str:
    """The exception's type and text with every credential of ``uri`` blanked out."""
    text = f"{type(exc).__name__}: {exc}"
    for secret in _secrets_of(uri):
        text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text


def _check_uri(uri: str, shown: str) -> None:
    parts = urlsplit(uri)
    if parts.scheme.lower() != "http":
        return
    host = parts.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host.lower() in _LOOPBACK_NAMES
    if not loopback:
        raise ConfigError(
            f"--mlflow {shown}: plain http would send the run unencrypted across the "
            "network; use an https:// tracking URI (http is accepted for the loopback only)."
        )


@contextlib.contextmanager
def _telemetry_off() -> Iterator[None]:
    """MLflow's usage telemetry off while the run is logged; the variable restored after."""
    before = os.environ.get(_TELEMETRY)
    os.environ[_TELEMETRY] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_TELEMETRY, None)
        else:
            os.environ[_TELEMETRY] = before


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's info lines (creating tables, migrations) kept off the terminal.

    So are the deprecation warnings of MLflow and the libraries under it (SQLAlchemy's,
    on MLflow's use of it): nothing the person running the check can act on.
    """
    loggers = [logging.getLogger(name) for name in _QUIET]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)
