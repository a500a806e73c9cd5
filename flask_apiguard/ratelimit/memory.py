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
      keeps). When a new counter finds the table full, others are dropped to make room (a
      dropped counter starts again from zero), with one warning, in two segments: a new
      counter is on *probation*; one hit again (a count of 2 or more) or at its limit is
      *protected*. Counters on probation go first, nearest their expiry first, so one-hit
      counters (a flood of fresh clients) drop each other and never a client that is being
      limited; a protected counter goes only when no other counter is on probation, nearest
      its expiry first. The probation queue keeps a record per new counter; a record whose
      counter was hit again since is skipped when it comes up (no per-key state, except
      ``_pinned`` for the counters at a limit of 1 after their one hit).
    - Each eviction does at most ``EVICT_BUDGET`` steps (a record looked at, dropped or
      queued again): past it the table stays over its bound until the next new counters
      catch up, instead of one request walking the whole table under the lock.
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
    #: Queue records one eviction looks at, at most (benchmarks/memory_storage.py, pause).
    EVICT_BUDGET = 64

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
        #: The probation segment: new counters (and moving windows), at their expiry then;
        #: a record stays when its counter is hit again, and is skipped when it comes up.
        self._probation: dict[float, tuple[deque[str], deque[float]]] = {}
        self._event_probation: dict[float, tuple[deque[str], deque[float]]] = {}
        #: Counters protected after one hit: at a limit of 1 (the others need a count of 2).
        self._pinned: set[str] = set()

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
            if self._pinned:
                self._pinned.discard(key)
            return True
        return False

    def _drop_window(self, key: str, events: list[Any]) -> None:
        del self.events[key]
        self._event_entries -= len(events)
        if self._pinned:
            self._pinned.discard(key)

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
            self._drop_window(key, events)
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
        for probation in (self._probation, self._event_probation):
            for keys, untils in probation.values():  # records only: the counters go above
                left = budget
                while keys and untils[0] <= now and left > 0:
                    left -= 1
                    keys.popleft()
                    untils.popleft()

    @staticmethod
    def _nearest(counters: dict[float, tuple[deque[str], deque[float]]],
                 windows: dict[float, tuple[deque[str], deque[float]]],
                 ) -> tuple[tuple[deque[str], deque[float]] | None, bool]:
        """The queue whose first record expires first, and whether it queues moving windows."""
        nearest: tuple[deque[str], deque[float]] | None = None
        nearest_window = False
        for window, queues in ((False, counters), (True, windows)):
            for queue in queues.values():
                if queue[1] and (nearest is None or queue[1][0] < nearest[1][0]):
                    nearest, nearest_window = queue, window
        return nearest, nearest_window

    def _on_probation(self, key: str, until: float, window: bool) -> bool:
        """Is the probation record (``key``, ``until``) still a counter hit once, not pinned?"""
        if key in self._pinned:
            return False
        if window:
            events = self.events.get(key)
            return events is not None and len(events) == 1 and events[0].expiry == until
        return self.expirations.get(key) == until and self.storage.get(key, 0) < 2

    def _evict_step(self, now: float) -> bool:
        """One step towards ``max_keys``: look at the first record of probation or, when
        probation is empty, of the protected counters; drop its counter if it still is what
        the record says. False when there is nothing left to look at."""
        queue, window = self._nearest(self._probation, self._event_probation)
        if queue is not None:
            key, until = queue[0].popleft(), queue[1].popleft()
            if not self._on_probation(key, until, window):
                return True  # hit again since (protected now), or gone
            if window:
                self._drop_window(key, self.events[key])
            else:
                self._drop_counter(key, until)
            dropped = True
        else:
            queue, window = self._nearest(self._queues, self._event_queues)
            if queue is None:
                return False  # nothing queued (counters only decremented): nothing to drop
            until = queue[1][0]
            if window:
                dropped = self._settle_event_head(queue[0], queue[1], True) is True
            else:
                queue[1].popleft()
                dropped = self._drop_counter(queue[0].popleft(), until)
        if dropped and until > now:
            self.evicted += 1
            if not self._warned:
                self._warned = True
                log.warning(
                    "flask-apiguard: the memory storage holds "
                    "APIGUARD_MEMORY_STORAGE_MAX_KEYS=%d counters; counters are dropped to "
                    "make room (those hit once first), and start again from zero. "
                    "Raise the setting or use APIGUARD_STORAGE_URI = 'redis://...'.",
                    self.max_keys,
                )
        return True

    def _evict(self, now: float) -> None:
        """Drop counters until the table fits ``max_keys``, in at most ``EVICT_BUDGET`` steps
        (the next new counters carry on)."""
        budget = self.EVICT_BUDGET
        while self.size > self.max_keys and budget > 0:
            budget -= 1
            if not self._evict_step(now):
                return

    def _sweep(self) -> None:
        """Drop up to ``SWEEP_BATCH`` expired counters now."""
        with self._lock:
            self._drop_expired(time.time(), self.SWEEP_BATCH, drop_windows=True)

    # -- limits' MemoryStorage API, without a lock per key ---------------------------------------
    def get(self, key: str) -> int:
        return self._count(key, time.time())

    def _new_counter(self, key: str, lifetime: float, until: float, now: float,
                     at_limit: bool) -> None:
        """Queue a counter just made (under the lock): room is made first, so the new counter
        is never the one dropped; one hit, below its limit, puts it on probation."""
        self.expirations[key] = until
        self._created(now)
        self._record(self._queues, lifetime, key, until)
        if self.storage[key] < 2:
            if at_limit:
                self._pinned.add(key)
            else:
                self._record(self._probation, lifetime, key, until)

    def incr(self, key: str, expiry: float, amount: int = 1, limit: int = 0) -> int:
        """The parent's ``incr``; ``limit`` (when known, as for a fixed window) protects a
        counter that reaches it with one hit."""
        now = time.time()
        self._count(key, now)  # expire on read, as the parent's incr does
        with self._lock:
            counts = self.storage
            counts[key] += amount
            value = counts[key]
            if value == amount:
                self._new_counter(key, expiry, now + expiry, now, 0 < limit <= value)
        return value

    def decr(self, key: str, amount: int = 1) -> int:
        now = time.time()
        self._count(key, now)
        with self._lock:
            counts = self.storage
            if key not in counts:  # expired, or dropped: nothing to take back
                return 0
            # a counter taken back to one hit stays where it is: promoted or not, it is
            # looked at once more when its record comes up
            counts[key] = max(counts[key] - amount, 0)
            return counts[key]

    def clear(self, key: str) -> None:
        with self._lock:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            self._pinned.discard(key)
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
            self._probation.clear()
            self._event_probation.clear()
            self._pinned.clear()
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
            self._created(timestamp)  # before the new window is queued: it is not dropped
            if created:
                self._record(self._event_queues, expiry, key, new.expiry)
                if len(events) < 2:
                    if limit <= len(events):
                        self._pinned.add(key)
                    else:
                        self._record(self._event_probation, expiry, key, new.expiry)
            return True

    def _pin_hit_once(self, *keys: str) -> None:
        """Protect the counters of one hit that keep a client at its limit (a limit of 1)."""
        with self._lock:
            for key in keys:
                if self.storage.get(key) == 1:
                    self._pinned.add(key)

    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int,
                                     amount: int = 1) -> bool:
        """The parent's, as :meth:`acquire_sliding_window_with_state` does it (which knows
        the limit, and so protects a counter at it)."""
        return self.acquire_sliding_window_with_state(key, limit, expiry, amount)[0]

    def _count(self, key: str, now: float) -> int:
        """``get(key)`` as the parent does it (expired keys dropped), without its error wrapper."""
        if self.expirations.get(key, 0) <= now:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            if self._pinned:
                self._pinned.discard(key)
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
            if previous < 2 and current < 2 and amount <= limit:  # at a limit of 1 or 2
                self._pin_hit_once(previous_key, current_key)
            return False, (previous, previous_ttl, current, current_ttl)
        # incr(), minus the checks it repeats: the key was just read (and so expired) above
        with self._lock:
            counts = self.storage
            counts[current_key] += amount
            current = counts[current_key]
            if current == amount:
                at_limit = floor(weighted_count(previous, previous_ttl, current, expiry)) >= limit
                self._new_counter(current_key, 2 * expiry, now + 2 * expiry, now, at_limit)
        if floor(weighted_count(previous, previous_ttl, current, expiry)) > limit:
            self.decr(current_key, amount)  # lost a race with another thread, as the parent does
            return False, (previous, previous_ttl, current - amount, current_ttl)
        return True, (previous, previous_ttl, current, current_ttl)
