"""Admitted against a limit shared through Redis, by processes racing for it, in each storage mode.

``python benchmarks/exactness.py --redis redis://127.0.0.1:6379/8 [--runs 20]`` starts
``--processes`` processes (4), each with its own app on the same Redis, and runs ``--runs``
races: in each, every process sends ``--requests`` requests (40) as fast as it can, all
starting together (a barrier), against one counter limited to ``--limit`` per minute (50),
fresh for each race. Printed per storage mode: the admitted count of each race, their mean,
minimum and maximum. Admitted above the limit in any race is over-admission (a bug; exits 1);
below it, under-admission (units leased by a process that had no request left to spend them).
Keys live under a prefix of the run's own, deleted at the end; nothing is flushed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import apps, report


def _app(url: str, prefix: str, mode: str, limit: int) -> Any:
    from flask import Flask, request

    from flask_apiguard import ApiGuard, public, rate_limit

    app = Flask("exactness")
    config: dict[str, Any] = {
        "APIGUARD_STORAGE_URI": url,
        # a fault must show as 503, never as the per-process fallback's silent admissions
        "APIGUARD_STORAGE_OPTIONS": {"key_prefix": prefix, "socket_timeout": 10.0,
                                     "socket_connect_timeout": 10.0},
        "APIGUARD_RATELIMIT_ON_STORAGE_ERROR": "closed",
        "APIGUARD_API_KEY_STORE": "memory://",
        "APIGUARD_FORCE_HTTPS": False,
        "APIGUARD_RATELIMIT_DEFAULT": None,
        "APIGUARD_SECURITY_LOG": False,
    }
    if mode != "exact":
        config["APIGUARD_STORAGE_MODE"] = mode
    app.config.update(config)

    @app.get("/race")
    @public
    @rate_limit(f"{limit} per minute", key=lambda: request.args["race"])
    def race() -> Any:
        return {"ok": True}

    ApiGuard(app)
    return app


def _worker(url: str, prefix: str, mode: str, limit: int, runs: int, requests: int,
            barrier: Any, results: Any) -> None:
    import logging

    logging.getLogger("flask_apiguard").setLevel(logging.ERROR)
    app = _app(url, prefix, mode, limit)
    client = app.test_client()
    client.get("/race?race=warm-up")
    if mode == "leased":  # the invalidation connection up, as in a worker that has served
        from flask_apiguard.state import guard_state

        absent = getattr(guard_state(app).shared.primary, "absent", None)
        deadline = time.monotonic() + 10
        while absent is not None and not absent.ready() and time.monotonic() < deadline:
            time.sleep(0.01)
    for race in range(runs):
        barrier.wait(timeout=120)
        counts = Counter(client.get(f"/race?race={race}").status_code for _ in range(requests))
        results.put((race, dict(counts)))


def measure(url: str, mode: str, processes: int, requests: int, limit: int,
            runs: int) -> list[Counter[int]]:
    prefix = apps.redis_prefix()
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_worker, args=(url, prefix, mode, limit, runs, requests,
                                                     barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    races: list[Counter[int]] = [Counter() for _ in range(runs)]
    try:
        for _ in range(processes * runs):
            race, counts = results.get(timeout=300)
            races[race].update(counts)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
        apps.delete_keys(url, prefix)
    return races


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL",
                                                          "redis://127.0.0.1:6379/8"))
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--modes", default="exact,leased")
    parser.add_argument("--rst", help="also write the table to this reST file (docs/performance/)")
    args = parser.parse_args(argv)
    rows = []
    over = False
    for mode in args.modes.split(","):
        races = measure(args.redis, mode, args.processes, args.requests, args.limit, args.runs)
        admitted = [race[200] for race in races]
        other = sum(n for race in races for status, n in race.items() if status not in (200, 429))
        over = over or max(admitted) > args.limit or other > 0
        rows.append((mode, args.runs, statistics.mean(admitted), min(admitted), max(admitted),
                     other, " ".join(str(n) for n in admitted)))
    report.emit(f"{args.processes} processes x {args.requests} requests against {args.limit} per "
                f"minute, {args.runs} races per mode, one Redis on 127.0.0.1",
                ["mode", "races", "mean admitted", "min", "max", "not 200/429", "admitted per race"],
                rows, rst=args.rst, digits=2)
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
