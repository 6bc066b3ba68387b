"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) on 127.0.0.1 with its own
temporary storage, and a small real HTTP proxy in front of it that counts requests, can fail
chosen paths with an HTTP status, and can demand a bearer token.

Orthanc 1.10 has no bind-address option: it listens on its (free) port with
``RemoteAccessAllowed: false``, so it answers loopback clients only; its DICOM listener is off.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "chextriev", "orthanc-test-password-4c1e"


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if not os.path.exists(ORTHANC):
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not PLUGIN.exists():
        return f"the Orthanc DICOMweb plugin is not installed ({PLUGIN}; apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OrthancServer:
    """One Orthanc process (start, stop, start again on the same port and storage)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        config = {
            "Name": "chextriev-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Host": f"127.0.0.1:{self.port}", "Ssl": False},
            "HttpCompressionEnabled": False,
            "StorageCompression": False,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 8,
        }
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 60.0) -> None:
        with open(self.folder / "orthanc.log", "ab") as log:  # the child keeps its own handle
            self.process = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.folder)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: "
                                   f"{(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    # ---- REST helpers (Orthanc's own API, basic auth) -----------------------------------
    def upload(self, data: bytes) -> dict:
        response = requests.post(f"{self.url}/instances", data=data, auth=(USER, PASSWORD),
                                 headers={"Content-Type": "application/dicom"}, timeout=30)
        response.raise_for_status()
        return response.json()

    def clear(self) -> None:
        patients = requests.get(f"{self.url}/patients", auth=(USER, PASSWORD), timeout=30).json()
        for patient in patients:
            requests.delete(f"{self.url}/patients/{patient}", auth=(USER, PASSWORD), timeout=30)


class Proxy:
    """A loopback HTTP proxy to one upstream (Orthanc): counts requests by kind (``qido``,
    ``wado``, ``metadata``, ``stow``), answers ``fail[substring] = status`` for matching paths,
    and with ``token`` set demands ``Authorization: Bearer <token>`` (then forwards with
    ``upstream_auth``)."""

    def __init__(self, upstream_port: int, *, upstream_auth: tuple[str, str] | None = None):
        self.upstream_port = upstream_port
        self.upstream_auth = upstream_auth
        self.token: str | None = None
        self.fail: dict[str, int] = {}
        self.counts: Counter = Counter()
        self.paths: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                self.do_GET(method="POST")

            def do_GET(self, method="GET"):
                path = self.path
                bare = path.split("?")[0]
                kind = "stow" if method == "POST" else "metadata" if bare.endswith("/metadata") \
                    else "wado" if "/instances/" in bare else (
                        "qido" if bare.endswith("/instances") else "other")
                payload = self._body()
                with proxy._lock:
                    proxy.counts[kind] += 1
                    proxy.paths.append(path)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "authorization", "connection",
                                                "transfer-encoding", "content-length")}
                if proxy.token is not None:
                    if self.headers.get("Authorization") != f"Bearer {proxy.token}":
                        return self._reply(401, b'{"error": "bad token"}')
                    if proxy.upstream_auth:
                        import base64

                        pair = ":".join(proxy.upstream_auth).encode()
                        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
                elif self.headers.get("Authorization"):
                    headers["Authorization"] = self.headers["Authorization"]
                for needle, status in proxy.fail.items():
                    if needle in path:
                        return self._reply(status, b'{"error": "injected by the test proxy"}')
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port,
                                                            timeout=60)
                    connection.request(method, path, body=payload, headers=headers)
                    upstream = connection.getresponse()
                    body = upstream.read()
                except OSError:
                    return self._reply(502, b'{"error": "upstream down"}')
                self.send_response(upstream.status, upstream.reason)
                for key, value in upstream.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                connection.close()

            def _body(self) -> bytes | None:
                """The request body (a chunked one de-chunked: dicomweb-client streams STOW)."""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _reply(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.paths.clear()
        self.fail.clear()
        self.token = None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
