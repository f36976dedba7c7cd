"""``secureserve doctor [PATH] [--json] [--strict]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from secureserve.cli._common import EXIT_ERROR
from secureserve.doctor import Severity, diagnose, format_report


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``doctor`` to the command line."""
    doctor = commands.add_parser(
        "doctor",
        parents=[common],
        help="report what in a project is weaker than the defaults",
    )
    doctor.add_argument(
        "path", nargs="?", type=Path, default=Path(), help="project folder (default: .)"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--strict", action="store_true", help="exit non-zero on warnings as well as errors"
    )
    doctor.add_argument(
        "--handler",
        action="store_true",
        help="also import the handler (runs the project's code) to check its output "
        "policy and feature view",
    )
    doctor.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    config = args.config
    if config is not None and not config.is_absolute():
        config = Path.cwd() / config  # like every command: relative to the working directory
    report = diagnose(args.path, config=config, debug=args.debug, handler=args.handler)
    if args.json:
        sys.stdout.buffer.write(report.to_json() + b"\n")
    else:
        print(format_report(report))
    failed = not report.ok or (args.strict and report.count(Severity.WARNING) > 0)
    return EXIT_ERROR if failed else 0
