"""How far to believe ``X-Forwarded-*``: one hop count for the client IP, scheme and host.

With ``APIGUARD_TRUSTED_PROXIES = N > 0`` the app's WSGI callable is wrapped in werkzeug's
:class:`~werkzeug.middleware.proxy_fix.ProxyFix` with ``x_for = x_proto = x_host = N`` (the
right-most N entries; ``Forwarded`` and ``X-Real-IP`` are never read). With 0 nothing is
wrapped, so a forged header changes nothing. Every layer, and Flask itself (``url_for``,
``request.is_secure``, ``request.remote_addr``), then sees the same resolved values.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix


def install(app: Any, hops: int) -> None:
    """Wrap ``app.wsgi_app`` when ``hops`` proxies are trusted."""
    if hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=0,
                                x_prefix=0)


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
