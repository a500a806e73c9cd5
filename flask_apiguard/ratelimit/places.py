"""The places a ``count="failures"`` or ``@concurrency_limit`` request holds while in
flight, in this process or in Redis, each named by the request's reservation id and each with
its own expiry."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from .redis_client import INFLIGHT_PREFIX

_token_bits = random.SystemRandom().getrandbits
#: How long a reservation of a ``count="failures"`` request may outlive a crashed worker.
INFLIGHT_TTL_MS = 60_000


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
    :mod:`flask_apiguard.ratelimit.gate` reads and adds places in its one round trip; this class
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
