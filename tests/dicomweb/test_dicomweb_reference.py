"""Search by reference against a real Orthanc with its DICOMweb plugin (the fixture of the
indexer's DICOMweb tests, behind the counting proxy): a synthetic archive's DICOMs uploaded,
half of its studies indexed from Orthanc with a tiny trained model; then:

* an indexed study is answered from the index (no WADO-RS retrieve) and a study that is not
  indexed is fetched and embedded; both give the top-k an upload of the same file gives (the
  indexed one without itself, as a search by id), and nothing is added to the index;
* unknown study or instance 404, a study without a frontal image 422 with what it holds, bad
  UIDs 400, credentials refused 502, the PACS stopped 503, each naming the PACS and never the
  password; with the PACS stopped nothing indexed is touched;
* ``store=true`` files a DICOM SR into the query's study: found again with QIDO-RS in that study,
  fetched with WADO-RS, valid for dciodvfy, its referenced image resolves on the PACS, and it
  holds no identifier or UID of any other study; the same for an indexed study (header by
  WADO-RS metadata) and for a pseudonymised index, where the key lets the server recognise the
  indexed image;
* a label-free encoder model (no finding head) files a valid report without findings;
* ``chextriev search`` does the same for a list of studies, one JSON line each, and files the
  reports with ``--store``;
* the page opened with ``?study=`` over HTTPS shows that study's results and files its report.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from dicom_files import dciodvfy_errors
from dicomweb_helpers import PASSWORD, USER, free_port

from chextriev.io.sr import read_report

REPO = Path(__file__).resolve().parents[2]
K = 4
PUBLIC = "https://chextriev.example"


def _run(module, argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def _encode(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class World:
    archive: Path
    checkpoint: Path
    index_dir: Path
    password_file: Path
    frontal: dict[str, bytes]  # study UID -> its (one) frontal DICOM
    indexed: list[str]
    fetched: list[str]
    lateral_study: str
    others: dict[str, dict]  # study UID -> the identifiers and UIDs of its image


def _identifiers(data: bytes) -> dict:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return {key: str(ds.get(key)) for key in ("PatientID", "PatientName", "StudyInstanceUID",
                                              "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber")
            if ds.get(key)}


@pytest.fixture(scope="module")
def world(orthanc_server, tmp_path_factory) -> World:
    from chextriev.synth import cli as synth_cli
    from chextriev.training.quick import train_tiny_checkpoint
    from indexer import cli as index_cli

    root = tmp_path_factory.mktemp("pacs-world")
    archive = root / "archive"
    assert _run(synth_cli, ["synth", "--out", str(archive), "--patients", "6", "--seed", "3",
                            "--size", "64", "--dicom-share", "1.0"]) == 0
    checkpoint = train_tiny_checkpoint(archive, root / "model", variant="v6")
    if orthanc_server.process is None or orthanc_server.process.poll() is not None:
        orthanc_server.start()
    orthanc_server.clear()
    frontal: dict[str, bytes] = {}
    for path in sorted((archive / "files").rglob("*.dcm")):
        data = path.read_bytes()
        frontal[str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)] = data
        orthanc_server.upload(data)
    lateral = pydicom.dcmread(io.BytesIO(next(iter(frontal.values()))))
    lateral.ViewPosition = "LL"
    lateral.StudyInstanceUID = pydicom.uid.generate_uid()
    lateral.SeriesInstanceUID = pydicom.uid.generate_uid()
    lateral.SOPInstanceUID = lateral.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    orthanc_server.upload(_encode(lateral))
    studies = sorted(frontal)
    indexed, fetched = studies[: len(studies) // 2], studies[len(studies) // 2:]
    uids_file = root / "indexed.txt"
    uids_file.write_text("\n".join(indexed) + "\n")
    password_file = root / "password"
    password_file.write_text(PASSWORD + "\n")
    index_dir = root / "index"
    assert _run(index_cli, ["index", "--data", orthanc_server.dicomweb, "--study-uids-file", str(uids_file),
                            "--dicomweb-user", USER, "--dicomweb-password-file", str(password_file),
                            "--checkpoint", str(checkpoint), "--index-dir", str(index_dir),
                            "--workers", "0", "--device", "cpu", "--no-progress"]) == 0
    others = {study: _identifiers(data) for study, data in frontal.items()}
    return World(archive, Path(checkpoint), index_dir, password_file, frontal, indexed, fetched,
                 str(lateral.StudyInstanceUID), others)


def _config(world: World, url: str, **extra) -> dict:
    # fp32: with precision auto the first embedding of a process decides bf16 (and is itself
    # computed in fp32), so which call comes first would change the last digits compared here
    return {"CHECKPOINT": str(world.checkpoint), "INDEX_DIR": str(world.index_dir), "LOAD": "sync",
            "PRECISION": "fp32",
            "CONFIG_FILE": None, "PACS_URL": url, "PACS_USER": USER,
            "PACS_PASSWORD_FILE": str(world.password_file), "PUBLIC_URL": PUBLIC, **extra}


@pytest.fixture(scope="module")
def app(world, proxy_server):
    from server import create_app

    app = create_app(_config(world, proxy_server.dicomweb))
    assert app.extensions["chextriev"].ready, app.extensions["chextriev"].error
    return app


@pytest.fixture
def client(app, proxy_server, orthanc_server):
    if orthanc_server.process is None or orthanc_server.process.poll() is not None:
        orthanc_server.start()
    proxy_server.reset()
    return app.test_client()


def _by_reference(client, study, **fields):
    return client.post("/api/v1/search/by-reference", json={"study_uid": study, "k": K, **fields})


def _upload(client, data: bytes, k: int):
    response = client.post("/api/v1/search", data={"k": str(k), "image": (io.BytesIO(data), "q.dcm")})
    assert response.status_code == 200, response.json
    return response.json


def _index_state(index_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(index_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(index_dir.rglob("*")) if p.is_file()}


def test_indexed_study_comes_from_the_index_and_matches_an_upload(client, world, proxy_server):
    study = world.indexed[0]
    before = _index_state(world.index_dir)
    response = _by_reference(client, study)
    assert response.status_code == 200, response.json
    body = response.json
    query = body["query"]
    assert query["source"] == "pacs" and query["read_from"] == "index" and query["study_instance_uid"] == study
    assert proxy_server.counts["qido"] >= 1 and proxy_server.counts["wado"] == 0  # nothing fetched
    upload = _upload(client, world.frontal[study], K + 1)
    assert upload["results"][0]["id"] == query["id"]  # the upload finds the indexed copy first
    assert [r["id"] for r in body["results"]] == [r["id"] for r in upload["results"][1:]]
    for mine, theirs in zip(body["results"], upload["results"][1:]):
        assert mine["similarity"] == pytest.approx(theirs["similarity"], abs=2e-3)
    assert body["result_url"].startswith(f"{PUBLIC}/?study={study}&series=")
    assert _index_state(world.index_dir) == before


def test_study_not_indexed_is_fetched_embedded_and_not_indexed(client, world, proxy_server, app):
    study = world.fetched[0]
    size = app.extensions["chextriev"].size
    before = _index_state(world.index_dir)
    response = _by_reference(client, study)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["query"]["read_from"] == "pacs" and "id" not in body["query"]
    assert body["query"]["preview_url"].startswith("data:image/jpeg;base64,")
    assert proxy_server.counts["wado"] == 1
    assert body["timing_ms"]["fetch"] > 0 and body["timing_ms"]["embed"] > 0
    upload = _upload(client, world.frontal[study], K)
    assert [r["id"] for r in body["results"]] == [r["id"] for r in upload["results"]]
    assert [r["similarity"] for r in body["results"]] == [r["similarity"] for r in upload["results"]]
    assert [f["probability"] for f in body["query"]["findings"]] == \
        [f["probability"] for f in upload["query"]["findings"]]
    assert app.extensions["chextriev"].size == size and _index_state(world.index_dir) == before
    # the same by series and by instance
    series, instance = body["query"]["series_instance_uid"], body["query"]["sop_instance_uid"]
    again = _by_reference(client, study, series_uid=series, instance_uid=instance)
    assert again.status_code == 200 and [r["id"] for r in again.json["results"]] == [r["id"] for r in body["results"]]


def test_errors_are_the_users_to_act_on(client, world):
    unknown = _by_reference(client, "1.2.826.0.1.3680043.8.498.1")
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "unknown_study"
    no_instance = _by_reference(client, world.fetched[0], instance_uid="1.2.3.4.5")
    assert no_instance.status_code == 404 and "1.2.3.4.5" in no_instance.json["error"]["message"]
    lateral = _by_reference(client, world.lateral_study)
    assert lateral.status_code == 422 and lateral.json["error"]["code"] == "no_frontal_image"
    assert [f["view"] for f in lateral.json["error"]["found"]] == ["LL"]
    for bad in ({"study_uid": "1.2.abc"}, {"study_uid": "1" * 65}, {}):
        response = client.post("/api/v1/search/by-reference", json={"k": K, **bad})
        assert response.status_code == 400, response.json
    form = client.post("/api/v1/search/by-reference", data={"study_uid": world.fetched[0], "k": str(K)})
    assert form.status_code == 200


def test_credentials_refused_and_pacs_unreachable_name_the_pacs_only(world, app, orthanc_server, caplog):
    from server import create_app

    service = app.extensions["chextriev"]
    wrong = world.password_file.parent / "wrong-password"
    wrong.write_text("not-the-password-3f9\n")
    refused = create_app({**_config(world, orthanc_server.dicomweb, PACS_PASSWORD_FILE=str(wrong)),
                          "SERVICE": service, "LOAD": "manual"}).test_client()
    response = _by_reference(refused, world.fetched[0])
    assert response.status_code == 502 and response.json["error"]["code"] == "pacs_refused"
    assert orthanc_server.dicomweb in response.json["error"]["message"]
    dead_url = f"http://127.0.0.1:{free_port()}/dicom-web"
    dead = create_app({**_config(world, dead_url), "SERVICE": service, "LOAD": "manual"}).test_client()
    response = _by_reference(dead, world.fetched[0])
    assert response.status_code == 503 and response.json["error"]["code"] == "pacs_unavailable"
    assert dead_url in response.json["error"]["message"] and response.headers["Retry-After"]
    for secret in ("not-the-password-3f9", PASSWORD):
        assert secret not in json.dumps(response.json) and secret not in caplog.text
    no_pacs = create_app({"SERVICE": service, "LOAD": "manual", "CONFIG_FILE": None}).test_client()
    response = _by_reference(no_pacs, world.fetched[0])
    assert response.status_code == 404 and response.json["error"]["code"] == "no_pacs"


def test_pacs_stopped_answers_503_and_touches_nothing_indexed(client, world, orthanc_server, app):
    before = _index_state(world.index_dir)
    size = app.extensions["chextriev"].size
    orthanc_server.stop()
    try:
        for study in (world.indexed[0], world.fetched[0]):
            response = _by_reference(client, study, store=True)
            assert response.status_code in (502, 503), response.json
            assert response.json["error"]["code"] in ("pacs_unavailable", "pacs_error")
            assert "/dicom-web" in response.json["error"]["message"]
    finally:
        orthanc_server.start()
    assert _index_state(world.index_dir) == before and app.extensions["chextriev"].size == size
    assert _by_reference(client, world.fetched[0]).status_code == 200  # back when the PACS is


def _stored_report(orthanc_server, study: str, sop: str) -> pydicom.Dataset:
    """The report found again on the PACS: QIDO-RS in the query's study, then WADO-RS."""
    from chextriev.io.dicomweb import Credentials, DicomwebConnection

    connection = DicomwebConnection(orthanc_server.dicomweb, credentials=Credentials.basic(USER, PASSWORD))
    found = [tags for tags in connection.study_instances(study) if tags.get("Modality") == "SR"]
    assert [tags["SOPInstanceUID"] for tags in found] == [sop]
    data = connection.fetch_instance(study, found[0]["SeriesInstanceUID"], sop)
    return pydicom.dcmread(io.BytesIO(data)), connection


def _check_report(report: pydicom.Dataset, connection, world: World, study: str, tmp_path: Path) -> dict:
    path = tmp_path / f"{report.SOPInstanceUID}.dcm"
    report.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    read = read_report(report)
    assert len(read["referenced_instances"]) == 1
    (instance,) = read["referenced_instances"]
    own = world.others[study]
    assert instance == own["SOPInstanceUID"]
    # the referenced image resolves on the PACS (its header, no pixels)
    header = connection.instance_metadata(study, own["SeriesInstanceUID"], instance)
    assert str(header.SOPInstanceUID) == instance
    assert report.PatientID == own["PatientID"] and report.StudyInstanceUID == study
    # no identifier or UID of any other study, anywhere in the file
    data = path.read_bytes()
    for other, identifiers in world.others.items():
        if other == study:
            continue
        for key, value in identifiers.items():
            if key == "PatientID" and value == own["PatientID"]:
                continue  # the same patient's other study: its ID is this patient's own
            if key == "PatientName" and value == own.get("PatientName"):
                continue
            assert value.encode() not in data, (key, value)
    assert read["result_url"].startswith(f"{PUBLIC}/?study={study}")
    return read


def test_store_files_a_valid_report_into_the_query_study(client, world, orthanc_server, proxy_server,
                                                         tmp_path, app):
    study = world.fetched[1]
    before = _index_state(world.index_dir)
    response = _by_reference(client, study, store=True)
    assert response.status_code == 200, response.json
    filed = response.json["report"]
    assert filed["study_instance_uid"] == study and proxy_server.counts["stow"] == 1
    report, connection = _stored_report(orthanc_server, study, filed["sop_instance_uid"])
    read = _check_report(report, connection, world, study, tmp_path)
    assert read["k"] == len(response.json["results"]) == K
    query_findings = {f["name"]: f for f in response.json["query"]["findings"]}
    assert set(read["findings"]) >= set(query_findings)
    for name, finding in query_findings.items():
        assert read["findings"][name]["probability"] == pytest.approx(finding["probability"], abs=1e-4)
        assert read["findings"][name]["present"] is finding["predicted"]
    # the counts are those of the results' findings (known label, else predicted)
    for name, values in read["findings"].items():
        held = sum(name in (r["known_findings"] if r["known_findings"] is not None else r["predicted_findings"] or [])
                   for r in response.json["results"])
        assert values["similar"] == held, name
    # filed again: a new report with new UIDs; the study's image is still the query
    second = _by_reference(client, study, store=True)
    assert second.status_code == 200 and second.json["report"]["sop_instance_uid"] != filed["sop_instance_uid"]
    assert second.json["report"]["series_instance_uid"] != filed["series_instance_uid"]
    assert second.json["query"]["sop_instance_uid"] == response.json["query"]["sop_instance_uid"]
    assert _index_state(world.index_dir) == before  # a report is not indexed either


def test_store_for_an_indexed_study_reads_the_header_without_pixels(client, world, orthanc_server,
                                                                    proxy_server, tmp_path):
    study = world.indexed[1]
    response = _by_reference(client, study, store=True)
    assert response.status_code == 200, response.json
    assert response.json["query"]["read_from"] == "index"
    assert proxy_server.counts["wado"] == 0 and proxy_server.counts["metadata"] == 1
    assert proxy_server.counts["stow"] == 1
    report, connection = _stored_report(orthanc_server, study, response.json["report"]["sop_instance_uid"])
    _check_report(report, connection, world, study, tmp_path)


def test_a_pseudonymised_index_is_recognised_with_the_key_and_files_reports(world, orthanc_server, tmp_path,
                                                                            proxy_server, monkeypatch):
    from indexer import cli as index_cli
    from server import create_app

    key_file = tmp_path / "key"
    key_file.write_text("a-pseudonymisation-key-for-the-test\n")
    uids_file = tmp_path / "studies.txt"
    uids_file.write_text("\n".join(world.indexed) + "\n")
    index_dir = tmp_path / "pseudo-index"
    assert _run(index_cli, ["index", "--data", orthanc_server.dicomweb, "--study-uids-file", str(uids_file),
                            "--dicomweb-user", USER, "--dicomweb-password-file", str(world.password_file),
                            "--checkpoint", str(world.checkpoint), "--index-dir", str(index_dir),
                            "--pseudonymise", "--pseudonym-key-file", str(key_file),
                            "--workers", "0", "--device", "cpu", "--no-progress"]) == 0
    study = world.indexed[2]
    base = {**_config(world, proxy_server.dicomweb), "INDEX_DIR": str(index_dir)}
    keyed = create_app({**base, "PSEUDONYM_KEY_FILE": str(key_file)})
    proxy_server.reset()
    response = _by_reference(keyed.test_client(), study, store=True, exclude_same_patient=True)
    assert response.status_code == 200, response.json
    assert response.json["query"]["read_from"] == "index" and proxy_server.counts["wado"] == 0
    assert response.json["exclude_same_patient"] is True
    patient = world.others[study]["PatientID"]
    assert all(r["patient"] != patient for r in response.json["results"])  # pseudonyms, never the ID
    report, connection = _stored_report(orthanc_server, study, response.json["report"]["sop_instance_uid"])
    _check_report(report, connection, world, study, tmp_path)
    # without the key the pseudonymised copy cannot be recognised: fetched, and said so
    monkeypatch.delenv("CHEXTRIEV_PSEUDONYM_KEY", raising=False)
    keyless = create_app({**base, "SERVICE": keyed.extensions["chextriev"], "LOAD": "manual"})
    plain = _by_reference(keyless.test_client(), study)
    assert plain.status_code == 200 and plain.json["query"]["read_from"] == "pacs"
    assert any("pseudonymised" in note for note in plain.json.get("notes", []))


def test_chextriev_search_writes_one_line_per_study_and_files_reports(world, orthanc_server, tmp_path):
    from server import search_cli

    config = tmp_path / "server.toml"
    config.write_text(f'checkpoint = "{world.checkpoint}"\nindex_dir = "{world.index_dir}"\n'
                      f'pacs_url = "{orthanc_server.dicomweb}"\npacs_user = "{USER}"\n'
                      f'pacs_password_file = "{world.password_file}"\npublic_url = "{PUBLIC}"\n')
    studies = [world.indexed[3], world.fetched[2], world.lateral_study, "1.2.826.0.1.3680043.8.498.2"]
    uids_file = tmp_path / "review.txt"
    uids_file.write_text("# teaching-file review\n" + "\n".join(studies) + "\n")
    out = tmp_path / "lines.jsonl"
    code = _run(search_cli, ["search", "--config", str(config), "--study-uids-file", str(uids_file),
                             "--k", str(K), "--store", "--out-file", str(out)])
    assert code == 1  # two of the four could not be searched
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["study_uid"] for line in lines] == studies
    indexed, fetched, lateral, unknown = lines
    assert indexed["read_from"] == "index" and fetched["read_from"] == "pacs"
    assert len(indexed["results"]) == len(fetched["results"]) == K
    assert lateral["error"]["code"] == "no_frontal_image" and unknown["error"]["code"] == "unknown_study"
    for line in (indexed, fetched):
        report, connection = _stored_report(orthanc_server, line["study_uid"], line["report"]["sop_instance_uid"])
        read = _check_report(report, connection, world, line["study_uid"], tmp_path)
        assert {name: v["similar"] for name, v in read["findings"].items() if v["similar"]} == line["evidence"]
    # by a QIDO-RS filter: every study of the date range that holds CR or DX images
    dated = tmp_path / "dated.jsonl"
    assert _run(search_cli, ["search", "--config", str(config), "--study-date", "19000101-",
                             "--k", "2", "--out-file", str(dated)]) == 1  # the lateral-only study
    found = {json.loads(line)["study_uid"] for line in dated.read_text().splitlines()}
    assert found == set(world.frontal) | {world.lateral_study}


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def tls_server(world, orthanc_server, tmp_path_factory):
    """``chextriev serve`` (gunicorn) over HTTPS with a self-signed certificate, the world's index
    and Orthanc as its PACS: ``(base URL, certificate)``."""
    import subprocess
    import sys

    import requests
    from server_helpers import stop_server, wait_for
    from tls_files import make_certificate

    folder = tmp_path_factory.mktemp("tls-server")
    cert, key = make_certificate(folder)
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    command = [sys.executable, "-m", "server.cli", "--checkpoint", str(world.checkpoint), "--index-dir",
               str(world.index_dir), "--port", str(port), "--tls-certificate", str(cert), "--tls-key", str(key),
               "--pacs-url", orthanc_server.dicomweb, "--pacs-user", USER, "--pacs-password-file",
               str(world.password_file), "--public-url", base, "--precision", "fp32"]
    log_path = folder / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    def ready() -> bool:
        assert process.poll() is None, log_path.read_text()[-3000:]
        try:
            return requests.get(f"{base}/api/v1/readyz", verify=str(cert), timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(ready, 120, "the TLS server ready", interval=0.3)
        yield base, cert
    finally:
        stop_server(process)


@pytest.mark.browser
@pytest.mark.slow
def test_the_page_opened_with_a_study_shows_its_results_over_https(tls_server, world, orthanc_server, tmp_path):
    import os

    import requests

    if not CHROMIUM.exists():
        if os.environ.get("CHEXTRIEV_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CHEXTRIEV_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package to run the browser tests")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from tls_files import spki_sha256

    base, cert = tls_server
    with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP to the TLS server
        requests.get(base.replace("https://", "http://") + "/", timeout=10)
    study = world.fetched[-1]
    expected = requests.post(f"{base}/api/v1/search/by-reference", json={"study_uid": study, "k": 10},
                             verify=str(cert), timeout=120).json()
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    with playwright_api.sync_playwright() as playwright:
        untrusting = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        page = untrusting.new_context().new_page()
        with pytest.raises(playwright_api.Error, match="ERR_CERT"):
            page.goto(f"{base}/?study={study}")  # a browser that does not trust the certificate
        untrusting.close()
        browser = playwright.chromium.launch(  # this browser trusts exactly the test's certificate
            executable_path=str(CHROMIUM), args=[*args, f"--ignore-certificate-errors-spki-list={spki_sha256(cert)}"])
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("response", lambda r: r.status >= 400 and errors.append(f"HTTP {r.status} {r.url}"))
        page.goto(f"{base}/?study={study}")
        assert page.evaluate("window.location.protocol") == "https:"
        results = page.locator("#results li")
        playwright_api.expect(results).to_have_count(len(expected["results"]), timeout=120_000)
        ids = [int(x) for x in results.evaluate_all("items => items.map((li) => li.dataset.id)")]
        assert ids == [r["id"] for r in expected["results"]]
        playwright_api.expect(page.locator("#query-meta")).to_contain_text(f"PACS study {study}")
        playwright_api.expect(page.locator("#study-uid")).to_have_value(study)
        # the viewer's button files the report into the study
        playwright_api.expect(page.locator("#report-box")).to_be_visible()
        page.click("#report-store")
        playwright_api.expect(page.locator("#report-status")).to_contain_text("Report filed", timeout=120_000)
        filed = page.locator("#report-status").inner_text().split("SR ")[1].rstrip(").")
        page.screenshot(path=str(tmp_path / "by-reference.png"))
        browser.close()
    assert not errors, errors
    report, _ = _stored_report(orthanc_server, study, filed)
    assert read_report(report)["result_url"].startswith(f"{base}/?study={study}")


def test_a_model_without_a_finding_head_files_a_valid_report(world, orthanc_server, proxy_server, tmp_path):
    """A label-free encoder checkpoint (``chextriev model init``: no finding head) searches by
    reference and files a report with no finding in it, still valid, saying why."""
    import encoder_files

    from chextriev.model import cli as model_cli
    from indexer import cli as index_cli
    from server import create_app

    hub, _ = encoder_files.write_open_clip(tmp_path / "biomedclip")
    checkpoint = tmp_path / "no-labels.ckpt"
    assert _run(model_cli, ["model", "init", "--backbone", "biomedclip", "--backbone-weights", str(hub),
                            "--data", str(world.archive), "--out-file", str(checkpoint), "--sample", "4",
                            "--no-progress", "--device", "cpu"]) == 0
    uids_file = tmp_path / "studies.txt"
    uids_file.write_text("\n".join(world.indexed) + "\n")
    index_dir = tmp_path / "encoder-index"
    assert _run(index_cli, ["index", "--data", orthanc_server.dicomweb, "--study-uids-file", str(uids_file),
                            "--dicomweb-user", USER, "--dicomweb-password-file", str(world.password_file),
                            "--checkpoint", str(checkpoint), "--index-dir", str(index_dir),
                            "--workers", "0", "--device", "cpu", "--precision", "fp32", "--no-progress"]) == 0
    app = create_app({**_config(world, proxy_server.dicomweb), "CHECKPOINT": str(checkpoint),
                      "INDEX_DIR": str(index_dir)})
    assert app.extensions["chextriev"].ready, app.extensions["chextriev"].error
    study = world.fetched[3]
    response = _by_reference(app.test_client(), study, store=True)
    assert response.status_code == 200, response.json
    assert response.json["query"]["findings"] is None and "no finding head" in response.json["query"]["findings_note"]
    report, connection = _stored_report(orthanc_server, study, response.json["report"]["sop_instance_uid"])
    read = _check_report(report, connection, world, study, tmp_path)  # dciodvfy, references, no other study
    assert read["findings"] == {} and read["k"] == K
    assert any("no finding head" in text for text in read["texts"])
