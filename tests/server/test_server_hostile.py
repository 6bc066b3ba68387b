"""Hostile requests against the API (Flask test client over a real tiny index, and a copy of it
holding skipped, failed and NaN-carrying rows as the indexer writes them): every one answers a
JSON error that says what it is, never a 5xx or invalid JSON, nothing stored is lost and the
server still answers; the audit log, the token rules and the bind rule."""

from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import hostile_files as hostile
import pytest
import requests
from sqlalchemy import select, update

from chextriev.io.deid import pseudonym
from indexer.db import STATUS_FAILED, STATUS_SKIPPED, Patient
from indexer.db import Image as ImageRow
from indexer.engine import make_engine, make_sessionmaker
from server import create_app
from server.audit import AuditFile
from server.auth import token_identity
from server.config import ConfigError, resolve_config

KEY = b"server-test-pseudonym-key"
TOKEN = "audit-test-token-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[2]
HUGE_IDS = (0, 2**63 - 1, 2**63, 10**30)


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def strict_json(response) -> object:
    """The body parsed as JSON that refuses NaN / Infinity literals."""
    def refuse(constant):
        raise AssertionError(f"invalid JSON constant {constant} in {response.data[:200]!r}")

    return json.loads(response.get_data(as_text=True), parse_constant=refuse)


def _upload(data: bytes, name: str = "query.png", **fields):
    return {"image": (io.BytesIO(data), name), **fields}


# ---------------------------------------------------------------------------- hostile uploads
@pytest.mark.parametrize("case", sorted(hostile.HOSTILE))
def test_hostile_uploads_are_4xx_json_and_the_server_still_answers(client, case):
    make, expected = hostile.HOSTILE[case]
    for route, extra in (("/api/v1/search", {}), ("/api/v1/heatmap", {"finding": "pneumothorax"})):
        response = client.post(route, data=_upload(make(), **extra))
        assert response.status_code == int(expected), (case, route, response.data[:300])
        body = strict_json(response)
        assert body["error"]["code"] == ("image_too_large" if expected == "413" else "bad_image")
        assert body["error"]["message"]
    assert client.get("/api/v1/readyz").status_code == 200


def test_a_float_dicom_with_an_infinite_pixel_is_400_not_nan(client):
    response = client.post("/api/v1/search", data=_upload(hostile.float_with_infinity()))
    assert response.status_code == 400 and "not finite" in strict_json(response)["error"]["message"]


def test_the_413_of_a_form_says_which_limit(client, tiny_index, app):
    fields = {f"field{i}": "x" for i in range(150)}
    response = client.post("/api/v1/search", data=_upload(hostile.png(8, 8, b""), **fields))
    assert response.status_code == 413 and "MAX_FORM_PARTS" in response.json["error"]["message"]
    small = create_app({"SERVICE": app.extensions["chextriev"], "LOAD": "manual",
                        "MAX_CONTENT_LENGTH": 1000}).test_client()
    response = small.post("/api/v1/search", data=_upload(bytes(5000)))
    assert response.status_code == 413 and "upload limit of 1000 bytes" in response.json["error"]["message"]


def test_a_large_genuine_upload_is_not_mistaken_for_a_form_bomb(client):
    data = hostile.dicom_bytes(hostile.image_dataset(1500, 1500))  # 4.5 MB, one file field
    response = client.post("/api/v1/search", data=_upload(data, k="2"))
    assert response.status_code == 200, response.data[:300]
    assert strict_json(response)["query"]["format"] == "dicom"


def test_repeated_fields_and_bad_json_bodies_are_400(client, app):
    image_id = int(app.extensions["chextriev"].catalog.index.ids[0])
    response = client.post(f"/api/v1/search/by-id/{image_id}", data={"k": ["2", "3"]})
    assert response.status_code == 400 and "more than once" in response.json["error"]["message"]
    for body in ("[1, 2]", '{"k": "2"}', '{"k": null}', "not json"):
        response = client.post(f"/api/v1/search/by-id/{image_id}", data=body,
                               content_type="application/json")
        assert response.status_code == 400, body
    assert client.post(f"/api/v1/search/by-id/{image_id}", json={"k": 2, "exclude_same_patient": True}
                       ).status_code == 200


def test_405_carries_allow(client):
    response = client.delete("/api/v1/readyz")
    assert response.status_code == 405 and "GET" in response.headers["Allow"] and response.json["error"]


# ------------------------------------------------------- a catalog with non-indexed rows and NaN
@pytest.fixture(scope="module")
def odd_catalog(tiny_index, tmp_path_factory):
    """A copy of the tiny index with a skipped and a failed row (as the indexer writes them),
    one indexed image whose stored probability and age are NaN / infinite, and patients
    pseudonymised with :data:`KEY`. Returns ``(config, ids)``."""
    root = tmp_path_factory.mktemp("odd-catalog")
    index_dir = root / "index"
    shutil.copytree(tiny_index.index_dir, index_dir)
    url = f"sqlite:///{index_dir / 'catalog.sqlite'}"
    sessions = make_sessionmaker(make_engine(url, create=False))
    with sessions() as session:
        first = session.scalars(select(ImageRow).where(ImageRow.status == "indexed")
                                .order_by(ImageRow.id)).first()
        odd = {}
        for status in (STATUS_SKIPPED, STATUS_FAILED):
            row = ImageRow(image_id=f"{status}-row", source_path=f"/archive/{status}.dcm",
                           content_hash=status * 8, file_size=1, mtime_ns=1, status=status,
                           reason="non-frontal view LL" if status == STATUS_SKIPPED else "broken")
            session.add(row)
            session.flush()
            odd[status] = row.id
        probabilities = dict(first.probabilities)
        probabilities[next(iter(probabilities))] = float("nan")
        session.execute(update(ImageRow).where(ImageRow.id == first.id)
                        .values(probabilities=probabilities, age=float("inf")))
        for patient in session.scalars(select(Patient)):
            patient.key, patient.pseudonymised = pseudonym(KEY, patient.key), True
        session.commit()
    odd["nan"] = first.id
    return {"CHECKPOINT": str(tiny_index.checkpoint), "DB_URL": url, "INDEX_DIR": str(index_dir),
            "LOAD": "sync"}, odd


@pytest.fixture(scope="module")
def odd_app(odd_catalog):
    config, _ = odd_catalog
    app = create_app(config)
    assert app.extensions["chextriev"].ready, app.extensions["chextriev"].error
    return app


def test_every_id_route_is_404_for_what_is_not_an_indexed_image(odd_app, odd_catalog):
    _, ids = odd_catalog
    client = odd_app.test_client()
    for image_id in (ids[STATUS_SKIPPED], ids[STATUS_FAILED], *HUGE_IDS):
        for response in (client.get(f"/api/v1/images/{image_id}"),
                         client.get(f"/api/v1/images/{image_id}/thumbnail"),
                         client.get(f"/api/v1/images/{image_id}/heatmap?finding=pneumothorax"),
                         client.post(f"/api/v1/search/by-id/{image_id}", data={"k": "3"})):
            assert response.status_code == 404, (image_id, response.status_code, response.data[:200])
            assert strict_json(response)["error"]["code"] in ("unknown_image", "not_found")
    assert client.get("/api/v1/images/-1").status_code == 404
    # nothing stored was lost: the indexed images still answer, and search never returns the rest
    response = client.post(f"/api/v1/search/by-id/{ids['nan']}", data={"k": "100"})
    assert response.status_code == 200
    returned = {r["id"] for r in strict_json(response)["results"]}
    assert returned and not returned & {ids[STATUS_SKIPPED], ids[STATUS_FAILED]}


def test_stored_nan_and_infinity_come_out_as_null(odd_app, odd_catalog):
    _, ids = odd_catalog
    client = odd_app.test_client()
    detail = strict_json(client.get(f"/api/v1/images/{ids['nan']}"))
    assert detail["age"] is None and None in [f["probability"] for f in detail["predicted_findings"]]
    body = strict_json(client.post(f"/api/v1/search/by-id/{ids['nan']}", data={"k": "5"}))
    assert any(f["probability"] is None for f in body["query"]["findings"])
    with odd_app.app_context(), pytest.raises(ValueError):  # the provider refuses NaN outright
        odd_app.json.dumps({"x": math.nan})


def test_exclude_same_patient_on_a_pseudonymised_archive(odd_app, odd_catalog, query_dicom):
    if query_dicom is None:
        pytest.skip("the tiny synthetic archive holds no DICOM file")
    size = odd_app.extensions["chextriev"].catalog.size
    fields = {"k": str(size), "exclude_same_patient": "1"}
    without_key = strict_json(odd_app.test_client().post(
        "/api/v1/search", data=_upload(query_dicom.read_bytes(), **fields)))
    assert without_key["exclude_same_patient"] is False
    assert "NOT applied" in without_key["notes"][0]
    keyed = create_app({"SERVICE": odd_app.extensions["chextriev"], "LOAD": "manual",
                        "PSEUDONYM_KEY": KEY}).test_client()
    with_key = strict_json(keyed.post("/api/v1/search", data=_upload(query_dicom.read_bytes(), **fields)))
    import pydicom

    patient = pseudonym(KEY, pydicom.dcmread(query_dicom).PatientID)
    assert with_key["exclude_same_patient"] is True and "notes" not in with_key
    assert patient in {r["patient"] for r in without_key["results"]}
    assert patient not in {r["patient"] for r in with_key["results"]}


def test_no_source_path_or_file_name_in_any_response(client, app, tiny_index, query_png):
    service = app.extensions["chextriev"]
    ids = [int(i) for i in service.catalog.index.ids]
    texts = [client.get(f"/api/v1/images/{i}").get_data(as_text=True) for i in ids]
    texts.append(client.post(f"/api/v1/search/by-id/{ids[0]}", data={"k": "100"}).get_data(as_text=True))
    texts.append(client.post("/api/v1/search", data=_upload(query_png.read_bytes(), "jane_doe_mrn123.png",
                                                            k="100")).get_data(as_text=True))
    joined = "\n".join(texts)
    assert str(tiny_index.archive) not in joined and "jane_doe_mrn123" not in joined
    for row in service.images(ids):
        assert row["source_path"] not in joined


# ------------------------------------------------------------------------------------ audit log
def test_audit_log_one_json_line_per_api_request_without_phi(app, tmp_path, query_dicom, query_png):
    path = tmp_path / "audit" / "audit.jsonl"
    audited = create_app({"SERVICE": app.extensions["chextriev"], "LOAD": "manual", "AUTH_TOKEN": TOKEN,
                          "AUDIT_LOG": str(path)})
    client = audited.test_client()
    good = {"Authorization": f"Bearer {TOKEN}"}
    image_id = int(app.extensions["chextriev"].catalog.index.ids[0])
    search = client.post(f"/api/v1/search/by-id/{image_id}", data={"k": "3"}, headers=good)
    upload = (query_dicom or query_png).read_bytes()
    client.post("/api/v1/search", data=_upload(upload, "smith_john_1234.dcm", k="2"), headers=good)
    client.get(f"/api/v1/images/{image_id}", headers=good)
    client.get("/api/v1/images/987654", headers=good)
    client.get("/api/v1/readyz")  # no token: 401
    client.get("/api/v1/no/such/route", headers=good)
    client.get("/")  # not an API request: not audited
    lines = path.read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == 6
    assert [e["status"] for e in entries] == [200, 200, 200, 404, 401, 404]
    assert entries[0]["route"] == "/api/v1/search/by-id/<int:image_id>" and entries[0]["query_id"] == image_id
    assert entries[0]["result_ids"] == [r["id"] for r in search.json["results"]]
    assert entries[2]["route"] == "/api/v1/images/<int:image_id>" and entries[5]["route"] is None
    assert entries[0]["token"] == token_identity(TOKEN) and entries[4]["token"] is None
    text = path.read_text()
    assert TOKEN not in text and "smith_john" not in text and "no/such" not in text
    if query_dicom is not None:
        import pydicom

        assert str(pydicom.dcmread(query_dicom).PatientID) not in text
    for entry in entries:
        assert set(entry) == {"time", "method", "route", "status", "query_id", "result_ids", "token",
                              "client", "duration_ms", "worker"}


def _append_lines(path: str, writer: int, count: int) -> None:
    audit = AuditFile(path, max_bytes=4096, backups=50)
    for i in range(count):
        audit.write(json.dumps({"writer": writer, "i": i, "pad": "x" * 40}))


def test_audit_file_rotates_and_several_processes_lose_no_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    context = mp.get_context("fork")
    writers = [context.Process(target=_append_lines, args=(str(path), w, 200)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    files = [path, *sorted(tmp_path.glob("audit.jsonl.*[0-9]"))]
    assert len(files) > 5  # it rotated
    seen = set()
    for file in files:
        assert file.stat().st_size <= 4096
        for line in file.read_text().splitlines():
            entry = json.loads(line)  # whole lines only: no interleaving
            seen.add((entry["writer"], entry["i"]))
    assert seen == {(w, i) for w in range(4) for i in range(200)}
    assert oct(path.stat().st_mode & 0o777) == "0o600"


# ------------------------------------------------------------------------- tokens and the bind rule
@pytest.mark.parametrize("environ, config", [({"CHEXTRIEV_AUTH_TOKEN": "x"}, {}),
                                             ({}, {"AUTH_TOKEN": "short"}),
                                             ({"CHEXTRIEV_AUTH_TOKEN": "has a space in the middle!"}, {}),
                                             ({"CHEXTRIEV_AUTH_TOKEN": "nön-ascii-token-0123456789"}, {})])
def test_tokens_are_checked_from_every_source(environ, config):
    with pytest.raises(ConfigError, match="bearer token from"):
        resolve_config({**config, "CONFIG_FILE": None}, environ=environ)


def test_a_tokenless_server_answers_other_machines_403(app):
    client = app.test_client()
    response = client.get("/api/v1/readyz", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert response.status_code == 403 and response.json["error"]["code"] == "loopback_only"
    for local in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert client.get("/api/v1/healthz", environ_base={"REMOTE_ADDR": local}).status_code == 200


@pytest.mark.slow
def test_flask_run_applies_the_bind_rule(tiny_index, tmp_path):
    env = {**os.environ, "CHEXTRIEV_CHECKPOINT": str(tiny_index.checkpoint), "CHEXTRIEV_LOAD": "manual",
           "CHEXTRIEV_INDEX_DIR": str(tiny_index.index_dir), "CHEXTRIEV_DB_URL": tiny_index.db_url}
    env.pop("CHEXTRIEV_AUTH_TOKEN", None)
    refused = subprocess.run([sys.executable, "-m", "flask", "--app", "server", "run", "--host", "0.0.0.0",
                              "--port", str(unused_port())], cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "refusing to serve on 0.0.0.0" in refused.stderr
    port = unused_port()
    process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "server", "run", "--host",
                                "127.0.0.1", "--port", str(port)], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        else:
            raise AssertionError("flask run on 127.0.0.1 did not answer")
    finally:
        process.terminate()
        process.wait(20)
