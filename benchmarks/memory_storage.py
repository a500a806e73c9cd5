"""The memory storage under many distinct clients: memory per client, and the longest pause.

Two figures, for ``memory://`` (and for every Redis deployment while it is in fallback):

- **memory**: the bytes the counters of ``--clients`` distinct client IPs take, each making
  one request to a view under the default limit (100 per 15 minutes, sliding window counter):
  the growth of the process's resident set and of what ``tracemalloc`` sees;
- **pause**: ``--keys`` counters are created, the clock moves past their expiry, and the
  next ``--requests`` requests of new clients are timed one by one (the periodic sweep made
  due first; the garbage collector held off, whose full pass over a heap this size is a
  pause of its own): the slowest is the pause a request pays for the table's upkeep.

Runs against whatever ``flask_apiguard`` is imported, so the same script measures an older
checkout (``PYTHONPATH=/path/to/old/checkout``). Usage::

    .venv/bin/python benchmarks/memory_storage.py [--clients 100000] [--keys 500000] [--quick]
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
from flask_apiguard.storage import LimitProbe, SharedState

LIMIT = parse("100 per 15 minutes")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def shared_state(max_keys: int) -> SharedState:
    try:
        return SharedState("memory://", {}, "sliding-window-counter", "fallback", max_keys)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=500_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--quick", action="store_true", help="small numbers (smoke check)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.keys, args.requests = 2_000, 5_000, 200
    print(f"# {flask_apiguard.__file__}")
    per_client_rss, held = memory(args.clients, traced=False)
    per_client_traced, _ = memory(args.clients, traced=True)
    print(f"memory: {args.clients} clients -> {held} counters; "
          f"{per_client_rss:.0f} B/client RSS ({per_client_rss * args.clients / 1e6:.1f} MB), "
          f"{per_client_traced:.0f} B/client tracemalloc "
          f"({per_client_traced * args.clients / 1e6:.1f} MB)")
    first, worst, median, left = pause(args.keys, args.requests)
    print(f"pause: {args.keys} expired counters; next {args.requests} requests: first "
          f"(sweep due) {first:.2f} ms, slowest {worst:.2f} ms, median {median:.3f} ms; "
          f"{left} counters left")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
