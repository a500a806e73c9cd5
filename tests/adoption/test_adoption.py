"""An existing flask-limiter app behaves the same with ``ApiGuard(app)`` added, except that
answers take the guard's shape; on memory and on Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from flask_apiguard import ApiGuard, ApiGuardConfigError

from . import limiter_app
from .limiter_app import create_app

ROOT = Path(__file__).resolve().parents[2]

#: (method, path, headers or query) of each request, in order.
SCRIPT: list[tuple[str, str, dict[str, str]]] = [
    *[("GET", "/limited", {})] * 3,
    *[("GET", "/default", {})] * 4,
    ("GET", "/shared-a", {}), ("GET", "/shared-b", {}), ("GET", "/shared-a", {}),
    ("GET", "/shared-b", {}),
    ("GET", "/per-method", {}), ("POST", "/per-method", {}), ("GET", "/per-method", {}),
    ("GET", "/only-post", {}), ("GET", "/only-post", {}), ("POST", "/only-post", {}),
    ("POST", "/only-post", {}),
    ("GET", "/keyed", {"X-User": "ann"}), ("GET", "/keyed", {"X-User": "bob"}),
    ("GET", "/keyed", {"X-User": "ann"}),
    *[("GET", "/costly", {})] * 3,
    ("GET", "/deduct?fail=1", {}), ("GET", "/deduct", {}), ("GET", "/deduct", {}),
    ("GET", "/deduct?fail=1", {}), ("GET", "/deduct", {}),
    ("GET", "/exempt-when", {}), ("GET", "/exempt-when", {}),
    ("GET", "/exempt-when", {"X-Vip": "yes"}),
    *[("GET", "/combined", {})] * 4,
    ("GET", "/scoped", {}), ("GET", "/scoped", {}),
    *[("GET", "/dynamic", {})] * 3,
    *[("GET", "/dynamic", {"X-Plan": "10/minute"})] * 2,
    *[("GET", "/exempt", {})] * 5,
    *[("GET", "/limited", {"X-Internal": "yes"})] * 3,
]


def run_script(app: Flask) -> list[int]:
    client = app.test_client()
    return [client.open(path, method=method, headers=headers).status_code
            for method, path, headers in SCRIPT]


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> Callable[[str], dict[str, Any]]:
    """``storage(name)``: the RATELIMIT_* storage keys of one app (its own Redis prefix)."""
    if request.param == "memory":
        return lambda name: {"RATELIMIT_STORAGE_URI": "memory://"}
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda name: {"RATELIMIT_STORAGE_URI": url,
                         "RATELIMIT_STORAGE_OPTIONS": {"key_prefix": f"{prefix}-{name}"}}


def test_the_app_behaves_the_same_with_the_guard(storage: Callable[[str], dict[str, Any]]) -> None:
    alone = run_script(create_app(storage("alone")))
    limiter_app.BREACHES.clear()
    guarded = run_script(create_app(storage("guarded"), guarded=True))
    assert guarded == alone
    assert 429 in alone and alone.count(429) >= 10
    assert ("limit", "2 per 1 minute") in limiter_app.BREACHES
    assert ("limiter", "2 per 1 minute") in limiter_app.BREACHES


def test_answers_take_the_guards_shape() -> None:
    client = create_app({"RATELIMIT_STORAGE_URI": "memory://"}, guarded=True).test_client()
    for _ in range(2):
        assert client.get("/limited").status_code == 200
    answer = client.get("/limited")
    assert answer.status_code == 429
    assert answer.mimetype == "application/problem+json"
    body = answer.get_json()
    assert body["error"] == "rate_limit_exceeded"
    assert body["detail"] == "Slow down on /limited."
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.headers["RateLimit-Limit"] == "2"
    assert "X-RateLimit-Limit" not in answer.headers


def test_nothing_of_the_limiter_runs_outside_the_pipeline() -> None:
    app = create_app({"RATELIMIT_STORAGE_URI": "memory://", "RATELIMIT_HEADERS_ENABLED": True},
                     guarded=True)
    limiter = next(iter(app.extensions["limiter"]))
    assert limiter._check_request_limit not in app.before_request_funcs.get(None, [])
    assert not app.after_request_funcs.get(None) or all(
        getattr(f, "args", (None,))[:1] != (limiter,) for f in app.after_request_funcs[None])
    client = app.test_client()
    client.get("/limited")
    assert getattr(app.view_functions["limited"], "__wrapper-limiter-instance", None) is None
    assert "X-RateLimit-Limit" not in client.get("/limited").headers


def test_a_view_with_both_decorators_gets_both_limits() -> None:
    client = create_app({"RATELIMIT_STORAGE_URI": "memory://"}, guarded=True).test_client()
    assert client.get("/both").status_code == 200
    assert client.get("/both").status_code == 429  # @rate_limit("1/minute")


def test_a_limiter_initialised_after_the_guard_is_adopted_when_given() -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, RATELIMIT_STORAGE_URI="memory://",
                      APIGUARD_JWT_SECRET="y" * 40, APIGUARD_DEFAULT_DENY=False,
                      APIGUARD_FORCE_HTTPS=False, APIGUARD_API_KEY_STORE="memory://")
    limiter = Limiter(get_remote_address)
    ApiGuard(app, limiter=limiter)
    limiter.init_app(app)

    @app.get("/x")
    @limiter.limit("1/minute", error_message="late")
    def x() -> Any:
        return {}

    client = app.test_client()
    assert client.get("/x").status_code == 200
    answer = client.get("/x")
    assert answer.status_code == 429 and answer.get_json()["detail"] == "late"


def test_a_limiter_initialised_after_the_guard_and_not_given_is_refused() -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, RATELIMIT_STORAGE_URI="memory://",
                      APIGUARD_JWT_SECRET="y" * 40, APIGUARD_DEFAULT_DENY=False,
                      APIGUARD_FORCE_HTTPS=False, APIGUARD_API_KEY_STORE="memory://")
    ApiGuard(app)
    Limiter(get_remote_address, app=app)
    app.get("/x")(lambda: {})
    with pytest.raises(ApiGuardConfigError, match="limiter=limiter"):
        app.test_client().get("/x")


def test_meta_limits_are_refused_at_start_up() -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, RATELIMIT_STORAGE_URI="memory://",
                      APIGUARD_JWT_SECRET="y" * 40)
    Limiter(get_remote_address, app=app, meta_limits=["2/hour"])
    with pytest.raises(ApiGuardConfigError, match="meta limits"):
        ApiGuard(app)


@pytest.mark.redis
def test_old_and_new_workers_count_against_one_budget(redis_url: str,
                                                      redis_prefix: str) -> None:
    # A rolling deploy: a worker under flask-limiter alone (another process) and one with the
    # guard adopting the same limiter, on one Redis prefix.
    options = {"key_prefix": redis_prefix}
    old = subprocess.run(
        [sys.executable, "-m", "tests.adoption.limiter_app", redis_url, json.dumps(options),
         "/limited", "1"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(old.stdout.strip().splitlines()[-1]) == [200]
    config = {"RATELIMIT_STORAGE_URI": redis_url, "RATELIMIT_STORAGE_OPTIONS": options,
              "RATELIMIT_STRATEGY": "fixed-window"}
    client = create_app(config, guarded=True).test_client()
    assert [client.get("/limited").status_code for _ in range(2)] == [200, 429]
    again = subprocess.run(
        [sys.executable, "-m", "tests.adoption.limiter_app", redis_url, json.dumps(options),
         "/limited", "1"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == [429]


def test_the_private_names_of_flask_limiter_we_rely_on_exist() -> None:
    # flask_apiguard.ratelimit lists these in its docstring: a flask-limiter release that
    # renames one must fail here, not in production (flask-limiter is bounded <5).
    from flask_limiter._manager import LimitManager

    limiter = Limiter(get_remote_address, storage_uri="memory://")
    for name in ("_check_request_limit", "_Limiter__release_context", "_request_filters",
                 "_key_prefix", "_marked_for_limiting", "_meta_limits", "_in_memory_fallback",
                 "_on_breach", "_storage_uri", "_storage_options", "_strategy"):
        assert hasattr(limiter, name), name
    assert callable(getattr(Limiter, "_Limiter__inject_headers", None))
    manager = limiter.limit_manager
    assert isinstance(manager, LimitManager) and callable(manager.resolve_limits)
    for name in ("_application_limits", "_default_limits", "_decorated_limits",
                 "_blueprint_limits"):
        assert hasattr(manager, name), name
    wrapped = limiter.limit("1/second")(lambda: None)
    assert getattr(wrapped, "__wrapper-limiter-instance", None) == limiter
    assert hasattr(wrapped, "__wrapped__")


def test_adopted_and_own_limits_cost_one_redis_round_trip(private_redis: Any) -> None:
    # /both: the application limit and @limiter.limit (adopted) and @rate_limit (the guard's)
    from ..test_redis_gate import _client_commands

    client = create_app({"RATELIMIT_STORAGE_URI": private_redis.url}, guarded=True).test_client()
    client.get("/limited")  # compiled, script loaded
    commands = _client_commands(private_redis.url, lambda: client.get("/both"))
    assert commands == ["EVALSHA"]


def test_ratelimit_keys_map_to_the_guards(make_app: Callable[..., Flask]) -> None:
    app = make_app(RATELIMIT_STRATEGY="moving-window", RATELIMIT_HEADERS_ENABLED=False,
                   RATELIMIT_SWALLOW_ERRORS=True, RATELIMIT_DEFAULT="7/minute")
    config = app.extensions["apiguard"].config
    assert config.ratelimit_strategy == "moving-window"
    assert config.ratelimit_headers is False
    # not "open", which would also switch the auth-failure limit off while storage is down
    assert config.ratelimit_on_storage_error == "fallback"
    assert config.ratelimit_default == "7/minute"


def test_a_ratelimit_key_contradicting_its_apiguard_key_is_refused(
        make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ApiGuardConfigError,
                       match="APIGUARD_RATELIMIT_STRATEGY and RATELIMIT_STRATEGY"):
        make_app(RATELIMIT_STRATEGY="moving-window",
                 APIGUARD_RATELIMIT_STRATEGY="fixed-window")
    make_app(RATELIMIT_STRATEGY="fixed-window", APIGUARD_RATELIMIT_STRATEGY="fixed-window")


def test_application_limits_without_a_limiter_are_refused(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ApiGuardConfigError, match="RATELIMIT_APPLICATION"):
        make_app(RATELIMIT_APPLICATION="100/minute")


def test_check_lists_ratelimit_keys_without_effect(make_app: Callable[..., Flask]) -> None:
    from flask_apiguard.audit import findings

    app = make_app(RATELIMIT_HEADER_LIMIT="X-Limit", RATELIMIT_STRATEGY="fixed-window")
    found = [f.key for f in findings(app, app.extensions["apiguard"])
             if f.id == "ratelimit-key-without-effect"]
    assert found == ["RATELIMIT_HEADER_LIMIT"]


def test_head_counts_against_an_adopted_get_only_limit() -> None:
    # HEAD runs the GET view, but a methods=["GET"] limit resolved for HEAD was dropped: any
    # number of HEAD requests got through (the guard's own default being off with a limiter).
    app = Flask(__name__)
    app.config.update(TESTING=True, RATELIMIT_STORAGE_URI="memory://",
                      APIGUARD_JWT_SECRET="y" * 40, APIGUARD_DEFAULT_DENY=False,
                      APIGUARD_FORCE_HTTPS=False, APIGUARD_API_KEY_STORE="memory://")
    limiter = Limiter(get_remote_address, app=app)

    @app.get("/report")
    @limiter.limit("1/minute", methods=["GET"])
    def report() -> Any:
        return {}

    ApiGuard(app)
    client = app.test_client()
    assert client.get("/report").status_code == 200
    assert [client.head("/report").status_code for _ in range(3)] == [429, 429, 429]
