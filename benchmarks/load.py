"""Throughput under a real WSGI server: gunicorn (2 sync workers) driven by wrk on 127.0.0.1.

``python benchmarks/load.py [--redis URL] [--duration 10] [--delay-ms 1]`` starts gunicorn for
bare Flask and for the guarded app on memory storage, drives each with ``wrk`` (Debian package
``wrk``) from a second process, and prints requests/s, p50/p99 latency, the throughput as a
share of bare Flask and the p99 as a multiple of the memory-storage row's.

With ``--redis`` the guarded app also runs on that Redis in each storage mode
(``APIGUARD_STORAGE_MODE``: ``exact``, one round trip per request, and ``leased``, units of a
limit leased from Redis and spent locally; ``--modes``), and a "floor" row adds one raw
``PING`` per request to the memory-storage app (no client library, no script): the best any
one-round-trip design could reach here. ``--delay-ms`` (1 by default with ``--redis``; 0 for
none) runs the Redis rows again through ``delay_proxy.py``, which adds that much to every
round trip (half each way): a simulated network, and how far each mode is from its
loopback figure.

Redis commands per 1,000 requests (the hot key: every request is the same client on the same
limit) come from a second, shorter run of each Redis row against a ``redis-server`` of this
script's own (``--count-seconds``; needs the ``redis-server`` binary), so that no other
client's commands are counted: "round trips" are the commands the app sends (counted on the
wire by the proxy, which Redis's statistics cannot tell from the ones scripts run), "commands"
every command Redis ran, scripts' own calls included (``INFO commandstats``). Both leave out
connection set-up (``HELLO``, ``CLIENT ...``, ``SELECT``, ``AUTH``: once per connection, listed
in the note when a run made any), and a warm-up second precedes the counted run.

A last run per mode hammers a view limited to ``--limit`` requests per hour with Redis
storage and counts the answers: with one shared budget the admitted requests must never
exceed the limit (the exact mode admits exactly the limit; the leased one may admit fewer,
reported). The script exits with 1 when one over-admits or answers 5xx. Bounded: every run
lasts ``--duration`` seconds at most, against 127.0.0.1 only. The given Redis is never
flushed: each run counts under a key prefix of its own and deletes only those keys.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import apps, private_redis, report
from benchmarks.delay_proxy import DelayProxy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("exact", "leased")
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
wrk.headers["Origin"] = "%(origin)s"
wrk.headers["X-Forwarded-Proto"] = "https"
wrk.headers["X-Forwarded-For"] = "203.0.113.7"
"""
#: Appended for the runs that count answers by status (a Lua call per response: not for the
#: throughput rows).
WRK_STATUSES = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      io.write(string.format("status %d %d\\n", status, count))
    end
  end
end
"""
#: Commands a connection sends once when it is made, not per request (and ``client|*``).
SET_UP = frozenset({"hello", "auth", "select"})


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    statuses: Counter[int] = field(default_factory=Counter)


@dataclass(frozen=True)
class Row:
    """One app of the table: a ``wsgi_targets`` attribute, its environment, and how it uses
    Redis (``uses``: "storage", "ping" or None) in which ``mode``, through which delay."""

    name: str
    target: str
    env: dict[str, str] = field(default_factory=dict)
    uses: str | None = None
    mode: str = "exact"
    delay_ms: float = 0.0
    loopback: str | None = None  # the name of the same row without the delay

    def redis_env(self, url: str, prefix: str | None = None) -> dict[str, str]:
        """The environment that points this row at ``url`` (under ``prefix``)."""
        if self.uses == "ping":
            return {"BENCH_PING_URL": url}
        env = {"BENCH_STORAGE_URI": url, "BENCH_STORAGE_MODE": self.mode}
        if prefix:
            env["BENCH_STORAGE_PREFIX"] = prefix
        return env


@dataclass
class Count:
    """Redis commands of one row's counted run (a private server, the hot key)."""

    requests: int
    wire: Counter[str]  # top-level commands, by name, counted by the proxy
    server: Counter[str]  # every command Redis ran (INFO commandstats), by name

    @staticmethod
    def _set_up(name: str) -> bool:
        return name in SET_UP or name.startswith("client|")

    def per_1000(self, counts: Counter[str]) -> float:
        kept = sum(n for name, n in counts.items() if not self._set_up(name))
        return 1000 * kept / max(1, self.requests)

    def set_up(self) -> int:
        return sum(n for name, n in self.wire.items() if self._set_up(name))

    def breakdown(self) -> str:
        """Top-level commands, then those scripts ran (the server's count less the wire's)."""
        inner = Counter({name: n - self.wire.get(name, 0) for name, n in self.server.items()})
        top = ", ".join(f"{name} {n}" for name, n in self.wire.most_common() if n > 0)
        nested = ", ".join(f"{name} {n}" for name, n in inner.most_common() if n > 0)
        return f"sent: {top or 'none'}; inside scripts: {nested or 'none'}"


def free_port() -> int:
    return private_redis.free_port()


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise ValueError(f"cannot read the latency {value!r} in wrk's output")
    number, unit = match.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


@dataclass
class Server:
    """A gunicorn started by :func:`serve`: its port and, once stopped, its log."""

    port: int
    log: str = ""

    def tracebacks(self) -> int:
        """Unhandled exceptions logged (the apps' and gunicorn's own tracebacks)."""
        return self.log.count("Traceback (most recent call last)")


@contextmanager
def serve(target: str, env: dict[str, str], workers: int = 2) -> Iterator[Server]:
    """gunicorn (``workers`` sync workers) serving ``benchmarks.wsgi_targets:<target>`` on a
    free port, yielded once it answers; stopped (SIGTERM) on exit, its log then kept on the
    :class:`Server` (and shown when it fails to start)."""
    served = Server(free_port())
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "sync",
             "-b", f"127.0.0.1:{served.port}", "--log-level", "warning",
             f"benchmarks.wsgi_targets:{target}"],
            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log,
        )
        try:
            if not _wait(served.port, process):
                log.seek(0)
                raise RuntimeError(f"gunicorn did not start:\n{log.read()[-3000:]}")
            yield served
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            log.seek(0)
            served.log = log.read()


def _wait(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def drive(port: int, duration: float, connections: int, *, statuses: bool = False,
          name: str = "") -> Result:
    """``wrk`` against the guarded endpoint for ``duration`` seconds; ``statuses``: count the
    answers by status too (a Lua call per response)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % {"body": apps.BODY.decode(), "token": apps.hs256_token(lifetime=86400),
                                   "origin": apps.ORIGIN})
        if statuses:
            script.write(WRK_STATUSES)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
             "-s", script.name, f"http://127.0.0.1:{port}/api/users"],
            capture_output=True, text=True, check=True, timeout=duration + 30,
        ).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    distribution = out.split("Latency Distribution", 1)[-1]
    p50 = _ms(re.search(r"50%\s+(\S+)", distribution).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", distribution).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    found = Counter({int(s): int(n) for s, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)})
    return Result(name, rps, p50, p99, total, non_2xx, found)


def wait_for_workers(port: int, timeout: float = 30) -> None:
    """Until a worker answers (a GET off the guarded view, 404: no limit spent), then a second
    more for the other: gunicorn's socket accepts before its workers have booted."""
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/bench-ready", headers={"X-Forwarded-Proto": "https"})
            connection.getresponse().read()
            break
        except OSError:
            time.sleep(0.1)
        finally:
            connection.close()
    time.sleep(1.0)


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


@contextmanager
def _through(row: Row, url: str, *, count: bool = False) -> Iterator[tuple[str, DelayProxy | None]]:
    """``url`` as the row reaches it: through a delay proxy when the row has a delay or its
    commands are counted, else as it is."""
    if not row.delay_ms and not count:
        yield url, None
        return
    with DelayProxy(_address(url), row.delay_ms, count=count) as proxy:
        yield proxy.url(url), proxy


def run_row(row: Row, redis_url: str | None, duration: float, connections: int) -> tuple[Result, int]:
    """One throughput run of ``row`` (on ``redis_url`` under a fresh key prefix if it uses
    Redis): its result and the tracebacks its server logged."""
    if row.uses is None or redis_url is None:
        with serve(row.target, row.env) as server:
            wait_for_workers(server.port)
            result = drive(server.port, duration, connections, name=row.name)
        return result, server.tracebacks()
    prefix = apps.redis_prefix()
    try:
        with _through(row, redis_url) as (url, _), \
                serve(row.target, {**row.env, **row.redis_env(url, prefix)}) as server:
            wait_for_workers(server.port)
            result = drive(server.port, duration, connections, name=row.name)
    finally:
        apps.delete_keys(redis_url, prefix)
    return result, server.tracebacks()


def count_row(row: Row, seconds: float, connections: int) -> tuple[Count, int]:
    """The Redis commands per request of ``row`` on a ``redis-server`` of this run's own, and
    the tracebacks its server logged."""
    with private_redis.PrivateRedis() as redis, _through(row, redis.url, count=True) as (url, proxy):
        assert proxy is not None
        with serve(row.target, {**row.env, **row.redis_env(url)}) as server:
            wait_for_workers(server.port)
            drive(server.port, 1, connections)  # warm-up: connections made, scripts loaded, leases
            time.sleep(0.2)  # the last answers' commands
            wire, calls = proxy.commands(), redis.command_calls()
            result = drive(server.port, seconds, connections)
            time.sleep(0.2)
            wire_after, calls_after = proxy.commands(), redis.command_calls()
    wire_after.subtract(wire)
    server_delta = Counter({name: n - calls.get(name, 0) for name, n in calls_after.items()})
    server_delta["info"] -= 1  # this script's own INFO (the first snapshot's)
    return Count(result.requests, +wire_after, +server_delta), server.tracebacks()


def mode_error(mode: str, redis_url: str) -> str | None:
    """None when this checkout builds the guarded app in ``mode`` on ``redis_url``, else why not."""
    env = {**os.environ, "BENCH_STORAGE_URI": redis_url, "BENCH_STORAGE_MODE": mode,
           "BENCH_STORAGE_PREFIX": apps.redis_prefix()}
    done = subprocess.run([sys.executable, "-c", "import benchmarks.wsgi_targets"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or ["failed"])[-1]


def budget_run(mode: str, redis_url: str, limit: int, seconds: float, connections: int) -> tuple[str, bool]:
    """Hammer a view limited to ``limit`` per hour: (a sentence, whether it went wrong)."""
    prefix = apps.redis_prefix()
    env = {"BENCH_STORAGE_URI": redis_url, "BENCH_STORAGE_PREFIX": prefix, "BENCH_STORAGE_MODE": mode,
           "BENCH_LIMIT": f"{limit} per hour"}
    try:
        with serve("guarded", env) as server:
            wait_for_workers(server.port)
            result = drive(server.port, seconds, connections, statuses=True)
    finally:
        apps.delete_keys(redis_url, prefix)
    admitted = sum(n for status, n in result.statuses.items() if 200 <= status < 300)
    refused = result.statuses.get(429, 0)
    errors = sum(n for status, n in result.statuses.items() if status >= 500) + server.tracebacks()
    others = result.requests - admitted - refused - errors
    if admitted > limit:
        verdict = f"OVER-ADMITTED by {admitted - limit}"
    elif admitted == limit:
        verdict = "exact"
    else:
        verdict = f"under-admitted by {limit - admitted}"
    extra = "".join([f", {errors} answered 5xx ({dict(sorted(result.statuses.items()))})" if errors else "",
                     f", {others} other answers" if others else ""])
    text = (f"{mode}: {result.requests} requests, {admitted} admitted, {refused} refused (429){extra}: "
            f"{verdict}.")
    return text, admitted > limit or errors > 0


def _rows(redis_url: str | None, modes: list[str], delay_ms: float) -> list[Row]:
    memory = {"BENCH_STORAGE_URI": "memory://"}
    rows = [Row("bare Flask", "bare"), Row("ApiGuard, memory storage", "guarded", memory)]
    if redis_url is None:
        return rows
    floor = "floor: memory storage + one raw Redis PING per request"
    rows += [Row(f"ApiGuard, Redis storage, {mode}", "guarded", uses="storage", mode=mode) for mode in modes]
    rows.append(Row(floor, "floor", uses="ping"))
    if delay_ms:
        rows += [Row(f"ApiGuard, Redis storage, {mode}, +{delay_ms:g} ms round trip", "guarded",
                     uses="storage", mode=mode, delay_ms=delay_ms,
                     loopback=f"ApiGuard, Redis storage, {mode}") for mode in modes]
        rows.append(Row(f"floor, +{delay_ms:g} ms round trip", "floor", uses="ping", delay_ms=delay_ms,
                        loopback=floor))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL"))
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--rst", help="also write the table to this reST file (docs/performance/)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs per app, interleaved; the median requests/s is reported")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="storage modes of the Redis rows (default exact,leased; a mode this "
                             "checkout does not know is left out with a note)")
    parser.add_argument("--delay-ms", type=float, default=None,
                        help="round-trip time the proxy adds for the second set of Redis rows "
                             "(default 1 with --redis; 0: no proxy rows)")
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="length of the shared-budget run per mode (default: --duration, at "
                             "most 5; 0: none)")
    parser.add_argument("--only", action="append", default=[],
                        help="substring of the names of the rows to run (repeatable; bare Flask and "
                             "memory storage always run: the ratios need them)")
    parser.add_argument("--count-seconds", type=float, default=4,
                        help="length of each Redis row's counted run on a private redis-server "
                             "(0: no counts)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    delay_ms = (1.0 if args.redis else 0.0) if args.delay_ms is None else args.delay_ms
    notes: list[str] = []
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.redis:
        for mode in list(modes):
            why = mode_error(mode, args.redis)
            if why is not None:
                modes.remove(mode)
                notes.append(f"The {mode} mode is left out: this checkout refuses it ({why}).")
                print(notes[-1], file=sys.stderr)
    rows = [row for row in _rows(args.redis, modes, delay_ms)
            if row.uses is None or not args.only or any(o.lower() in row.name.lower() for o in args.only)]
    runs: dict[str, list[Result]] = {row.name: [] for row in rows}
    failures: dict[str, int] = Counter()
    for _ in range(args.rounds):  # interleaved, so that a noisy minute hits every app alike
        for row in rows:
            result, tracebacks = run_row(row, args.redis, args.duration, args.connections)
            runs[row.name].append(result)
            failures[row.name] += tracebacks
    results = {name: sorted(found, key=lambda r: r.rps)[len(found) // 2] for name, found in runs.items()}

    counts: dict[str, Count] = {}
    counting = args.redis and args.count_seconds > 0
    if counting and not private_redis.available():
        notes.append("No Redis command counts: redis-server is not installed.")
        counting = False
    if counting:
        for row in rows:
            if row.uses is not None:
                counts[row.name], tracebacks = count_row(row, args.count_seconds, args.connections)
                failures[row.name] += tracebacks

    bare = results["bare Flask"]
    memory = results["ApiGuard, memory storage"]
    table = []
    for row in rows:
        r = results[row.name]
        loop = results.get(row.loopback) if row.loopback else None
        count = counts.get(row.name)
        spread = sorted(found.rps for found in runs[row.name])
        table.append((
            row.name, round(r.rps), f"{spread[0]:.0f}-{spread[-1]:.0f}", r.p50_ms, r.p99_ms,
            f"{100 * r.rps / bare.rps:.0f}%",
            f"{r.p99_ms / memory.p99_ms:.2f}x",
            f"{100 * (r.rps / loop.rps - 1):+.1f}%" if loop else None,
            r.non_2xx,
            round(count.per_1000(count.wire), 1) if count else None,
            round(count.per_1000(count.server), 1) if count else None,
        ))
    columns = ["app", "requests/s", "runs' range", "p50 ms", "p99 ms", "of bare", "p99 / memory",
               "vs loopback", "non-2xx", "round trips per 1,000", "commands per 1,000"]

    wrong = False
    seconds = min(args.duration, 5) if args.budget_seconds is None else args.budget_seconds
    if args.redis and seconds > 0:
        lines = []
        for mode in modes:
            text, bad = budget_run(mode, args.redis, args.limit, seconds, args.connections)
            lines.append(text)
            wrong = wrong or bad
        notes.append(f"The shared budget: {args.limit} per hour, both workers through Redis for "
                     f"{seconds} s; " + " ".join(lines))
    if counts:
        notes.append(
            f"Redis commands per 1,000 requests, all on one client and one limit (a hot key), "
            f"from a {args.count_seconds:g} s run of each row on a redis-server of this script's "
            "own after a 1 s warm-up: round trips are the commands the app sent (counted on the wire "
            "by the proxy), commands every command Redis ran, those inside scripts included (INFO "
            "commandstats); both without connection set-up (HELLO, CLIENT, SELECT, AUTH). " +
            " ".join(f"{name} ({c.requests} requests): {c.breakdown()}"
                     + (f"; set-up {c.set_up()}" if c.set_up() else "") + "."
                     for name, c in counts.items()))
    crashed = {name: n for name, n in failures.items() if n}
    if crashed:
        notes.append("Unhandled exceptions in the apps' logs: "
                     + ", ".join(f"{name}: {n}" for name, n in crashed.items()) + ".")
        wrong = True
    report.emit(f"gunicorn -w 2 (sync) driven by wrk -t1 -c{args.connections} "
                f"-d{args.duration}s on 127.0.0.1, median of {args.rounds} interleaved runs"
                + (f"; the proxy rows through delay_proxy.py (+{delay_ms:g} ms per round trip, "
                   f"half each way)" if delay_ms and args.redis else ""),
                columns, table, rst=args.rst, note="\n\n".join(notes), digits=2)
    _targets(results, counts, modes, delay_ms)
    return 1 if wrong else 0


def _targets(results: dict[str, Result], counts: dict[str, Count], modes: list[str],
             delay_ms: float) -> None:
    """The leased mode's targets, met or not (standard output only)."""
    name = "ApiGuard, Redis storage, leased"
    if "leased" not in modes:
        return
    leased, bare, memory = results[name], results["bare Flask"], results["ApiGuard, memory storage"]
    checks = [
        (f"leased >= 75% of bare: {100 * leased.rps / bare.rps:.0f}%", leased.rps >= 0.75 * bare.rps),
        (f"leased p99 <= 1.3x memory: {leased.p99_ms / memory.p99_ms:.2f}x",
         leased.p99_ms <= 1.3 * memory.p99_ms),
    ]
    delayed = results.get(f"{name}, +{delay_ms:g} ms round trip")
    if delayed is not None:
        checks.append((f"leased through +{delay_ms:g} ms within 10% of loopback: "
                       f"{100 * (delayed.rps / leased.rps - 1):+.1f}%", delayed.rps >= 0.9 * leased.rps))
    for row_name in (name, f"{name}, +{delay_ms:g} ms round trip"):
        count = counts.get(row_name)
        if count is not None:
            checks.append((f"{row_name}: <= 50 per 1,000: round trips {count.per_1000(count.wire):.1f}, "
                           f"commands {count.per_1000(count.server):.1f}",
                           count.per_1000(count.server) <= 50))
    print("\nTargets of the leased mode:")
    for text, met in checks:
        print(f"  [{'met' if met else 'MISSED'}] {text}")


if __name__ == "__main__":
    raise SystemExit(main())
