"""The memory storage under many distinct clients: memory per client, and the longest pause.

Three figures, for ``memory://`` (and for every Redis deployment while it is in fallback):

- **memory**: the bytes the counters of ``--clients`` distinct client IPs take, each making
  one request to a view under the default limit (100 per 15 minutes, sliding window counter):
  the growth of the process's resident set and of what ``tracemalloc`` sees;
- **pause**: ``--keys`` counters are created, the clock moves past their expiry, and the
  next ``--requests`` requests of new clients are timed one by one (the periodic sweep made
  due first; the garbage collector held off, whose full pass over a heap this size is a
  pause of its own): the slowest is the pause a request pays for the table's upkeep;
- **eviction pause**: ``--windows`` clients of a moving window (the table just big enough)
  each make two requests, then the next ``--requests`` new clients are timed: each must make
  room in a table whose every queue record is out of date (the worst case of eviction).

Runs against whatever ``flask_apiguard`` is imported, so the same script measures an older
checkout (``PYTHONPATH=/path/to/old/checkout``). Usage::

    .venv/bin/python benchmarks/memory_storage.py [--clients 100000] [--keys 500000]
        [--windows 100000] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
import tracemalloc
from typing import Any

from limits import parse

import flask_apiguard
from flask_apiguard.ratelimit.probes import LimitProbe

try:
    from benchmarks import report
except ImportError:  # run as a script: its own folder is on the path, the repository may not be
    import report  # type: ignore[no-redef]
from flask_apiguard.ratelimit.shared import SharedState

LIMIT = parse("100 per 15 minutes")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def shared_state(max_keys: int, strategy: str = "sliding-window-counter") -> SharedState:
    try:
        return SharedState("memory://", {}, strategy, "fallback", max_keys)
    except TypeError:  # a checkout before APIGUARD_MEMORY_STORAGE_MAX_KEYS
        return SharedState("memory://", {}, "sliding-window-counter", "fallback")


def ips(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
            f"{rng.randrange(256)}" for _ in range(count)]


def request(shared: SharedState, ip: str) -> None:
    probe = LimitProbe(LIMIT, ("apiguard", "view:index", f"ip:{ip}"))
    shared.admit((), False, None, (probe,), True)


def memory(clients: int, traced: bool) -> tuple[float, int]:
    """Bytes per client, and the counters held afterwards."""
    addresses = ips(clients, 1)
    shared = shared_state(clients + 10)
    request(shared, "192.0.2.1")  # the table's fixed costs are not the clients'
    gc.collect()
    if traced:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    for ip in addresses:
        request(shared, ip)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
    if traced:
        tracemalloc.stop()
    storage: Any = shared.primary.storage
    return (after - before) / clients, len(storage.storage)


def pause(keys: int, requests: int) -> tuple[float, float, float, int]:
    """The first (the periodic sweep is due), the slowest and the median request (ms) right
    after ``keys`` counters expired, and the counters left after them."""
    shared = shared_state(max(keys * 2, 100_000))
    addresses = ips(keys + requests, 2)
    real_time = time.time
    now = [real_time()]
    time.time = lambda: now[0]  # counters expire by the clock limits reads
    try:
        for ip in addresses[:keys]:
            request(shared, ip)
        now[0] += 2 * LIMIT.get_expiry() + 1  # every counter has expired
        storage: Any = shared.primary.storage
        storage._next_sweep = 0  # and the periodic sweep is due
        durations = []
        gc.collect()
        gc.disable()  # a collection of the whole heap is not the table's upkeep
        for ip in addresses[keys:]:
            started = time.perf_counter()
            request(shared, ip)
            durations.append(time.perf_counter() - started)
        left = len(storage.storage)
    finally:
        gc.enable()
        time.time = real_time
    first = durations[0]
    durations.sort()
    return first * 1000, durations[-1] * 1000, durations[len(durations) // 2] * 1000, left


def eviction_pause(windows: int, requests: int) -> tuple[float, float, int]:
    """The slowest and the median request (ms) of new moving-window clients in a full table
    of ``windows`` windows each hit twice, and how far the table went over its bound."""
    shared = shared_state(2 * windows, "moving-window")
    addresses = ips(windows + requests, 3)
    storage: Any = shared.primary.storage
    real_time = time.time
    now = [real_time()]
    time.time = lambda: now[0]
    try:
        for ip in addresses[:windows]:
            request(shared, ip)
        now[0] += 1
        for ip in addresses[:windows]:  # hit again: every window's queue record is out of date
            request(shared, ip)
        storage._next_sweep = float("inf")  # the periodic sweep is the other figure's
        durations, over = [], 0
        gc.collect()
        gc.disable()
        for ip in addresses[windows:]:
            now[0] += 0.001
            started = time.perf_counter()
            request(shared, ip)
            durations.append(time.perf_counter() - started)
            over = max(over, len(storage.storage) + storage._event_entries - storage.max_keys)
    finally:
        gc.enable()
        time.time = real_time
    durations.sort()
    return durations[-1] * 1000, durations[len(durations) // 2] * 1000, over


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=500_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--windows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="small numbers (smoke check)")
    parser.add_argument("--rst", help="also write the table to this reST file (docs/performance/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.keys, args.requests, args.windows = 2_000, 5_000, 200, 5_000
    print(f"# {flask_apiguard.__file__}")
    per_client_rss, held = memory(args.clients, traced=False)
    per_client_traced, _ = memory(args.clients, traced=True)
    first, worst, median, left = pause(args.keys, args.requests)
    evict_worst, evict_median, over = eviction_pause(args.windows, args.requests)
    report.emit(f"The in-memory counter table: {args.clients} clients of one request each, then "
                f"the {args.requests} requests after {args.keys} counters expired",
                ["what", "figure"],
                [("counters held", held),
                 ("bytes per client (RSS)", round(per_client_rss)),
                 ("bytes per client (tracemalloc)", round(per_client_traced)),
                 ("first request after the expiry, ms (sweep due)", first),
                 ("slowest request, ms", worst),
                 ("median request, ms", median),
                 ("counters left", left),
                 (f"moving window, {args.windows} windows hit twice: slowest new client, ms",
                  evict_worst),
                 ("moving window: median new client, ms", evict_median),
                 ("moving window: most counters over the bound", over)],
                 rst=args.rst, digits=3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
