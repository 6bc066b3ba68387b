"""The web page blueprint (``/``) and unauthenticated probe aliases (``/healthz``, ``/readyz``).

The page is plain HTML, CSS and JavaScript (``templates/index.html``, ``static/``), no build
step; it calls the JSON API. Opened as ``/?study=<StudyInstanceUID>`` (plus ``&series=``,
``&instance=``) it runs that study's search by reference once the server is ready: the link a
PACS viewer opens (server/README.md). With a PACS configured it has a study field and a button
that files the report into the study. The aliases answer only ``ok`` / ``ready`` without details, so a
load balancer can probe a token-protected server.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template, url_for

# The app (``Flask("server")``) serves ``server/static`` at ``/static`` and renders
# ``server/templates``; only named files in that folder are ever served.
bp = Blueprint("web", __name__)


@bp.get("/")
def index():
    api_base = url_for("api.healthz").rsplit("/", 1)[0]
    return render_template("index.html", api_base=api_base,
                           needs_token=bool(current_app.config.get("AUTH_TOKEN")),
                           has_pacs=current_app.extensions.get("chextriev_pacs") is not None)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    service = current_app.extensions["chextriev"]
    ready = service.ready and service.catalog_problem() is None  # the catalog database answers
    response = jsonify({"ready": ready})
    response.status_code = 200 if ready else 503
    return response
