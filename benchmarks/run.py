"""Microseconds per request for the same POST endpoint built several ways, in one run.

Each app's WSGI callable is driven directly with a prebuilt environ (no server, no network):
``python benchmarks/run.py`` prints a table with the median of the repeats and the ratio to
bare Flask. ``--quick`` runs a few iterations only (the CI smoke check: no timing asserted).
``--only NAME`` (repeatable) selects rows; ``--redis URL`` adds the Redis rows.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import apps, report
from flask_apiguard import ApiGuard


@dataclass
class Row:
    name: str
    build: Callable[[], tuple[Callable[..., Any], dict[str, Any], bytes]]
    expect: int = 201


def _sanity(wsgi: Callable[..., Any], environ: dict[str, Any], body: bytes, expect: int,
            name: str) -> None:
    status: list[str] = []
    env = dict(environ, **{"wsgi.input": io.BytesIO(body)})
    b"".join(wsgi(env, lambda s, h, e=None: status.append(s)))
    if not status or int(status[0][:3]) != expect:
        raise SystemExit(f"{name}: expected {expect}, got {status}")


def _ec_keys() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def _rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _jwks_server(key: Any, kid: str) -> str:
    """A JWKS on a loopback HTTP server of this process (a provider's, fetched once at
    start-up); its URL."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from jwt.algorithms import RSAAlgorithm

    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig", alg="RS256")
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server calls it by this name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/jwks"


def _provider_row(key: Any, url: str, **config: Any) -> tuple[Callable[..., Any], dict[str, Any], bytes]:
    """RS256 tokens of an identity provider, verified with its JWKS (fetched at start-up)."""
    import jwt

    app = apps.apiguard_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256"],
                            APIGUARD_JWT_JWKS_URL=url, **config)
    now = int(time.time())
    token = jwt.encode({"sub": "ada", "roles": ["admin"], "iat": now, "exp": now + 3600},
                       key, algorithm="RS256", headers={"kid": "provider-1"})
    return app, apps.environ_for(token), apps.BODY


def _guard_row(**config: Any) -> tuple[Callable[..., Any], dict[str, Any], bytes]:
    app = apps.apiguard_app(**config)
    with app.app_context():
        token = ApiGuard().issue_token("ada", roles=["admin"])
    return app, apps.environ_for(token), apps.BODY


def rows(redis_url: str | None, prefix: str = "") -> list[Row]:
    token = apps.hs256_token()
    env = apps.environ_for(token)
    found = [
        Row("bare Flask, no checks", lambda: (apps.bare_flask(), env, apps.BODY)),
        Row("hand-assembled: talisman + flask-limiter + flask-cors + pyjwt + marshmallow",
            lambda: (apps.hand_assembled(), env, apps.BODY)),
        Row("APIFlask + flask-jwt-extended + the same",
            lambda: (apps.apiflask_stack(), env, apps.BODY)),
        Row("plain WSGI function, same checks (the floor)",
            lambda: (apps.wsgi_floor(), env, apps.BODY)),
        Row("ApiGuard, memory storage (HS256)", lambda: _guard_row()),
        Row("ApiGuard, memory storage (HS256), the limit through an adopted @limiter.limit",
            lambda: _guard_row(adopted=True, APIGUARD_RATELIMIT_DEFAULT=None)),  # one limit, as above
        Row("ApiGuard, memory storage, token cache off",
            lambda: _guard_row(APIGUARD_JWT_CACHE_SIZE=0)),
    ]
    private, public = _ec_keys()
    found.append(Row("ApiGuard, memory storage (ES256)", lambda: _guard_row(
        APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["ES256"],
        APIGUARD_JWT_PRIVATE_KEY=private, APIGUARD_JWT_PUBLIC_KEY=public)))
    found.append(Row("ApiGuard, memory storage (ES256), token cache off", lambda: _guard_row(
        APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["ES256"],
        APIGUARD_JWT_PRIVATE_KEY=private, APIGUARD_JWT_PUBLIC_KEY=public,
        APIGUARD_JWT_CACHE_SIZE=0)))
    rsa_key = _rsa_key()
    rsa_pem = _pem(rsa_key)
    found.append(Row("ApiGuard, memory storage (RS256, local key)", lambda: _guard_row(
        APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256"],
        APIGUARD_JWT_KEYS={"local-1": rsa_pem})))
    found.append(Row("ApiGuard, memory storage (RS256, local key), token cache off",
                     lambda: _guard_row(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256"],
                                        APIGUARD_JWT_KEYS={"local-1": rsa_pem},
                                        APIGUARD_JWT_CACHE_SIZE=0)))
    jwks: list[str] = []  # the JWKS server starts only when a provider row is selected

    def jwks_url() -> str:
        if not jwks:
            jwks.append(_jwks_server(rsa_key, "provider-1"))
        return jwks[0]

    found.append(Row("ApiGuard, memory storage (RS256 from a provider's JWKS)",
                     lambda: _provider_row(rsa_key, jwks_url())))
    found.append(Row("ApiGuard, memory storage (RS256 from a provider's JWKS), token cache off",
                     lambda: _provider_row(rsa_key, jwks_url(), APIGUARD_JWT_CACHE_SIZE=0)))
    if redis_url:
        options = {"key_prefix": prefix or apps.redis_prefix()}
        found.append(Row("ApiGuard, Redis storage", lambda: _guard_row(
            storage_uri=redis_url, APIGUARD_STORAGE_OPTIONS=options)))
        found.append(Row("ApiGuard, Redis storage, revocation on", lambda: _guard_row(
            storage_uri=redis_url, APIGUARD_STORAGE_OPTIONS=options, APIGUARD_JWT_REVOCATION=True)))
    return found


def measure(rows_: list[Row], iterations: int, repeats: int) -> dict[str, float]:
    built = []
    for row in rows_:
        wsgi, environ, body = row.build()
        _sanity(wsgi, environ, body, row.expect, row.name)
        built.append((row, wsgi, environ, body))
    samples: dict[str, list[float]] = {row.name: [] for row in rows_}

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    for _ in range(repeats):  # interleaved, so that drift hits every row alike
        for row, wsgi, environ, body in built:
            started = time.perf_counter()
            for _ in range(iterations):
                env = environ.copy()
                env["wsgi.input"] = io.BytesIO(body)
                for _chunk in wsgi(env, start_response):
                    pass
            samples[row.name].append((time.perf_counter() - started) / iterations * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few iterations (smoke check)")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL"),
                        help="a Redis URL for the Redis rows (counted under a key prefix of "
                             "this run's own, deleted at the end; nothing else is touched)")
    parser.add_argument("--only", action="append", default=[], help="substring of row names")
    parser.add_argument("--rst", help="also write the table to this reST file (docs/performance/)")
    args = parser.parse_args(argv)
    iterations, repeats = (20, 2) if args.quick else (args.iterations, args.repeats)
    prefix = apps.redis_prefix()
    selected = [r for r in rows(args.redis, prefix)
                if not args.only or any(o.lower() in r.name.lower() for o in args.only)]
    try:
        results = measure(selected, iterations, repeats)
    finally:
        if args.redis:
            apps.delete_keys(args.redis, prefix)
    bare = results.get("bare Flask, no checks")
    report.emit(f"The same POST request through each app, {iterations} requests x {repeats} "
                "repeats, interleaved, median", ["app", "µs/request", "x bare"],
                [(name, value, f"{value / bare:.2f}" if bare else None)
                 for name, value in results.items()], rst=args.rst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
