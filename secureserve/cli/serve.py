"""``secureserve run``, ``secureserve certs dev`` and ``secureserve certs request``."""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import sys
from pathlib import Path
from typing import Any

from secureserve.audit import generate_digest_key, load_digest_key
from secureserve.cli._common import DEV_DIR, import_handler, settings_from
from secureserve.config import Settings
from secureserve.errors import ConfigError
from secureserve.keys import create_key, list_keys
from secureserve.model import Model


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``run`` and ``certs`` to the command line."""
    run = commands.add_parser("run", parents=[common], help="serve a model over HTTPS")
    run.add_argument("app", nargs="?", help="handler as module:Class (default: [model] handler)")
    run.add_argument(
        "--dev",
        action="store_true",
        help="local development: own CA and "
        "certificate under .secureserve/, a fresh API key, 127.0.0.1 only",
    )
    run.add_argument("--host", help="bind address ([server] host)")
    run.add_argument("--port", type=int, help="port ([server] port)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=_run)

    certs = commands.add_parser("certs", help="TLS certificates")
    certs_sub = certs.add_subparsers(metavar="ACTION", required=True)
    dev = certs_sub.add_parser(
        "dev",
        parents=[common],
        help="write the local development CA and certificate under .secureserve/",
    )
    dev.set_defaults(func=_certs_dev)
    request = certs_sub.add_parser(
        "request",
        parents=[common],
        help="write a new key and a certificate signing request (CSR) for a company CA",
        description="Write HOST.key (EC P-256, mode 0600) and HOST.csr for a CA to sign. "
        "Neither file is ever overwritten.",
    )
    request.add_argument(
        "--name",
        required=True,
        metavar="HOST",
        help="the server's name (common name and first subject alternative name)",
    )
    request.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address the certificate must carry; repeat for several",
    )
    request.add_argument(
        "--out-dir",
        type=Path,
        default=Path(),
        metavar="DIR",
        help="folder for HOST.key and HOST.csr (default: the current folder)",
    )
    request.set_defaults(func=_certs_request)


def _run(args: argparse.Namespace) -> int:
    made = _DevFiles()
    try:
        return _start_and_serve(args, made)
    except BaseException:
        made.remove()
        raise


def _start_and_serve(args: argparse.Namespace, made: _DevFiles) -> int:
    from secureserve.app import create_app  # noqa: PLC0415 - keep `keys list` fast
    from secureserve.devcerts import ensure_dev_certificates  # noqa: PLC0415
    from secureserve.logs import configure_logging, get_logger  # noqa: PLC0415
    from secureserve.server import bind_socket, serve  # noqa: PLC0415
    from secureserve.tls import server_context  # noqa: PLC0415

    server: dict[str, Any] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    overrides: dict[str, dict[str, Any]] = {"server": server}
    if args.log_level:
        overrides["logging"] = {"level": args.log_level}
    settings = settings_from(args, overrides)
    dev_certs = None
    if args.dev:
        made.note(settings.project_dir / DEV_DIR)
        settings, dev_certs = _dev_settings(settings, ensure_dev_certificates)
    if settings.tls.cert is None or settings.tls.key is None:
        raise ConfigError(
            "no TLS certificate: set [tls] cert and key in secureserve.toml (PEM "
            "files), or run `secureserve run --dev` for a local development "
            "certificate. secureserve never serves plaintext."
        )
    context = server_context(
        cert=settings.tls.cert,
        key=settings.tls.key,
        min_version=settings.tls.min_version,
        client_ca=settings.tls.client_ca,
    )
    handlers = _handlers(args.app, settings)
    # --dev: readable lines for a terminal, unless [logging] format says otherwise
    log_format = settings.logging.format or ("console" if args.dev else "json")
    configure_logging(settings.logging.level, log_format=log_format)
    served = handlers if settings.models else handlers[next(iter(handlers))]
    app = create_app(
        served, config=settings, audit_key=_audit_key(settings, dev=args.dev), dev=args.dev
    )
    sock = bind_socket(settings.server.host, settings.server.port)
    # Minted last, once nothing else can fail: the running key store picks it up.
    banner = _dev_banner(settings, dev_certs) if dev_certs is not None else None
    get_logger().info(
        "starting",
        host=settings.server.host,
        port=settings.server.port,
        models={name: handler.version for name, handler in handlers.items()},
        dev=args.dev,
        mtls=settings.tls.client_ca is not None,
        tls_min_version=settings.tls.min_version,
    )
    if banner:
        print(banner, file=sys.stderr, flush=True)
    made.keep()  # the server starts with them
    serve(app, settings, context, sock)
    return 0


class _DevFiles:
    """What ``run --dev`` adds to ``.secureserve/``, removed again if it fails to start.

    A failed first run leaves no folder behind; in a folder that was there before, only
    the entries this run added go (a CA the developer already trusts, a digest key
    already in use and certificates it renewed stay).
    """

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._existed = False
        self._before: frozenset[Path] = frozenset()

    def note(self, folder: Path) -> None:
        """Remember what is in ``folder`` now, before anything is written there."""
        self._folder = folder
        self._existed = folder.is_dir()
        self._before = frozenset(folder.iterdir()) if self._existed else frozenset()

    def keep(self) -> None:
        """The server starts with these files: nothing is removed any more."""
        self._folder = None

    def remove(self) -> None:
        """Remove what was added to the folder since :meth:`note` (the folder, if new)."""
        folder = self._folder
        if folder is None or folder.is_symlink() or not folder.is_dir():
            return
        added = [folder] if not self._existed else sorted(set(folder.iterdir()) - self._before)
        for path in added:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _handlers(app: str | None, settings: Settings) -> dict[str, type[Model[Any, Any]]]:
    """Each served model's handler class by name; ``APP`` replaces ``[model] handler``."""
    if not settings.models:
        handler = import_handler(app or settings.model.handler, settings.project_dir)
        return {handler.name: handler}
    if app is not None:
        raise ConfigError(
            f"APP {app}: these settings serve several models, each with its own handler in "
            "its [models.<name>] table; run without APP."
        )
    return {
        name: import_handler(model.handler, settings.project_dir)
        for name, model in settings.models.items()
    }


def _audit_key(settings: Settings, *, dev: bool) -> bytes | None:
    """The configured digest key; under --dev a local one is made once and reused."""
    if settings.audit.digest_key_file is not None:
        return None  # create_app loads it
    if not dev:
        raise ConfigError(
            "[audit] digest_key_file is not set: the audit log's input/output digests need a "
            "key that outlives the process. Create one with `secureserve audit key new "
            "secrets/audit-digest.key` and set [audit] digest_key_file to it."
        )
    path = settings.project_dir / DEV_DIR / "audit-digest.key"
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        generate_digest_key(path)
    return load_digest_key(path)


def _dev_settings(settings: Settings, ensure: Any) -> tuple[Settings, Any]:
    """Loopback only, with the development certificates (made or reused)."""
    import msgspec  # noqa: PLC0415

    host = settings.server.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"--dev binds 127.0.0.1 only, but [server] host is {host!r}; drop the "
            "host setting or serve without --dev with a real certificate."
        )
    certs = ensure(settings.project_dir / DEV_DIR)
    tls = msgspec.structs.replace(settings.tls, cert=certs.cert, key=certs.key)
    server = msgspec.structs.replace(settings.server, host="127.0.0.1")
    return msgspec.structs.replace(settings, tls=tls, server=server), certs


def _dev_banner(settings: Settings, certs: Any) -> str:
    """Mint a fresh dev key (revoking the previous one) and describe how to call the server."""
    from secureserve.docs_page import DOCS_EXTRA, installed  # noqa: PLC0415

    keys_file = settings.auth.keys_file
    earlier = any(r.dev and r.revoked is None for r in list_keys(keys_file))
    key = create_key(keys_file, name="dev", roles=("predict", "metrics", "admin"), dev=True)
    url = f"https://127.0.0.1:{settings.server.port}"
    docs = (
        f"{url}/docs   (the interactive API page: paste the key there)"
        if installed()
        else f"{url}/docs needs Swagger UI: {DOCS_EXTRA}"
    )
    return (
        "\nsecureserve development server (--dev: local CA, 127.0.0.1 only)\n"
        f"  URL:     {url}\n"
        f"  CA:      {certs.ca_cert}\n"
        f"  API key: {key.secret}   (shown once"
        + ("; the previous dev key is revoked)\n" if earlier else ")\n")
        + f"  Docs:    {docs}\n"
        "  Try:\n"
        f"    curl --cacert {certs.ca_cert} -H 'Authorization: Bearer {key.secret}' "
        f"{url}/v1/models\n"
    )


def _certs_dev(args: argparse.Namespace) -> int:
    from secureserve.devcerts import ensure_dev_certificates  # noqa: PLC0415

    settings = settings_from(args)
    certs = ensure_dev_certificates(settings.project_dir / DEV_DIR)
    print(
        f"CA certificate:     {certs.ca_cert}\nserver certificate: {certs.cert}\n"
        f"server key:         {certs.key} (mode 0600)"
    )
    return 0


def _certs_request(args: argparse.Namespace) -> int:
    from secureserve.csr import request_certificate  # noqa: PLC0415

    made = request_certificate(args.name, sans=args.san, out_dir=args.out_dir)
    chain = made.key.with_suffix(".chain.pem")
    print(
        f"private key: {made.key} (mode 0600; it stays here: never send it, never commit it)\n"
        f"request:     {made.csr} (for {', '.join(made.names)})\n"
        "\n"
        "Next:\n"
        f"  1. Send {made.csr} to your CA. Keep {made.key} where it is.\n"
        "  2. Save what the CA returns as one PEM file: the server certificate first, then\n"
        "     the intermediate certificate(s), not the root. For example:\n"
        f"       cat server.crt intermediate.crt > {chain}\n"
        "  3. Point secureserve at both files (in secureserve.toml, whose relative paths\n"
        "     start from its folder, or as SECURESERVE_TLS__CERT and SECURESERVE_TLS__KEY):\n"
        "       [tls]\n"
        f'       cert = "{chain.as_posix()}"\n'
        f'       key = "{made.key.as_posix()}"\n'
        "  4. `secureserve doctor` checks that the certificate matches the key and is valid."
    )
    return 0
