"""The ``secureserve`` command: a thin layer over library functions.

Every failure the user can fix is a ``SecureServeError`` and prints as one
paragraph on stderr with a non-zero exit code; a traceback appears only with
``--debug``. Secrets generated here (API keys) are printed once to the terminal
(stderr for ``run --dev``) and never logged. Paths given on the command line are
relative to the working directory, like any shell tool; defaults live in the
project folder (where secureserve.toml is). Each submodule registers its
commands: ``serve`` (run, certs), ``keys``, ``models`` (lock, sign, verify,
encrypt, decrypt and their keys), ``profile``, ``check``, ``audit`` (verify, key),
``new`` and ``doctor``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from secureserve import __version__
from secureserve.cli import audit, check, doctor, keys, models, new, profile, serve
from secureserve.cli._common import EXIT_ERROR, EXIT_USAGE
from secureserve.errors import SecureServeError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except SecureServeError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"secureserve: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # pragma: no cover - interactive
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, help="path to secureserve.toml (default: ./secureserve.toml)"
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")

    parser = argparse.ArgumentParser(
        prog="secureserve", description="Serve ML models over HTTPS, secure by default."
    )
    parser.add_argument("--version", action="version", version=f"secureserve {__version__}")
    parser.set_defaults(debug=False, func=lambda _: _usage(parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in (new, serve, keys, models, profile, check, audit, doctor):
        module.register(commands, common)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE
