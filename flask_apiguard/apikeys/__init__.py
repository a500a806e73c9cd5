"""API keys: created once and shown once, stored only as a hash, looked up by id.

:mod:`.base` holds :class:`ApiKey` and the operations every store shares
(:class:`ApiKeyStore`); each store persists records its own way: :mod:`.memory`,
:mod:`.sqlite` (the default), :mod:`.redis_store` and :mod:`.sql` (SQLAlchemy Core, for the
app's own database). :func:`open_store` picks one from ``APIGUARD_API_KEY_STORE``.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ApiGuardConfigError
from .base import ApiKey, ApiKeyStore, identity_of
from .memory import MemoryKeyStore
from .redis_store import RedisKeyStore
from .sql import SqlKeyStore, is_sql_url, safe_url
from .sqlite import SqliteKeyStore

#: What ``APIGUARD_API_KEY_STORE`` values name the Redis store.
REDIS_SCHEMES = ("redis://", "rediss://", "redis+unix://")

__all__ = ["ApiKey", "ApiKeyStore", "MemoryKeyStore", "RedisKeyStore", "SqlKeyStore",
           "SqliteKeyStore", "identity_of", "open_store"]


def open_store(uri: str, prefix: str, instance_path: str, redis_options: dict[str, Any],
               key_space: str | None = None) -> ApiKeyStore:
    """The store named by ``APIGUARD_API_KEY_STORE``; a Redis store writes under ``key_space``
    (the storage options' ``key_prefix``) when given. ``sqlite:///`` is the built-in SQLite
    file store; any other SQLAlchemy URL (``postgresql+psycopg://``, ``mysql+pymysql://``…)
    is the SQL store."""
    if uri == "memory://":
        return MemoryKeyStore(prefix)
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not os.path.isabs(path):
            path = os.path.join(instance_path, path)
        return SqliteKeyStore(prefix, path)
    if uri.startswith(REDIS_SCHEMES):
        return RedisKeyStore(prefix, uri, redis_options, key_space)
    if is_sql_url(uri):
        return SqlKeyStore(prefix, uri)
    raise ApiGuardConfigError(f"APIGUARD_API_KEY_STORE: unsupported store {safe_url(uri)!r}.")
