"""Forwarded headers, trusted from the configured TLS-terminating proxy only (``tls_proxy``).

A reverse proxy in front of the server terminates TLS and tells the app what the client sent:
``X-Forwarded-Proto`` (``https``), ``X-Forwarded-Host``, ``X-Forwarded-For`` (the client's
address). Anyone can send those headers, so they are believed only when the connection comes
from a proxy named in ``tls_proxy`` (IP addresses or networks), and then only the proxy's own
hop (the last address of ``X-Forwarded-For``). From any other peer they are removed before the
app sees the request, so ``request.remote_addr`` (the loopback rule of :mod:`server.auth`, the
audit log) and ``request.url_root`` (the links the server builds) always say what this server
saw or what its own proxy said. gunicorn's ``forwarded_allow_ips`` is set to the same list
(:func:`server.serving.gunicorn_options`), so both layers agree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix

FORWARDED_KEYS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                  "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX", "HTTP_FORWARDED")


class TrustedProxies:
    """WSGI middleware: Werkzeug's ``ProxyFix`` (one hop) for requests from ``proxies``; the
    forwarded headers removed from everyone else's."""

    def __init__(self, app: Callable[..., Any], proxies: Iterable[str]):
        self.app = app
        self.networks = [ipaddress.ip_network(p, strict=False) for p in proxies]
        self.fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=0)

    def trusted(self, address: str | None) -> bool:
        if not address:
            return False
        try:
            peer = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        mapped = getattr(peer, "ipv4_mapped", None)
        return any(peer in network or (mapped is not None and mapped in network)
                   for network in self.networks)

    def __call__(self, environ: dict[str, Any], start_response):
        if self.trusted(environ.get("REMOTE_ADDR")):
            return self.fixed(environ, start_response)
        for key in FORWARDED_KEYS:
            environ.pop(key, None)
        return self.app(environ, start_response)
