"""The shared state behind rate limits, token revocation and auth-failure counters.

Counters live in a :mod:`limits` storage (``memory://`` or Redis in its four URI forms) and are
counted by a :mod:`limits` strategy, exactly as flask-limiter counts them. The pipeline asks
one question per request, :meth:`SharedState.admit`, which answers everything the shared state
knows about that request: is the client throttled for failed logins, is the token revoked, is
a rate limit exceeded. With plain or Sentinel Redis the question is one round trip (a Lua
script, see :mod:`flask_apiguard.redis_gate`); otherwise it is a few storage calls.

When the storage cannot be reached the configured policy applies
(``APIGUARD_RATELIMIT_ON_STORAGE_ERROR``): ``fallback`` counts in this process's memory,
``open`` lets requests through, ``closed`` answers 503. Revocation always fails closed. While
the storage is down it is not called on every request: it is retried after 1, 2 and then
every 4 seconds, and the switch in both directions is logged.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import floor
from typing import Any, NamedTuple, cast

from limits import RateLimitItem
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string

from .errors import ApiGuardConfigError, ServiceUnavailable

log = logging.getLogger("flask_apiguard")

_token_bits = random.SystemRandom().getrandbits
REVOKED_PREFIX = "apiguard:revoked:"
INFLIGHT_PREFIX = "apiguard:inflight:"
#: How long a reservation of a ``count="failures"`` request may outlive a crashed worker.
INFLIGHT_TTL_MS = 60_000
_RETRY_STEPS = (1.0, 2.0, 4.0)
#: Redis client options applied unless APIGUARD_STORAGE_OPTIONS says otherwise: a request must
#: never hang on a dead Redis.
REDIS_DEFAULTS: dict[str, Any] = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


@functools.lru_cache(maxsize=16384)
def storage_key(item: RateLimitItem, identifiers: tuple[str, ...]) -> str:
    """The storage key :mod:`limits` uses for ``item`` and ``identifiers`` (``key_for``)."""
    return item.key_for(*identifiers)


@dataclass(frozen=True, slots=True)
class LimitProbe:
    """One limit to check for one request: ``hit`` consumes, otherwise only tests."""

    item: RateLimitItem
    identifiers: tuple[str, ...]
    cost: int = 1
    hit: bool = True
    key: str = ""
    #: The window length in seconds (``item.get_expiry()``, read once).
    expiry: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", storage_key(self.item, self.identifiers))
        object.__setattr__(self, "expiry", self.item.get_expiry())


class WindowState(NamedTuple):
    """What the ``RateLimit-*`` headers report: the limit, what is left, seconds to reset,
    and the storage key of the counter it describes."""

    limit: int
    remaining: int
    reset_in: int
    key: str = ""


def refusal(breached: LimitProbe, states: Sequence[tuple[LimitProbe, WindowState]]) -> Verdict:
    """The verdict for a request refused by ``breached``: ``Retry-After`` is the longest wait
    among every limit that is spent, so that a retry after it can succeed."""
    retry = 1
    limit = breached.item.amount
    for probe, state in states:
        if probe is breached or state.remaining < probe.cost:
            retry = max(retry, state.reset_in)
    return Verdict(breached=breached, window=WindowState(limit, 0, retry, breached.key),
                   retry_after=retry)


@dataclass(slots=True)
class Verdict:
    """The shared state's answer for one request (see :meth:`SharedState.admit`)."""

    throttled: bool = False
    revoked: bool = False
    breached: LimitProbe | None = None
    window: WindowState | None = None
    retry_after: int = 0
    #: ``count="failures"`` probes this request holds a place in, and the backend holding it:
    #: settled after the response (counted if it failed) and released in any case.
    reserved: tuple[LimitProbe, ...] = ()
    backend: Backend | None = None
    #: Names this request's places, so that only they are given back.
    token: str = ""


class LocalStorage(MemoryStorage):
    """limits' :class:`~limits.storage.MemoryStorage`, counting exactly as it does, but
    sweeping expired keys inline at most every few seconds instead of starting a timer thread
    every 10 ms (which cost more than the rest of the pipeline). Keys that are read are still
    expired on read, as in the parent class."""

    SWEEP_EVERY = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()
        self._next_sweep = time.monotonic() + self.SWEEP_EVERY
        self._sweeping = threading.Lock()

    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_EVERY
            self._sweep()

    def _sweep(self) -> None:
        """Drop expired counters and moving-window entries. Unlike the parent's timer sweep it
        runs on request threads, so it works on snapshots and pops with defaults: another
        thread may expire the same key at the same moment."""
        if not self._sweeping.acquire(blocking=False):
            return  # another thread is sweeping
        try:
            now = time.time()
            for key, until in list(self.expirations.items()):
                if until <= now:
                    self.storage.pop(key, None)
                    self.expirations.pop(key, None)
                    self.locks.pop(key, None)
            for key in list(self.events):
                with self.locks[key]:
                    events = self.events.get(key)
                    if events:
                        live = [e for e in events if e.expiry > now]
                        if live:
                            self.events[key] = live
                            continue
                    self.events.pop(key, None)
                self.locks.pop(key, None)
        finally:
            self._sweeping.release()

    def _count(self, key: str, now: float) -> int:
        """``get(key)`` as the parent does it (expired keys dropped), without its error wrapper."""
        if self.expirations.get(key, 0) <= now:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            self.locks.pop(key, None)
            return 0
        return self.storage.get(key, 0)

    def _get_sliding_window_info(
        self, previous_key: str, current_key: str, expiry: int, now: float
    ) -> tuple[int, float, int, float]:
        previous_count = self._count(previous_key, now)
        current_count = self._count(current_key, now)
        if previous_count == 0:
            previous_ttl = 0.0
        else:
            previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous_count, previous_ttl, current_count, current_ttl

    def acquire_sliding_window_with_state(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> tuple[bool, tuple[int, float, int, float]]:
        """``acquire_sliding_window_entry`` (same steps, same keys) that also returns the window
        as ``get_sliding_window`` would read it right after: the memory counterpart of the
        Redis gate's one round trip, so a request reads its counters once, not twice."""
        now = time.time()
        # sliding_window_keys and _get_sliding_window_info of the parent, inlined (the same
        # keys and figures; this runs on every limited request)
        previous_key, current_key = f"{key}/{int((now - expiry) / expiry)}", f"{key}/{int(now / expiry)}"
        previous = self._count(previous_key, now)
        current = self._count(current_key, now)
        previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        if amount > limit or floor(previous * previous_ttl / expiry + current) + amount > limit:
            return False, (previous, previous_ttl, current, current_ttl)
        # incr(), minus the checks it repeats: the key was just read (and so expired) above
        self._MemoryStorage__schedule_expiry()
        with self.locks[current_key]:
            counts = self.storage
            counts[current_key] += amount
            current = counts[current_key]
            if current == amount:
                self.expirations[current_key] = now + 2 * expiry
        if floor(previous * previous_ttl / expiry + current) > limit:
            self.decr(current_key, amount)  # lost a race with another thread, as the parent does
            return False, (previous, previous_ttl, current - amount, current_ttl)
        return True, (previous, previous_ttl, current, current_ttl)


class Counter:
    """How one :mod:`limits` strategy counts, calling the storage directly.

    These are the strategies' own operations (``hit``, ``test``, ``get_window_stats`` of
    :mod:`limits.strategies`) on the storage's public methods, minus the per-call key building
    and casts of the strategy objects, which cost more than the counting itself on the memory
    storage. ``tests/test_storage.py`` checks them against the strategy objects step by step.
    """

    def __init__(self, storage: Storage, strategy: str) -> None:
        self.storage: Any = storage
        self.strategy = strategy
        self.fast_sliding = strategy == "sliding-window-counter" and isinstance(storage, LocalStorage)
        if strategy not in ("sliding-window-counter", "fixed-window", "moving-window"):
            raise ApiGuardConfigError(f"APIGUARD_RATELIMIT_STRATEGY: {strategy!r} is not supported.")

    def hit(self, probe: LimitProbe) -> bool:
        item, storage = probe.item, self.storage
        if self.strategy == "sliding-window-counter":
            return bool(storage.acquire_sliding_window_entry(probe.key, item.amount,
                                                             probe.expiry, probe.cost))
        if self.strategy == "fixed-window":
            return bool(storage.incr(probe.key, probe.expiry, amount=probe.cost) <= item.amount)
        return bool(storage.acquire_entry(probe.key, item.amount, probe.expiry, amount=probe.cost))

    def test(self, probe: LimitProbe, extra: int = 0) -> bool:
        """Would ``probe`` (plus ``extra`` already promised to requests in flight) fit?"""
        item, storage = probe.item, self.storage
        cost = probe.cost + extra
        if self.strategy == "sliding-window-counter":
            expiry = probe.expiry
            previous, previous_ttl, current, _ = storage.get_sliding_window(probe.key, expiry)
            weighted = previous * previous_ttl / expiry + current
            return bool(weighted < item.amount - cost + 1)
        if self.strategy == "fixed-window":
            return bool(storage.get(probe.key) < item.amount - cost + 1)
        _, count = storage.get_moving_window(probe.key, item.amount, probe.expiry)
        return bool(count <= item.amount - cost)

    def hit_window(self, probe: LimitProbe, now: float) -> tuple[bool, WindowState]:
        """Consume ``probe`` and read its window afterwards (in one step where the storage can)."""
        if self.fast_sliding:
            expiry, amount = probe.expiry, probe.item.amount
            allowed, (previous, previous_ttl, current, current_ttl) = \
                self.storage.acquire_sliding_window_with_state(probe.key, amount, expiry, probe.cost)
            return allowed, sliding_window_state(amount, expiry, previous, previous_ttl,
                                                 current, current_ttl, probe.key)
        allowed = self.hit(probe)
        return allowed, self.window(probe, now)

    def window(self, probe: LimitProbe, now: float) -> WindowState:
        item, storage = probe.item, self.storage
        expiry = probe.expiry
        if self.strategy == "sliding-window-counter":
            previous, previous_ttl, current, current_ttl = storage.get_sliding_window(probe.key, expiry)
            return sliding_window_state(item.amount, expiry, previous, previous_ttl, current,
                                        current_ttl, probe.key)
        if self.strategy == "fixed-window":
            remaining = max(0, item.amount - storage.get(probe.key))
            reset = storage.get_expiry(probe.key)
        else:
            start, count = storage.get_moving_window(probe.key, item.amount, expiry)
            remaining, reset = item.amount - count, start + expiry
        return WindowState(item.amount, max(0, int(remaining)), _whole_seconds(reset - now), probe.key)


def sliding_window_state(amount: int, expiry: float, previous: int, previous_ttl: float,
                         current: int, current_ttl: float, key: str = "") -> WindowState:
    """The figures ``SlidingWindowCounterRateLimiter.get_window_stats`` gives, as a state."""
    weighted = previous * previous_ttl / expiry + current
    remaining = max(0, amount - math.floor(weighted))
    if not (previous or current):
        return WindowState(amount, remaining, 0, key)
    previous_reset_in = previous_ttl % (expiry / previous) if previous else math.inf
    # The current counter lives between one and two windows; what is left beyond one window
    # is when it starts to count less. limits writes "current_ttl % expiry", which is 0 on a
    # window's very first hit with Redis (TTL exactly 2 x expiry): the same, minus that edge.
    current_reset_in = (current_ttl - expiry if current_ttl > expiry else current_ttl % expiry) \
        if current else math.inf
    reset_in = _whole_seconds(min(previous_reset_in, current_reset_in))
    return WindowState(amount, remaining, reset_in, key)


def _whole_seconds(seconds: float) -> int:
    """Seconds rounded up for a header, ignoring float noise (8.0000000001 is 8, not 9)."""
    return max(0, math.ceil(seconds - 0.001))


class Backend:
    """Sequential evaluation on any :mod:`limits` storage (a few calls per request)."""

    def __init__(self, storage: Storage, strategy: str, revocations: Any,
                 inflight: Any = None) -> None:
        self.storage = storage
        self.counter = Counter(storage, strategy)
        self.revocations = revocations
        self.inflight = inflight if inflight is not None else MemoryInflight()
        self._reserve_lock = threading.Lock()
        #: With this process's memory as the storage, the failure counters can only be
        #: non-zero for the probes this process counted: remember until when, and skip the
        #: test for every other client (a dict lookup instead of reading two counters).
        #: Entries are pruned oldest first; past a bound the shortcut is simply not taken.
        self._local_failures: dict[str, float] | None = (
            {} if isinstance(storage, LocalStorage) else None)
        self._failure_order: deque[tuple[float, str]] = deque()
        self._failure_lock = threading.Lock()

    _FAILURE_BOUND = 200_000

    def _maybe_failed(self, probe: LimitProbe, now: float) -> bool:
        seen = self._local_failures
        if seen is None or len(seen) >= self._FAILURE_BOUND:
            return True
        until = seen.get(probe.key)
        return until is not None and until > now

    def admit(self, failure: Sequence[LimitProbe], auth_failed: bool, jti: str | None,
              limits: Sequence[LimitProbe], want_window: bool) -> Verdict:
        counter = self.counter
        if failure:
            now = time.time()
            for probe in failure:
                if self._maybe_failed(probe, now) and not counter.test(probe):
                    state = counter.window(probe, now)
                    return Verdict(throttled=True, retry_after=max(1, state.reset_in))
        if auth_failed:
            self.count_failure(failure)
            return Verdict()
        if jti is not None and self.revocations.contains(jti):
            self.count_failure(failure)
            return Verdict(revoked=True)
        if len(limits) == 1 and limits[0].hit:  # the usual case: one limit, counted now
            probe = limits[0]
            if want_window:
                allowed, window = counter.hit_window(probe, time.time())
            else:
                allowed, window = counter.hit(probe), None
            if not allowed:
                return refusal(probe, [(probe, counter.window(probe, time.time()))])
            return Verdict(window=window)
        pending = tuple(p for p in limits if not p.hit)
        if not pending:
            return self._consume(limits, {}, want_window)
        # count="failures": the request's cost is promised (in flight) until the response says
        # whether it failed, so that parallel guesses cannot all pass the test before the
        # first one is counted. Test and promise happen under one lock.
        with self._reserve_lock:
            promised = {p.key: self.inflight.get(p.key) for p in pending}
            verdict = self._consume(limits, promised, want_window)
            if verdict.breached is None:
                token = reservation_token()
                for probe in pending:
                    self.inflight.add(probe.key, token, probe.cost)
                verdict.reserved, verdict.backend, verdict.token = pending, self, token
            return verdict

    def _consume(self, limits: Sequence[LimitProbe], promised: dict[str, int],
                 want_window: bool) -> Verdict:
        counter = self.counter
        best: WindowState | None = None
        several = len(limits) > 1
        if several:  # all or nothing: a request one limit refuses uses up none of the others
            for probe in limits:
                if not counter.test(probe, promised.get(probe.key, 0)):
                    now = time.time()
                    return refusal(probe, [(p, counter.window(p, now)) for p in limits])
        for probe in limits:
            window: WindowState | None = None
            if probe.hit and want_window:
                allowed, window = counter.hit_window(probe, time.time())
            elif probe.hit:
                allowed = counter.hit(probe)
            else:
                allowed = several or counter.test(probe, promised.get(probe.key, 0))
            if not allowed:
                now = time.time()
                return refusal(probe, [(p, counter.window(p, now)) for p in limits])
            if want_window:
                if window is None:
                    window = counter.window(probe, time.time())
                if best is None or (window.remaining, window.reset_in) < (best.remaining, best.reset_in):
                    best = window
        return Verdict(window=best)

    def settle(self, probes: Sequence[LimitProbe], token: str, failed: bool,
               want_window: bool) -> list[WindowState]:
        """After the response: count the reserved probes if it failed; release them always."""
        try:
            if failed:
                for probe in probes:
                    self.counter.hit(probe)
        finally:
            for probe in probes:
                self.inflight.release(probe.key, token, probe.cost)
        if not want_window:
            return []
        now = time.time()
        return [self.counter.window(probe, now) for probe in probes]

    def count_failure(self, failure: Sequence[LimitProbe]) -> None:
        for probe in failure:
            self.counter.hit(probe)
        seen = self._local_failures
        if seen is None:
            return
        now = time.time()
        with self._failure_lock:
            order = self._failure_order
            while order and order[0][0] <= now:  # prune what has expired, oldest first
                until, key = order.popleft()
                if seen.get(key) == until:
                    del seen[key]
            for probe in failure:
                # a counter lives at most two windows (sliding window counter), so after that
                # it is certainly back to zero
                until = now + 2 * probe.expiry + 1
                if len(seen) < self._FAILURE_BOUND:
                    seen[probe.key] = until
                    order.append((until, probe.key))

    def hit(self, probes: Sequence[LimitProbe], want_window: bool = False) -> list[WindowState]:
        for probe in probes:
            self.counter.hit(probe)
        if not want_window:
            return []
        now = time.time()
        return [self.counter.window(probe, now) for probe in probes]

    def revoke(self, jti: str, ttl: int) -> None:
        self.revocations.add(jti, ttl)



def reservation_token() -> str:
    """A name for one request's places in ``count="failures"`` limits (not its request id,
    which a client may choose)."""
    return f"{_token_bits(64):016x}"


class MemoryInflight:
    """Places held by requests in progress in this process, per counter; each place has its
    own expiry, so a place that is never given back (a request context that never ends)
    cannot block a limit for longer than ``INFLIGHT_TTL_MS``."""

    def __init__(self) -> None:
        self._places: dict[str, dict[str, tuple[int, float]]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> int:
        places = self._places.get(key)
        if not places:
            return 0
        now = time.monotonic()
        with self._lock:
            for token in [t for t, (_, until) in places.items() if until <= now]:
                del places[token]
            return sum(cost for cost, _ in places.values())

    def add(self, key: str, token: str, cost: int) -> None:
        with self._lock:
            self._places.setdefault(key, {})[token] = (cost, time.monotonic() + INFLIGHT_TTL_MS / 1000)

    def release(self, key: str, token: str, cost: int) -> None:
        with self._lock:
            places = self._places.get(key)
            if places is not None:
                places.pop(token, None)
                if not places:
                    del self._places[key]


class RedisInflight:
    """The same across processes: a sorted set per counter, one member per place, scored by
    its expiry, so a worker that dies mid-request gives its place back after
    ``INFLIGHT_TTL_MS`` however busy the counter is. (The Lua gate of
    :mod:`flask_apiguard.redis_gate` reads and adds places in its one round trip; this class
    serves the sequential backend and the release after the response.)"""

    def __init__(self, client: Any) -> None:
        self.client = client

    @staticmethod
    def members(token: str, cost: int) -> list[str]:
        return [f"{token}:{n}" for n in range(1, cost + 1)]

    def get(self, key: str) -> int:
        pipe = self.client.pipeline()
        pipe.zremrangebyscore(INFLIGHT_PREFIX + key, "-inf", int(time.time() * 1000))
        pipe.zcard(INFLIGHT_PREFIX + key)
        return int(pipe.execute()[1])

    def add(self, key: str, token: str, cost: int) -> None:
        until = int(time.time() * 1000) + INFLIGHT_TTL_MS
        pipe = self.client.pipeline()
        pipe.zadd(INFLIGHT_PREFIX + key, dict.fromkeys(self.members(token, cost), until))
        pipe.pexpire(INFLIGHT_PREFIX + key, INFLIGHT_TTL_MS)
        pipe.execute()

    def release(self, key: str, token: str, cost: int) -> None:
        self.client.zrem(INFLIGHT_PREFIX + key, *self.members(token, cost))


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
    """Revoked ``jti`` values as Redis keys ``apiguard:revoked:<jti>`` that expire with the token."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def contains(self, jti: str) -> bool:
        return bool(self.client.exists(REVOKED_PREFIX + jti))

    def add(self, jti: str, ttl: int) -> None:
        self.client.set(REVOKED_PREFIX + jti, "1", ex=max(1, ttl))


def redacted(uri: str) -> str:
    """A storage URI fit for a log line: no user, no password, no query string."""
    scheme, _, rest = uri.partition("://")
    location = rest.rpartition("@")[2]  # a password may hold "?" or "#": strip it first
    return f"{scheme}://{location.split('?', 1)[0].split('#', 1)[0]}"


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


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


class SharedState:
    """The per-app shared state with its fault policy. See the module docstring."""

    def __init__(self, uri: str, options: dict[str, Any], strategy: str, on_error: str) -> None:
        self.uri = uri
        self.on_error = on_error
        self.strategy = strategy
        scheme = _scheme(uri)
        self.is_memory = scheme == "memory"
        self.storage_options = dict(options)
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
        self.fallback = Backend(LocalStorage(), strategy, None)
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._failures = 0
        self._lock = threading.Lock()
        self._primary: Backend | None = None
        try:
            self._primary = self._connect()
        except self.errors as exc:  # e.g. a Redis Cluster client connects when created
            self._mark_down(exc)

    def _connect(self) -> Backend:
        """Build the storage, its revocation list and the backend that serves requests."""
        from limits.errors import ConfigurationError

        from .redis_gate import RedisScriptBackend, supports_scripts

        if self.is_memory:
            return Backend(LocalStorage(), self.strategy, MemoryRevocations())
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
        revocations, inflight = RedisRevocations(client), RedisInflight(client)
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
    def _usable(self) -> bool:
        return self._down_since is None or time.monotonic() >= self._retry_at

    def _mark_down(self, exc: BaseException) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                self._failures = 0
                log.warning(
                    "flask-apiguard: shared storage %s is unreachable (%s); applying "
                    "APIGUARD_RATELIMIT_ON_STORAGE_ERROR=%r until it returns.",
                    redacted(self.uri), type(exc).__name__, self.on_error,
                )
            step = _RETRY_STEPS[min(self._failures, len(_RETRY_STEPS) - 1)]
            self._failures += 1
            self._retry_at = time.monotonic() + step

    def _mark_up(self) -> None:
        with self._lock:
            if self._down_since is not None:
                log.warning(
                    "flask-apiguard: shared storage %s is reachable again after %.1f s.",
                    redacted(self.uri), time.monotonic() - self._down_since,
                )
                self._down_since = None
                self._failures = 0

    # -- the per-request question -------------------------------------------------------------
    def admit(self, failure: Sequence[LimitProbe], auth_failed: bool, jti: str | None,
              limits: Sequence[LimitProbe], want_window: bool) -> Verdict:
        """In this order: is the client throttled for failed authentications (then nothing
        else is looked at); count this request's failed authentication (``auth_failed``); is
        ``jti`` revoked (counted as a failure too); then consume ``limits`` in order, stopping
        at the first exceeded one. ``want_window`` asks for the ``RateLimit-*`` figures."""
        if self._down_since is None or self._usable():
            try:
                primary = self._primary if self._primary is not None else self.primary
                verdict = primary.admit(failure, auth_failed, jti, limits, want_window)
            except self.errors as exc:
                self._mark_down(exc)
            else:
                if self._down_since is not None:
                    self._mark_up()
                return verdict
        if jti is not None:
            raise ServiceUnavailable("The token revocation list cannot be checked right now.")
        if self.on_error == "closed":
            raise ServiceUnavailable("Rate limiting is unavailable right now.")
        if self.on_error == "open":
            return Verdict()
        return self.fallback.admit(failure, auth_failed, None, limits, want_window)

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
                return self.fallback.hit(probes, want_window)
            return []

    def reset(self) -> None:
        """Forget every counter, for tests (``flask_apiguard.testing``): the memory storage
        starts afresh (counters, revoked tokens, places held); on Redis, the keys under the
        storage's ``key_prefix`` (limits' ``LIMITS`` unless ``APIGUARD_STORAGE_OPTIONS`` sets
        one) are deleted, and nothing else. The per-process fallback starts afresh too."""
        self.fallback = Backend(LocalStorage(), self.strategy, None)
        if self.is_memory:
            self._primary = Backend(LocalStorage(), self.strategy, MemoryRevocations())
            return
        self.primary.storage.reset()

    def revoke(self, jti: str, ttl: int) -> None:
        try:
            self.primary.revoke(jti, ttl)
        except self.errors as exc:
            self._mark_down(exc)
            raise ServiceUnavailable("The token could not be revoked: storage is unavailable.") from None
