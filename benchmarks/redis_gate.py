"""The one Redis round trip of a request, on its own: client time and server time per call.

``python benchmarks/redis_gate.py --redis redis://127.0.0.1:6379/8`` calls the shared state's
``admit`` (the auth-failure check and one sliding-window limit with its window, as a request
with a bearer token makes it) and prints, per call: wall time and this process's CPU time
(client side: building the arguments, redis-py packing and parsing, the system calls), Redis's
own time for the script (``INFO commandstats``), and, for reference, the same figures for a
bare ``PING`` through redis-py and through a plain socket. ``--quick`` runs a few calls only
(the CI smoke check: no timing asserted). The database given is flushed.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL",
                                                           "redis://127.0.0.1:6379/8"))
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    calls = 20 if args.quick else args.calls

    import redis
    from limits import parse

    from flask_apiguard.storage import LimitProbe, SharedState

    client = redis.Redis.from_url(args.redis)
    client.flushdb()
    shared = SharedState(args.redis, {}, "sliding-window-counter", "closed")
    limit = [LimitProbe(parse("1000000/hour"), ("apiguard", "view:bench", "sub:ada"))]
    failure = [LimitProbe(parse("10/minute"), ("apiguard", "authfail", "203.0.113.7"))]

    def admit() -> None:
        verdict = shared.admit(failure, False, None, limit, True)
        if verdict.breached is not None or verdict.window is None:
            raise SystemExit("the benchmark limit was reached: flush the database")

    parts = urlsplit(args.redis)
    raw = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=0.5)

    def raw_ping() -> None:
        raw.sendall(b"*1\r\n$4\r\nPING\r\n")
        raw.recv(64)

    rows: list[tuple[str, float, float, float | None]] = []
    for name, call, command in (
        ("admit: auth-failure check + one limit and its window (the gate)", admit, "evalsha"),
        ("PING through redis-py", client.ping, "ping"),
        ("PING on a plain socket", raw_ping, None),
    ):
        client.config_resetstat()
        wall, cpu = _measure(call, calls)
        server = None
        if command is not None:
            stats = client.info("commandstats").get(f"cmdstat_{command}", {})
            server = float(stats.get("usec_per_call", 0.0))
        rows.append((name, wall, cpu, server))
    raw.close()
    client.flushdb()
    print(f"# {calls} calls each on {args.redis.rsplit('@', 1)[-1]}; {time.strftime('%Y-%m-%d')}")
    print("| call | wall µs | client CPU µs | Redis µs per call |\n|---|---:|---:|---:|")
    for name, wall, cpu, server in rows:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {'-' if server is None else f'{server:.1f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
