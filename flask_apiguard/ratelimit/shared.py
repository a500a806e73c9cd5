"""The shared state behind rate limits, token revocation and auth-failure counters, with its
fault policy.

The pipeline asks one question per request, :meth:`SharedState.admit`, which answers
everything the shared state knows about that request: is the client throttled for failed
logins, is the token revoked, is a rate limit exceeded. With plain or Sentinel Redis the
question is one round trip (a Lua script, see :mod:`flask_apiguard.ratelimit.gate`), or
with ``APIGUARD_STORAGE_MODE = "leased"`` usually none (:mod:`flask_apiguard.ratelimit.leased`);
otherwise it is a few storage calls (:mod:`flask_apiguard.ratelimit.backend`).

When the storage cannot be reached the configured policy applies
(``APIGUARD_RATELIMIT_ON_STORAGE_ERROR``): ``fallback`` counts in this process's memory,
``open`` lets requests through, ``closed`` answers 503. Revocation always fails closed. While
the storage is down it is not called on every request: one request at a time retries it, at
most every ``RETRY_EVERY`` seconds (half a second), so its return is noticed within about a
second; the switch in both directions is logged.

Every key written to Redis lives under the storage's ``key_prefix`` when
``APIGUARD_STORAGE_OPTIONS`` gives one (limits' counters as ``<prefix>:{LIMITER/...}``, the
guard's own as ``<prefix>:apiguard:revoked:<jti>`` and ``<prefix>:apiguard:inflight:<key>``);
without one the names are as they always were (``LIMITS:...``, ``apiguard:...``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

from limits.errors import ConfigurationError, StorageError
from limits.storage import Storage, storage_from_string

from ..errors import ApiGuardConfigError, ServiceUnavailable
from .backend import Backend, Verdict
from .gate import RedisScriptBackend, supports_scripts
from .memory import LocalStorage
from .places import RedisInflight
from .probes import LimitProbe
from .redis_client import INFLIGHT_PREFIX, REVOKED_PREFIX, guard_key_prefixes, redis_client_defaults
from .revocations import MemoryRevocations, RedisRevocations
from .window import WindowState

log = logging.getLogger("flask_apiguard")


#: Seconds between two retries of a storage that is down (one request retries; the others
#: keep the fault policy meanwhile).
RETRY_EVERY = 0.5


def redacted(uri: str) -> str:
    """A storage URI fit for a log line: no user, no password, no query string."""
    scheme, _, rest = uri.partition("://")
    location = rest.rpartition("@")[2]  # a password may hold "?" or "#": strip it first
    return f"{scheme}://{location.split('?', 1)[0].split('#', 1)[0]}"


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


class SharedState:
    """The per-app shared state with its fault policy. See the module docstring."""

    def __init__(self, uri: str, options: dict[str, Any], strategy: str, on_error: str,
                 memory_max_keys: int = LocalStorage.DEFAULT_MAX_KEYS, mode: str = "exact") -> None:
        self.uri = uri
        #: ``APIGUARD_STORAGE_MODE``: ``"leased"`` serves most requests from this process
        #: (:mod:`flask_apiguard.ratelimit.leased`).
        self.mode = mode
        self.on_error = on_error
        self.strategy = strategy
        scheme = _scheme(uri)
        #: The configured storage is this process's memory: counters are per process (N
        #: workers allow N times each limit) and revocations are forgotten on restart.
        self.is_memory = scheme == "memory"
        #: The counter cap of every memory table (``APIGUARD_MEMORY_STORAGE_MAX_KEYS``).
        self.memory_max_keys = memory_max_keys
        self.storage_options = dict(options)
        self.key_prefixes = guard_key_prefixes(self.storage_options) if not self.is_memory \
            else (REVOKED_PREFIX, INFLIGHT_PREFIX)
        errors: list[type[BaseException]] = [StorageError, OSError]
        if not self.is_memory:
            try:
                import redis
            except ImportError:
                raise ApiGuardConfigError(
                    f"APIGUARD_STORAGE_URI: {scheme}:// needs the redis package: "
                    'pip install "flask-apiguard[redis]".'
                ) from None
            for name, value in redis_client_defaults(scheme).items():
                self.storage_options.setdefault(name, value)
            errors += [redis.RedisError, redis.exceptions.RedisClusterException]
        self.errors: tuple[type[BaseException], ...] = tuple(errors)
        self.fallback = Backend(LocalStorage(memory_max_keys), strategy, None)
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._probing = False
        self._lock = threading.Lock()
        self._primary: Backend | None = None
        try:
            self._primary = self._connect()
        except self.errors as exc:  # e.g. a Redis Cluster client connects when created
            self._mark_down(exc)

    def _connect(self) -> Backend:
        """Build the storage, its revocation list and the backend that serves requests."""
        if self.is_memory:
            return Backend(LocalStorage(self.memory_max_keys), self.strategy, MemoryRevocations())
        try:
            storage = cast(Storage, storage_from_string(self.uri, **self.storage_options))
        except (ConfigurationError, TypeError, ValueError) as exc:
            # The library's message may quote parts of the URI, password included: not shown.
            raise ApiGuardConfigError(
                f"APIGUARD_STORAGE_URI / APIGUARD_STORAGE_OPTIONS: {redacted(self.uri)} cannot be "
                f"used as given ({type(exc).__name__}); check the host, port, database number "
                "and options."
            ) from None
        client = cast(Any, storage).get_connection()
        revoked_prefix, inflight_prefix = self.key_prefixes
        revocations = RedisRevocations(client, revoked_prefix)
        inflight = RedisInflight(client, inflight_prefix)
        if self.mode == "leased" and supports_scripts(storage):
            from .leased import LeasedBackend

            return LeasedBackend(storage, self.strategy, revocations, inflight, self.memory_max_keys)
        if supports_scripts(storage):
            return RedisScriptBackend(storage, self.strategy, revocations, inflight)
        return Backend(storage, self.strategy, revocations, inflight)

    @property
    def primary(self) -> Backend:
        """The backend on the configured storage (connecting now if it was down at start-up)."""
        if self._primary is None:
            self._primary = self._connect()
        return self._primary

    # -- health -------------------------------------------------------------------------------
    def _claim_retry(self) -> bool:
        """While the storage is down: whether this request is the one to retry it (the retry
        time has come and no other request is retrying)."""
        if self._probing or time.monotonic() < self._retry_at:
            return False
        with self._lock:
            if self._probing or time.monotonic() < self._retry_at:
                return False
            self._probing = True
            return True

    def _mark_down(self, exc: BaseException) -> None:
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                log.warning(
                    "flask-apiguard: shared storage %s is unreachable (%s); applying "
                    "APIGUARD_RATELIMIT_ON_STORAGE_ERROR=%r until it returns.",
                    redacted(self.uri), type(exc).__name__, self.on_error,
                )
            self._retry_at = now + RETRY_EVERY

    def _mark_up(self) -> None:
        with self._lock:
            if self._down_since is not None:
                log.warning(
                    "flask-apiguard: shared storage %s is reachable again after %.1f s.",
                    redacted(self.uri), time.monotonic() - self._down_since,
                )
                self._down_since = None

    # -- the per-request question -------------------------------------------------------------
    def admit(self, failure: Sequence[LimitProbe], auth_failed: bool, jti: str | None,
              limits: Sequence[LimitProbe], want_window: bool,
              concurrency: Sequence[LimitProbe] = ()) -> Verdict:
        """In this order: is the client throttled for failed authentications (then nothing
        else is looked at); count this request's failed authentication (``auth_failed``); is
        ``jti`` revoked (counted as a failure too); then consume ``limits`` in order, stopping
        at the first exceeded one; take a place in each of ``concurrency`` (all or nothing with
        the limits). ``want_window`` asks for the ``RateLimit-*`` figures."""
        if self._down_since is None:
            try:
                primary = self._primary if self._primary is not None else self.primary
                return primary.admit(failure, auth_failed, jti, limits, want_window, concurrency)
            except self.errors as exc:
                self._mark_down(exc)
        elif self._claim_retry():
            try:
                verdict = self.primary.admit(failure, auth_failed, jti, limits, want_window,
                                             concurrency)
            except self.errors as exc:
                self._mark_down(exc)
            else:
                self._mark_up()
                return verdict
            finally:
                self._probing = False
        if jti is not None:
            raise ServiceUnavailable("The token revocation list cannot be checked right now.")
        if self.on_error == "closed":
            raise ServiceUnavailable("Rate limiting is unavailable right now.")
        if self.on_error == "open":
            return Verdict()
        return self.fallback.admit(failure, auth_failed, None, limits, want_window, concurrency)

    def settle(self, backend: Backend, probes: Sequence[LimitProbe], token: str, failed: bool,
               want_window: bool = False) -> list[WindowState]:
        """After the response of a ``count="failures"`` view: count ``probes`` on the backend
        that reserved them if the response failed, and release the reservation; with
        ``want_window``, return their windows as they are afterwards."""
        try:
            return backend.settle(probes, token, failed, want_window)
        except self.errors as exc:
            self._mark_down(exc)  # the reservation expires with its TTL
            if failed and self.on_error == "fallback":
                return self.fallback.hit([p for p in probes if not p.concurrent], want_window)
            return []

    def reset(self) -> None:
        """Forget every counter, for tests (``flask_apiguard.testing``): the memory storage
        starts afresh (counters, revoked tokens, places held). On Redis, limits' counters
        under the storage's key prefix are deleted (``<key_prefix>:{LIMITER/*``, limits'
        ``LIMITS`` prefix when none is set) and, with a ``key_prefix``, the guard's revoked
        and in-flight keys under it; nothing else (an API key store under the same prefix is
        kept). The per-process fallback starts afresh too."""
        self.fallback = Backend(LocalStorage(self.memory_max_keys), self.strategy, None)
        if self.is_memory:
            self._primary = Backend(LocalStorage(self.memory_max_keys), self.strategy,
                                    MemoryRevocations())
            return
        key_prefix = self.storage_options.get("key_prefix")
        patterns = [f"{key_prefix or 'LIMITS'}:{{LIMITER/*"]  # limits' keys: <prefix>:{LIMITER/...}
        if key_prefix:
            revoked, inflight = guard_key_prefixes(self.storage_options)
            patterns += [revoked + "*", inflight + "*"]
        primary = self.primary
        client = cast(Any, primary.storage).get_connection()
        for pattern in patterns:
            found = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(found), 500):
                client.unlink(*found[start:start + 500])
        primary.forget()  # leased: the units held here were counted in the deleted keys

    def revoke(self, jti: str, ttl: int) -> None:
        try:
            self.primary.revoke(jti, ttl)
        except self.errors as exc:
            self._mark_down(exc)
            raise ServiceUnavailable("The token could not be revoked: storage is unavailable.") from None
