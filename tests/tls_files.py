"""A self-signed certificate for the TLS tests (``tests/`` is on ``sys.path``): the server's
HTTPS (tests/server/test_server_tls.py) and the browser test of search by reference
(tests/dicomweb/test_dicomweb_reference.py), made by the ``openssl`` command line."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path


def _openssl() -> str:
    tool = shutil.which("openssl")
    if tool is None:
        raise AssertionError("the openssl command is needed to make a test certificate")
    return tool


def make_certificate(folder: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` and ``127.0.0.1`` and its unencrypted key
    (PEM files ``folder/name.crt`` and ``folder/name.key``)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run([_openssl(), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def spki_sha256(cert: Path) -> str:
    """The base64 SHA-256 of the certificate's public key (SubjectPublicKeyInfo, DER): what
    Chromium's ``--ignore-certificate-errors-spki-list`` trusts (that certificate, no other)."""
    pem = subprocess.run([_openssl(), "x509", "-in", str(cert), "-pubkey", "-noout"], check=True,
                         capture_output=True, timeout=30).stdout
    der = subprocess.run([_openssl(), "pkey", "-pubin", "-outform", "DER"], input=pem, check=True,
                         capture_output=True, timeout=30).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()
