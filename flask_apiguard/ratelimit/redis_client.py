"""Redis client options and the names of the guard's own Redis keys."""

from __future__ import annotations

from typing import Any

from ..errors import ApiGuardConfigError

#: The names of the guard's own Redis keys, under the storage's ``key_prefix`` when one is set
#: (see :func:`guard_key_prefixes`).
REVOKED_PREFIX = "apiguard:revoked:"
INFLIGHT_PREFIX = "apiguard:inflight:"
#: Redis client options applied unless APIGUARD_STORAGE_OPTIONS says otherwise: a request must
#: never hang on a dead Redis.
REDIS_DEFAULTS: dict[str, Any] = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


#: Characters of Redis key patterns (KEYS, SCAN MATCH).
_GLOB = frozenset("*?[]\\")


def guard_key_prefixes(options: dict[str, Any]) -> tuple[str, str]:
    """The prefixes of the revocation and in-flight keys for these storage options: under
    ``key_prefix`` as limits' own keys are (``f"{key_prefix}:{key}"``), or today's names.

    :raises ApiGuardConfigError: when ``key_prefix`` is not a non-empty string of plain
        characters.
    """
    key_prefix = options.get("key_prefix")
    if key_prefix is None and "key_prefix" not in options:
        return REVOKED_PREFIX, INFLIGHT_PREFIX
    if not isinstance(key_prefix, str) or not key_prefix:
        raise ApiGuardConfigError(
            f"APIGUARD_STORAGE_OPTIONS: key_prefix must be a non-empty string, got {key_prefix!r}."
        )
    if any(ch in key_prefix for ch in _GLOB) or not key_prefix.isprintable():
        # a pattern here would make a reset (KEYS/SCAN prefix*) reach other apps' keys
        raise ApiGuardConfigError(
            f"APIGUARD_STORAGE_OPTIONS: key_prefix {key_prefix!r} holds a Redis pattern or "
            "control character (* ? [ ] \\); use letters, digits, '-', '_', '.' or ':'."
        )
    return f"{key_prefix}:{REVOKED_PREFIX}", f"{key_prefix}:{INFLIGHT_PREFIX}"


def redis_client_defaults(scheme: str = "redis") -> dict[str, Any]:
    """Client options that keep a dead Redis from holding a request: short socket timeouts
    and no client-side retries (the fault policy decides what happens instead)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = dict(REDIS_DEFAULTS)
    if scheme != "redis+cluster":
        options["retry"] = Retry(NoBackoff(), 0)
    if scheme == "redis+sentinel":
        options["sentinel_kwargs"] = dict(options)
    return options
