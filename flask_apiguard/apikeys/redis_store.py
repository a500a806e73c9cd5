"""The Redis key store: hashes per key and index sets, under the storage key prefix."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from ..errors import ApiGuardConfigError, ServiceUnavailable
from .base import ApiKey, ApiKeyStore, _timestamp


class RedisKeyStore(ApiKeyStore):
    """Keys in Redis hashes ``apiguard:apikey:<key_id>``, listed through a set
    (``apiguard:apikeys``); both under ``<key_space>:`` when the storage options name a
    ``key_prefix``, like every other key the guard writes."""

    def __init__(self, prefix: str, uri: str, options: dict[str, Any],
                 key_space: str | None = None) -> None:
        super().__init__(prefix)
        self._names = f"{key_space}:apiguard:apikey" if key_space else "apiguard:apikey"
        self.INDEX = self._names + "s"
        try:
            import redis
        except ImportError:
            raise ApiGuardConfigError(
                'APIGUARD_API_KEY_STORE: a redis:// store needs the redis package: '
                'pip install "flask-apiguard[redis]".'
            ) from None
        self._errors = (redis.RedisError, OSError)
        if uri.startswith("redis+unix://"):  # the storage URI spelling; redis-py says unix://
            uri = "unix://" + uri[len("redis+unix://"):]
        self.client = redis.Redis.from_url(uri, decode_responses=True, **options)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._errors:
            raise ServiceUnavailable("The API key store is unavailable.") from None

    def _key(self, key_id: str) -> str:
        return f"{self._names}:{key_id}"

    def _insert(self, key: ApiKey, digest: str) -> None:
        mapping: dict[Any, Any] = {
            "name": key.name, "digest": digest, "scopes": json.dumps(sorted(key.scopes)),
            "roles": json.dumps(sorted(key.roles)), "owner": key.owner or "",
            "created_at": repr(key.created_at.timestamp()),
            "expires_at": repr(key.expires_at.timestamp()) if key.expires_at else "",
            "revoked": "0",
        }
        pipe = self.client.pipeline()
        pipe.hset(self._key(key.key_id), mapping=mapping)
        pipe.sadd(self.INDEX, key.key_id)
        if key.owner is not None:
            pipe.sadd(self._owner_index(key.owner), key.key_id)
        self._call(pipe.execute)

    def _decode(self, key_id: str, data: dict[str, str]) -> tuple[ApiKey, str]:
        key = ApiKey(
            key_id, data["name"], frozenset(json.loads(data["scopes"])),
            frozenset(json.loads(data["roles"])), data["owner"] or None,
            datetime.fromtimestamp(float(data["created_at"]), UTC),
            _timestamp(float(data["expires_at"])) if data["expires_at"] else None,
            data["revoked"] == "1",
        )
        return key, data["digest"]

    def _fetch(self, key_id: str) -> tuple[ApiKey, str] | None:
        data = self._call(self.client.hgetall, self._key(key_id))
        return self._decode(key_id, data) if data else None

    def _digest(self, key_id: str) -> str | None:
        digest = self._call(self.client.hget, self._key(key_id), "digest")
        return str(digest) if digest else None

    def _set_revoked(self, key_id: str) -> None:
        self._call(self.client.hset, self._key(key_id), "revoked", "1")

    def _owner_index(self, owner: str) -> str:
        return f"{self.INDEX}:owner:{hashlib.sha256(owner.encode()).hexdigest()}"

    def _all(self, owner: str | None = None) -> Iterable[ApiKey]:
        index = self.INDEX if owner is None else self._owner_index(owner)
        ids = sorted(self._call(self.client.smembers, index))
        pipe = self.client.pipeline()
        for key_id in ids:
            pipe.hgetall(self._key(key_id))
        rows = self._call(pipe.execute) if ids else []
        return [self._decode(k, d)[0] for k, d in zip(ids, rows, strict=True) if d]
