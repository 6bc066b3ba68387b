"""TLS in transit: `chextriev serve` with a certificate and key (gunicorn's own TLS) answers
HTTPS and refuses plain HTTP; a bind beyond loopback refuses plain HTTP unless the
configuration names the proxy that terminates TLS; forwarded headers are believed from that
proxy only; a certificate and key that do not belong together are refused at start-up."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests
from server_helpers import REPO_ROOT
from tls_files import make_certificate

from server import create_app
from server.config import ConfigError, check_bind_safety, parse_proxies, resolve_config


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


def test_plain_http_beyond_loopback_needs_tls_or_a_named_proxy(certificate):
    token = "a-long-random-token-value-0123"
    for host in ("0.0.0.0", "192.168.1.4", "::"):
        with pytest.raises(ConfigError, match=f"plain HTTP on {host}"):
            check_bind_safety(host, token)
    check_bind_safety("127.0.0.1", None)  # loopback: plain HTTP, no token
    cert, key = certificate
    settings = {"HOST": "0.0.0.0", "AUTH_TOKEN": token, "CONFIG_FILE": None}
    with pytest.raises(ConfigError, match="plain HTTP"):
        resolve_config(settings, environ={})
    served = resolve_config({**settings, "TLS_CERTIFICATE": str(cert), "TLS_KEY": str(key)}, environ={})
    assert served["TLS_CERTIFICATE"] == str(cert)
    proxied = resolve_config({**settings, "TLS_PROXY": "10.0.0.5, 10.1.0.0/16"}, environ={})
    assert proxied["TRUSTED_PROXIES"] == ("10.0.0.5/32", "10.1.0.0/16")
    with pytest.raises(ConfigError, match="not an IP address"):
        parse_proxies("proxy.example.org")


def test_certificate_and_key_must_belong_together(certificate, tmp_path):
    cert, key = certificate
    _, other_key = make_certificate(tmp_path, "other")
    with pytest.raises(ConfigError, match="go together"):
        resolve_config({"TLS_CERTIFICATE": str(cert), "CONFIG_FILE": None}, environ={})
    with pytest.raises(ConfigError, match="do not load together"):
        resolve_config({"TLS_CERTIFICATE": str(cert), "TLS_KEY": str(other_key), "CONFIG_FILE": None},
                       environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config({"TLS_CERTIFICATE": str(tmp_path / "missing.crt"), "TLS_KEY": str(key),
                        "CONFIG_FILE": None}, environ={})


def test_forwarded_headers_are_trusted_from_the_named_proxy_only(app, token):
    proxied = create_app({"SERVICE": app.extensions["chextriev"], "AUTH_TOKEN": token, "LOAD": "manual",
                          "HOST": "0.0.0.0", "TLS_PROXY": "10.0.0.5", "CONFIG_FILE": None})
    seen = {}

    @proxied.get("/__probe")
    def probe():
        from flask import request

        seen.update(addr=request.remote_addr, root=request.url_root)
        return "ok"

    client = proxied.test_client()
    forwarded = {"X-Forwarded-For": "192.0.2.7", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "chextriev.example"}
    client.get("/__probe", headers=forwarded, environ_base={"REMOTE_ADDR": "10.0.0.5"})
    assert seen == {"addr": "192.0.2.7", "root": "https://chextriev.example/"}
    client.get("/__probe", headers=forwarded, environ_base={"REMOTE_ADDR": "10.0.0.6"})
    assert seen["addr"] == "10.0.0.6" and seen["root"].startswith("http://localhost")


@pytest.mark.slow
def test_https_server_answers_and_plain_http_is_refused(serve_process, free_port, certificate):
    base, process = serve_process(free_port, tls=certificate)
    assert base.startswith("https://")
    ready = requests.get(f"{base}/api/v1/readyz", verify=str(certificate[0]), timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"]
    page = requests.get(f"{base}/", verify=str(certificate[0]), timeout=10)
    assert page.status_code == 200 and "CheXtriev" in page.text
    with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust it
        requests.get(f"{base}/api/v1/healthz", timeout=10)
    with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP to the TLS port
        requests.get(base.replace("https://", "http://") + "/api/v1/healthz", timeout=10)
    assert process.poll() is None  # the refused connection did not hurt the server


def test_serve_refuses_plain_http_on_a_public_address(tiny_index, free_port, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("a-long-random-token-value-0123\n")
    command = [sys.executable, "-m", "server.cli", "--index-dir", str(tiny_index.index_dir),
               "--checkpoint", str(tiny_index.checkpoint), "--host", "0.0.0.0",
               "--port", str(free_port), "--token-file", str(token_file)]
    result = subprocess.run(command, cwd=REPO_ROOT, check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "refusing to serve plain HTTP on 0.0.0.0" in result.stderr
