"""The in-memory storage (``memory://``, and every Redis deployment's fallback): limits'
``MemoryStorage``, bounded and swept without pausing a request."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from math import floor
from typing import Any, cast

from limits.storage import MemoryStorage

from .window import weighted_count, window_ttls

log = logging.getLogger("flask_apiguard")


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
        previous_ttl, current_ttl = window_ttls(now, expiry)
        return previous_count, previous_ttl if previous_count else 0.0, current_count, current_ttl

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
        previous_ttl, current_ttl = window_ttls(now, expiry)
        if not previous:
            previous_ttl = 0.0
        if amount > limit or floor(weighted_count(previous, previous_ttl, current, expiry)) + amount > limit:
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
        if floor(weighted_count(previous, previous_ttl, current, expiry)) > limit:
            self.decr(current_key, amount)  # lost a race with another thread, as the parent does
            return False, (previous, previous_ttl, current - amount, current_ttl)
        return True, (previous, previous_ttl, current, current_ttl)
