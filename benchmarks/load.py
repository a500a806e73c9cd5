"""Throughput under a real WSGI server: gunicorn (2 sync workers) driven by wrk on 127.0.0.1.

``python benchmarks/load.py [--redis URL] [--duration 10]`` starts gunicorn for bare Flask and
for the guarded app (memory storage, then Redis storage when ``--redis`` is given), drives each
with ``wrk`` (Debian package ``wrk``) from a second process, and prints requests/s, p50/p99
latency and the guarded throughput as a share of bare Flask. With ``--redis`` a "floor" row
adds one raw ``PING`` per request to the memory-storage app (no client library, no script):
the best any one-round-trip design could reach here. A last run hammers a view
limited to ``--limit`` requests per hour with Redis storage and counts the admitted requests:
with one shared budget they must equal the limit exactly, whatever the number of workers.
Bounded: every run lasts ``--duration`` seconds against 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import apps, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
wrk.headers["Origin"] = "%(origin)s"
wrk.headers["X-Forwarded-Proto"] = "https"
wrk.headers["X-Forwarded-For"] = "203.0.113.7"
"""


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not start")


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise ValueError(f"cannot read the latency {value!r} in wrk's output")
    number, unit = match.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_one(name: str, target: str, env: dict[str, str], duration: int, connections: int) -> Result:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}",
         "--log-level", "warning", f"benchmarks.wsgi_targets:{target}"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
    )
    try:
        _wait(port)
        time.sleep(1.0)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(WRK_SCRIPT % {"body": apps.BODY.decode(), "token": apps.hs256_token(lifetime=86400),
                                       "origin": apps.ORIGIN})
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name,
             f"http://127.0.0.1:{port}/api/users"],
            capture_output=True, text=True, check=True, timeout=duration + 30,
        ).stdout
        os.unlink(script.name)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    distribution = out.split("Latency Distribution", 1)[-1]
    p50 = _ms(re.search(r"50%\s+(\S+)", distribution).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", distribution).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    return Result(name, rps, p50, p99, total, non_2xx)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL"))
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--rst", help="also write the table to this reST file (docs/performance/)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs per app, interleaved; the median requests/s is reported")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    # The bare app must answer 201 too: it gets the same request.
    configs: list[tuple[str, str, dict[str, str]]] = [
        ("bare Flask", "bare", {}),
        ("ApiGuard, memory storage", "guarded", {"BENCH_STORAGE_URI": "memory://"}),
    ]
    if args.redis:
        configs.append(("ApiGuard, Redis storage", "guarded", {"BENCH_STORAGE_URI": args.redis}))
        configs.append(("floor: memory storage + one raw Redis PING per request", "floor",
                        {"BENCH_PING_URL": args.redis}))
    runs: dict[str, list[Result]] = {name: [] for name, _, _ in configs}
    for _ in range(args.rounds):  # interleaved, so that a noisy minute hits every app alike
        for name, target, env in configs:
            if args.redis and env.get("BENCH_STORAGE_URI") == args.redis:
                # fresh counters: a key prefix of this run's own (the Redis may be shared)
                prefix = apps.redis_prefix()
                try:
                    runs[name].append(run_one(name, target, {**env, "BENCH_STORAGE_PREFIX": prefix},
                                              args.duration, args.connections))
                finally:
                    apps.delete_keys(args.redis, prefix)
                continue
            runs[name].append(run_one(name, target, env, args.duration, args.connections))
    results = [sorted(found, key=lambda r: r.rps)[len(found) // 2] for found in runs.values()]
    bare = results[0].rps
    rows = [(r.name, r.rps, r.p50_ms, r.p99_ms, f"{100 * r.rps / bare:.0f}%", r.non_2xx)
            for r in results]
    note = ""
    if args.redis:
        prefix = apps.redis_prefix()
        try:
            limited = run_one("limited", "guarded", {"BENCH_STORAGE_URI": args.redis,
                                                     "BENCH_STORAGE_PREFIX": prefix,
                                                     "BENCH_LIMIT": f"{args.limit} per hour"},
                              min(args.duration, 5), args.connections)
        finally:
            apps.delete_keys(args.redis, prefix)
        admitted = limited.requests - limited.non_2xx
        note = (f"The shared budget: {args.limit} per hour, both workers through Redis for "
                f"{min(args.duration, 5)} s: {limited.requests} requests, {admitted} admitted, "
                f"{limited.non_2xx} refused (429): {'exact' if admitted == args.limit else 'NOT exact'}.")
    report.emit(f"gunicorn -w 2 (sync) driven by wrk -t1 -c{args.connections} "
                f"-d{args.duration}s on 127.0.0.1, median of {args.rounds} interleaved runs",
                ["app", "requests/s", "p50 ms", "p99 ms", "of bare", "non-2xx"],
                [(n, round(rps), p50, p99, share, bad) for n, rps, p50, p99, share, bad in rows],
                rst=args.rst, note=note, digits=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
