"""Units of a rate limit leased from Redis and spent in this process (``"leased"`` mode).

A lease is taken in one atomic script (:mod:`flask_apiguard.ratelimit.leased`): the units are
counted in Redis *when they are leased*, exactly as if that many requests had been admitted
at that moment, and only if the limit had room for all of them. Spending them later, in this
process, admits requests Redis already counted, so the workers together can never admit more
than the limit. What a lease costs is the other way round: units leased and never spent were
counted for nothing (under-admission), which is why leases stay small:

- **they adapt to the rate of the key.** The first lease of a key is its request's own cost
  (one unit: a key seen once is counted exactly as in ``"exact"`` mode). A key whose lease ran
  out quickly asks for twice as much next time, up to what it spent in ``LEASE_SPAN`` seconds
  at its observed rate, and never more than ``LEASE_MAX`` units;
- **the server shrinks them as the window fills**: Redis grants at most one
  ``SHARE``-th of what is left of the window, so the last units of a window go one by one;
- **they end with their window.** A lease is spent only until the window it was counted in
  ends (the deadline is measured from before the script was sent, so it is never late); what
  is left then expires with it;
- **they are given back** at exit (:meth:`LeaseTable.drain`), when the counter they were
  counted in is still the same one (its expiry time is compared, so a unit is never returned
  into a later window).

A lease belongs to this process: an epoch from :class:`~flask_apiguard.ratelimit.tracking.
AbsentKeys` voids every lease when the invalidation connection is lost (the server may have
restarted and forgotten what it counted) or Redis pushes a flush; a forked child starts with
a table of its own and never gives back its parent's units.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .probes import LimitProbe
from .window import WindowState

#: The largest lease, in units.
LEASE_MAX = 512
#: A lease is sized to last about this many seconds at the key's observed rate.
LEASE_SPAN = 0.25
#: Redis grants at most this fraction (1/SHARE) of what is left of a window.
SHARE = 8


@dataclass(slots=True)
class Lease:
    """Units of one counter held by this process."""

    #: Units left to spend.
    units: int
    #: ``time.monotonic()`` after which none may be spent (the window has moved on).
    deadline: float
    #: The epoch of :class:`~flask_apiguard.ratelimit.tracking.AbsentKeys` it was taken in.
    epoch: int
    #: Units granted, and when (monotonic): the observed rate sizes the next lease.
    granted: int
    taken_at: float
    #: Redis's figures right after the lease (units held here counted as used), and when the
    #: window resets (monotonic), for the ``RateLimit-*`` headers.
    limit: int
    remaining: int
    reset_at: float
    #: The counter's expiry time in Redis (``PEXPIRETIME``, ms): identifies the window, so
    #: units are given back only into the one they were counted in.
    incarnation: int
    #: The Redis keys of the counter, for giving units back.
    keys: tuple[str, ...] = ()

    def window(self, key: str, now: float) -> WindowState:
        reset_in = max(0, math.ceil(self.reset_at - now - 0.001))
        return WindowState(self.limit, min(self.limit, self.remaining + self.units), reset_in, key)


def lease_key(probe: LimitProbe) -> tuple[str, int]:
    """Leases are kept by counter *and* amount: a ``scope=`` or ``limit=`` counter is shared by
    limits of different amounts, and units leased under a large one must never pay for a
    request under a small one (each amount takes its own lease, counted in the one counter)."""
    return probe.key, probe.item.amount


class LeaseTable:
    """This process's leases by counter key and amount. Bounded: past ``max_keys`` it starts
    afresh (what was held is under-admission until those windows end, never over-admission).
    A table belongs to the process that made it (:attr:`pid`): a forked child makes its own."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self._leases: dict[tuple[str, int], Lease] = {}

    def spend(self, probes: Sequence[LimitProbe], now: float, epoch: int) -> list[Lease] | None:
        """Spend each probe's cost from its lease, all or nothing; ``None`` when one of them
        has no valid lease with enough units (a lease paying for two probes of one request
        must hold both costs). Call with :attr:`lock` held."""
        leases = self._leases
        if len(probes) == 1:  # the usual case
            lease = self.take(probes[0], now, epoch)
            return None if lease is None else [lease]
        found: list[Lease] = []
        needs: dict[int, int] = {}
        for probe in probes:
            lease = leases.get((probe.key, probe.item.amount))
            if lease is None or not _current(lease, now, epoch):
                return None
            need = needs[id(lease)] = needs.get(id(lease), 0) + probe.cost
            if lease.units < need:
                return None
            found.append(lease)
        for probe, lease in zip(probes, found, strict=True):
            lease.units -= probe.cost
        return found

    def take(self, probe: LimitProbe, now: float, epoch: int) -> Lease | None:
        """Spend the probe's cost from its lease if that lease can pay it now, and return the
        lease (the caller gives the units back if the request is refused after all); ``None``
        otherwise. Call with :attr:`lock` held."""
        lease = self._leases.get((probe.key, probe.item.amount))
        if lease is None or lease.units < probe.cost or not _current(lease, now, epoch):
            return None
        lease.units -= probe.cost
        return lease

    def wanted(self, probe: LimitProbe, now: float) -> int:
        """How many units to ask for the probe's next lease (at least its cost)."""
        cost = probe.cost
        old = self._leases.get((probe.key, probe.item.amount))
        if old is None:
            return cost
        spent = old.granted - old.units
        elapsed = max(now - old.taken_at, 1e-3)
        by_rate = math.ceil(spent / elapsed * LEASE_SPAN)
        return max(cost, min(LEASE_MAX, 2 * old.granted, by_rate))

    def put(self, probe: LimitProbe, lease: Lease) -> None:
        """Keep ``lease`` for the probe's counter and amount. Units still held from a lease of
        the same window (two threads renewing at once) are added to it. Call with
        :attr:`lock` held."""
        leases = self._leases
        key = (probe.key, probe.item.amount)
        if len(leases) >= self.max_keys and key not in leases:
            leases.clear()
        old = leases.get(key)
        if old is not None and old.units > 0 and old.epoch == lease.epoch \
                and old.incarnation == lease.incarnation:
            lease.units += old.units
            lease.deadline = min(lease.deadline, old.deadline)
        leases[key] = lease

    def drain(self, epoch: int) -> list[Lease]:
        """Take every lease of ``epoch`` that still holds units (to give them back), leaving
        none; nothing in a process that did not make the table (a forked child's copy)."""
        if self.pid != os.getpid():  # before the lock: a fork may have copied it held
            return []
        with self.lock:
            leases, self._leases = self._leases, {}
        return [lease for lease in leases.values() if lease.units > 0 and lease.epoch == epoch]


def _current(lease: Lease, now: float, epoch: int) -> bool:
    """Whether the lease's window has not ended and its epoch is the current one."""
    return now < lease.deadline and lease.epoch == epoch
