"""An existing flask-limiter app using every feature the guard adopts.

``create_app(config, guarded=False)`` is the app as it runs under flask-limiter alone;
``guarded=True`` adds ``ApiGuard(app)`` and nothing else. Run as a script
(``python -m tests.adoption.limiter_app URI OPTIONS_JSON PATH N``) it makes ``N`` requests to
``PATH`` under flask-limiter alone and prints their statuses (the rolling-deploy test).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from flask_apiguard import ApiGuard, rate_limit

#: Each breach the app's on_breach callbacks saw: (which callback, limit as text).
BREACHES: list[tuple[str, str]] = []


def create_app(config: dict[str, Any], guarded: bool = False) -> Flask:
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        RATELIMIT_APPLICATION="50/minute",
        RATELIMIT_DEFAULT="3/minute",
        APIGUARD_JWT_SECRET="x" * 40,
        APIGUARD_API_KEY_STORE="memory://",
        APIGUARD_DEFAULT_DENY=False,
        APIGUARD_FORCE_HTTPS=False,
        APIGUARD_AUTH_FAILURE_LIMIT=None,
    )
    app.config.update(config)
    limiter = Limiter(get_remote_address, app=app,
                      on_breach=lambda limit: BREACHES.append(("limiter", str(limit.limit))))

    @limiter.request_filter
    def internal() -> bool:
        return request.headers.get("X-Internal") == "yes"

    @app.get("/default")
    def default() -> Any:
        return {"view": "default"}

    @app.get("/limited")
    @limiter.limit("2/minute", error_message="Slow down on /limited.",
                   on_breach=lambda limit: BREACHES.append(("limit", str(limit.limit))))
    def limited() -> Any:
        return {"view": "limited"}

    @app.get("/shared-a")
    @limiter.shared_limit("3/minute", scope="group")
    def shared_a() -> Any:
        return {"view": "a"}

    @app.get("/shared-b")
    @limiter.shared_limit("3/minute", scope="group")
    def shared_b() -> Any:
        return {"view": "b"}

    @app.route("/per-method", methods=["GET", "POST"])
    @limiter.limit("1/minute", per_method=True)
    def per_method() -> Any:
        return {"view": "per-method"}

    @app.route("/only-post", methods=["GET", "POST"])
    @limiter.limit("1/minute", methods=["POST"])
    def only_post() -> Any:
        return {"view": "only-post"}

    @app.get("/keyed")
    @limiter.limit("1/minute", key_func=lambda: request.headers.get("X-User", "anon"))
    def keyed() -> Any:
        return {"view": "keyed"}

    @app.get("/costly")
    @limiter.limit("5/minute", cost=2)
    def costly() -> Any:
        return {"view": "costly"}

    @app.get("/deduct")
    @limiter.limit("2/minute", deduct_when=lambda response: response.status_code == 400)
    def deduct() -> Any:
        return ({"view": "deduct"}, 400) if request.args.get("fail") else {"view": "deduct"}

    @app.get("/exempt-when")
    @limiter.limit("1/minute", exempt_when=lambda: request.headers.get("X-Vip") == "yes")
    def exempt_when() -> Any:
        return {"view": "exempt-when"}

    @app.get("/combined")
    @limiter.limit("5/minute", override_defaults=False)
    def combined() -> Any:
        return {"view": "combined"}

    @app.get("/scoped")
    @limiter.limit("1/minute", scope="special")
    def scoped() -> Any:
        return {"view": "scoped"}

    @app.get("/dynamic")
    @limiter.limit(lambda: request.headers.get("X-Plan", "2/minute"))
    def dynamic() -> Any:
        return {"view": "dynamic"}

    @app.get("/exempt")
    @limiter.exempt
    def exempt() -> Any:
        return {"view": "exempt"}

    @app.get("/both")
    @limiter.limit("3/minute")
    @rate_limit("1/minute", key="ip")
    def both() -> Any:
        return {"view": "both"}

    if guarded:
        ApiGuard(app)
    return app


if __name__ == "__main__":  # the flask-limiter-alone worker of the rolling-deploy test
    uri, options, path, count = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    config = {"RATELIMIT_STORAGE_URI": uri, "RATELIMIT_STORAGE_OPTIONS": options,
              "RATELIMIT_STRATEGY": "fixed-window"}
    client = create_app(config).test_client()
    print(json.dumps([client.get(path).status_code for _ in range(count)]))
