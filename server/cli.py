"""`chextriev serve`: the production server (gunicorn, supervised pre-fork), loopback by default.

Settings come from, lowest first: defaults < configuration file (--config FILE or
CHEXTRIEV_CONFIG, TOML) < environment (CHEXTRIEV_*) < these flags. `--print-config` shows
the result and where each value came from. A non-loopback host needs a bearer token
(token_file, or CHEXTRIEV_AUTH_TOKEN) and HTTPS: --tls-certificate with --tls-key (served by
gunicorn), or --tls-proxy naming the reverse proxy in front that terminates TLS; the server
refuses to start otherwise.

`--workers N` runs N processes, each loading model, index and catalog after the fork. The
master replaces a worker that dies or hangs (silent, or a request running longer than
--timeout), reloads the configuration on SIGHUP (new workers, old ones stopped gracefully),
stops gracefully on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from chextriev.cli_options import apply_conventions, device_name
from chextriev.errors import ChextrievError
from server.config import (
    FROM_ENVIRONMENT,
    SETTINGS,
    ConfigError,
    describe,
    resolve_config,
    resolve_settings,
)

log = logging.getLogger(__name__)

#: Settings ``chextriev serve`` cannot run without (the checkpoint and detector default to the
#: ones the index bundle records: :mod:`indexer.bundle`).
REQUIRED = ("INDEX_DIR",)
#: Paths that must exist when given.
EXISTING = ("CHECKPOINT", "INDEX_DIR", "DETECTOR")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the similar-case search API and web page",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="TOML configuration file (default: CHEXTRIEV_CONFIG, else none)")
    for setting in SETTINGS:
        default = "required" if setting.key in REQUIRED else f"default {setting.default_doc or setting.default}"
        parser.add_argument(setting.flag, dest=setting.name, default=None,
                            type=setting.flag_type or {"int": int, "device": device_name}.get(setting.kind, str),
                            metavar=None if setting.choices else setting.metavar,
                            choices=setting.choices,
                            help=f"{setting.help} (env {setting.env_var}; {default})")
    parser.add_argument("--print-config", action=argparse.BooleanOptionalAction, default=False,
                        help="print the effective settings and where each came from, then exit")
    parser.set_defaults(func=serve)


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, by ``app.config`` key."""
    return {setting.key: getattr(args, setting.name) for setting in SETTINGS
            if getattr(args, setting.name, None) is not None}


def config_file(args: argparse.Namespace) -> Any:
    return args.config if args.config is not None else FROM_ENVIRONMENT


def resolve_for_serving(args: argparse.Namespace) -> dict[str, Any]:
    """The app settings for ``args`` (re-read from file and environment on every call), with
    the required paths present."""
    values = resolve_config({**given_flags(args), "CONFIG_FILE": config_file(args), "LOAD": "sync"})
    missing = [setting for setting in SETTINGS if setting.key in REQUIRED and not values[setting.key]]
    if missing:
        raise ConfigError("missing " + ", ".join(
            f"{s.name} ({s.flag}, {s.env_var} or the configuration file)" for s in missing))
    for setting in SETTINGS:
        if setting.key in EXISTING and values[setting.key] and not Path(values[setting.key]).exists():
            raise ConfigError(f"{setting.name} {values[setting.key]} does not exist")
    check_bundle(values)
    return values


def check_bundle(values: dict[str, Any]) -> None:
    """Fail before any worker starts when the index folder cannot name what was not given:
    no index in it, or a checkpoint (detector) the bundle records that is not there."""
    from indexer.bundle import BundleError, read_bundle
    from indexer.catalog import IndexStateError

    try:
        bundle = read_bundle(values["INDEX_DIR"])
        if not values["CHECKPOINT"]:
            bundle.checkpoint_file()
        if not values["DETECTOR"]:
            bundle.detector_file()
    except (BundleError, IndexStateError) as error:
        raise ConfigError(str(error)) from None


def check_port_free(host: str, port: int) -> None:
    """Fail fast, with the reason, when ``host:port`` cannot be bound (gunicorn would retry)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            raise ChextrievError(f"cannot bind {host}:{port}: {error.strerror}") from None


def serve(args: argparse.Namespace) -> int:
    if args.print_config:
        print(describe(resolve_settings(given_flags(args), os.environ, config_file(args))))
        return 0
    from server.serving import serve as run_server
    from server.serving import use_log_format

    values = resolve_for_serving(args)
    check_port_free(values["HOST"], values["PORT"])
    use_log_format()
    scheme = "https" if values["TLS_CERTIFICATE"] else "http"
    behind = f", TLS terminated by the proxy at {', '.join(values['TRUSTED_PROXIES'])}" \
        if values["TRUSTED_PROXIES"] and scheme == "http" else ""
    log.info("serving on %s://%s:%d/ (%d worker(s) x %d threads, timeout %d s%s%s)", scheme,
             values["HOST"], values["PORT"], values["WORKERS"], values["THREADS"], values["TIMEOUT"],
             ", bearer token required" if values["AUTH_TOKEN"] else "", behind)
    run_server(lambda: resolve_for_serving(args), settings=values)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m server.cli --checkpoint ...``: the same as ``chextriev serve ...``."""
    parser = argparse.ArgumentParser(prog="python -m server.cli")
    register(parser.add_subparsers(dest="command"))
    apply_conventions(parser)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    from chextriev.logs import configure_logging

    configure_logging()
    try:
        return int(args.func(args) or 0)
    except ChextrievError as error:
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
