"""WSGI apps for the gunicorn load run (``benchmarks/load.py``), configured by environment:

``BENCH_STORAGE_URI`` (default ``memory://``), ``BENCH_STORAGE_PREFIX`` (the Redis key prefix
of the run, see ``apps.redis_prefix``), ``BENCH_LIMIT`` (the guarded view's limit),
``BENCH_STORAGE_MODE`` (``APIGUARD_STORAGE_MODE``: ``exact``, the default, or ``leased``; the
key is set only for a mode other than ``exact``, so an older checkout without it runs too) and
``BENCH_ON_STORAGE_ERROR`` (``APIGUARD_RATELIMIT_ON_STORAGE_ERROR``, unset by default).
``floor`` is the guarded app on memory storage plus one bare ``PING`` to ``BENCH_PING_URL``
per request on a plain socket (no client library, no script): what any design with one Redis
round trip per request could at best reach on this machine.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import apps

_storage = os.environ.get("BENCH_STORAGE_URI", "memory://")
_limit = os.environ.get("BENCH_LIMIT", apps.LIMIT)
_prefix = os.environ.get("BENCH_STORAGE_PREFIX")
_options = {"key_prefix": _prefix} if _prefix else {}
_config: dict[str, Any] = {}
if os.environ.get("BENCH_STORAGE_MODE", "exact") != "exact":
    _config["APIGUARD_STORAGE_MODE"] = os.environ["BENCH_STORAGE_MODE"]
if os.environ.get("BENCH_ON_STORAGE_ERROR"):
    _config["APIGUARD_RATELIMIT_ON_STORAGE_ERROR"] = os.environ["BENCH_ON_STORAGE_ERROR"]

bare = apps.bare_flask()
guarded = apps.apiguard_app(storage_uri=_storage, limit=_limit, APIGUARD_TRUSTED_PROXIES=1,
                            APIGUARD_STORAGE_OPTIONS=_options, **_config)


def _floor() -> Any:
    import socket
    import threading
    from urllib.parse import urlsplit

    from flask_apiguard.ratelimit import backend as storage

    parts = urlsplit(os.environ.get("BENCH_PING_URL", "redis://127.0.0.1:6379/0"))
    address = (parts.hostname or "127.0.0.1", parts.port or 6379)
    local = threading.local()
    admit = storage.Backend.admit

    def admit_after_a_ping(self: Any, *args: Any, **kwargs: Any) -> Any:
        sock = getattr(local, "sock", None)
        if sock is None:
            sock = local.sock = socket.create_connection(address, timeout=0.5)
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        if sock.recv(64) != b"+PONG\r\n":
            raise RuntimeError("unexpected answer to PING")
        return admit(self, *args, **kwargs)

    storage.Backend.admit = admit_after_a_ping  # type: ignore[method-assign]
    return apps.apiguard_app(storage_uri="memory://", limit=_limit, APIGUARD_TRUSTED_PROXIES=1)


floor = _floor() if os.environ.get("BENCH_PING_URL") else None
