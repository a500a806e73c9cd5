"""How far to believe ``X-Forwarded-*``: one hop count for the client IP, scheme and host.

With ``APIGUARD_TRUSTED_PROXIES = N > 0`` the app's WSGI callable is wrapped in werkzeug's
:class:`~werkzeug.middleware.proxy_fix.ProxyFix` with ``x_for = x_proto = x_host = N`` (the
right-most N entries; ``Forwarded`` and ``X-Real-IP`` are never read). With 0 no header is
believed, whichever server would: gunicorn, by default, sets ``wsgi.url_scheme`` to https
from ``X-Forwarded-Proto``, ``-Ssl`` or ``-Protocol`` sent by a loopback peer, so the scheme
is put back to http unless the server's own socket speaks TLS. Every layer, and Flask itself
(``url_for``, ``request.is_secure``, ``request.remote_addr``), then sees the same resolved
values.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix

#: The headers servers read a forwarded scheme from (gunicorn's ``secure_scheme_headers``,
#: and a few other spellings of the same idea).
SCHEME_HEADERS = ("HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_SSL", "HTTP_X_FORWARDED_PROTOCOL",
                  "HTTP_X_FORWARDED_SCHEME", "HTTP_X_SCHEME", "HTTP_FRONT_END_HTTPS")
#: Where servers put the client's socket: gunicorn and werkzeug's own server.
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


def install(app: Any, hops: int) -> None:
    """Wrap ``app.wsgi_app``: in ProxyFix when ``hops`` proxies are trusted, otherwise so that
    no forwarded scheme the server believed counts."""
    if hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=0,
                                x_prefix=0)
    else:
        app.wsgi_app = untrusted_scheme(app.wsgi_app)


def _server_speaks_tls(environ: dict[str, Any]) -> bool:
    """Whether the server itself received this request over TLS (not a header saying so)."""
    for key in _SOCKET_KEYS:
        sock = environ.get(key)
        if sock is not None:
            return isinstance(sock, ssl.SSLSocket)
    return str(environ.get("HTTPS", "")).lower() in ("on", "1")  # CGI, uWSGI: their own TLS


def untrusted_scheme(wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """``wsgi_app`` seeing ``http`` where the server set ``https`` only because a peer sent a
    forwarded-scheme header (no proxy is trusted, so no such header is believed)."""

    def scheme_as_received(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("wsgi.url_scheme") in ("https", "wss") \
                and any(name in environ for name in SCHEME_HEADERS) \
                and not _server_speaks_tls(environ):
            environ["wsgi.url_scheme"] = "http" if environ["wsgi.url_scheme"] == "https" else "ws"
        return wsgi_app(environ, start_response)

    return scheme_as_received


def _without_port(address: str) -> str:
    if address.startswith("["):
        return address[1:address.find("]")] if "]" in address else address
    if address.count(":") == 1:  # IPv4 with a port; a bare IPv6 has several colons
        return address.split(":", 1)[0]
    return address


@functools.lru_cache(maxsize=8192)
def client_key(address: str | None) -> str:
    """The rate-limit bucket of a client address: IPv4 as is, IPv6 grouped by its /64.

    Some proxies write ``ip:port`` or ``[ipv6]:port`` into ``X-Forwarded-For``; the port is
    dropped (a new connection must not mean a new bucket). Anything that is still not an
    address shares one bucket.
    """
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(_without_port(address.strip()))
    except ValueError:
        return "invalid"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
