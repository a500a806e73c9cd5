"""The sequential backend: the pipeline's one question (:meth:`Backend.admit`) answered with a
few storage calls, on any :mod:`limits` storage; and its answer, :class:`Verdict`."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from limits.storage import Storage

from .counter import Counter
from .memory import LocalStorage
from .places import MemoryInflight, reservation_token
from .probes import LimitProbe
from .window import WindowState


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
    #: A ``@concurrency_limit`` is full: as many requests of this client are in flight.
    busy: bool = False
    #: ``count="failures"`` (and ``@concurrency_limit``) probes this request holds a place
    #: in, and the backend holding it: settled after the response (a failure counted if it
    #: failed) and released in any case.
    reserved: tuple[LimitProbe, ...] = ()
    backend: Backend | None = None
    #: Names this request's places, so that only they are given back.
    token: str = ""


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
              limits: Sequence[LimitProbe], want_window: bool,
              concurrency: Sequence[LimitProbe] = ()) -> Verdict:
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
        if len(limits) == 1 and limits[0].hit and not concurrency:  # the usual case
            probe = limits[0]
            if want_window:
                allowed, window = counter.hit_window(probe, time.time())
            else:
                allowed, window = counter.hit(probe), None
            if not allowed:
                return refusal(probe, [(probe, counter.window(probe, time.time()))])
            return Verdict(window=window)
        pending = tuple(p for p in limits if not p.hit)
        if not pending and not concurrency:
            return self._consume(limits, {}, want_window)
        # count="failures": the request's cost is promised (in flight) until the response says
        # whether it failed, so that parallel guesses cannot all pass the test before the
        # first one is counted; @concurrency_limit: a place while in flight, whatever the
        # answer. Test and promise happen under one lock, all or nothing.
        with self._reserve_lock:
            for probe in concurrency:
                if self.inflight.get(probe.key) + probe.cost > probe.item.amount:
                    return Verdict(busy=True, retry_after=1)
            promised = {p.key: self.inflight.get(p.key) for p in pending}
            verdict = self._consume(limits, promised, want_window)
            if verdict.breached is None:
                token = reservation_token()
                held = pending + tuple(concurrency)
                for probe in held:
                    self.inflight.add(probe.key, token, probe.cost)
                verdict.reserved, verdict.backend, verdict.token = held, self, token
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
        """After the response: count the reserved ``count="failures"`` probes if it failed;
        release every place (``@concurrency_limit`` ones included) always."""
        counted = [probe for probe in probes if not probe.concurrent]
        try:
            if failed:
                for probe in counted:
                    self.counter.hit(probe)
        finally:
            for probe in probes:
                self.inflight.release(probe.key, token, probe.cost)
        if not want_window:
            return []
        now = time.time()
        return [self.counter.window(probe, now) for probe in counted]

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

    def forget(self) -> None:
        """Drop what this process holds of the shared state after its counters were deleted
        (nothing here: see :meth:`flask_apiguard.ratelimit.leased.LeasedBackend.forget`)."""
