"""The cost of each layer: the same endpoint built up one ApiGuard layer at a time.

``python benchmarks/layers.py`` (``--quick`` for the CI smoke check). Rows are interleaved;
the median (and the minimum) of the repeats are printed, in µs per request.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask import Flask, request

from benchmarks import apps, report
from flask_apiguard import ApiGuard, public, rate_limit, rate_limit_exempt, require_jwt, roles, validate


def build(*, auth: bool, limit: bool, valid: bool, cors: bool = True) -> Flask:
    app = Flask("layers")
    app.config.update(APIGUARD_JWT_SECRET=apps.SECRET, APIGUARD_API_KEY_STORE="memory://",
                      APIGUARD_CORS_ORIGINS=[apps.ORIGIN] if cors else [],
                      APIGUARD_RATELIMIT_DEFAULT=apps.LIMIT)

    def view(json_data: dict[str, Any] | None = None) -> Any:
        data = json_data if json_data is not None else request.get_json()
        return {"created": data["email"]}, 201

    decorated: Callable[..., Any] = view
    if valid:
        decorated = validate(apps.CreateUser)(decorated)
    decorated = rate_limit(apps.LIMIT)(decorated) if limit else rate_limit_exempt(decorated)
    decorated = roles("admin")(require_jwt(decorated)) if auth else public(decorated)
    app.add_url_rule("/api/users", "create_user", decorated, methods=["POST"])
    ApiGuard(app)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rst", help="also write the table to this reST file (docs/performance/)")
    args = parser.parse_args(argv)
    iterations, repeats = (10, 1) if args.quick else (700, 21)
    variants = {
        "bare Flask": apps.bare_flask(),
        "ApiGuard @public, no CORS (request id, method, HTTPS, headers, body checks)":
            build(auth=False, limit=False, valid=False, cors=False),
        "+ CORS origin": build(auth=False, limit=False, valid=False),
        "+ @require_jwt and @roles (cached token, auth-failure check)":
            build(auth=True, limit=False, valid=False),
        "+ @rate_limit (memory)": build(auth=True, limit=True, valid=False),
        "+ @validate (marshmallow, 2 fields)": build(auth=True, limit=True, valid=True),
    }
    environ = apps.environ_for(apps.hs256_token())

    def run(app: Any, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            env = environ.copy()
            env["wsgi.input"] = io.BytesIO(apps.BODY)
            for _chunk in app(env, lambda *a: None):
                pass
        return (time.perf_counter() - started) / n * 1e6

    for app in variants.values():
        run(app, iterations // 2 + 1)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, app in variants.items():
            samples[name].append(run(app, iterations))
    report.emit(f"The endpoint built up one layer at a time, {iterations} requests x {repeats} "
                "repeats, interleaved", ["configuration", "median µs", "min µs"],
                [(name, statistics.median(values), min(values)) for name, values in samples.items()],
                rst=args.rst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
