"""How one :mod:`limits` strategy counts, on a storage's public methods."""

from __future__ import annotations

from typing import Any

from limits.storage import Storage

from ..errors import ApiGuardConfigError
from .memory import LocalStorage
from .probes import LimitProbe
from .window import WindowState, _whole_seconds, sliding_window_state, weighted_count


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
        self.local = isinstance(storage, LocalStorage)
        self.fast_sliding = strategy == "sliding-window-counter" and self.local
        if strategy not in ("sliding-window-counter", "fixed-window", "moving-window"):
            raise ApiGuardConfigError(f"APIGUARD_RATELIMIT_STRATEGY: {strategy!r} is not supported.")

    def hit(self, probe: LimitProbe) -> bool:
        item, storage = probe.item, self.storage
        if self.strategy == "sliding-window-counter":
            return bool(storage.acquire_sliding_window_entry(probe.key, item.amount,
                                                             probe.expiry, probe.cost))
        if self.strategy == "fixed-window":
            if self.local:  # which protects a counter at its limit from eviction
                return bool(storage.incr(probe.key, probe.expiry, amount=probe.cost,
                                         limit=item.amount) <= item.amount)
            return bool(storage.incr(probe.key, probe.expiry, amount=probe.cost) <= item.amount)
        return bool(storage.acquire_entry(probe.key, item.amount, probe.expiry, amount=probe.cost))

    def test(self, probe: LimitProbe, extra: int = 0) -> bool:
        """Would ``probe`` (plus ``extra`` already promised to requests in flight) fit?"""
        item, storage = probe.item, self.storage
        cost = probe.cost + extra
        if self.strategy == "sliding-window-counter":
            expiry = probe.expiry
            previous, previous_ttl, current, _ = storage.get_sliding_window(probe.key, expiry)
            return bool(weighted_count(previous, previous_ttl, current, expiry) < item.amount - cost + 1)
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
