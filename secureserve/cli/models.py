"""Model-file release commands: lock, sign, verify, encrypt, decrypt and their keys."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from secureserve import encryption, signing
from secureserve.cli._common import EXIT_ERROR, settings_from
from secureserve.errors import ConfigError
from secureserve.lockfile import LOCK_FILENAME, SIGNATURE_FILENAME, read_lock_file, write_lock
from secureserve.release import (
    LockReport,
    VerifyReport,
    lock_project,
    signing_public_key,
    verify_project,
)


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the model-file commands to the command line."""
    lock = commands.add_parser(
        "lock", parents=[common], help="record sha256 and size of every model file"
    )
    lock.set_defaults(func=_lock)

    sign = commands.add_parser("sign", parents=[common], help="sign secureserve.lock (Ed25519)")
    sign.add_argument("--private-key", type=Path, required=True, help="Ed25519 private key PEM")
    sign.set_defaults(func=_sign)

    verify = commands.add_parser(
        "verify", parents=[common], help="check the lock's signature and every model file"
    )
    verify.add_argument(
        "--public-key",
        type=Path,
        help="Ed25519 public key PEM (default: signing_public_key of [model] or [models.*])",
    )
    verify.set_defaults(func=_verify)

    signing_key = commands.add_parser("signing-key", help="Ed25519 signing keys")
    signing_sub = signing_key.add_subparsers(metavar="ACTION", required=True)
    new_signing = signing_sub.add_parser("new", parents=[common], help="create a key pair")
    new_signing.add_argument(
        "--private-key", type=Path, help="default: secrets/signing-key.pem in the project"
    )
    new_signing.add_argument(
        "--public-key", type=Path, help="default: signing-key.pub.pem in the project"
    )
    new_signing.set_defaults(func=_signing_key_new)

    encrypt = commands.add_parser(
        "encrypt", parents=[common], help="encrypt a model file at rest (AES-256-GCM)"
    )
    encrypt.add_argument("file", type=Path)
    encrypt.add_argument("--key-file", type=Path, required=True)
    encrypt.add_argument("--output", type=Path, help="default: FILE.enc")
    encrypt.set_defaults(func=_encrypt)

    decrypt = commands.add_parser("decrypt", parents=[common], help="decrypt FILE.enc to a file")
    decrypt.add_argument("file", type=Path)
    decrypt.add_argument("--key-file", type=Path, required=True)
    decrypt.add_argument("--output", type=Path, help="default: FILE without .enc")
    decrypt.set_defaults(func=_decrypt)

    encryption_key = commands.add_parser("encryption-key", help="keys for encrypted model files")
    encryption_sub = encryption_key.add_subparsers(metavar="ACTION", required=True)
    new_encryption = encryption_sub.add_parser(
        "new", parents=[common], help="create a random 256-bit key file (mode 0600)"
    )
    new_encryption.add_argument("path", type=Path)
    new_encryption.set_defaults(func=_encryption_key_new)


def _lock(args: argparse.Namespace) -> int:
    report = lock_project(settings_from(args))
    count = len(report.files)
    sections = [section for section in report.folders if section is not None]
    where = f" in {len(sections)} model folders" if sections else ""
    print(f"wrote {report.path} ({_files(count)}{where})")
    if sections:
        for section in sections:
            print(f"{section} ({_files(len(report.folders[section]))})")
            _print_entries(report, section, indent="    ")
    else:
        _print_entries(report, None, indent="  ")
    if report.stale_signature is not None:
        print(
            f"{report.stale_signature} no longer matches: sign again with "
            "`secureserve sign --private-key KEY`",
            file=sys.stderr,
        )
    return 0


def _files(count: int) -> str:
    return f"{count} file{'' if count == 1 else 's'}"


def _print_entries(report: LockReport, section: str | None, *, indent: str) -> None:
    for name, entry in report.folders[section].items():
        print(f"{indent}{entry.sha256[:16]}  {entry.size:>12}  {entry.format:<12} {name}")


def _sign(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    path = settings.project_dir / LOCK_FILENAME
    _, data = read_lock_file(path)  # refuse to sign a lock that does not parse (v1 or v2)
    target = path.with_name(SIGNATURE_FILENAME)
    write_lock(target, signing.sign(data, args.private_key))
    print(f"wrote {target}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    public_key = args.public_key or signing_public_key(settings)
    report = verify_project(settings, public_key)
    if public_key is None:
        print("no public key given: the signature was not checked", file=sys.stderr)
    elif report.key_id is not None:
        print(f"signature: valid (key {report.key_id})")
    print(f"files: {report.checked} match {LOCK_FILENAME}")
    _print_folders(report)
    _print_unlisted(report.unlisted)
    for section in report.unused:
        print(
            f"note: {LOCK_FILENAME} has a section for {section}, which no model serves from "
            "(the next `secureserve lock` drops it)",
            file=sys.stderr,
        )
    for problem in report.problems:
        print(f"secureserve: error: {problem}", file=sys.stderr)
    return 0 if report.ok else EXIT_ERROR


def _print_unlisted(unlisted: list[str]) -> None:
    """Files in the model folders that the lock does not list: an error naming each."""
    if not unlisted:
        return
    print(
        f"secureserve: error: {_files(len(unlisted))} in the model folders "
        f"{'is' if len(unlisted) == 1 else 'are'} not in {LOCK_FILENAME} (no model can open "
        "them, yet they sit beside the release):",
        file=sys.stderr,
    )
    for name in unlisted:
        print(f"  {name if name.isprintable() else repr(name)}", file=sys.stderr)
    print(
        "remove them, or run `secureserve lock` (and `secureserve sign`) if they belong to "
        "the release.",
        file=sys.stderr,
    )


def _print_folders(report: VerifyReport) -> None:
    """With several model folders, what matched in each (a v1 lock has one, unnamed)."""
    for found in report.folders:
        folder = found.folder
        if folder.section is not None:
            tables = ", ".join(folder.tables)
            print(f"  {folder.section} ({tables}): {_files(found.checked)} match")


def _signing_key_new(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    private = args.private_key or settings.project_dir / "secrets" / "signing-key.pem"
    public = args.public_key or settings.project_dir / "signing-key.pub.pem"
    private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_id = signing.generate_signing_key(private, public)
    print(f"key {key_id}\n  private: {private} (mode 0600; keep it out of the repository)")
    print(f"  public:  {public} (set signing_public_key of [model] or each [models.*] to it)")
    return 0


def _encrypt(args: argparse.Namespace) -> int:
    key = encryption.load_key(key_file=args.key_file)
    target = args.output or args.file.with_name(args.file.name + ".enc")
    encryption.encrypt_file(args.file, target, key)
    print(
        f"wrote {target}; the plaintext {args.file} is untouched: delete it where it must "
        "not stay, then run `secureserve lock`"
    )
    return 0


def _decrypt(args: argparse.Namespace) -> int:
    key = encryption.load_key(key_file=args.key_file)
    if args.output is None and args.file.suffix != ".enc":
        raise ConfigError(f"{args.file} does not end in .enc; name the result with --output.")
    target = args.output or args.file.with_suffix("")
    encryption.decrypt_file(args.file, target, key)
    print(f"wrote {target} (mode 0600)")
    return 0


def _encryption_key_new(args: argparse.Namespace) -> int:
    path: Path = args.path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    encryption.generate_key(path)
    print(
        f"wrote {path} (mode 0600); set encryption_key_file of [model] (or [models.<name>]) "
        "to it on the server"
    )
    return 0
