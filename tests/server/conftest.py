"""Server fixtures: a real tiny index, built once per session with the real pieces.

``chextriev synth`` (6 patients, 256 px: previews 256 px, thumbnails 128 px) -> ``train_tiny_checkpoint`` (v6, tiny preset) ->
``chextriev index`` into SQLite + Faiss (``tiny_index``) and, with the same archive and
checkpoint, into a PostgreSQL catalog (``tiny_index_pg``, ``--db postgresql://...``). The
subcommands run through their own ``register``/``func`` (the code behind the console script) in
this process. The app is loaded once per catalog backend (``LOAD=sync``) and shared: every test
that uses ``app``, ``client`` or ``token_client`` runs on SQLite and on PostgreSQL; tests that
start server processes, the browser test and the NIH test use the SQLite index. Apps with other
settings reuse the loaded service (``SERVICE``).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from server_helpers import REPO_ROOT, run_subcommand, stop_server, unused_port

from server import create_app

log = logging.getLogger(__name__)
TOKEN = "test-token-0123456789abcdef"
@dataclass(frozen=True)
class TinyIndex:
    archive: Path
    checkpoint: Path
    index_dir: Path
    db_url: str

    def config(self, **extra) -> dict:
        return {"CHECKPOINT": str(self.checkpoint), "DB_URL": self.db_url, "INDEX_DIR": str(self.index_dir),
                **extra}


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory) -> TinyIndex:
    from chextriev.synth import cli as synth_cli
    from chextriev.training.quick import train_tiny_checkpoint
    from indexer import cli as index_cli

    root = tmp_path_factory.mktemp("server-index")
    archive = root / "archive"
    assert run_subcommand(synth_cli, ["synth", "--out", str(archive), "--patients", "6", "--seed", "0",
                                      "--size", "256"]) == 0
    checkpoint = train_tiny_checkpoint(archive, root / "model", variant="v6")
    index_dir = root / "index"
    assert run_subcommand(index_cli, ["index", "--data", str(archive), "--checkpoint", str(checkpoint),
                                      "--index-dir", str(index_dir), "--workers", "0", "--device", "cpu",
                                      "--no-progress"]) == 0
    return TinyIndex(archive, Path(checkpoint), index_dir, f"sqlite:///{index_dir / 'catalog.sqlite'}")


@pytest.fixture(scope="session")
def tiny_index_pg(tiny_index, postgres_server, tmp_path_factory) -> TinyIndex:
    """The same archive and checkpoint indexed into a fresh PostgreSQL database."""
    from indexer import cli as index_cli

    url = postgres_server.create_database("server_catalog")
    index_dir = tmp_path_factory.mktemp("server-index-pg") / "index"
    assert run_subcommand(index_cli, ["index", "--source", str(tiny_index.archive), "--checkpoint",
                                      str(tiny_index.checkpoint), "--index-dir", str(index_dir),
                                      "--db", url, "--workers", "0", "--device", "cpu",
                                      "--no-progress"]) == 0
    return TinyIndex(tiny_index.archive, tiny_index.checkpoint, index_dir, url)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def catalog_index(request, tiny_index) -> TinyIndex:
    """The tiny index on each catalog backend."""
    return tiny_index if request.param == "sqlite" else request.getfixturevalue("tiny_index_pg")


@pytest.fixture(scope="session")
def app(catalog_index):
    app = create_app(catalog_index.config(LOAD="sync"))
    assert app.extensions["chextriev"].ready, app.extensions["chextriev"].error
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def token_client(app):
    """A client of an app that requires ``TOKEN`` (same loaded service)."""
    return create_app({"SERVICE": app.extensions["chextriev"], "AUTH_TOKEN": TOKEN, "LOAD": "manual"}).test_client()


@pytest.fixture(scope="session")
def query_png(tiny_index) -> Path:
    """An archived PNG of the tiny archive, to upload as a query."""
    return min((tiny_index.archive / "files").rglob("*.png"))


@pytest.fixture(scope="session")
def query_dicom(tiny_index) -> Path | None:
    found = sorted((tiny_index.archive / "files").rglob("*.dcm"))
    return found[0] if found else None


@pytest.fixture()
def free_port() -> int:
    return unused_port()


def start_server(tiny_index: TinyIndex, port: int, log_dir: Path, *extra: str, wait: bool = True,
                 token: str | None = None, tls: tuple[Path, Path] | None = None,
                 env: dict | None = None) -> tuple[str, subprocess.Popen]:
    """Start ``python -m server.cli`` (the code of ``chextriev serve``) on 127.0.0.1:``port``
    serving the tiny index, logging to ``log_dir/server-<port>.log``; with ``wait``, return once
    it answers ready (fails with the log's tail if it exits first or is not ready in 120 s).
    ``tls``: ``(certificate, key)`` to serve HTTPS with (the base URL is then ``https://``)."""
    command = [sys.executable, "-m", "server.cli", "--checkpoint", str(tiny_index.checkpoint),
               "--db", tiny_index.db_url, "--index-dir", str(tiny_index.index_dir), "--port", str(port), *extra]
    if tls is not None:
        command += ["--tls-certificate", str(tls[0]), "--tls-key", str(tls[1])]
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log_file:  # the child keeps its own handle
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=env)
    base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    if wait:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify = str(tls[0]) if tls else True
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{base}/api/v1/readyz", headers=headers, timeout=2,
                                verify=verify).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        else:
            stop_server(process)
            raise AssertionError("server not ready after 120 s")
    return base, process


@pytest.fixture()
def serve_process(tiny_index, tmp_path):
    """``start(port, *extra_args) -> (base_url, process)``: :func:`start_server` in this test's
    temp dir; stops every process it started at the end."""
    processes: list[subprocess.Popen] = []

    def start(port: int, *extra: str, wait: bool = True, token: str | None = None,
              tls: tuple[Path, Path] | None = None, env: dict | None = None):
        base, process = start_server(tiny_index, port, tmp_path, *extra, wait=wait, token=token,
                                     tls=tls, env=env)
        processes.append(process)
        return base, process

    yield start
    for process in processes:
        stop_server(process)


@pytest.fixture(scope="module")
def module_server(tiny_index, tmp_path_factory):
    """One server with the default settings for a whole test module (e.g. the browser tests):
    its base URL."""
    base, process = start_server(tiny_index, unused_port(), tmp_path_factory.mktemp("module-server"))
    yield base
    stop_server(process)


@pytest.fixture(scope="session")
def token() -> str:
    return TOKEN


@pytest.fixture(scope="session")
def day_one(nih_sample, tmp_path_factory):
    """Day one with no labels: a tiny random BiomedCLIP-layout encoder in open_clip's own format
    (``encoder_files.write_open_clip``), ``chextriev model init`` on a folder of 10 real NIH
    radiographs (256 px copies), ``chextriev index`` of that folder (fp32). Shared by the encoder
    and text-search tests."""
    import encoder_files
    from PIL import Image

    from chextriev.model import cli as model_cli
    from indexer import cli as index_cli

    root = tmp_path_factory.mktemp("day-one")
    archive = root / "archive"
    archive.mkdir()
    for path in sorted((nih_sample / "images").glob("*.png"))[:10]:
        # 256 px copies: below every side an indexer may shrink to, so that the index holds the
        # embedding of exactly the image the library reads below
        Image.open(path).convert("L").resize((256, 256), Image.BICUBIC).save(archive / path.name)
    hub, reference = encoder_files.write_open_clip(root / "biomedclip")
    checkpoint = root / "model.ckpt"
    assert run_subcommand(model_cli, ["model", "init", "--backbone", "biomedclip", "--backbone-weights", str(hub),
                                      "--data", str(archive), "--out-file", str(checkpoint), "--sample", "6",
                                      "--no-progress", "--device", "cpu"]) == 0
    index_dir = root / "index"
    assert run_subcommand(index_cli, ["index", "--data", str(archive), "--checkpoint", str(checkpoint),
                                      "--index-dir", str(index_dir), "--workers", "0", "--device", "cpu",
                                      "--precision", "fp32", "--no-progress"]) == 0
    return {"archive": archive, "checkpoint": checkpoint, "index_dir": index_dir, "reference": reference,
            "db": f"sqlite:///{index_dir / 'catalog.sqlite'}", "root": root}
