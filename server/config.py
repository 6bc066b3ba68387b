"""Server configuration: one table of settings, four layers, and the bind-address safety rule.

Every setting has a name (its key in a TOML configuration file), a command-line flag
(``--index-dir`` for ``index_dir``), an environment variable (``CHEXTRIEV_INDEX_DIR``) and a key
in ``app.config`` (``INDEX_DIR``); :data:`SETTINGS` lists them all. One precedence, lowest first:

    defaults  <  configuration file  <  environment (CHEXTRIEV_*)  <  flags / explicit config

The file is named by ``--config FILE`` or ``CHEXTRIEV_CONFIG``; it is TOML with the settings
at the top level (an unknown key is an error that lists the valid ones; relative paths in it
are resolved against the file's folder), so a deployment is one file::

    checkpoint = "/srv/chextriev/v6/best.ckpt"
    index_dir = "/srv/chextriev/index"
    host = "0.0.0.0"
    token_file = "/etc/chextriev/token"
    workers = 4

The bearer token comes from ``token_file`` (any layer) or from ``CHEXTRIEV_AUTH_TOKEN`` (the
token itself, environment only, never in a file); when both are set the higher layer wins.
Whatever its source (also ``AUTH_TOKEN`` given to ``create_app``) it must be at least
:data:`MIN_TOKEN_LENGTH` printable ASCII characters without spaces. The pseudonymisation key the
indexer used (for ``exclude_same_patient`` on uploads) comes the same way: ``pseudonym_key_file``
or ``CHEXTRIEV_PSEUDONYM_KEY``, into ``PSEUDONYM_KEY``.

The bind rule (:func:`check_bind_safety`: a non-loopback address needs a token, and HTTPS:
``tls_certificate`` and ``tls_key`` served by gunicorn, or ``tls_proxy`` naming the reverse proxy
in front that terminates TLS) holds for every entry point: ``chextriev serve`` and its gunicorn workers, ``create_app`` (the ``host`` setting)
and ``flask --app server run --host ...`` (the ``--host`` of the running ``flask run`` is read
from its command line context while it loads the app, so a public bind without a token refuses
to start; there its own ``--cert`` is the TLS); and per request, a server without a token answers
clients on other machines 403 (:mod:`server.auth`), whatever WSGI server runs it. With
``tls_proxy`` the app trusts ``X-Forwarded-For``, ``-Proto`` and ``-Host`` from those peers only
(:class:`server.proxy.TrustedProxies`); from anyone else they are dropped.

The PACS (search by reference, reports filed back; :mod:`server.reference`) is configured once,
with the indexer's settings: ``pacs_url``, a bearer token (``pacs_token_file`` or
``CHEXTRIEV_DICOMWEB_TOKEN``) or basic auth (``pacs_user`` with ``pacs_password_file`` or
``CHEXTRIEV_DICOMWEB_PASSWORD``), ``pacs_ca_bundle``; :func:`pacs_connection` builds it.
Keys that are not settings (only through ``create_app(config)`` or the environment):

* ``AUTH_TOKEN``: the bearer token required on every ``/api`` route when set.
* ``MAX_CONTENT_LENGTH``: upload limit in bytes (default: ``max_upload_mb`` MiB).
* ``MAX_FORM_PARTS`` (default 100) and ``MAX_FORM_MEMORY_SIZE`` (default 500 kB): the most parts of a
  multipart form and the largest non-file field (413 above, saying which limit).
* ``LOAD``: ``"background"`` (default: load in a thread, ``/readyz`` says 503 until done),
  ``"sync"`` (load before ``create_app`` returns; each ``chextriev serve`` worker does this) or
  ``"manual"`` (the caller calls ``app.extensions["chextriev"].load()``, used by tests).
* ``SECRET_KEY``: from ``CHEXTRIEV_SECRET_KEY`` or random per process (no fixed default).
* ``TRUSTED_PROXIES`` (derived from ``tls_proxy``): the proxy's IP networks, a tuple.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chextriev.cli_options import DEVICE_METAVAR, compile_mode, device_name
from chextriev.compiled import COMPILE_MODES, parse_compile
from chextriev.errors import ChextrievError, UnknownNameError
from chextriev.precision import PRECISIONS

ENV_PREFIX = "CHEXTRIEV_"
CONFIG_ENV = "CHEXTRIEV_CONFIG"
TOKEN_ENV = "CHEXTRIEV_AUTH_TOKEN"
LOAD_MODES = ("background", "sync", "manual")
MIB = 1024 * 1024
#: The shortest bearer token accepted, whatever its source.
MIN_TOKEN_LENGTH = 16
KEY_ENV = "CHEXTRIEV_PSEUDONYM_KEY"
#: Multipart limits: the API's forms have an image and a few short fields. (The field-size
#: limit must stay well above Werkzeug's 64 kB read chunk: it bounds the parser's buffer too.)
MAX_FORM_PARTS = 100
MAX_FORM_MEMORY_SIZE = 500_000


class ConfigError(ChextrievError):
    """A server setting that is missing, malformed or unsafe."""


@dataclass(frozen=True)
class Setting:
    """One server setting: ``name`` in the file, ``--name-with-dashes`` on the command line,
    ``CHEXTRIEV_<KEY>`` in the environment (unless ``env`` says otherwise), ``key`` in
    ``app.config``. ``kind``: ``str``, ``device`` (a ``--device`` value of
    :mod:`chextriev.cli_options`), ``path`` (relative to the file's folder in a file),
    ``int`` (with ``low``/``high`` bounds). ``default`` ``None`` means unset."""

    name: str
    key: str
    kind: str
    default: Any
    help: str
    low: int | None = None
    high: int | None = None
    env: str | None = None
    #: How the default reads in ``--help`` when it is not a plain value.
    default_doc: str | None = None
    #: The valid values of a ``str`` setting (``None``: any).
    choices: tuple[str, ...] | None = None
    #: How the command line reads the flag, when not as its ``kind`` says (it may normalise the
    #: spelling before ``choices`` is checked).
    flag_type: Callable[[str], Any] | None = None

    @property
    def metavar(self) -> str:
        return {"int": "N", "path": "PATH", "device": DEVICE_METAVAR}.get(
            self.kind, "URL" if self.key == "DB_URL" else "TEXT")

    @property
    def env_var(self) -> str:
        return self.env or ENV_PREFIX + self.key

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("checkpoint", "CHECKPOINT", "path", None, "model checkpoint (.ckpt) the index was built with",
            default_doc="the one the index records (its copy in the index folder, else its path)"),
    Setting("index_dir", "INDEX_DIR", "path", None, "folder holding the Faiss index"),
    Setting("db", "DB_URL", "str", None, "catalog database URL (any SQLAlchemy URL)",
            default_doc="sqlite:///INDEX_DIR/catalog.sqlite"),
    Setting("detector", "DETECTOR", "path", None, "anatomy detector weights",
            default_doc="the one the index records; none: the atlas boxes uploads"),
    Setting("device", "DEVICE", "device", "cpu", "torch device for the model; auto: cuda when torch "
            "sees a GPU, else cpu"),
    Setting("precision", "PRECISION", "str", "auto",
            "model, detector and Grad-CAM numerics: auto (bf16 where the CPU has AMX or AVX-512 "
            "bf16 or the GPU computes bf16, else fp32), fp32 or bf16",
            choices=PRECISIONS),
    Setting("compile", "COMPILE", "str", "on",
            "run the frozen backbone compiled by torch (AOTInductor): faster uploads; compiled once "
            "into the compiled cache (CHEXTRIEV_COMPILE_CACHE, else ~/.cache/chextriev/compiled) and "
            "loaded from it by every later start and worker; eager where no C++ compiler is found "
            "(also 1/0, true/false, yes/no)",
            choices=COMPILE_MODES, flag_type=compile_mode),
    Setting("torch_threads", "TORCH_THREADS", "int", None,
            "intra-op threads per worker (1 is best on a busy CPU)", low=1, default_doc="torch's choice"),
    Setting("host", "HOST", "str", "127.0.0.1", "bind address (any non-loopback address needs a token)"),
    Setting("port", "PORT", "int", 8000, "TCP port", low=0, high=65535),
    Setting("workers", "WORKERS", "int", 1, "worker processes, each with its own model and index", low=1),
    Setting("threads", "THREADS", "int", 4, "request threads per worker", low=1),
    Setting("timeout", "TIMEOUT", "int", 120,
            "seconds: a worker silent or with a request running this long is replaced", low=1),
    Setting("graceful_timeout", "GRACEFUL_TIMEOUT", "int", 30,
            "seconds a stopping or reloading worker gets to finish its requests", low=1),
    Setting("token_file", "TOKEN_FILE", "path", None,
            "file holding the bearer token clients must send (required off loopback)",
            default_doc="none, or CHEXTRIEV_AUTH_TOKEN"),
    Setting("max_upload_mb", "MAX_UPLOAD_MB", "int", 64, "upload limit in MiB", low=1),
    Setting("max_pixels", "MAX_PIXELS", "int", 64 * MIB,
            "most pixels an upload may decode to (read from its header first)", low=1),
    Setting("pseudonym_key_file", "PSEUDONYM_KEY_FILE", "path", None,
            "the indexer's pseudonymisation key, so that exclude_same_patient finds an upload's "
            "patient in a pseudonymised archive", default_doc="none, or CHEXTRIEV_PSEUDONYM_KEY"),
    Setting("audit_log", "AUDIT_LOG", "path", None,
            "audit log file: one JSON line per API request (rotated by size)",
            default_doc="none: the lines go to the log (logger server.audit)"),
    Setting("audit_log_max_mb", "AUDIT_LOG_MAX_MB", "int", 10, "audit log size before rotation, MiB",
            low=1),
    Setting("audit_log_backups", "AUDIT_LOG_BACKUPS", "int", 5, "rotated audit logs kept", low=1),
    Setting("viewer_url", "VIEWER_URL", "str", None,
            "PACS viewer link template for each result, e.g. "
            "'https://pacs.example/viewer?StudyInstanceUIDs={study_uid}' (placeholders {study_uid}, "
            "{series_uid}, {instance_uid}; checked at start-up)", default_doc="none"),
    Setting("tls_certificate", "TLS_CERTIFICATE", "path", None,
            "PEM certificate (chain) to serve HTTPS with, by gunicorn itself; with tls_key",
            default_doc="none: plain HTTP, loopback only unless tls_proxy is set"),
    Setting("tls_key", "TLS_KEY", "path", None, "PEM private key of tls_certificate",
            default_doc="none"),
    Setting("tls_proxy", "TLS_PROXY", "str", None,
            "address(es) of the reverse proxy in front that terminates TLS (comma-separated IPs "
            "or networks): a plain-HTTP bind beyond loopback is then allowed, and forwarded "
            "headers (X-Forwarded-For/-Proto/-Host) are trusted from these peers only",
            default_doc="none: forwarded headers are ignored"),
    Setting("pacs_url", "PACS_URL", "str", None,
            "DICOMweb service root of the PACS (https://pacs.example/dicom-web) for search by "
            "reference and the reports filed back", default_doc="none: no search by reference"),
    Setting("pacs_token_file", "PACS_TOKEN_FILE", "path", None,
            "file holding the PACS bearer token", default_doc="none, or CHEXTRIEV_DICOMWEB_TOKEN"),
    Setting("pacs_user", "PACS_USER", "str", None, "PACS basic-auth user (with "
            "pacs_password_file or CHEXTRIEV_DICOMWEB_PASSWORD)", default_doc="none"),
    Setting("pacs_password_file", "PACS_PASSWORD_FILE", "path", None,
            "file holding the PACS basic-auth password",
            default_doc="none, or CHEXTRIEV_DICOMWEB_PASSWORD"),
    Setting("pacs_ca_bundle", "PACS_CA_BUNDLE", "path", None,
            "CA certificates to verify the PACS's TLS certificate with",
            default_doc="the system's"),
    Setting("public_url", "PUBLIC_URL", "str", None,
            "this server's address as the viewers reach it (https://chextriev.example/): the "
            "result link filed in the PACS reports", default_doc="the request's own address"),
)
BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
BY_KEY: dict[str, Setting] = {setting.key: setting for setting in SETTINGS}
LAYERS = ("default", "file", "environment", "flag")


@dataclass(frozen=True)
class Resolved:
    """The merged settings: ``values`` by ``app.config`` key, ``sources`` says which layer (and
    for the file and environment, which file or variable) gave each one."""

    values: dict[str, Any]
    sources: dict[str, str]
    config_file: Path | None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a TOML file, by ``app.config`` key, parsed; relative paths resolved
    against the file's folder. Unknown keys raise :class:`UnknownNameError` listing the valid ones."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"the configuration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the configuration file {path}: {error}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    values: dict[str, Any] = {}
    for name, raw in table.items():
        setting = BY_NAME.get(name)
        if setting is None:
            raise UnknownNameError(f"setting in {path}", name, [s.name for s in SETTINGS])
        value = parse_value(setting, raw, f"{name} in {path}")
        if setting.kind == "path" and value is not None and not Path(value).is_absolute():
            value = str((path.parent / value).resolve())
        values[setting.key] = value
    return values


def parse_value(setting: Setting, raw: Any, where: str) -> Any:
    """``raw`` (a TOML value, an environment string or a Python value) as ``setting``'s type;
    ``None`` or an empty string is unset. Raises :class:`ConfigError` naming ``where``."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if setting.kind == "device" and isinstance(raw, str):
        try:
            return device_name(raw)
        except argparse.ArgumentTypeError as error:
            raise ConfigError(f"{where}: {error}") from None
    if setting.kind in ("str", "path", "device"):
        if isinstance(raw, (str, Path)):
            return str(raw).strip()
        raise ConfigError(f"{where} must be a string, got {raw!r}")
    if isinstance(raw, (bool, float)):
        raise ConfigError(f"{where} must be an integer, got {raw!r}")
    try:
        number = int(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{where} must be an integer, got {raw!r}") from None
    if setting.low is not None and number < setting.low:
        raise ConfigError(f"{where} must be at least {setting.low}, got {number}")
    if setting.high is not None and number > setting.high:
        raise ConfigError(f"{where} must be at most {setting.high}, got {number}")
    return number


#: ``config_file`` default of :func:`resolve_settings`: the file named by ``CHEXTRIEV_CONFIG``.
FROM_ENVIRONMENT: Any = object()


def resolve_settings(given: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                     config_file: Any = FROM_ENVIRONMENT) -> Resolved:
    """Merge defaults < ``config_file`` < environment < ``given``.

    ``given``: values by ``app.config`` key (command-line flags; ``None`` = not given). Keys
    that are not settings pass through unchanged. ``config_file``: a TOML file, ``None`` for
    none, or (default) the one ``CHEXTRIEV_CONFIG`` names. The token is resolved into
    ``AUTH_TOKEN``.
    """
    environ = os.environ if environ is None else environ
    given = {key: value for key, value in (given or {}).items() if value is not None}
    path = (environ.get(CONFIG_ENV) or None) if config_file is FROM_ENVIRONMENT else config_file
    from_file = read_config_file(path) if path else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        value, source = setting.default, "default"
        if setting.key in from_file and from_file[setting.key] is not None:
            value, source = from_file[setting.key], f"file {path}"
        env_value = parse_value(setting, environ.get(setting.env_var), setting.env_var)
        if env_value is not None:
            value, source = env_value, f"environment {setting.env_var}"
        if setting.key in given:
            value, source = parse_value(setting, given[setting.key], f"{setting.flag} ({setting.key})"), "flag"
        values[setting.key], sources[setting.key] = value, source
    for key, value in given.items():
        if key not in BY_KEY:
            values[key], sources[key] = value, "flag"
    _resolve_token(values, sources, environ)
    _resolve_key(values, sources, environ)
    return Resolved(values, sources, Path(path) if path else None)


def _layer(source: str) -> int:
    return LAYERS.index(source.split(" ", 1)[0])


def _resolve_token(values: dict[str, Any], sources: dict[str, str], environ: Mapping[str, str]) -> None:
    """``AUTH_TOKEN`` from explicit config, ``token_file`` or ``CHEXTRIEV_AUTH_TOKEN``: the
    higher layer wins (the token file on equal layers)."""
    if values.get("AUTH_TOKEN"):
        values["AUTH_TOKEN"] = check_token(str(values["AUTH_TOKEN"]), sources.get("AUTH_TOKEN", "AUTH_TOKEN"))
        return
    env_token = (environ.get(TOKEN_ENV) or "").strip() or None
    token_file = values.get("TOKEN_FILE")
    if token_file and (not env_token or _layer(sources["TOKEN_FILE"]) >= LAYERS.index("environment")):
        values["AUTH_TOKEN"], sources["AUTH_TOKEN"] = read_token(Path(token_file)), sources["TOKEN_FILE"]
    elif env_token:
        values["AUTH_TOKEN"] = check_token(env_token, f"the environment variable {TOKEN_ENV}")
        sources["AUTH_TOKEN"] = f"environment {TOKEN_ENV}"
    else:
        values["AUTH_TOKEN"], sources["AUTH_TOKEN"] = None, "default"


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (stripped), checked by :func:`check_token`."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the token file {path}: {getattr(error, 'strerror', error)}") from None
    return check_token(token, f"the token file {path}")


def check_token(token: str, source: str) -> str:
    """``token`` when it is at least :data:`MIN_TOKEN_LENGTH` printable ASCII characters with
    no space (what an ``Authorization: Bearer`` header can carry); else :class:`ConfigError`
    naming ``source`` (never the token)."""
    advice = "use a long random one (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"the bearer token from {source} is shorter than {MIN_TOKEN_LENGTH} characters: {advice}")
    if not all(33 <= ord(char) <= 126 for char in token):
        raise ConfigError(f"the bearer token from {source} holds spaces, control or non-ASCII characters: {advice}")
    return token


def _resolve_key(values: dict[str, Any], sources: dict[str, str], environ: Mapping[str, str]) -> None:
    """``PSEUDONYM_KEY`` (bytes) from explicit config, ``pseudonym_key_file`` or
    ``CHEXTRIEV_PSEUDONYM_KEY``, the higher layer winning as for the token; ``None`` without."""
    if values.get("PSEUDONYM_KEY"):
        key = values["PSEUDONYM_KEY"]
        values["PSEUDONYM_KEY"] = key if isinstance(key, bytes) else str(key).encode()
        return
    env_key = (environ.get(KEY_ENV) or "").strip() or None
    key_file = values.get("PSEUDONYM_KEY_FILE")
    if key_file and (not env_key or _layer(sources["PSEUDONYM_KEY_FILE"]) >= LAYERS.index("environment")):
        from chextriev.io.deid import read_key

        try:
            values["PSEUDONYM_KEY"] = read_key(key_file, what="pseudonym_key_file")
        except ChextrievError as error:
            raise ConfigError(str(error)) from None
        sources["PSEUDONYM_KEY"] = sources["PSEUDONYM_KEY_FILE"]
    elif env_key:
        values["PSEUDONYM_KEY"], sources["PSEUDONYM_KEY"] = env_key.encode(), f"environment {KEY_ENV}"
    else:
        values["PSEUDONYM_KEY"], sources["PSEUDONYM_KEY"] = None, "default"


def resolve_config(config: Mapping[str, Any] | None = None,
                   environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``app.config`` of :func:`server.create_app`: :func:`resolve_settings` with
    ``config`` as the top layer, then the derived and internal keys, validated (the bind rule
    included). ``CONFIG_FILE`` in ``config`` names the file (``None``: no file, whatever
    ``CHEXTRIEV_CONFIG`` says); without it, ``CHEXTRIEV_CONFIG`` does."""
    environ = os.environ if environ is None else environ
    config = dict(config or {})
    config_file = config.pop("CONFIG_FILE", FROM_ENVIRONMENT)
    merged = dict(resolve_settings(config, environ, config_file).values)
    if "MAX_CONTENT_LENGTH" not in config:
        merged["MAX_CONTENT_LENGTH"] = merged["MAX_UPLOAD_MB"] * MIB
    merged["MAX_CONTENT_LENGTH"] = _positive_int("MAX_CONTENT_LENGTH", merged["MAX_CONTENT_LENGTH"])
    merged["LOAD"] = config.get("LOAD") or environ.get(ENV_PREFIX + "LOAD") or "background"
    merged["COMPILE"] = parse_compile(merged["COMPILE"])
    merged["PRECISION"] = str(merged["PRECISION"]).strip().lower()
    if merged["PRECISION"] not in PRECISIONS:
        raise UnknownNameError("precision", merged["PRECISION"], PRECISIONS)
    if merged["LOAD"] not in LOAD_MODES:
        raise UnknownNameError("load mode", merged["LOAD"], LOAD_MODES)
    if merged["VIEWER_URL"]:
        check_viewer_url(str(merged["VIEWER_URL"]))
    merged.setdefault("SECRET_KEY", environ.get(ENV_PREFIX + "SECRET_KEY") or secrets.token_hex(32))
    merged.setdefault("MAX_FORM_PARTS", MAX_FORM_PARTS)
    merged.setdefault("MAX_FORM_MEMORY_SIZE", MAX_FORM_MEMORY_SIZE)
    merged["TRUSTED_PROXIES"] = parse_proxies(merged["TLS_PROXY"])  # derived: IP networks
    check_tls(merged)
    pacs_connection(merged, environ)  # refused now rather than at the first request
    if merged["PUBLIC_URL"]:
        merged["PUBLIC_URL"] = check_public_url(str(merged["PUBLIC_URL"]))
    check_bind_safety(merged["HOST"], merged["AUTH_TOKEN"],
                      tls=bool(merged["TLS_CERTIFICATE"]), proxy=merged["TRUSTED_PROXIES"])
    flask_run = flask_run_params()
    if flask_run is not None:  # `flask --app server run --host H [--cert C]`: where it binds
        merged["HOST"] = str(flask_run["host"])
        check_bind_safety(merged["HOST"], merged["AUTH_TOKEN"],
                          tls=flask_run.get("cert") is not None, proxy=merged["TRUSTED_PROXIES"])
    return merged


def flask_run_params() -> dict[str, Any] | None:
    """The parameters (``host``, ``cert``, ...) of the ``flask run`` command loading this app,
    or ``None`` when the app is not being loaded by ``flask run`` (its click context is current
    while it loads)."""
    try:
        import click
    except ImportError:  # pragma: no cover - Flask depends on click
        return None
    context = click.get_current_context(silent=True)
    while context is not None:
        if context.info_name == "run" and "host" in context.params:
            return dict(context.params)
        context = context.parent
    return None


def parse_proxies(value: Any) -> tuple[str, ...]:
    """``tls_proxy`` as a tuple of IP networks (``10.0.0.5`` is ``10.0.0.5/32``); empty for none.

    Raises :class:`ConfigError` for anything that is not an IP address or network (a host name
    is refused: forwarded headers are trusted by the peer's address).
    """
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    networks = []
    for item in (str(v).strip() for v in items):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item.strip("[]"), strict=False)))
        except ValueError:
            raise ConfigError(f"tls_proxy: {item!r} is not an IP address or network (the "
                              "proxy in front is trusted by its address)") from None
    return tuple(networks)


def check_tls(values: dict[str, Any]) -> None:
    """Both or neither of ``tls_certificate`` and ``tls_key``; when given, they must load
    together (Python's ``ssl``: the key matches the certificate), checked before any worker
    starts."""
    cert, key = values.get("TLS_CERTIFICATE"), values.get("TLS_KEY")
    if bool(cert) != bool(key):
        raise ConfigError("tls_certificate and tls_key go together: give both (--tls-certificate "
                          "FILE --tls-key FILE) or neither")
    if not cert:
        return
    import ssl

    for name, path in (("tls_certificate", cert), ("tls_key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"{name} {path} does not exist")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(f"tls_certificate {cert} and tls_key {key} do not load together "
                          f"({getattr(error, 'reason', None) or error}): PEM files of one "
                          "certificate and its private key (unencrypted) are needed") from None


def check_public_url(url: str) -> str:
    """``public_url`` without a trailing slash; refused unless http(s) with a host."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"public_url must be an http(s):// address without a query, got {url!r}")
    return url.strip().rstrip("/")


def _positive_int(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be an integer number of bytes, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{key} must be positive, got {number}")
    return number


def describe(resolved: Resolved) -> str:
    """The effective settings as a TOML document (loadable as a configuration file), each line
    commented with where its value came from; the token itself is never shown."""
    lines = ["# effective chextriev serve settings (lowest first: default < file < environment < flag)"]
    for setting in SETTINGS:
        value = resolved.values.get(setting.key)
        source = resolved.sources.get(setting.key, "default")
        text = f"# {setting.name} = (unset)" if value is None else f"{setting.name} = {_toml(value)}"
        lines.append(f"{text:<60} # {source}")
    for key, label in (("AUTH_TOKEN", "bearer token"), ("PSEUDONYM_KEY", "pseudonymisation key")):
        state = "set" if resolved.values.get(key) else "none"
        lines.append(f"{'# ' + label + ': ' + state:<60} # {resolved.sources.get(key, 'default')}")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def check_bind_safety(host: str, token: str | None, *, tls: bool = False,
                      proxy: tuple[str, ...] | None = None) -> None:
    """Refuse a non-loopback bind address without a bearer token, or over plain HTTP: it needs
    ``tls`` (a certificate this server serves) or ``proxy`` (the reverse proxy in front that
    terminates TLS), so that the token and the images never cross the network in clear."""
    if is_loopback(host):
        return
    if not token:
        raise ConfigError(
            f"refusing to serve on {host} without a bearer token: set token_file (--token-file FILE, "
            "CHEXTRIEV_TOKEN_FILE or the configuration file) or CHEXTRIEV_AUTH_TOKEN, or bind 127.0.0.1"
        )
    if not tls and not proxy:
        raise ConfigError(
            f"refusing to serve plain HTTP on {host}: the bearer token and the images would cross "
            "the network unencrypted. Serve HTTPS (tls_certificate and tls_key: --tls-certificate "
            "FILE --tls-key FILE), or, when a reverse proxy in front terminates TLS, name it "
            "(tls_proxy = \"ADDRESS\": --tls-proxy ADDRESS), or bind 127.0.0.1"
        )


def pacs_connection(values: Mapping[str, Any], environ: Mapping[str, str] | None = None):
    """The PACS's :class:`~chextriev.io.dicomweb.DicomwebConnection` from resolved settings
    (``pacs_*``; the token or password from their files, else ``CHEXTRIEV_DICOMWEB_TOKEN`` /
    ``CHEXTRIEV_DICOMWEB_PASSWORD`` as for ``chextriev index``), or ``None`` without
    ``pacs_url``. Raises :class:`ConfigError` naming the setting (never a secret)."""
    url = values.get("PACS_URL")
    if not url:
        for key in ("PACS_TOKEN_FILE", "PACS_USER", "PACS_PASSWORD_FILE", "PACS_CA_BUNDLE"):
            if values.get(key):
                raise ConfigError(f"{BY_KEY[key].name} is set but pacs_url is not")
        return None
    from chextriev.io.dicomweb import DicomwebConnection, credentials_from

    try:
        credentials = credentials_from(
            token_file=values.get("PACS_TOKEN_FILE"), user=values.get("PACS_USER"),
            password_file=values.get("PACS_PASSWORD_FILE"),
            environ=dict(os.environ if environ is None else environ))
        connection = DicomwebConnection(str(url), credentials=credentials,
                                        ca_bundle=values.get("PACS_CA_BUNDLE"))
    except ChextrievError as error:
        raise ConfigError(f"the PACS settings (pacs_*): {error}") from None
    return connection


#: A callable that resolves the settings anew (``chextriev serve`` calls it again on SIGHUP).
Resolver = Callable[[], Resolved]


def check_viewer_url(template: str) -> None:
    """Refuse a viewer URL template that is not http(s) or uses unknown placeholders."""
    from server.results import viewer_placeholders

    if not template.lower().startswith(("http://", "https://")):
        raise ConfigError(f"--viewer-url must be an http(s):// URL template, got {template!r}")
    try:
        names = viewer_placeholders(template)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not names:
        raise ConfigError(f"--viewer-url {template!r} uses none of {{study_uid}}, {{series_uid}}, "
                          "{instance_uid}: every result would open the same page")
