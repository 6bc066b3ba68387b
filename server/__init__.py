"""CheXtriev HTTP server: similar-case search API (``/api/v1``) and the web page (``/``).

``create_app(config=None)`` is the only way to get an app (no module-global one):
``flask --app server run`` calls it and reads the configuration file named by
``CHEXTRIEV_CONFIG`` and ``CHEXTRIEV_*`` environment variables (see :mod:`server.config`);
``chextriev serve`` (:mod:`server.cli`) runs it in every gunicorn worker (:mod:`server.serving`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Flask is imported by create_app: `chextriev serve --help` must not wait for it
    from flask import Flask

log = logging.getLogger(__name__)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app and its :class:`~server.services.SearchService`.

    Args:
        config: settings overriding environment and defaults (keys in :mod:`server.config`).
            ``SERVICE`` may hold a ready-made service object (used by tests and by callers that
            share one across apps in the same process).

    The service loads the model, index and database according to ``LOAD``: in a background
    thread by default (``/api/v1/readyz`` is 503 until it is done). Call this in each worker
    process after any fork.
    """
    from flask import Flask

    from server.api import bp as api_bp
    from server.audit import init_audit
    from server.config import resolve_config
    from server.errors import register_error_handlers
    from server.services import SearchService
    from server.web import bp as web_bp

    settings = resolve_config({key: value for key, value in (config or {}).items() if key != "SERVICE"})
    app = Flask(__name__)
    app.config.update(settings)
    app.json.sort_keys = False
    service = (config or {}).get("SERVICE") or SearchService(
        settings["CHECKPOINT"], settings["DB_URL"], settings["INDEX_DIR"],
        detector=settings["DETECTOR"], device=settings["DEVICE"], torch_threads=settings["TORCH_THREADS"],
        precision=settings["PRECISION"], compile=settings["COMPILE"])
    app.extensions["chextriev"] = service
    from server.config import pacs_connection

    app.extensions["chextriev_pacs"] = pacs_connection(settings)  # None without pacs_url
    register_error_handlers(app)  # JSON for every error; responses never hold NaN
    init_audit(app)  # one JSON line per API request
    app.register_blueprint(api_bp)
    app.register_blueprint(web_bp)
    if settings["TRUSTED_PROXIES"]:  # forwarded headers from that proxy only (server.proxy)
        from server.proxy import TrustedProxies

        app.wsgi_app = TrustedProxies(app.wsgi_app, settings["TRUSTED_PROXIES"])
    if settings["LOAD"] == "sync":
        service.load()
    elif settings["LOAD"] == "background" and service.state == "idle":
        service.start_background_load()
    return app
