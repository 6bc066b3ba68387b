"""Production serving: gunicorn's supervised pre-fork server running :func:`server.create_app`.

The gunicorn master binds the socket and forks ``workers`` processes; each one builds its own
app after the fork and loads model, index and catalog before it accepts a connection (``LOAD =
sync``), so a new or replacement worker never answers 503 while loading. The master imports the
libraries (torch, Faiss, the model code; :data:`PRELOADED_MODULES`) but loads nothing, so a
replacement worker starts in about the time it takes to load the model. The master:

* replaces a worker that dies (crash, ``kill -9``, out of memory) or hangs: one that sends no
  heartbeat for ``timeout`` seconds is killed and replaced, and :class:`ChextrievWorker` itself
  exits, to be replaced, when one of its requests has run longer than ``timeout`` (gunicorn's
  threaded worker alone would keep heart-beating with every thread stuck);
* on ``SIGHUP`` re-reads the configuration (file and environment; flags stay) and starts new
  workers with it; the old ones keep serving until every new one has loaded, then stop
  gracefully (:class:`ChextrievArbiter`), so a reload neither fails nor stalls a request. A
  configuration that does not resolve is logged and the running one kept;
* on ``SIGTERM`` stops gracefully (workers finish their requests within ``graceful_timeout``),
  on ``SIGINT``/``SIGQUIT`` at once; ``SIGTTIN``/``SIGTTOU`` add or remove a worker.
"""

from __future__ import annotations

import html
import itertools
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker

from chextriev.errors import ChextrievError

log = logging.getLogger(__name__)

#: Exit status of a worker that ends itself because a request ran past ``timeout``.
EXIT_REQUEST_TIMEOUT = 70
#: Heartbeat files on a RAM file system when there is one (a slow disk can stall heartbeats).
HEARTBEAT_DIR = "/dev/shm"
#: One log format for the master, the workers and the app; the pid tells the workers apart.
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

#: Imported by the master before it forks (no model, index or connection: only code, shared
#: copy-on-write by the workers). Importing starts no thread beyond OpenBLAS's fork-safe pool.
PRELOADED_MODULES = ("numpy", "torch", "torchvision", "faiss", "chextriev.checkpoint",
                     "chextriev.embedding", "indexer.catalog", "server.api")

WSGIApp = Callable[..., Any]


class RequestClock:
    """Start times of the requests a worker is running (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[int, tuple[float, str]] = {}
        self._tokens = itertools.count()

    def start(self, label: str) -> int:
        token = next(self._tokens)
        with self._lock:
            self._running[token] = (self._clock(), label)
        return token

    def finish(self, token: int) -> None:
        with self._lock:
            self._running.pop(token, None)

    def oldest(self) -> tuple[float, str] | None:
        """``(age in seconds, label)`` of the longest-running request, or ``None``."""
        with self._lock:
            if not self._running:
                return None
            started, label = min(self._running.values())
        return self._clock() - started, label


class ChextrievWorker(ThreadWorker):
    """gunicorn's threaded worker that also ends itself when a request runs past ``timeout``.

    The master then replaces it, as it does a worker that stops heart-beating. Requests are
    labelled by method and path only (paths carry integer ids, never names).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests = RequestClock()

    def load_wsgi(self):
        """Build the app (model, index and catalog loaded), then tell the master: one byte in
        the heartbeat file, which master and worker share (:func:`worker_loaded`)."""
        super().load_wsgi()
        os.pwrite(self.tmp.fileno(), b"L", 0)

    def handle_request(self, req, conn):
        token = self.requests.start(f"{req.method} {req.path}")
        try:
            return super().handle_request(req, conn)
        finally:
            self.requests.finish(token)

    def handle_error(self, req, client, addr, exc):
        """gunicorn's answer to a request it could not parse (bad request line, headers too
        large: 400, 414, 431 ...) with the API's JSON error body instead of its HTML page:
        gunicorn decides the status and logs as always; the body is rewritten here."""
        captured = _CapturedSocket()
        super().handle_error(req, captured, addr, exc)
        try:
            util.write_nonblock(client, json_error_page(bytes(captured.data)))
        except Exception:  # noqa: BLE001 - the client is gone, as gunicorn itself allows
            self.log.debug("Failed to send error message.")

    def notify(self):
        """Heartbeat, unless a request is over ``timeout``: then exit so the master replaces us."""
        oldest = self.requests.oldest()
        if oldest is not None and oldest[0] > self.cfg.timeout:
            self.log.critical("worker %s: request %s has run for %.0f s, over the %d s timeout: exiting "
                              "so that the master starts a replacement", os.getpid(), oldest[1], oldest[0],
                              self.cfg.timeout)
            os._exit(EXIT_REQUEST_TIMEOUT)
        super().notify()


class _CapturedSocket:
    """What gunicorn's error writer needs of a socket, keeping the bytes it is given."""

    def __init__(self):
        self.data = bytearray()

    def gettimeout(self):
        return 0.0

    def setblocking(self, flag):
        pass

    def sendall(self, data):
        self.data += data

    def send(self, data):
        self.data += data
        return len(data)


_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ([^\r\n]*)\r\n")
_MESSAGE = re.compile(rb"</h1>\s*(.*?)\s*</body>", re.DOTALL)


def json_error_page(page: bytes) -> bytes:
    """gunicorn's HTML error response (status line, headers, page) as the same status with
    the API's JSON error body ``{"error": {"code", "message"}}`` (:mod:`server.errors`); a
    response that is not one of its pages passes unchanged."""
    from server.errors import HTTP_CODES, error_body

    status = _STATUS_LINE.match(page)
    if status is None:
        return page
    code, reason = int(status.group(1)), status.group(2).decode("latin-1")
    found = _MESSAGE.search(page)
    message = html.unescape(found.group(1).decode("latin-1")) if found else ""
    body = error_body(code, HTTP_CODES.get(code, "http_error"), message or reason)
    head = (f"HTTP/1.1 {code} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class ChextrievLogger(Logger):
    """gunicorn's messages through the ``logging`` root handlers (one format with the app's)."""

    def setup(self, cfg):
        super().setup(cfg)
        for handler in list(self.error_log.handlers):
            if getattr(handler, "_gunicorn", False):
                self.error_log.removeHandler(handler)
        self.error_log.propagate = True


def use_log_format() -> None:
    """Root logging to stderr in :data:`LOG_FORMAT` (the handlers already set keep their target)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))


def worker_loaded(worker) -> bool:
    """True once ``worker`` (the master's record of it) has built its app (see
    :meth:`ChextrievWorker.load_wsgi`)."""
    try:
        return os.fstat(worker.tmp.fileno()).st_size > 0
    except (OSError, ValueError):
        return False


class ChextrievArbiter(Arbiter):
    """gunicorn's master, except that ``SIGHUP`` with a configuration that does not resolve
    changes nothing, and surplus (old) workers are stopped only once the newest ``workers`` have
    loaded: after ``SIGHUP`` the old generation serves until the new one can."""

    def reload(self):
        if self.app.refresh():
            super().reload()

    def manage_workers(self):
        if len(self.WORKERS) < self.num_workers:
            self.spawn_workers()
        self.retire_surplus()

    def reap_workers(self):
        super().reap_workers()
        self.retire_surplus()  # also while reload() waits for the old generation to leave

    def retire_surplus(self) -> None:
        by_age = sorted(self.WORKERS.items(), key=lambda item: item[1].age)
        surplus = len(by_age) - self.num_workers
        if surplus <= 0 or not all(worker_loaded(worker) for _, worker in by_age[surplus:]):
            return
        for pid, _ in by_age[:surplus]:
            self.kill_worker(pid, signal.SIGTERM)


def bind_address(host: str, port: int) -> str:
    """gunicorn's bind string: ``host:port``, IPv6 addresses in brackets."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gunicorn_options(settings: dict[str, Any]) -> dict[str, Any]:
    """gunicorn settings for resolved server settings (``app.config`` keys)."""
    options: dict[str, Any] = {
        "bind": [bind_address(settings["HOST"], settings["PORT"])],
        "workers": settings["WORKERS"],
        "threads": settings["THREADS"],
        "worker_class": ChextrievWorker,
        "timeout": settings["TIMEOUT"],
        "graceful_timeout": settings["GRACEFUL_TIMEOUT"],
        "keepalive": 5,
        "proc_name": "chextriev",
        "logger_class": ChextrievLogger,
        "loglevel": "info",
        "accesslog": None,
        "preload_app": False,  # every worker loads model, index and catalog after the fork
        "control_socket_disable": True,  # one per user by default: two servers would fight over it
        # forwarded headers (the scheme) only from the configured TLS-terminating proxy, none
        # otherwise (gunicorn's default trusts loopback peers); server.proxy does the same in
        # the app for X-Forwarded-For/-Host
        "forwarded_allow_ips": ",".join(settings.get("TRUSTED_PROXIES") or ()),
    }
    if settings.get("TLS_CERTIFICATE"):  # HTTPS by gunicorn itself; plain HTTP is refused
        options["certfile"] = settings["TLS_CERTIFICATE"]
        options["keyfile"] = settings["TLS_KEY"]
    if os.path.isdir(HEARTBEAT_DIR) and os.access(HEARTBEAT_DIR, os.W_OK):
        options["worker_tmp_dir"] = HEARTBEAT_DIR
    return options


class ChextrievServer(BaseApplication):
    """The gunicorn application: ``resolve()`` gives the settings (again on ``SIGHUP``),
    ``factory(settings)`` builds the WSGI app in each worker after the fork."""

    def __init__(self, resolve: Callable[[], dict[str, Any]], factory: Callable[[dict[str, Any]], WSGIApp],
                 settings: dict[str, Any] | None = None):
        self.resolve = resolve
        self.factory = factory
        # errors here reach the caller, before anything is started
        self.settings = resolve() if settings is None else settings
        super().__init__(prog="chextriev serve")

    def load_config(self):
        for name, value in gunicorn_options(self.settings).items():
            self.cfg.set(name, value)

    def refresh(self) -> bool:
        """Resolve the settings anew (on ``SIGHUP``); on failure log why and keep the running ones."""
        try:
            self.settings = self.resolve()
        except ChextrievError as error:
            log.error("configuration not reloaded, the running workers keep serving: %s", error)
            return False
        log.info("configuration reloaded: starting new workers")
        return True

    def load(self) -> WSGIApp:
        return self.factory(self.settings)

    def run(self):
        try:
            ChextrievArbiter(self).run()
        except RuntimeError as error:
            raise ChextrievError(f"the server could not start: {error}") from None


def worker_app(settings: dict[str, Any]) -> WSGIApp:
    """The Flask app of one worker: these settings exactly (no file or environment read again),
    model, index and catalog loaded before the worker accepts requests."""
    from server import create_app

    return create_app({**settings, "CONFIG_FILE": None, "LOAD": "sync"})


def serve(resolve: Callable[[], dict[str, Any]], factory: Callable[[dict[str, Any]], WSGIApp] = worker_app,
          settings: dict[str, Any] | None = None, preload: tuple[str, ...] = PRELOADED_MODULES) -> None:
    """Run the supervised server until it is stopped (gunicorn exits the process).

    ``resolve()`` gives the settings (``app.config`` keys, :mod:`server.config`), now (unless
    ``settings`` are given) and again on every ``SIGHUP``; ``factory(settings)`` builds the
    WSGI app in each worker; ``preload`` names the modules the master imports first."""
    use_log_format()
    server = ChextrievServer(resolve, factory, settings)
    preload_modules(preload)
    server.run()


def preload_modules(names: tuple[str, ...]) -> None:
    import importlib

    if not names:
        return
    started = time.perf_counter()
    for name in names:
        importlib.import_module(name)
    log.info("libraries imported in %.1f s (the workers share them)", time.perf_counter() - started)
