"""``secureserve keys create / list / revoke``."""

from __future__ import annotations

import argparse
import difflib
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from secureserve.cli._common import settings_from
from secureserve.config import Settings
from secureserve.errors import ConfigError
from secureserve.keys import ROLES, create_key, list_keys, revoke_key


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``keys`` to the command line."""
    keys = commands.add_parser("keys", help="API keys (only hashes are stored)")
    keys_sub = keys.add_subparsers(metavar="ACTION", required=True)
    create = keys_sub.add_parser("create", parents=[common], help="create a key; shown once")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument(
        "--role",
        action="append",
        required=True,
        metavar="ROLE",
        help=f"a role: {', '.join(ROLES)}, or a custom role name such as analyst "
        "(selects an output policy); repeat for several",
    )
    create.add_argument(
        "--model",
        action="append",
        help="restrict to this model; repeat for several (default: every model)",
    )
    create.add_argument("--expires-in-days", type=int, help="expiry, in days from now")
    create.set_defaults(func=_keys_create)
    listing = keys_sub.add_parser("list", parents=[common], help="list keys (never secrets)")
    listing.set_defaults(func=_keys_list)
    revoke = keys_sub.add_parser("revoke", parents=[common], help="revoke a key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_keys_revoke)


def _keys_create(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    expires = None
    if args.expires_in_days is not None:
        if args.expires_in_days < 1:
            raise ConfigError("--expires-in-days must be at least 1.")
        expires = timedelta(days=args.expires_in_days)
    key = create_key(
        settings.auth.keys_file,
        name=args.name,
        roles=tuple(args.role),
        models=tuple(args.model) if args.model else None,
        expires_in=expires,
    )
    scope = f"; models: {', '.join(key.record.models)}" if key.record.models is not None else ""
    print(
        f"created key {key.record.id} ({key.record.name}; roles: {', '.join(key.record.roles)}"
        f"{scope})",
        file=sys.stderr,
    )
    for warning in _doubtful(settings, tuple(args.role), tuple(args.model or ())):
        print(f"warning: {warning}", file=sys.stderr)
    print("the secret below is shown once; store it in your secret manager:", file=sys.stderr)
    print(key.secret)
    return 0


def _doubtful(settings: Settings, roles: tuple[str, ...], models: tuple[str, ...]) -> list[str]:
    """What about a new key's roles and models this project would never match (typos).

    A role is either one of secureserve's or a custom role some output policy of the
    project names; a model, one of its ``[models.<name>]`` tables (a project of one
    ``[model]`` is named by its handler class, which is not imported here).
    """
    custom = {role for model in settings.served().values() for role in model.output.roles}
    doubts = [
        f"role {role!r} is not one of secureserve's ({', '.join(ROLES)}) and no output policy "
        "in this project names it: the key gets nothing from it"
        + _did_you_mean(role, [*ROLES, *sorted(custom)])
        for role in roles
        if role not in ROLES and role not in custom
    ]
    served = list(settings.models)  # empty for a project of one [model]: its name is unknown
    doubts += [
        f"model {model!r} is not served by this project ({', '.join(served)})"
        + _did_you_mean(model, served)
        for model in models
        if served and model not in served
    ]
    if doubts:
        doubts.append("the key was created as asked: revoke it with `secureserve keys revoke`")
    return doubts


def _did_you_mean(name: str, known: list[str]) -> str:
    """``; did you mean 'x'?`` for the known name closest to ``name``, or nothing."""
    near = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {near[0]!r}?" if near else ""


def _keys_list(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    now = datetime.now(UTC)
    records = list_keys(settings.auth.keys_file)
    if not records:
        print(f"no keys in {settings.auth.keys_file}; create one with `secureserve keys create`.")
    for r in records:
        state = "revoked" if r.revoked else "expired" if not r.active(now) else "active"
        models = ",".join(r.models) if r.models is not None else "*"
        expires = r.expires.date().isoformat() if r.expires else "never"
        print(
            f"{r.id}  {state:<7}  roles={','.join(r.roles)}  models={models}  "
            f"expires={expires}  name={r.name}"
        )
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    record = revoke_key(settings.auth.keys_file, args.key_id)
    print(f"revoked key {record.id} ({record.name}); running servers refuse it within a second.")
    return 0
