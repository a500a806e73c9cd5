"""The one Redis round trip of a request, on its own: client time and server time per call.

``python benchmarks/redis_gate.py --redis redis://127.0.0.1:6379/8`` calls the shared state's
``admit`` (the auth-failure check and one sliding-window limit with its window, as a request
with a bearer token makes it) and prints, per call: wall time and this process's CPU time
(client side: building the arguments, redis-py packing and parsing, the system calls), Redis's
own time for the script (``INFO commandstats``), and, for reference, the same figures for a
bare ``PING`` through redis-py and through a plain socket. ``--quick`` runs a few calls only
(the CI smoke check: no timing asserted). The counters live under a key prefix of this run's
own, deleted at the end; nothing else in the database is touched. Redis's own time is the
change in ``INFO commandstats`` over the run (never reset: the server may be shared), so it
includes any other client's EVALSHA or PING made meanwhile: measure on a quiet server.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _measure(call: Callable[[], Any], calls: int) -> tuple[float, float]:
    for _ in range(max(1, calls // 10)):
        call()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return ((time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6)


def _command_stats(client: Any, command: str | None) -> tuple[int, int]:
    """(calls, usec) of ``command`` so far, from ``INFO commandstats``."""
    if command is None:
        return 0, 0
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL",
                                                           "redis://127.0.0.1:6379/8"))
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rst", help="also write the table to this reST file (docs/performance/)")
    args = parser.parse_args(argv)
    calls = 20 if args.quick else args.calls

    import redis
    from limits import parse

    from benchmarks import apps, report
    from flask_apiguard.ratelimit.probes import LimitProbe
    from flask_apiguard.ratelimit.shared import SharedState

    client = redis.Redis.from_url(args.redis)
    prefix = apps.redis_prefix()
    shared = SharedState(args.redis, {"key_prefix": prefix}, "sliding-window-counter", "closed")
    limit = [LimitProbe(parse("1000000/hour"), ("apiguard", "view:bench", "sub:ada"))]
    failure = [LimitProbe(parse("10/minute"), ("apiguard", "authfail", "203.0.113.7"))]

    def admit() -> None:
        verdict = shared.admit(failure, False, None, limit, True)
        if verdict.breached is not None or verdict.window is None:
            raise SystemExit("the benchmark limit was reached: use fewer --calls")

    parts = urlsplit(args.redis)
    raw = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=0.5)

    def raw_ping() -> None:
        raw.sendall(b"*1\r\n$4\r\nPING\r\n")
        raw.recv(64)

    try:
        rows = _rows(client, admit, raw_ping, calls)
    finally:
        raw.close()
        apps.delete_keys(args.redis, prefix)
    report.emit(f"The Redis round trip on its own, {calls} calls each on 127.0.0.1",
                ["call", "wall µs", "client CPU µs", "Redis µs per call"], rows, rst=args.rst)
    return 0


def _rows(client: Any, admit: Callable[[], Any], raw_ping: Callable[[], Any],
          calls: int) -> list[tuple[str, float, float, float | None]]:
    rows: list[tuple[str, float, float, float | None]] = []
    for name, call, command in (
        ("admit: auth-failure check + one limit and its window (the gate)", admit, "evalsha"),
        ("PING through redis-py", client.ping, "ping"),
        ("PING on a plain socket", raw_ping, None),
    ):
        before = _command_stats(client, command)
        wall, cpu = _measure(call, calls)
        server = None
        if command is not None:
            after = _command_stats(client, command)
            count = after[0] - before[0]
            server = (after[1] - before[1]) / count if count else 0.0
        rows.append((name, wall, cpu, server))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
