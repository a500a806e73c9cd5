"""The figures a window reports (:class:`WindowState`, for the ``RateLimit-*`` headers), and the
sliding-window-counter formulas, in one place: the memory storage, the sequential backend and
the Redis gate's decoder all call these (the gate's Lua runs limits' own script, and its
test line the same formula, see :mod:`flask_apiguard.ratelimit.gate`)."""

from __future__ import annotations

import math
from typing import NamedTuple


class WindowState(NamedTuple):
    """What the ``RateLimit-*`` headers report: the limit, what is left, seconds to reset,
    and the storage key of the counter it describes."""

    limit: int
    remaining: int
    reset_in: int
    key: str = ""


def window_ttls(now: float, expiry: float) -> tuple[float, float]:
    """limits' memory sliding window at ``now``: for how many more seconds the previous
    window's counter weighs in, and the time to live of the current window's counter (between
    one and two windows)."""
    return (1 - (((now - expiry) / expiry) % 1)) * expiry, (1 - ((now / expiry) % 1)) * expiry + expiry


def weighted_count(previous: int, previous_ttl: float, current: int, expiry: float) -> float:
    """The sliding-window counter's count: the previous window's count, weighted by how much of
    it still overlaps the window that ends now, plus the current window's."""
    return previous * previous_ttl / expiry + current


def sliding_window_state(amount: int, expiry: float, previous: int, previous_ttl: float,
                         current: int, current_ttl: float, key: str = "") -> WindowState:
    """The figures ``SlidingWindowCounterRateLimiter.get_window_stats`` gives, as a state."""
    remaining = max(0, amount - math.floor(weighted_count(previous, previous_ttl, current, expiry)))
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
