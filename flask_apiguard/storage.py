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
the storage is down it is not called on every request: one request at a time retries it, at
most every ``RETRY_EVERY`` seconds (half a second), so its return is noticed within about a
second; the switch in both directions is logged.

Every key written to Redis lives under the storage's ``key_prefix`` when
``APIGUARD_STORAGE_OPTIONS`` gives one (limits' counters as ``<prefix>:LIMITER/...``, the
guard's own as ``<prefix>:apiguard:revoked:<jti>`` and ``<prefix>:apiguard:inflight:<key>``);
without one the names are as they always were (``LIMITS:...``, ``apiguard:...``).
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
#: The names of the guard's own Redis keys, under the storage's ``key_prefix`` when one is set
#: (see :func:`guard_key_prefixes`).
REVOKED_PREFIX = "apiguard:revoked:"
INFLIGHT_PREFIX = "apiguard:inflight:"
#: How long a reservation of a ``count="failures"`` request may outlive a crashed worker.
INFLIGHT_TTL_MS = 60_000
#: Seconds between two retries of a storage that is down (one request retries; the others
#: keep the fault policy meanwhile).
RETRY_EVERY = 0.5
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


class _Entry:
    """One hit of a moving window, as limits' ``Entry`` (``atime``, ``expiry``) in less memory."""

    __slots__ = ("atime", "expiry")

    def __init__(self, atime: float, expiry: float) -> None:
        self.atime = atime
        self.expiry = expiry


class LocalStorage(MemoryStorage):
    """limits' :class:`~limits.storage.MemoryStorage`, counting exactly as it does, in a table
    of bounded size that never pauses a request to sweep it.

    - At most ``max_keys`` counters are held (a moving window's key weighs one per entry it
      keeps). When a new counter finds the table full, the counters nearest their expiry are
      dropped to make room (a dropped counter starts again from zero), with one warning.
    - Counters of the same lifetime are created in the order they expire, so a queue per
      lifetime is expiry-ordered: each new counter drops up to ``SWEEP_STEP`` expired ones from
      the queues' heads (amortised O(1); never a walk over the table), and every
      ``SWEEP_EVERY`` seconds up to ``SWEEP_BATCH``. Keys that are read are still expired on
      read, as in the parent class. No timer thread (the parent starts one every 10 ms).
      A moving window has one queue record, moved back when it was hit since.
    - One lock for the table instead of limits' ``RLock`` per key (134 bytes each).
    """

    SWEEP_EVERY = 5.0
    #: Expired counters dropped per new counter: above one, so the sweep keeps up.
    SWEEP_STEP = 4
    #: Expired counters dropped at most by the periodic sweep: a bounded step (0.3 ms
    #: measured with 500k counters in the table, benchmarks/memory_storage.py).
    SWEEP_BATCH = 256
    DEFAULT_MAX_KEYS = 100_000

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        super().__init__()
        self.timer.cancel()
        self.max_keys = max_keys
        #: Counters dropped to keep within ``max_keys`` (not counting expired ones).
        self.evicted = 0
        self._warned = False
        self._next_sweep = time.monotonic() + self.SWEEP_EVERY
        self._lock = threading.Lock()
        #: Per lifetime in seconds: keys in creation order, and the expiry each had then.
        self._queues: dict[float, tuple[deque[str], deque[float]]] = {}
        #: The same for moving windows: one record per window, at its newest entry's expiry.
        self._event_queues: dict[float, tuple[deque[str], deque[float]]] = {}
        self._event_entries = 0

    def _MemoryStorage__schedule_expiry(self) -> None:
        pass  # sweeping happens when counters are created (see the class docstring)

    @property
    def size(self) -> int:
        """What counts against ``max_keys``: counters plus the entries of moving windows."""
        return len(self.storage) + self._event_entries

    # -- the table's upkeep, always under self._lock ---------------------------------------------
    @staticmethod
    def _record(queues: dict[float, tuple[deque[str], deque[float]]], lifetime: float,
                key: str, until: float) -> None:
        queue = queues.get(lifetime)
        if queue is None:
            queue = queues[lifetime] = (deque(), deque())
        queue[0].append(key)
        queue[1].append(until)

    def _created(self, now: float) -> None:
        """After a counter or moving-window entry was added: sweep a few, keep to the bound."""
        if self._next_sweep <= time.monotonic():
            self._next_sweep = time.monotonic() + self.SWEEP_EVERY
            self._drop_expired(now, self.SWEEP_BATCH, drop_windows=True)
        else:
            self._drop_expired(now, self.SWEEP_STEP)
        if self.size > self.max_keys:
            self._evict(now)

    def _drop_counter(self, key: str, until: float) -> bool:
        """Drop ``key`` if it is still the counter its queue record describes."""
        if self.expirations.get(key) == until:
            self.storage.pop(key, None)
            del self.expirations[key]
            return True
        return False

    def _settle_event_head(self, keys: deque[str], untils: deque[float],
                           drop_expired: bool) -> bool | None:
        """Look at the first moving-window record: a window hit since is queued again at its
        new expiry (None); a window gone is forgotten (False); a window whose every entry has
        expired is dropped (True) when ``drop_expired``, else left in place (False, nothing
        done). A moving window has one record, so the queues grow with windows, not hits."""
        key, until = keys[0], untils[0]
        events = self.events.get(key)
        if events and events[0].expiry > until:
            keys.popleft()
            untils.popleft()
            keys.append(key)
            untils.append(events[0].expiry)
            return None
        if events and not drop_expired:
            return False
        keys.popleft()
        untils.popleft()
        if events:
            del self.events[key]
            self._event_entries -= len(events)
            return True
        return False

    def _drop_expired(self, now: float, budget: int, *, drop_windows: bool = False) -> None:
        """Drop up to ``budget`` expired counters from the heads of the queues. Moving windows
        whose entries have all expired are dropped only with ``drop_windows`` (the periodic
        sweep, as limits' timer does; a window dropped early reads differently)."""
        for keys, untils in self._queues.values():
            while keys and untils[0] <= now and budget > 0:
                budget -= 1
                self._drop_counter(keys.popleft(), untils.popleft())
        for keys, untils in self._event_queues.values():
            while keys and untils[0] <= now and budget > 0:
                budget -= 1
                before = len(keys)
                if self._settle_event_head(keys, untils, drop_windows) is False \
                        and len(keys) == before:
                    break  # an expired window left for the periodic sweep

    def _evict(self, now: float) -> None:
        """Drop the counters nearest their expiry until the table fits ``max_keys``."""
        while self.size > self.max_keys:
            nearest: tuple[deque[str], deque[float]] | None = None
            nearest_event = False
            for event, queues in ((False, self._queues), (True, self._event_queues)):
                for queue in queues.values():
                    if queue[1] and (nearest is None or queue[1][0] < nearest[1][0]):
                        nearest, nearest_event = queue, event
            if nearest is None:
                return  # nothing queued (counters only decremented): nothing to drop
            until = nearest[1][0]
            if nearest_event:
                dropped = self._settle_event_head(nearest[0], nearest[1], True)
            else:
                nearest[1].popleft()
                dropped = self._drop_counter(nearest[0].popleft(), until)
            if dropped and until > now:
                self.evicted += 1
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "flask-apiguard: the memory storage holds "
                        "APIGUARD_MEMORY_STORAGE_MAX_KEYS=%d counters; the counters nearest "
                        "their expiry are dropped to make room, and start again from zero. "
                        "Raise the setting or use APIGUARD_STORAGE_URI = 'redis://...'.",
                        self.max_keys,
                    )

    def _sweep(self) -> None:
        """Drop up to ``SWEEP_BATCH`` expired counters now."""
        with self._lock:
            self._drop_expired(time.time(), self.SWEEP_BATCH, drop_windows=True)

    # -- limits' MemoryStorage API, without a lock per key ---------------------------------------
    def get(self, key: str) -> int:
        return self._count(key, time.time())

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        self._count(key, now)  # expire on read, as the parent's incr does
        with self._lock:
            counts = self.storage
            counts[key] += amount
            value = counts[key]
            if value == amount:
                until = now + expiry
                self.expirations[key] = until
                self._record(self._queues, expiry, key, until)
                self._created(now)
        return value

    def decr(self, key: str, amount: int = 1) -> int:
        now = time.time()
        self._count(key, now)
        with self._lock:
            counts = self.storage
            if key not in counts:  # expired, or dropped: nothing to take back
                return 0
            counts[key] = max(counts[key] - amount, 0)
            return counts[key]

    def clear(self, key: str) -> None:
        with self._lock:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            events = self.events.pop(key, None)
            if events:
                self._event_entries -= len(events)

    def reset(self) -> int | None:
        with self._lock:
            count = max(len(self.storage), len(self.events))
            self.storage.clear()
            self.expirations.clear()
            self.events.clear()
            self._queues.clear()
            self._event_queues.clear()
            self._event_entries = 0
            return count

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """The parent's ``acquire_entry``; the entries past ``limit`` (all older than the
        window, or the request would have been refused) are dropped as it adds new ones."""
        if amount > limit:
            return False
        with self._lock:
            timestamp = time.time()
            table = cast(dict[str, list[Any]], self.events)  # of _Entry, not limits' Entry
            events = table.get(key)
            created = events is None
            if events is None:
                events = table[key] = []
            try:
                entry: _Entry | None = events[limit - amount]
            except IndexError:
                entry = None
            if entry and entry.atime >= timestamp - expiry:
                return False
            new = _Entry(timestamp, timestamp + expiry)
            events[:0] = [new] * amount
            added = amount
            if len(events) > limit:
                added -= len(events) - limit
                del events[limit:]
            self._event_entries += added
            if created:
                self._record(self._event_queues, expiry, key, new.expiry)
            self._created(timestamp)
            return True

    def _count(self, key: str, now: float) -> int:
        """``get(key)`` as the parent does it (expired keys dropped), without its error wrapper."""
        if self.expirations.get(key, 0) <= now:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
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
        with self._lock:
            counts = self.storage
            counts[current_key] += amount
            current = counts[current_key]
            if current == amount:
                until = now + 2 * expiry
                self.expirations[current_key] = until
                self._record(self._queues, 2 * expiry, current_key, until)
                self._created(now)
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
    serves the sequential backend and the release after the response.) Keys are
    ``prefix + <counter key>``."""

    def __init__(self, client: Any, prefix: str = INFLIGHT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    @staticmethod
    def members(token: str, cost: int) -> list[str]:
        return [f"{token}:{n}" for n in range(1, cost + 1)]

    def get(self, key: str) -> int:
        pipe = self.client.pipeline()
        pipe.zremrangebyscore(self.prefix + key, "-inf", int(time.time() * 1000))
        pipe.zcard(self.prefix + key)
        return int(pipe.execute()[1])

    def add(self, key: str, token: str, cost: int) -> None:
        until = int(time.time() * 1000) + INFLIGHT_TTL_MS
        pipe = self.client.pipeline()
        pipe.zadd(self.prefix + key, dict.fromkeys(self.members(token, cost), until))
        pipe.pexpire(self.prefix + key, INFLIGHT_TTL_MS)
        pipe.execute()

    def release(self, key: str, token: str, cost: int) -> None:
        self.client.zrem(self.prefix + key, *self.members(token, cost))


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


def guard_key_prefixes(options: dict[str, Any]) -> tuple[str, str]:
    """The prefixes of the revocation and in-flight keys for these storage options: under
    ``key_prefix`` as limits' own keys are (``f"{key_prefix}:{key}"``), or today's names.

    :raises ApiGuardConfigError: when ``key_prefix`` is not a non-empty string.
    """
    key_prefix = options.get("key_prefix")
    if key_prefix is None and "key_prefix" not in options:
        return REVOKED_PREFIX, INFLIGHT_PREFIX
    if not isinstance(key_prefix, str) or not key_prefix:
        raise ApiGuardConfigError(
            f"APIGUARD_STORAGE_OPTIONS: key_prefix must be a non-empty string, got {key_prefix!r}."
        )
    return f"{key_prefix}:{REVOKED_PREFIX}", f"{key_prefix}:{INFLIGHT_PREFIX}"


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

    def __init__(self, uri: str, options: dict[str, Any], strategy: str, on_error: str,
                 memory_max_keys: int = LocalStorage.DEFAULT_MAX_KEYS) -> None:
        self.uri = uri
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
        from limits.errors import ConfigurationError

        from .redis_gate import RedisScriptBackend, supports_scripts

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
              limits: Sequence[LimitProbe], want_window: bool) -> Verdict:
        """In this order: is the client throttled for failed authentications (then nothing
        else is looked at); count this request's failed authentication (``auth_failed``); is
        ``jti`` revoked (counted as a failure too); then consume ``limits`` in order, stopping
        at the first exceeded one. ``want_window`` asks for the ``RateLimit-*`` figures."""
        if self._down_since is None:
            try:
                primary = self._primary if self._primary is not None else self.primary
                return primary.admit(failure, auth_failed, jti, limits, want_window)
            except self.errors as exc:
                self._mark_down(exc)
        elif self._claim_retry():
            try:
                verdict = self.primary.admit(failure, auth_failed, jti, limits, want_window)
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

    def revoke(self, jti: str, ttl: int) -> None:
        try:
            self.primary.revoke(jti, ttl)
        except self.errors as exc:
            self._mark_down(exc)
            raise ServiceUnavailable("The token could not be revoked: storage is unavailable.") from None
