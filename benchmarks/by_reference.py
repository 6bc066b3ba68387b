"""Search by reference against a local Orthanc: the PACS part (QIDO-RS, catalog lookup, WADO-RS)
and the rest (decode, embed, search, response), beside an upload of the same DICOM file.

    python -m benchmarks by_reference --size 1024 --patients 20 --repeats 15

Starts Debian's Orthanc with its DICOMweb plugin on a free loopback port (own temporary storage,
basic auth), uploads a synthetic archive drawn as DICOM, indexes half of its studies FROM
Orthanc (``chextriev index --data URL``) with the default architecture (random weights, the
feature standardisation fitted on the archive: the timing does not depend on the weights), then
times in one process through the app's test client (no HTTP server in between), the calls
interleaved per repeat:

* ``by-reference, not indexed``: the study's frontal image found (QIDO-RS), fetched (WADO-RS),
  decoded, embedded, searched;
* ``by-reference, indexed``: found (QIDO-RS), answered from the index (no fetch);
* ``upload``: the same DICOM file posted to ``/api/v1/search``;
* ``by-reference + store``: as the first, and the report built and filed (STOW-RS).

The stage split is the medians of the responses' ``timing_ms`` (``qido``, ``lookup``, ``fetch``
= the PACS; ``decode``, ``embed``, ``search``, ``response`` = the rest).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.harness import (
    Table,
    archive_images,
    default_checkpoint,
    interleaved,
    machine_line,
    median_ms,
)

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "bench", "bench-password-0c6f"
PACS_STAGES = ("qido", "lookup", "fetch")


def start_orthanc(folder: Path) -> tuple[subprocess.Popen, str]:
    """Orthanc on a free loopback port with DICOMweb and basic auth; ``(process, root URL)``."""
    import requests

    from server.readiness import free_port

    port = free_port()
    config = {"Name": "chextriev-bench", "StorageDirectory": str(folder / "storage"),
              "IndexDirectory": str(folder / "index"), "HttpPort": port, "DicomServerEnabled": False,
              "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
              "RegisteredUsers": {USER: PASSWORD}, "Plugins": [PLUGIN],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpCompressionEnabled": False}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - the child writes to it
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log,
                               stderr=subprocess.STDOUT, cwd=folder)
    for _ in range(300):
        try:
            if requests.get(f"http://127.0.0.1:{port}/system", auth=(USER, PASSWORD), timeout=1).ok:
                return process, f"http://127.0.0.1:{port}"
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20, help="synthetic patients (default 20)")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repeats (default 15)")
    parser.add_argument("--k", type=int, default=10, help="results per search (default 10)")
    parser.add_argument("--work", type=Path, default=None, help="keep the work folder here")
    args = parser.parse_args(argv)
    if not (Path(ORTHANC).exists() and Path(PLUGIN).exists()):
        raise SystemExit("needs Debian's orthanc and orthanc-dicomweb (apt-get install orthanc orthanc-dicomweb)")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-by-reference-"))
    work.mkdir(parents=True, exist_ok=True)
    orthanc = None
    try:
        orthanc, url = start_orthanc(work)
        run(args, work, url)
    finally:
        if orthanc is not None:
            orthanc.terminate()
            orthanc.wait(timeout=30)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, work: Path, url: str) -> None:
    import pydicom
    import requests

    from chextriev.synth.writer import SynthConfig, write_archive
    from indexer.cli import register as index_register
    from server import create_app

    print(machine_line(), flush=True)
    archive = work / "archive"
    if not (archive / "manifest.csv").is_file():
        write_archive(SynthConfig(out=archive, patients=args.patients, seed=0, size=args.size,
                                  dicom_share=1.0, workers=2))
    files = {}
    for path in sorted((archive / "files").rglob("*.dcm")):
        data = path.read_bytes()
        files[str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)] = data
        requests.post(f"{url}/instances", data=data, auth=(USER, PASSWORD), timeout=60).raise_for_status()
    studies = sorted(files)
    indexed, fetched = studies[: len(studies) // 2], studies[len(studies) // 2:]
    images, boxes, _ = archive_images(archive, 32)
    checkpoint = default_checkpoint(work / "random-default.ckpt", images, boxes)
    password = work / "password"
    password.write_text(PASSWORD)
    uids = work / "indexed.txt"
    uids.write_text("\n".join(indexed))
    parser = argparse.ArgumentParser()
    index_register(parser.add_subparsers())
    index_args = parser.parse_args([
        "index", "--data", f"{url}/dicom-web", "--study-uids-file", str(uids), "--dicomweb-user", USER,
        "--dicomweb-password-file", str(password), "--checkpoint", str(checkpoint), "--index-dir",
        str(work / "index"), "--workers", "0", "--device", "cpu", "--no-progress"])
    if not (work / "index" / "manifest.json").exists():
        assert index_args.func(index_args) == 0
    app = create_app({"CHECKPOINT": str(checkpoint), "INDEX_DIR": str(work / "index"), "LOAD": "sync",
                      "CONFIG_FILE": None, "PACS_URL": f"{url}/dicom-web", "PACS_USER": USER,
                      "PACS_PASSWORD_FILE": str(password)})
    client = app.test_client()
    timings: dict[str, list[dict]] = {}

    def call(name: str, fn):
        def go():
            response = fn()
            assert response.status_code == 200, response.json
            timings.setdefault(name, []).append(response.json["timing_ms"])
        return go

    query_fetched, query_indexed = fetched[0], indexed[0]
    calls = {
        "by-reference, not indexed": call("by-reference, not indexed", lambda: client.post(
            "/api/v1/search/by-reference", json={"study_uid": query_fetched, "k": args.k})),
        "upload of the same file": call("upload of the same file", lambda: client.post(
            "/api/v1/search", data={"k": str(args.k),
                                    "image": (io.BytesIO(files[query_fetched]), "q.dcm")})),
        "by-reference, indexed": call("by-reference, indexed", lambda: client.post(
            "/api/v1/search/by-reference", json={"study_uid": query_indexed, "k": args.k})),
        "by-reference + store (STOW-RS)": call("by-reference + store (STOW-RS)", lambda: client.post(
            "/api/v1/search/by-reference", json={"study_uid": query_fetched, "k": args.k, "store": True})),
    }
    for fn in calls.values():  # warm-up: model, index, connection pool
        fn()
    timings.clear()
    walls = interleaved(calls, args.repeats)
    table = Table(f"By-reference search against a local Orthanc ({args.size} px DICOM, k={args.k}, "
                  f"{args.repeats} interleaved repeats, index of {len(indexed)} images, random weights)",
                  ("call", "wall p50 ms", "PACS ms (qido+lookup+fetch)", "rest ms (decode+embed+search+response)",
                   "report ms (metadata+build+STOW)"))
    for name, seconds in walls.items():
        stages = timings[name]

        def median_of(keys, stages=stages):
            return statistics.median(sum(t.get(key, 0.0) for key in keys) for t in stages)

        report = f"{median_of(('report',)):.1f}" if "store" in name else "-"
        table.row(name, f"{median_ms(seconds):.1f}", f"{median_of(PACS_STAGES):.1f}",
                  f"{median_of(('decode', 'embed', 'search', 'response')):.1f}", report)
    print()
    for name, stages in timings.items():
        keys = sorted({key for t in stages for key in t})
        print(f"{name}: " + ", ".join(f"{key} {statistics.median(t.get(key, 0.0) for t in stages):.1f}"
                                      for key in keys))
