"""The in-memory key store: this process only (tests, demos)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import replace

from .base import ApiKey, ApiKeyStore


class MemoryKeyStore(ApiKeyStore):
    """Keys in this process only (tests, demos); lost on restart."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self._records: dict[str, tuple[ApiKey, str]] = {}
        self._lock = threading.Lock()

    def _insert(self, key: ApiKey, digest: str) -> None:
        with self._lock:
            self._records[key.key_id] = (key, digest)

    def _fetch(self, key_id: str) -> tuple[ApiKey, str] | None:
        return self._records.get(key_id)

    def _digest(self, key_id: str) -> str | None:
        record = self._records.get(key_id)
        return record[1] if record is not None else None

    def _set_revoked(self, key_id: str) -> None:
        with self._lock:
            key, digest = self._records[key_id]
            self._records[key_id] = (replace(key, revoked=True), digest)

    def _all(self, owner: str | None = None) -> Iterable[ApiKey]:
        return [key for key, _ in list(self._records.values())]
