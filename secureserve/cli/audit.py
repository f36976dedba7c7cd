"""``secureserve audit verify LOG`` and ``secureserve audit key new PATH``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from secureserve.audit import chain_files, format_result, generate_digest_key, verify_chain
from secureserve.cli._common import EXIT_ERROR
from secureserve.errors import ConfigError


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``audit`` to the command line."""
    audit = commands.add_parser("audit", help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(metavar="ACTION", required=True)
    verify = audit_sub.add_parser(
        "verify", parents=[common], help="check the chain of LOG and its rotated files"
    )
    verify.add_argument("log", type=Path, help="the current audit file, e.g. audit/audit.jsonl")
    verify.add_argument(
        "--allow-pruned",
        action="store_true",
        help=(
            "accept a chain whose start no audit-pruned record accounts for (older files "
            "removed by hand); files removed by [audit] max_files verify without it"
        ),
    )
    verify.set_defaults(func=_verify)
    key = audit_sub.add_parser("key", help="the key of the input/output digests")
    key_sub = key.add_subparsers(metavar="ACTION", required=True)
    new = key_sub.add_parser("new", parents=[common], help="create a 256-bit key file (0600)")
    new.add_argument("path", type=Path)
    new.set_defaults(func=_key_new)


def _verify(args: argparse.Namespace) -> int:
    files = chain_files(args.log)
    if not files:
        raise ConfigError(f"{args.log} does not exist (nor any rotated file of it).")
    result = verify_chain(files, require_genesis=not args.allow_pruned)
    print(format_result(result))
    return 0 if result.ok else EXIT_ERROR


def _key_new(args: argparse.Namespace) -> int:
    path: Path = args.path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    generate_digest_key(path)
    print(f"wrote {path} (mode 0600); set [audit] digest_key_file to it on the server")
    return 0
