"""How long a revocation takes to reach another process in ``APIGUARD_STORAGE_MODE = "leased"``.

``python benchmarks/invalidation.py --redis redis://127.0.0.1:6379/8 [--tokens 200]`` starts a
second process that holds, in its cache of keys known absent, the denylist keys of
``--tokens`` tokens (as a worker that served them holds them), then revokes them one by one
from this process through the guard's own backend. The other process watches its cache, as
its requests would read it, and reports when each key was dropped by Redis's invalidation
push. The delay of each is the time between the call to ``revoke`` here and the drop there
(both read ``CLOCK_MONOTONIC``, which one machine shares between processes); the table gives
its median, 99th percentile and maximum, and how many revocations were missed (none may be).
Keys live under a prefix of the run's own, deleted at the end; nothing is flushed.

A second table gives what the pushes cost a worker: another process writes ``--writes`` keys
under a tracked prefix (as failed logins write their counters), one per Redis event-loop turn
("one at a time") or pipelined ("in bursts", which Redis batches into one push per turn),
while this process only sleeps; the CPU time this process spent meanwhile (its tracking
thread reading and applying the pushes) is divided by the writes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import apps, report


def _backend(url: str, prefix: str) -> Any:
    from flask_apiguard.ratelimit.leased import LeasedBackend
    from flask_apiguard.ratelimit.shared import SharedState

    shared = SharedState(url, {"key_prefix": prefix}, "sliding-window-counter", "closed",
                         mode="leased")
    backend = shared.primary
    assert isinstance(backend, LeasedBackend)
    deadline = time.monotonic() + 10
    while not backend.absent.ready():
        if time.monotonic() > deadline:
            raise RuntimeError("the invalidation connection did not come up")
        time.sleep(0.01)
    return backend


def _watcher(url: str, prefix: str, jtis: list[str], ready: Any, results: Any) -> None:
    """The other process: knows every key absent, then reports when each one is dropped."""
    backend = _backend(url, prefix)
    keys = [backend._revoked_prefix + jti for jti in jtis]
    for key in keys:  # as a round trip that found them absent would record them
        backend.absent.remember([key], backend.absent.snapshot())
    assert all(backend.absent.absent(key) for key in keys)
    ready.set()
    dropped: dict[str, float] = {}
    deadline = time.monotonic() + 60
    pending = set(keys)
    while pending and time.monotonic() < deadline:
        now = time.monotonic()
        for key in [k for k in pending if not backend.absent.absent(k)]:
            dropped[key] = now
            pending.discard(key)
        time.sleep(0.0002)  # as requests would, the thread lets the tracking thread run
    results.put({key[len(backend._revoked_prefix):]: at for key, at in dropped.items()})


_WRITER = """
import sys
import redis
url, prefix, count, paced = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
client = redis.Redis.from_url(url)
sink = client if paced else client.pipeline(transaction=False)
for n in range(count):
    sink.set(f"{prefix}k{n % 500}", 1)
if not paced:
    sink.execute()
"""


def push_cost(url: str, prefix: str, writes: int, paced: bool) -> tuple[int, float]:
    """Pushes received and this process's CPU µs per write while another process writes."""
    import subprocess

    import redis

    from flask_apiguard.ratelimit.tracking import AbsentKeys

    absent = AbsentKeys(redis.Redis.from_url(url), [prefix])
    deadline = time.monotonic() + 10
    while not absent.ready():
        if time.monotonic() > deadline:
            raise RuntimeError("the invalidation connection did not come up")
        time.sleep(0.01)
    time.sleep(0.3)
    before, pushes = os.times(), absent.pushes
    subprocess.run([sys.executable, "-c", _WRITER, url, prefix, str(writes), "1" if paced else "0"],
                   check=True, timeout=120)
    time.sleep(0.5)  # the last pushes read
    after = os.times()
    absent.close()
    spent = (after.user - before.user) + (after.system - before.system)
    return absent.pushes - pushes, 1e6 * spent / writes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL",
                                                          "redis://127.0.0.1:6379/8"))
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--writes", type=int, default=5000)
    parser.add_argument("--rst", help="also write the table to this reST file (docs/performance/)")
    args = parser.parse_args(argv)
    prefix = apps.redis_prefix()
    jtis = [f"jti-{n}" for n in range(args.tokens)]
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    watcher = context.Process(target=_watcher, args=(args.redis, prefix, jtis, ready, results))
    watcher.start()
    try:
        backend = _backend(args.redis, prefix)
        if not ready.wait(30):
            raise RuntimeError("the watching process did not start")
        sent: dict[str, float] = {}
        for jti in jtis:
            sent[jti] = time.monotonic()
            backend.revoke(jti, 60)
            time.sleep(0.005)  # one at a time: each delay on its own
        dropped = results.get(timeout=90)
    finally:
        watcher.join(timeout=30)
        if watcher.is_alive():
            watcher.kill()
        apps.delete_keys(args.redis, prefix)
    delays = sorted(1000 * (dropped[jti] - sent[jti]) for jti in jtis if jti in dropped)
    missed = len(jtis) - len(delays)
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))] if delays else float("nan")
    report.emit(f"{args.tokens} revocations, one process revoking, another watching its cache, "
                "Redis on 127.0.0.1",
                ["revocations", "median ms", "p99 ms", "max ms", "missed"],
                [(len(jtis), statistics.median(delays) if delays else float("nan"), p99,
                  delays[-1] if delays else float("nan"), missed)],
                rst=args.rst, digits=2)
    prefix = apps.redis_prefix()
    rows = []
    try:
        for how, paced in (("one at a time", True), ("in bursts (pipelined)", False)):
            pushes, cost = push_cost(args.redis, prefix + ":", args.writes, paced)
            rows.append((how, args.writes, pushes, cost))
    finally:
        apps.delete_keys(args.redis, prefix)
    report.emit(f"what the pushes cost a worker: {args.writes} writes under a tracked prefix by "
                "another process, this process's CPU meanwhile",
                ["writes", "count", "pushes received", "CPU µs per write"], rows,
                rst=args.rst.replace(".rst", "-cost.rst") if args.rst else None, digits=1)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
