"""Where a guarded request's time goes: each pipeline step timed inside real requests.

``python benchmarks/steps.py`` drives the benchmark endpoint of ``run.py`` (HS256 bearer +
role, CORS origin, headers, memory rate limit, marshmallow) with a prebuilt environ, with a
timer around each step of the pipeline and around Flask's own phases, and prints the average
µs per request of each. A step measured inside a request costs more than the same call in a
tight loop (colder caches), which is why this exists. Each timer adds a fraction of a
microsecond of its own. ``--quick`` runs a few requests only (the CI smoke check).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _timed(owner: Any, name: str, label: str, totals: Counter[str]) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter_ns()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter_ns() - started

    setattr(owner, name, timed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rst", help="also write the table to this reST file (docs/performance/)")
    args = parser.parse_args(argv)
    count = 50 if args.quick else args.requests
    logging.disable(logging.WARNING)

    from benchmarks import apps, report
    from flask_apiguard import ApiGuard, extension, response
    from flask_apiguard.layers.body import BodyGuard
    from flask_apiguard.layers.jwt import JwtLayer
    from flask_apiguard.ratelimit.probes import FailureLimit
    from flask_apiguard.ratelimit.shared import SharedState

    totals: Counter[str] = Counter()
    # steps the pipeline looks up at call time (classes and module globals)
    for owner, name, label in (
        (response, "finish", "response step (headers, settle, event)"),
        (SharedState, "admit", "shared state: auth failures + rate limit"),
        (BodyGuard, "check_size", "body size"),
        (BodyGuard, "check_body", "body checks and JSON parse"),
        (BodyGuard, "check_query", "query parameters"),
        (JwtLayer, "verify_header", "JWT (cached token)"),
        (FailureLimit, "probes", "auth-failure probes"),
        (extension, "load_location", "@validate (marshmallow load)"),
        (extension, "probes", "rate-limit probes"),
        (extension, "authorization_refusal", "roles and scopes"),
    ):
        _timed(owner, name, label, totals)
    app = apps.apiguard_app()
    with app.app_context():
        token = ApiGuard().issue_token("ada", roles=["admin"])
    for name, label in (("full_dispatch_request", "Flask: hooks + view + response (all)"),
                        ("dispatch_request", "Flask: the view"),
                        ("finalize_request", "Flask: make and process the response"),
                        ("do_teardown_request", "Flask: teardown")):
        _timed(app, name, label, totals)
    environ = apps.environ_for(token)

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    warm = max(1, count // 10)
    for n in range(warm + count):
        if n == warm:
            totals.clear()
            started = time.perf_counter_ns()
        env = environ.copy()
        env["wsgi.input"] = io.BytesIO(apps.BODY)
        for _chunk in app(env, start_response):
            pass
    total = (time.perf_counter_ns() - started) / count / 1000
    rows = [("whole request", total)] + [(label, nanoseconds / count / 1000)
                                         for label, nanoseconds in totals.most_common()]
    report.emit(f"Each pipeline step inside {count} real requests (timers included)",
                ["step", "µs"], rows, rst=args.rst, digits=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
