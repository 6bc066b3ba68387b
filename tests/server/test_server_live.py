"""The self-describing bundle and live updates: ``chextriev serve --index-dir DIR`` alone, a
mismatched checkpoint refused, per-request nprobe/rerank, a failed load retried with backoff, a
broken new build survived, and a real server that keeps answering while the index is grown,
shrunk and rebuilt under it."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from server_helpers import (
    REPO_ROOT,
    BackgroundLoop,
    run_subcommand,
    stop_server,
    unused_port,
    wait_for,
)

from server import create_app


@pytest.fixture(scope="module")
def other_checkpoint(tiny_index, tmp_path_factory) -> Path:
    """The tiny checkpoint with one hyper-parameter changed: same model, another sha256."""
    import torch

    data = torch.load(tiny_index.checkpoint, map_location="cpu", weights_only=True)
    data["hyper_parameters"]["note"] = "another file"
    path = tmp_path_factory.mktemp("other-checkpoint") / "other.ckpt"
    torch.save(data, path)
    return path


def test_the_index_records_its_bundle(tiny_index):
    from chextriev.files import sha256_file

    bundle = json.loads((tiny_index.index_dir / "manifest.json").read_text())["bundle"]
    sha = sha256_file(tiny_index.checkpoint)
    assert bundle["checkpoint"] == {"id": sha[:16], "sha256": sha, "copy": None,
                                    "path": str(Path(tiny_index.checkpoint).resolve())}
    assert bundle["detector"] is None and bundle["boxes"]["otherwise"] == "atlas"
    assert bundle["model"]["kind"] == "graph" and bundle["model"]["variant"] == "v6"
    assert bundle["model"]["has_regions"] is True and len(bundle["model"]["config_sha256"]) == 64
    assert bundle["build"]["index_type"] == "auto" and bundle["build"]["precision"] in ("fp32", "bf16")


def test_serving_from_the_bundle_alone(tiny_index, client):
    app = create_app({"INDEX_DIR": str(tiny_index.index_dir), "LOAD": "sync"})
    service = app.extensions["chextriev"]
    assert service.ready, service.error
    assert service.model.checkpoint_id == json.loads(
        (tiny_index.index_dir / "manifest.json").read_text())["checkpoint_id"]
    ready = app.test_client().get("/api/v1/readyz").json
    assert ready["bundle"]["checkpoint_id"] == ready["checkpoint_id"]
    assert ready["search"]["index_type"] == "flat" and ready["search"]["nprobe"] is None
    assert "path" not in json.dumps(ready["bundle"])  # file paths never leave the server


def test_a_checkpoint_that_is_not_the_index_s_is_refused(tiny_index, other_checkpoint):
    app = create_app({"INDEX_DIR": str(tiny_index.index_dir), "CHECKPOINT": str(other_checkpoint),
                      "LOAD": "sync"})
    service = app.extensions["chextriev"]
    assert service.state == "failed"
    assert "CheckpointMismatchError" in service.error and "was built with checkpoint" in service.error
    assert "leave --checkpoint out" in service.error
    response = app.test_client().post("/api/v1/search/by-id/1")
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1


def test_nprobe_and_rerank_are_request_fields(client):
    response = client.post("/api/v1/search/by-id/1", data={"k": "3", "nprobe": "4", "rerank": "2"})
    assert response.status_code == 200, response.json
    assert response.json["search"] == {"index_type": "flat", "nprobe": None, "nlist": None, "rerank": None}
    response = client.post("/api/v1/search/by-id/1", json={"k": 3, "nprobe": 8})
    assert response.status_code == 200 and len(response.json["results"]) == 3
    for bad in ({"nprobe": "0"}, {"nprobe": "4097"}, {"rerank": "65"}, {"rerank": "x"}):
        response = client.post("/api/v1/search/by-id/1", data=bad)
        assert response.status_code == 400 and next(iter(bad)) in response.json["error"]["message"]
    assert client.post("/api/v1/search/by-id/1", json={"nprobe": "8"}).status_code == 400
    spec = client.get("/api/v1/openapi.json").json
    fields = spec["paths"]["/search/by-id/{image_id}"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]
    assert fields["nprobe"]["maximum"] == 4096 and fields["rerank"]["maximum"] == 64


def test_a_failed_load_is_retried_with_backoff_and_a_broken_build_is_survived(tiny_index, tmp_path):
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    app = create_app({"INDEX_DIR": str(index_dir), "LOAD": "sync"})  # nothing indexed yet
    client = app.test_client()
    service = app.extensions["chextriev"]
    first = client.get("/api/v1/readyz")
    assert first.status_code == 503 and "manifest.json is missing" in first.json["error"]
    assert first.headers["Retry-After"] == "1"
    time.sleep(1.05)
    client.get("/api/v1/readyz")  # due: retried in the background, fails again, waits longer
    wait_for(lambda: service._failures == 2 and not service._busy.locked(), 30, "a second attempt")
    assert int(client.get("/api/v1/readyz").headers["Retry-After"]) == 2
    shutil.copytree(tiny_index.index_dir, index_dir, dirs_exist_ok=True)  # the index arrives
    wait_for(lambda: client.get("/api/v1/readyz").status_code == 200, 60, "ready after the retry")
    assert client.post("/api/v1/search/by-id/1", data={"k": "2"}).status_code == 200
    # a new build that cannot be loaded: the old one keeps serving, the reload is retried
    manifest = index_dir / "manifest.json"
    good = manifest.read_text()
    broken = json.loads(good)
    broken["build_id"] = "broken"
    broken["segments"][0]["name"] = "missing-segment"
    tmp = index_dir / "manifest.json.new"
    tmp.write_text(json.dumps(broken))
    tmp.replace(manifest)
    client.get("/api/v1/readyz")
    wait_for(lambda: service.reload_error, 30, "the failed reload reported")
    ready = client.get("/api/v1/readyz")
    assert ready.status_code == 200 and "missing" in ready.json["reload_error"]
    assert client.post("/api/v1/search/by-id/1", data={"k": "2"}).status_code == 200
    tmp.write_text(good)
    tmp.replace(manifest)  # fixed: picked up after the backoff
    time.sleep(1.05)
    wait_for(lambda: client.get("/api/v1/readyz").json.get("reload_error") is None
          and not service._busy.locked(), 30, "the reload retried")
    assert service.catalog.build_id == json.loads(good)["build_id"]


class SearchLoop(BackgroundLoop):
    """Searches and reads /readyz against a running server from a thread until stopped,
    recording every status code, result ids and which worker answered."""

    def __init__(self, base: str, query_id: int):
        super().__init__()
        self.base, self.query_id = base, query_id
        self.codes: list[int] = []
        self.errors: list[str] = []
        self.seen_ids: set[int] = set()
        self.builds: dict[int, str] = {}  # worker pid -> index build it reported last

    def _run(self):
        session = requests  # a new connection per request: a kept-alive one stays on one worker
        deadline = time.monotonic() + 600  # bounded whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                response = session.post(f"{self.base}/api/v1/search/by-id/{self.query_id}",
                                        data={"k": "100"}, timeout=30)
                self.codes.append(response.status_code)
                if response.status_code >= 500:
                    self.errors.append(response.text[:300])
                elif response.status_code == 200:
                    self.seen_ids.update(r["id"] for r in response.json()["results"])
                ready = session.get(f"{self.base}/api/v1/readyz", timeout=30)
                self.codes.append(ready.status_code)
                if ready.status_code == 200:
                    self.builds[ready.json()["worker_pid"]] = ready.json()["index_build_id"]
                elif ready.status_code >= 500:
                    self.errors.append(ready.text[:300])
            except requests.RequestException as error:
                self.errors.append(repr(error))
            time.sleep(0.05)


def _index(*argv: str) -> None:
    from indexer import cli as index_cli

    assert run_subcommand(index_cli, ["index", *argv]) == 0


def _ids_in(index_dir: Path) -> set[int]:
    from sqlalchemy import select

    from indexer.db import Image, default_db_url
    from indexer.engine import make_engine, make_sessionmaker

    engine = make_engine(default_db_url(index_dir), create=False)
    try:
        with make_sessionmaker(engine)() as session:
            return set(session.scalars(select(Image.id).where(Image.status == "indexed")))
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_running_server_follows_the_index_without_a_5xx(tiny_index, tmp_path):
    """``chextriev serve --index-dir`` (2 workers, no other path given: the bundle's checkpoint
    copy) under a search loop while the index grows (a second `chextriev index` run), loses an
    image (`index remove`) and is rebuilt (`index repair`): no 5xx, both workers pick up each
    build, the new images are found, the removed one is 404 on every route."""
    archive = tmp_path / "archive"
    shutil.copytree(tiny_index.archive, archive)
    with open(archive / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    first = archive / "first.csv"
    with open(first, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:-4])
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(tiny_index.checkpoint, checkpoint)
    index_dir = tmp_path / "index"
    common = ("--index-dir", str(index_dir), "--workers", "0", "--device", "cpu", "--no-progress")
    _index("--source", str(archive), "--manifest", str(first), "--checkpoint", str(checkpoint),
           "--copy-checkpoint", *common)
    bundle = json.loads((index_dir / "manifest.json").read_text())["bundle"]
    copy = index_dir / bundle["checkpoint"]["copy"]
    assert copy.is_file() and bundle["checkpoint"]["path"] == str(checkpoint.resolve())
    checkpoint.unlink()  # the folder alone is served: the copy inside it
    before = _ids_in(index_dir)
    assert len(before) == len(rows) - 4

    port = unused_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:  # no --checkpoint, no --db: the bundle says
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "--index-dir", str(index_dir), "--port", str(port),
             "--workers", "2", "--threads", "2"],
            cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _ready(base) or process.poll() is not None, 120, "the server ready")
        assert process.poll() is None, log_path.read_text()[-2000:]
        query = min(before)
        with SearchLoop(base, query) as loop:
            wait_for(lambda: len(loop.builds) == 2, 60, "both workers answered")
            # 1. the index grows under the server: the new images are found
            _index("--source", str(archive), "--checkpoint", str(copy), *common)
            after = _ids_in(index_dir)
            new = after - before
            assert len(new) == 4
            build = json.loads((index_dir / "manifest.json").read_text())["build_id"]
            wait_for(lambda: set(loop.builds.values()) == {build} and len(loop.builds) == 2, 60,
                  "both workers on the new build")
            wait_for(lambda: new <= loop.seen_ids, 30, "the new images in the results")
            # 2. an image leaves: 404 on every route of every worker, never in results
            gone = max(new)
            _index("remove", "--index-dir", str(index_dir), str(gone))
            build = json.loads((index_dir / "manifest.json").read_text())["build_id"]
            wait_for(lambda: set(loop.builds.values()) == {build}, 60, "both workers after the removal")
            for _ in range(6):  # requests land on either worker
                for response in (requests.get(f"{base}/api/v1/images/{gone}", timeout=30),
                                 requests.get(f"{base}/api/v1/images/{gone}/thumbnail", timeout=30),
                                 requests.get(f"{base}/api/v1/images/{gone}/heatmap?finding=pneumothorax",
                                              timeout=30),
                                 requests.post(f"{base}/api/v1/search/by-id/{gone}", timeout=30)):
                    assert response.status_code == 404, (response.url, response.status_code)
                results = requests.post(f"{base}/api/v1/search/by-id/{query}", data={"k": "100"},
                                        timeout=30).json()["results"]
                assert gone not in {r["id"] for r in results} and len(results) == len(after) - 2
            # 3. a full rebuild under the server
            _index("repair", "--index-dir", str(index_dir))
            build = json.loads((index_dir / "manifest.json").read_text())["build_id"]
            wait_for(lambda: set(loop.builds.values()) == {build}, 60, "both workers after the rebuild")
            time.sleep(1)
        assert not loop.errors, loop.errors[:3]
        assert len(loop.codes) > 20 and all(code == 200 for code in loop.codes), sorted(set(loop.codes))
    finally:
        stop_server(process)


def _ready(base: str) -> bool:
    try:
        return requests.get(f"{base}/api/v1/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
