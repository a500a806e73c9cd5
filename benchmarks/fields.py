"""Sanitising cost: ``SanitizedHTML`` with bleach vs nh3, µs per 1 KB field; ``Password``'s
checks on a typical and a longest (128-character) password; and a validated view's cost per
request (the same JSON body with and without ``@validate``).

``python benchmarks/fields.py`` (``--quick`` for the CI smoke check).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from marshmallow import Schema, fields

from benchmarks import report
from flask_apiguard.fields import Password, SanitizedHTML

#: About 1 KB of ordinary rich text with a few things to remove.
HTML_1KB = (
    "<p>Meeting notes for <b>Thursday</b>: we agreed to ship the <i>beta</i> to "
    "<a href='https://example.com/beta' onclick='steal()'>early users</a>.</p>"
    "<ul><li>Review the <code>auth</code> flow</li><li>Rotate the signing keys</li>"
    "<li>Write the <em>migration</em> guide</li></ul>"
    "<p>Risks: <script>alert(document.cookie)</script> the rate limiter needs Redis in "
    "production; <img src=x onerror=alert(1)> images are not allowed in notes.</p>"
    "<blockquote>Security is a process, not a product.</blockquote>"
) * 2


def per_call(fn: Any, iterations: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(iterations):
            fn()
        samples.append((time.perf_counter() - started) / iterations * 1e6)
    return statistics.median(samples)


def sanitizer_rows(iterations: int, repeats: int) -> list[tuple[str, float]]:
    rows = []
    for backend in ("bleach", "nh3"):
        class Note(Schema):
            body = SanitizedHTML(backend=backend)

        schema = Note()
        data = {"body": HTML_1KB}
        rows.append((f"SanitizedHTML, {backend}, {len(HTML_1KB)} bytes",
                     per_call(lambda s=schema, d=data: s.load(d), iterations, repeats)))
    return rows


def password_rows(iterations: int, repeats: int) -> list[tuple[str, float]]:
    """Blocklist, repeats and sequences, and the user's own name: the worst case is the
    longest password made of patterns (every position starts a run to follow)."""
    schema = Schema.from_dict({
        "username": fields.String(),
        "password": Password(context_fields=("username",)),
    })()
    rows = []
    for label, password in (("16 characters", "Tr0ub4dor&3-plus"),
                            ("128 characters of patterns", "abcdefghijklmnopqrstuvwxyz" * 4 + "a" * 24)):
        data = {"username": "alice", "password": password}
        rows.append((f"Password, {label}", per_call(lambda d=data: schema.validate(d),
                                                    iterations, repeats)))
    return rows


def validated_rows(iterations: int, repeats: int) -> list[tuple[str, float]]:
    from flask import Flask, request

    from benchmarks.apps import BODY, SECRET, environ_for
    from flask_apiguard import ApiGuard, public, rate_limit_exempt, validate

    class CreateUser(Schema):
        email = fields.Email(required=True)
        name = fields.String(required=True)

    app = Flask("validated")
    app.config.update(APIGUARD_JWT_SECRET=SECRET, APIGUARD_API_KEY_STORE="memory://")

    @app.post("/api/plain")
    @public
    @rate_limit_exempt
    def plain() -> Any:
        return {"created": request.get_json()["email"]}, 201

    @app.post("/api/validated")
    @public
    @rate_limit_exempt
    @validate(CreateUser)
    def validated(json_data: dict[str, Any]) -> Any:
        return {"created": json_data["email"]}, 201

    ApiGuard(app)

    def request_to(path: str) -> Any:
        environ = environ_for("unused", path=path)
        environ.pop("HTTP_AUTHORIZATION")

        def call() -> None:
            env = environ.copy()
            env["wsgi.input"] = io.BytesIO(BODY)
            for _chunk in app(env, lambda *a: None):
                pass

        return call

    return [("ApiGuard @public view, body read by the view", per_call(request_to("/api/plain"),
                                                                     iterations, repeats)),
            ("ApiGuard @public view with @validate(schema)", per_call(request_to("/api/validated"),
                                                                     iterations, repeats))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rst", help="also write the table to this reST file (docs/performance/)")
    args = parser.parse_args(argv)
    iterations, repeats = (5, 1) if args.quick else (500, 5)
    rows = (sanitizer_rows(iterations, repeats) + password_rows(iterations, repeats)
            + validated_rows(iterations * 4, repeats))
    report.emit(f"Sanitising, password checks and a validated view, {iterations} calls x "
                f"{repeats} repeats, median", ["what", "µs per call"], rows, rst=args.rst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
