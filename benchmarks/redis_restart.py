"""Redis killed mid-run and started again: no 500, and no more admitted than the limit.

``python benchmarks/redis_restart.py [--modes exact,leased] [--limit 300] [--rst FILE]`` starts a
``redis-server`` of its own on a free port (no persistence) and gunicorn (2 sync workers) with
the guarded app on it, its view limited to ``--limit`` per hour and
``APIGUARD_RATELIMIT_ON_STORAGE_ERROR=closed``, in each storage mode (``APIGUARD_STORAGE_MODE``).
``--threads`` client threads post to the view as fast as they are answered, recording when
each request started and ended and its status; the server is then killed (``kill -9``: every
counter is lost), ``--outage`` seconds later it is started again on the same port, empty, and
the clients go on for ``--after`` seconds. Two moments for the kill (``--scenarios``):

- ``spent``: after ``--before`` seconds, long after the budget was spent (every worker refusing);
- ``held``: as soon as a quarter of the limit was admitted, while the workers hold units
  leased from the first server: units that must not be spent once the second server counts
  afresh (in the exact mode, the same moment with nothing held).

An admitted request answered before the restart (the new server launched) was counted by the
first server, or paid from units leased from it; one started after the restart must be the
second server's; one in flight across the restart may be either's. Each server may admit at
most the limit, both together twice the limit. A 5xx other than 503 (the closed policy's
answer while Redis is down), an exception in the app's log or an
over-admission makes the script exit with 1. The "first 201" column is how long after the new
server answered the first request was admitted again. A mode this checkout does not know is
left out with a note. Bounded: at most ``before + outage + after`` seconds of load per mode and
scenario, against 127.0.0.1 only; nothing touches another Redis.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import apps, load, private_redis, report

HEADERS = {"Content-Type": "application/json", "Origin": apps.ORIGIN, "X-Forwarded-Proto": "https",
           "X-Forwarded-For": "203.0.113.7"}


class Client:
    """``threads`` threads posting to the guarded view until :meth:`stop`; each request is kept
    as (started, ended, status), status 0 when no answer came (refused, reset, timed out)."""

    def __init__(self, port: int, threads: int) -> None:
        self.port = port
        self.headers = {**HEADERS, "Authorization": f"Bearer {apps.hs256_token(lifetime=3600)}"}
        self.records: list[tuple[float, float, int]] = []
        #: Requests admitted so far (2xx), as they are answered.
        self.admitted = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _run(self) -> None:
        mine: list[tuple[float, float, int]] = []
        while not self._stop.is_set():
            started = time.monotonic()
            status = 0
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                connection.request("POST", "/api/users", body=apps.BODY, headers=self.headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except OSError:
                time.sleep(0.01)  # no answer: do not spin
            finally:
                connection.close()
            mine.append((started, time.monotonic(), status))
            if 200 <= status < 300:
                with self._lock:
                    self.admitted += 1
        with self._lock:
            self.records.extend(mine)


@dataclass
class Outcome:
    mode: str
    scenario: str
    requests: int
    first: int  # admitted, answered before the restart: the first server's units
    across: int  # admitted, started before the restart and answered after it: either server's
    second: int  # admitted, started after the restart: the second server's units
    refused_first: int  # 429, started before the kill: the first server's budget was reached
    refused_second: int  # 429, started after the restart
    unavailable: int  # 503
    other_5xx: int
    no_answer: int
    others: Counter[int]
    recovered_s: float | None  # first admitted request after the new server answered
    tracebacks: int
    limit: int

    @property
    def over(self) -> list[str]:
        found = []
        if self.first > self.limit:
            found.append(f"the first server's lifetime admitted {self.first} > {self.limit}")
        if self.second > self.limit:
            found.append(f"after the restart {self.second} admitted > {self.limit}")
        if self.first + self.across + self.second > 2 * self.limit:
            found.append(f"{self.first + self.across + self.second} admitted in all > 2 x {self.limit}")
        return found

    @property
    def failed(self) -> bool:
        return bool(self.over) or self.other_5xx > 0 or self.tracebacks > 0

    def verdict(self) -> str:
        problems = list(self.over)
        if self.other_5xx:
            problems.append(f"{self.other_5xx} 5xx other than 503")
        if self.tracebacks:
            problems.append(f"{self.tracebacks} tracebacks in the app's log")
        if problems:
            return "FAILED: " + "; ".join(problems)
        spent = [("before the kill", self.refused_first)] if self.scenario == "spent" else []
        unreached = [name for name, refused in [*spent, ("after the restart", self.refused_second)]
                     if not refused]
        if unreached:
            return "ok, but the budget was not reached " + " nor ".join(unreached)
        return "ok"


def run_mode(mode: str, scenario: str, limit: int, before: float, outage: float, after: float,
             threads: int) -> Outcome:
    """One run: kill after ``before`` seconds (``spent``) or once a quarter of ``limit`` was
    admitted (``held``; at most ``before`` seconds)."""
    redis = private_redis.PrivateRedis()
    redis.start()
    try:
        env = {"BENCH_STORAGE_URI": redis.url, "BENCH_STORAGE_MODE": mode,
               "BENCH_LIMIT": f"{limit} per hour", "BENCH_ON_STORAGE_ERROR": "closed"}
        with load.serve("guarded", env) as server:
            load.wait_for_workers(server.port)
            client = Client(server.port, threads)
            client.start()
            try:
                deadline = time.monotonic() + before
                while time.monotonic() < deadline and (scenario == "spent" or client.admitted < limit // 4):
                    time.sleep(0.001)
                killed = time.monotonic()
                redis.kill()
                time.sleep(outage)
                restarted = time.monotonic()
                redis.start()
                answering = time.monotonic()
                time.sleep(after)
            finally:
                client.stop()
    finally:
        redis.kill()
    records = client.records
    statuses = Counter(status for _, _, status in records)

    admitted = [(began, ended) for began, ended, status in records if 200 <= status < 300]
    first = sum(1 for _, ended in admitted if ended < restarted)
    second = sum(1 for began, _ in admitted if began >= restarted)
    recovered = [began for began, _ in admitted if began >= answering]
    return Outcome(
        mode=mode, scenario=scenario, requests=len(records),
        first=first, across=len(admitted) - first - second, second=second,
        refused_first=sum(1 for began, _, status in records if began < killed and status == 429),
        refused_second=sum(1 for began, _, status in records if began >= restarted and status == 429),
        unavailable=statuses[503],
        other_5xx=sum(n for status, n in statuses.items() if status >= 500 and status != 503),
        no_answer=statuses[0],
        others=Counter({s: n for s, n in statuses.items() if s and s not in (201, 429) and s < 500}),
        recovered_s=min(recovered) - answering if recovered else None,
        tracebacks=server.tracebacks(), limit=limit,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(load.MODES))
    parser.add_argument("--scenarios", default="spent,held",
                        help="when to kill: spent (after --before s) and/or held (a quarter of the "
                             "limit admitted)")
    parser.add_argument("--limit", type=int, default=300, help="the view's limit per hour")
    parser.add_argument("--before", type=float, default=4.0, help="seconds of load before the kill")
    parser.add_argument("--outage", type=float, default=1.0, help="seconds Redis stays down")
    parser.add_argument("--after", type=float, default=4.0, help="seconds of load after the restart")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--quick", action="store_true",
                        help="a short run (the CI smoke check): 1 s, 0.5 s, 1.5 s and a limit of 30")
    parser.add_argument("--rst", help="also write the table to this reST file (docs/performance/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.before, args.outage, args.after = 30, 1.0, 0.5, 1.5
    if not private_redis.available():
        print("redis-server is not installed: apt-get install redis-server", file=sys.stderr)
        return 2
    notes: list[str] = []
    outcomes: list[Outcome] = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        with private_redis.PrivateRedis() as probe:
            why = load.mode_error(mode, probe.url)
        if why is not None:
            notes.append(f"The {mode} mode is left out: this checkout refuses it ({why}).")
            print(notes[-1], file=sys.stderr)
            continue
        for scenario in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            if scenario not in ("spent", "held"):
                parser.error(f"unknown scenario {scenario!r}: use spent and/or held")
            outcomes.append(run_mode(mode, scenario, args.limit, args.before, args.outage,
                                     args.after, args.threads))
    if not outcomes:
        print("no storage mode could run", file=sys.stderr)
        return 2
    rows = [(o.mode, o.scenario, o.requests, o.first, o.across, o.second,
             o.refused_first + o.refused_second,
             o.unavailable, o.other_5xx, o.no_answer,
             None if o.recovered_s is None else round(o.recovered_s, 3), o.verdict())
            for o in outcomes]
    notes += [f"{o.mode}, {o.scenario}: other answers {dict(sorted(o.others.items()))}"
              for o in outcomes if o.others]
    notes.append("An admitted request answered before the restart was counted by the first server "
                 "(or paid from units leased from it); one started after the restart must be the "
                 "second server's, which counts afresh; one in flight across the restart may be "
                 "either's. Each server may admit at most the limit, both together twice the limit. "
                 "\"429\" counts the refusals of the whole run; \"no answer\": the client got no "
                 "HTTP answer (connection refused, reset or a 10 s timeout).")
    report.emit(f"Redis killed (kill -9) after {args.before:g} s of load (spent) or once a quarter of "
                f"the limit was admitted (held), started again on the same port {args.outage:g} s "
                f"later, {args.after:g} s more load: gunicorn -w 2 (sync), "
                f"APIGUARD_RATELIMIT_ON_STORAGE_ERROR=closed, a view limited to {args.limit} per hour, "
                f"{args.threads} client threads on 127.0.0.1",
                ["mode", "kill", "requests", "201, first server", "201 across the restart",
                 "201, second server", "429",
                 "503", "other 5xx", "no answer", "first 201 after restart, s", "verdict"],
                rows, rst=args.rst, note="\n\n".join(notes), digits=3)
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
