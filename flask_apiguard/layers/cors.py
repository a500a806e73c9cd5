"""CORS through flask-cors, with whole-origin matching and per-origin answers computed once.

flask-cors decides which headers an allowed origin gets. Two things are ours:

* flask-cors matches a regex with ``re.match`` (anchored at the start only), so a pattern
  ``https://.*\\.example\\.com`` would also admit ``https://a.example.com.evil.net``. Every
  ``re:`` pattern is therefore compiled as ``(?:pattern)\\Z``: the whole origin must match,
  and an exact origin is escaped and anchored the same way (flask-cors would read a string
  holding ``*`` or ``[`` as a regex).
* The headers for an origin depend on nothing but the origin, so they are computed once per
  origin and kept (a bounded number of origins, so random ``Origin`` values cannot grow it).
"""

from __future__ import annotations

import re
import threading
from typing import Any

from flask_cors.core import DEFAULT_OPTIONS, get_cors_headers, serialize_options
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Response

from ..config import GuardConfig

Header = tuple[str, str]
_CACHE_LIMIT = 1024
#: What an Origin header can hold (RFC 6454 serialisation); anything else is never reflected.
_ORIGIN_CHARS = re.compile(r"[A-Za-z0-9+.-]+://[A-Za-z0-9.:\[\]_~-]+|null")


def compile_origin(origin: str) -> str | re.Pattern[str]:
    """``re:pattern`` becomes a whole-match regex; an exact origin becomes a whole-match regex
    of its escaped text (flask-cors would read a string holding ``*``, ``[`` or ``?`` as a
    regex matched at the start only); ``*`` stays flask-cors's "any origin"."""
    if origin.startswith("re:"):
        return re.compile(f"(?:{origin[3:]})\\Z", re.IGNORECASE)
    if origin == "*":
        return origin
    return re.compile(re.escape(origin) + "\\Z", re.IGNORECASE)


class Cors:
    """Answers preflights and gives the CORS headers of an actual response."""

    __slots__ = ("_cache", "_lock", "options")

    def __init__(self, config: GuardConfig) -> None:
        options: dict[str, Any] = dict(DEFAULT_OPTIONS)
        options.update(
            origins=[compile_origin(o) for o in config.cors_origins],
            methods=list(config.cors_methods),
            allow_headers=list(config.cors_headers),
            expose_headers=list(config.cors_expose_headers) or None,
            supports_credentials=config.cors_credentials,
            max_age=config.cors_max_age,
            send_wildcard=False,
            vary_header=False,
            always_send=False,
            automatic_options=False,
            allow_private_network=False,
        )
        self.options = serialize_options(options)
        self._cache: dict[str, tuple[Header, ...]] = {}
        self._lock = threading.Lock()

    def headers_for(self, origin: str) -> tuple[Header, ...]:
        """The CORS headers of an actual (non-preflight) response to ``origin``; empty if refused."""
        cached = self._cache.get(origin)
        if cached is None:
            if not _ORIGIN_CHARS.fullmatch(origin):
                return ()
            computed = get_cors_headers(self.options, Headers([("Origin", origin)]), "GET")
            cached = tuple((k, str(v)) for k, v in computed.items())
            with self._lock:
                if len(self._cache) < _CACHE_LIMIT:
                    self._cache[origin] = cached
        return cached

    def preflight(self, request_headers: Headers) -> Response:
        """The answer to a preflight: 204 with the allowed methods and headers, or with no CORS
        headers at all when the origin or the method is not allowed (the browser then blocks)."""
        response = Response(status=204)
        del response.headers["Content-Type"]
        computed = get_cors_headers(self.options, request_headers, "OPTIONS")
        if "Access-Control-Allow-Methods" in computed:
            for name, value in computed.items():
                response.headers[name] = str(value)
        return response
