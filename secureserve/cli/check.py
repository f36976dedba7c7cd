"""``secureserve check [PATH] --data FILE``: the model's checks as a CI gate.

Exit 0 when every judged figure passes, 1 when one fails, 2 when the check could not
run (a usage error, bad data, a missing extra, a refused model file, a handler that
raised, a report folder that cannot be written, an MLflow store that refused the run).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

from secureserve.cli._common import EXIT_ERROR, EXIT_USAGE
from secureserve.errors import SecureServeError


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``check`` to the command line."""
    from secureserve.check import CHECKS  # noqa: PLC0415 - keeps the CLI start quick

    check = commands.add_parser(
        "check",
        parents=[common],
        help="test the model (robustness, fairness, fuzzing, load, data drift) against "
        "[check] thresholds; exit 1 on failure",
    )
    check.add_argument("path", nargs="?", type=Path, default=Path(), help="project (default: .)")
    check.add_argument("--data", type=Path, required=True, help="labelled data: .jsonl or .csv")
    check.add_argument("--labels", default="label", help="the label column of a .csv (label)")
    check.add_argument(
        "--sensitive", action="append", default=[], metavar="COLUMN", help="a group column"
    )
    check.add_argument(
        "--only",
        type=_checks,
        default=CHECKS,
        help=f"comma-separated checks to run (default: all of {','.join(CHECKS)})",
    )
    check.add_argument(
        "--report", type=Path, default=Path("check-report"), help="report folder (check-report)"
    )
    check.add_argument("--model", help="the model to check, when the project serves several")
    check.add_argument("--json", action="store_true", help="print report.json instead of lines")
    check.add_argument(
        "--mlflow", metavar="URI", help="also log the report as an MLflow run at this tracking URI"
    )
    check.set_defaults(func=_check)


def _checks(text: str) -> tuple[str, ...]:
    from secureserve.check import CHECKS  # noqa: PLC0415

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in CHECKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{(unknown or [text])[0]!r} is not a check; choose from {','.join(CHECKS)}"
        )
    return names


def _check(args: argparse.Namespace) -> int:
    from secureserve.check import run_check  # noqa: PLC0415
    from secureserve.check.progress import progress_for  # noqa: PLC0415
    from secureserve.check.report import FILES, to_json, write_report  # noqa: PLC0415

    config = args.config
    if config is not None and not config.is_absolute():
        config = Path.cwd() / config
    try:
        # a run that stops half-way must not leave an older report looking current
        for name in FILES:
            (args.report / name).unlink(missing_ok=True)
        report = run_check(
            args.path.resolve(),
            args.data,  # as given: the report names it so
            config=config,
            label_column=args.labels,
            sensitive=tuple(args.sensitive),
            only=args.only,
            progress=progress_for(sys.stderr),
            model_name=args.model,
        )
        files = write_report(report, args.report)
        if args.json:
            sys.stdout.buffer.write(to_json(report))
        else:
            print("\n".join(report.lines()))
            print(f"report: {args.report / 'report.html'}")
        if all(check.passed is None for check in report.checks):
            print("note: no check was judged; nothing was gated", file=sys.stderr)
        if args.mlflow:
            from secureserve.check.tracking import log_to_mlflow  # noqa: PLC0415

            run_id = log_to_mlflow(report, files, args.mlflow)
            print(f"mlflow run: {run_id}", file=sys.stderr if args.json else sys.stdout)
    except (SecureServeError, OSError) as exc:
        return _could_not_run(args, str(exc))
    except Exception as exc:  # noqa: BLE001 - the handler's own failures: the check did not run
        return _could_not_run(
            args, f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
        )
    return 0 if report.passed else EXIT_ERROR


def _could_not_run(args: argparse.Namespace, why: str) -> int:
    """Exit 2: the check could not run, which a CI step must not mistake for a verdict."""
    if args.debug:
        traceback.print_exc()
    print(f"secureserve: error: the check could not run: {why}", file=sys.stderr)
    return EXIT_USAGE
