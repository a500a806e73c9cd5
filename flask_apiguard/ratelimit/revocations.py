"""The token denylist: revoked ``jti`` values, each forgotten when its token expires."""

from __future__ import annotations

import threading
import time
from typing import Any

from .redis_client import REVOKED_PREFIX


class MemoryRevocations:
    """Revoked ``jti`` values of this process, each forgotten when its token expires."""

    def __init__(self) -> None:
        self._entries: dict[str, float] = {}
        self._lock = threading.Lock()

    def contains(self, jti: str) -> bool:
        until = self._entries.get(jti)
        return until is not None and until > time.time()

    def add(self, jti: str, ttl: int) -> None:
        now = time.time()
        with self._lock:
            self._entries[jti] = now + ttl
            if len(self._entries) % 1024 == 0:
                for key in [k for k, until in self._entries.items() if until <= now]:
                    del self._entries[key]


class RedisRevocations:
    """Revoked ``jti`` values as Redis keys ``prefix + <jti>`` (``apiguard:revoked:<jti>``
    unless a ``key_prefix`` is set) that expire with the token."""

    def __init__(self, client: Any, prefix: str = REVOKED_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    def contains(self, jti: str) -> bool:
        return bool(self.client.exists(self.prefix + jti))

    def add(self, jti: str, ttl: int) -> None:
        self.client.set(self.prefix + jti, "1", ex=max(1, ttl))
