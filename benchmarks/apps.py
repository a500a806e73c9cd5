"""The apps the benchmarks compare: one POST endpoint with the same checks, built five ways.

The endpoint: an HS256 bearer token with an ``admin`` role, a CORS origin, security headers,
an in-memory rate limit (high enough never to trip), and a marshmallow schema for the body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import jwt
from flask import Flask, g, jsonify, request
from marshmallow import Schema, ValidationError, fields

SECRET = "kT3vQ9xLm2Zr7Wb1Hc5Jp8Nd4Fs6Gy0Aq3Ue9Ri2Ol7Mk1Vx"
ORIGIN = "https://app.example.com"
LIMIT = "1000000 per hour"


class CreateUser(Schema):
    email = fields.Email(required=True)
    name = fields.String(required=True)


SCHEMA = CreateUser()
BODY = json.dumps({"email": "ada@example.com", "name": "Ada"}).encode()


def hs256_token(roles: list[str] | None = None, lifetime: int = 3600) -> str:
    now = int(time.time())
    claims = {"sub": "ada", "roles": roles or ["admin"], "iat": now, "exp": now + lifetime,
              "jti": "bench-jti"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def environ_for(token: str, path: str = "/api/users", body: bytes = BODY) -> dict[str, Any]:
    """A WSGI environ for ``POST path`` over HTTPS with the token, an Origin and a JSON body."""
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(
        path=path, method="POST", base_url="https://api.example.com", data=body,
        headers={"Authorization": f"Bearer {token}", "Origin": ORIGIN,
                 "Content-Type": "application/json"},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    environ = builder.get_environ()
    environ.pop("wsgi.input")
    return environ


# -- 1. bare Flask ------------------------------------------------------------------------------

def bare_flask() -> Flask:
    app = Flask("bare")

    @app.post("/api/users")
    def create_user() -> Any:
        return {"created": request.get_json()["email"]}, 201

    return app


# -- 2. the usual hand-assembled stack ------------------------------------------------------------

def _hand_jwt(role: str) -> Callable[..., Any]:
    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                return jsonify(error="unauthorized"), 401
            try:
                claims = jwt.decode(header[7:], SECRET, algorithms=["HS256"])
            except jwt.PyJWTError:
                return jsonify(error="invalid_token"), 401
            if role not in claims.get("roles", []):
                return jsonify(error="forbidden"), 403
            g.claims = claims
            return view(*args, **kwargs)

        return wrapper

    return decorator


def hand_assembled() -> Flask:
    from flask_cors import CORS
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address
    from flask_talisman import Talisman

    app = Flask("hand")
    Talisman(app, content_security_policy={"default-src": "'none'"}, force_https=True)
    CORS(app, origins=[ORIGIN])
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://")

    @app.post("/api/users")
    @limiter.limit(LIMIT)
    @_hand_jwt("admin")
    def create_user() -> Any:
        try:
            data = SCHEMA.load(request.get_json())
        except ValidationError as exc:
            return jsonify(errors=exc.messages), 400
        return {"created": data["email"]}, 201

    return app


# -- 3. APIFlask + flask-jwt-extended + the same extensions -------------------------------------

def apiflask_stack() -> Flask:
    from apiflask import APIFlask
    from apiflask import Schema as ASchema
    from apiflask.fields import Email, String
    from flask_cors import CORS
    from flask_jwt_extended import JWTManager, get_jwt, jwt_required
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address
    from flask_talisman import Talisman

    class In(ASchema):
        email = Email(required=True)
        name = String(required=True)

    app = APIFlask("apiflask", spec_path=None, docs_path=None)
    app.config["JWT_SECRET_KEY"] = SECRET
    JWTManager(app)
    Talisman(app, content_security_policy={"default-src": "'none'"}, force_https=True)
    CORS(app, origins=[ORIGIN])
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://")

    @app.post("/api/users")
    @limiter.limit(LIMIT)
    @jwt_required()
    @app.input(In, arg_name="json_data")
    def create_user(json_data: dict[str, Any]) -> Any:
        if "admin" not in get_jwt().get("roles", []):
            return {"error": "forbidden"}, 403
        return {"created": json_data["email"]}, 201

    return app


# -- 4. a plain WSGI function doing the same checks: the floor ---------------------------------

def wsgi_floor() -> Callable[..., Any]:
    key = SECRET.encode()
    counters: dict[str, int] = {}
    headers = [("Content-Type", "application/json"), ("Content-Security-Policy", "default-src 'none'"),
               ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
               ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
               ("Access-Control-Allow-Origin", ORIGIN), ("Vary", "Origin")]

    def b64(segment: str) -> bytes:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        token = auth[7:]
        head, payload, signature = token.split(".")
        expected = hmac.new(key, f"{head}.{payload}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, b64(signature)):
            start_response("401 Unauthorized", headers)
            return [b'{"error":"invalid_token"}']
        claims = json.loads(b64(payload))
        if claims["exp"] < time.time() or "admin" not in claims["roles"]:
            start_response("403 Forbidden", headers)
            return [b'{"error":"forbidden"}']
        ip = environ["REMOTE_ADDR"]
        counters[ip] = counters.get(ip, 0) + 1
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = SCHEMA.load(json.loads(environ["wsgi.input"].read(length)))
        start_response("201 Created", headers)
        return [json.dumps({"created": data["email"]}).encode()]

    return app


# -- 5. ApiGuard ------------------------------------------------------------------------------

def apiguard_app(storage_uri: str = "memory://", limit: str = LIMIT, *, adopted: bool = False,
                 **config: Any) -> Flask:
    """The endpoint behind ApiGuard; ``adopted``: its limit declared with an adopted
    flask-limiter's ``@limiter.limit`` instead of ``@rate_limit`` (the same counting)."""
    from flask_apiguard import ApiGuard, rate_limit, require_jwt, roles, validate

    app = Flask("apiguard")
    app.config.update(
        APIGUARD_JWT_SECRET=SECRET,
        APIGUARD_STORAGE_URI=storage_uri,
        APIGUARD_CORS_ORIGINS=[ORIGIN],
        APIGUARD_API_KEY_STORE="memory://",
        APIGUARD_RATELIMIT_DEFAULT=LIMIT,
    )
    app.config.update(config)
    if adopted:
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        limiter = Limiter(get_remote_address, app=app, storage_uri=storage_uri,
                          strategy="sliding-window-counter")
        limited = limiter.limit(limit)
    else:
        limited = rate_limit(limit)

    @app.post("/api/users")
    @require_jwt
    @roles("admin")
    @limited
    @validate(CreateUser)
    def create_user(json_data: dict[str, Any]) -> Any:
        return {"created": json_data["email"]}, 201

    ApiGuard(app)
    return app


# -- Redis key space ------------------------------------------------------------------------------

def redis_prefix() -> str:
    """A key prefix of this run's own: the Redis given may be shared, so nothing is flushed;
    the run's keys are counted under this prefix and deleted at the end (:func:`delete_keys`)."""
    return f"bench-{os.getpid()}-{secrets.token_hex(4)}"


def delete_keys(url: str, prefix: str) -> int:
    """Delete the keys starting with ``prefix``, and only those (SCAN MATCH + UNLINK)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        return int(client.unlink(*keys)) if keys else 0
    finally:
        client.close()
