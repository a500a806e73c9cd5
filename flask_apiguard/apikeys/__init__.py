"""API keys: created once and shown once, stored only as a hash, looked up by id.

:mod:`.base` holds :class:`ApiKey` and the operations every store shares
(:class:`ApiKeyStore`); each store persists records its own way: :mod:`.memory`,
:mod:`.sqlite` (the default) and :mod:`.redis_store`. :func:`open_store` picks one from
``APIGUARD_API_KEY_STORE``.
"""

from __future__ import annotations

import os
from typing import Any

from .base import ApiKey, ApiKeyStore, identity_of
from .memory import MemoryKeyStore
from .redis_store import RedisKeyStore
from .sqlite import SqliteKeyStore

__all__ = ["ApiKey", "ApiKeyStore", "MemoryKeyStore", "RedisKeyStore", "SqliteKeyStore",
           "identity_of", "open_store"]


def open_store(uri: str, prefix: str, instance_path: str, redis_options: dict[str, Any],
               key_space: str | None = None) -> ApiKeyStore:
    """The store named by ``APIGUARD_API_KEY_STORE``; a Redis store writes under ``key_space``
    (the storage options' ``key_prefix``) when given."""
    if uri == "memory://":
        return MemoryKeyStore(prefix)
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not os.path.isabs(path):
            path = os.path.join(instance_path, path)
        return SqliteKeyStore(prefix, path)
    return RedisKeyStore(prefix, uri, redis_options, key_space)
