"""``secureserve check [PATH] --data FILE``: the model's checks as a CI gate (exit 1 on failure)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from secureserve.cli._common import EXIT_ERROR


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``check`` to the command line."""
    from secureserve.check import CHECKS  # noqa: PLC0415 - keeps the CLI start quick

    check = commands.add_parser(
        "check",
        parents=[common],
        help="test the model (fairness, data drift) against [check] thresholds; exit 1 on failure",
    )
    check.add_argument("path", nargs="?", type=Path, default=Path(), help="project (default: .)")
    check.add_argument("--data", type=Path, required=True, help="labelled data: .jsonl or .csv")
    check.add_argument("--labels", default="label", help="the label column of a .csv (label)")
    check.add_argument(
        "--sensitive", action="append", default=[], metavar="COLUMN", help="a group column"
    )
    check.add_argument(
        "--only", help=f"comma-separated checks to run (default: all of {','.join(CHECKS)})"
    )
    check.add_argument(
        "--report", type=Path, default=Path("check-report"), help="report folder (check-report)"
    )
    check.add_argument("--json", action="store_true", help="print report.json instead of lines")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from secureserve.check import CHECKS, run_check, to_json  # noqa: PLC0415

    only = tuple(n.strip() for n in args.only.split(",") if n.strip()) if args.only else CHECKS
    config = args.config
    if config is not None and not config.is_absolute():
        config = Path.cwd() / config
    report = run_check(
        args.path.resolve(),
        args.data.resolve(),
        config=config,
        label_column=args.labels,
        sensitive=tuple(args.sensitive),
        only=only,
    )
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "report.json").write_bytes(to_json(report))
    (args.report / "report.md").write_text(report.markdown(), encoding="utf-8")
    if args.json:
        sys.stdout.buffer.write(to_json(report))
    else:
        print("\n".join(report.lines()))
        print(f"report: {args.report / 'report.md'}")
    return 0 if report.passed else EXIT_ERROR
