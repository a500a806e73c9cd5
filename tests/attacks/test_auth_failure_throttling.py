"""Credential brute force: ``APIGUARD_AUTH_FAILURE_LIMIT`` throttles a client IP that keeps
presenting bad credentials, for every credentialed request (valid ones too, so the throttle
is no oracle), leaving credential-less requests and other IPs alone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from flask import Flask, abort

from flask_apiguard import ApiGuard, public, rate_limit, require_jwt

from ..conftest import SECRET, bearer, problem, token_for

ATTACKER = "203.0.113.7"
BYSTANDER = "198.51.100.9"
LIMIT = 3


def throttled_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    settings = {"APIGUARD_AUTH_FAILURE_LIMIT": f"{LIMIT} per minute",
                "APIGUARD_RATELIMIT_DEFAULT": None, **config}
    app = make_app(init=False, **settings)

    @app.get("/app-refuses")
    @require_jwt
    def app_refuses() -> Any:
        abort(401)

    @app.post("/login")
    @public
    @rate_limit("100/minute", count="failures")
    def login() -> Any:
        return {"error": "bad password"}, 401

    ApiGuard(app)
    return app


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return throttled_app(make_app)


def request(app: Flask, ip: str, path: str = "/private", method: str = "get",
            **headers: str) -> Any:
    client = app.test_client()
    return getattr(client, method)(path, headers=headers, environ_base={"REMOTE_ADDR": ip})


def with_token(app: Flask, ip: str, token: str, path: str = "/private") -> Any:
    return request(app, ip, path, **bearer(token))


def with_key(app: Flask, ip: str, key: str, path: str = "/private") -> Any:
    return request(app, ip, path, **{"X-API-Key": key})


def bad_token() -> str:
    now = int(time.time())
    return jwt.encode({"sub": "mallory", "exp": now + 60}, "x" * 40 + "wrong-secret", "HS256")


def api_key(app: Flask) -> str:
    with app.app_context():
        plaintext: str = ApiGuard().api_keys.create("k")[0]
        return plaintext


def exhaust(app: Flask, ip: str = ATTACKER) -> None:
    for _ in range(LIMIT):
        response = with_token(app, ip, bad_token())
        assert response.status_code == 401
        assert problem(response)["error"] == "invalid_token"


def too_many(response: Any) -> dict[str, Any]:
    assert response.status_code == 429, (response.status_code, response.data[:300])
    body = problem(response)
    assert body["error"] == "too_many_auth_failures"
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert body["retry_after"] == retry_after
    return body


def test_bad_tokens_throttle_the_ip_valid_tokens_included(app: Flask) -> None:
    valid = token_for(app, "alice")
    assert with_token(app, ATTACKER, valid).status_code == 200
    exhaust(app)
    too_many(with_token(app, ATTACKER, valid))
    too_many(with_token(app, ATTACKER, bad_token()))
    too_many(with_key(app, ATTACKER, api_key(app)))
    too_many(request(app, ATTACKER, "/echo", method="post", **bearer(valid)))


def test_throttled_answer_is_the_same_for_valid_and_invalid_credentials(app: Flask) -> None:
    exhaust(app)
    answers = []
    for response in (with_token(app, ATTACKER, token_for(app, "alice")),
                     with_token(app, ATTACKER, bad_token()),
                     with_key(app, ATTACKER, api_key(app)),
                     with_key(app, ATTACKER, "agk_nonsense")):
        body = too_many(response)
        answers.append((response.status_code, body["error"], body["detail"], body["title"],
                        sorted(k for k, _ in response.headers.items() if k != "Content-Length")))
    assert all(answer == answers[0] for answer in answers)


def test_throttled_ip_without_credentials_gets_its_normal_answer(app: Flask) -> None:
    exhaust(app)
    response = request(app, ATTACKER)
    assert response.status_code == 401
    assert problem(response)["error"] == "unauthorized"
    assert request(app, ATTACKER, "/health").status_code == 200
    too_many(with_token(app, ATTACKER, token_for(app)))


def test_other_ips_are_unaffected(app: Flask) -> None:
    exhaust(app)
    too_many(with_token(app, ATTACKER, token_for(app)))
    assert with_token(app, BYSTANDER, token_for(app)).status_code == 200
    response = with_token(app, BYSTANDER, bad_token())
    assert response.status_code == 401
    assert problem(response)["error"] == "invalid_token"


def test_bad_api_keys_count(app: Flask) -> None:
    for candidate in ("agk_nonsense", f"agk_{'0' * 16}_{'0' * 64}", "x" * 300):
        response = with_key(app, ATTACKER, candidate)
        assert response.status_code == 401
        assert problem(response)["error"] == "invalid_api_key"
    too_many(with_key(app, ATTACKER, api_key(app)))
    too_many(with_token(app, ATTACKER, token_for(app)))


def test_bad_tokens_and_bad_keys_add_up(app: Flask) -> None:
    assert with_token(app, ATTACKER, bad_token()).status_code == 401
    assert with_key(app, ATTACKER, "agk_nonsense").status_code == 401
    assert with_token(app, ATTACKER, "garbage").status_code == 401
    too_many(with_key(app, ATTACKER, api_key(app)))


def test_expired_tokens_count(app: Flask) -> None:
    now = int(time.time())
    expired = jwt.encode({"sub": "alice", "exp": now - 10}, SECRET, "HS256")
    for _ in range(LIMIT):
        response = with_token(app, ATTACKER, expired)
        assert problem(response)["error"] == "token_expired"
    too_many(with_token(app, ATTACKER, token_for(app)))


def test_revoked_tokens_count(make_app: Any) -> None:
    app = throttled_app(make_app, APIGUARD_JWT_REVOCATION=True)
    token = token_for(app)
    with app.app_context():
        ApiGuard().revoke_token(token)
    for _ in range(LIMIT):
        assert problem(with_token(app, ATTACKER, token))["error"] == "token_revoked"
    too_many(with_token(app, ATTACKER, token_for(app)))


def test_requests_to_public_views_do_not_count(app: Flask) -> None:
    for _ in range(LIMIT * 4):
        assert with_token(app, ATTACKER, bad_token(), "/health").status_code == 200
        assert with_key(app, ATTACKER, "agk_nonsense", "/health").status_code == 200
    assert with_token(app, ATTACKER, token_for(app)).status_code == 200


def test_401s_produced_by_the_app_do_not_count(app: Flask) -> None:
    valid = token_for(app)
    for _ in range(LIMIT * 4):
        response = with_token(app, ATTACKER, valid, "/app-refuses")
        assert response.status_code == 401
        assert problem(response)["error"] == "unauthorized"
    for _ in range(LIMIT * 4):
        response = request(app, ATTACKER, "/login", method="post")
        assert response.status_code == 401
    assert with_token(app, ATTACKER, valid).status_code == 200


def test_requests_without_credentials_do_not_count(app: Flask) -> None:
    for _ in range(LIMIT * 4):
        response = request(app, ATTACKER)
        assert problem(response)["error"] == "unauthorized"
        # another scheme is not a credential this API reads
        assert request(app, ATTACKER, Authorization="Basic dTpw").status_code == 401
    assert with_token(app, ATTACKER, token_for(app)).status_code == 200


def test_window_counts_only_this_many_failures(app: Flask) -> None:
    for _ in range(LIMIT - 1):
        assert with_token(app, ATTACKER, bad_token()).status_code == 401
    # still under the limit: a valid token is served and does not reset anything
    assert with_token(app, ATTACKER, token_for(app)).status_code == 200
    assert with_token(app, ATTACKER, bad_token()).status_code == 401
    too_many(with_token(app, ATTACKER, token_for(app)))


def test_none_switches_it_off(make_app: Any) -> None:
    app = throttled_app(make_app, APIGUARD_AUTH_FAILURE_LIMIT=None)
    for _ in range(30):
        response = with_token(app, ATTACKER, bad_token())
        assert response.status_code == 401
        assert problem(response)["error"] == "invalid_token"
    assert with_token(app, ATTACKER, token_for(app)).status_code == 200


def test_default_limit_is_twenty_per_fifteen_minutes(make_app: Any) -> None:
    app = make_app(APIGUARD_RATELIMIT_DEFAULT=None)
    for _ in range(20):
        assert with_token(app, ATTACKER, bad_token()).status_code == 401
    body = too_many_default(with_token(app, ATTACKER, token_for(app)))
    assert 1 <= body["retry_after"] <= 15 * 60


def too_many_default(response: Any) -> dict[str, Any]:
    assert response.status_code == 429
    body = problem(response)
    assert body["error"] == "too_many_auth_failures"
    assert body["retry_after"] == int(response.headers["Retry-After"])
    return body


def test_throttled_response_does_not_echo_credentials(app: Flask) -> None:
    exhaust(app)
    token = token_for(app)
    response = with_token(app, ATTACKER, token)
    too_many(response)
    assert token not in response.get_data(as_text=True)
    assert token.split(".")[1] not in json.dumps(dict(response.headers))


@pytest.mark.redis
def test_failures_are_shared_between_apps_through_redis(make_app: Any, redis_config: Any) -> None:
    app_a = throttled_app(make_app, **redis_config())
    app_b = throttled_app(make_app, **redis_config())
    assert with_token(app_a, ATTACKER, bad_token()).status_code == 401
    assert with_key(app_b, ATTACKER, "agk_nonsense").status_code == 401
    assert with_token(app_a, ATTACKER, "garbage").status_code == 401
    too_many(with_token(app_b, ATTACKER, token_for(app_b)))
    too_many(with_token(app_a, ATTACKER, token_for(app_a)))
    assert with_token(app_b, BYSTANDER, token_for(app_b)).status_code == 200


def test_options_requests_do_not_count(app: Flask) -> None:
    client = app.test_client()
    for _ in range(LIMIT * 3):
        response = client.options("/private", headers=bearer(bad_token()),
                                  environ_base={"REMOTE_ADDR": ATTACKER})
        assert response.status_code < 400
    assert with_token(app, ATTACKER, token_for(app)).status_code == 200


def test_forged_x_forwarded_for_does_not_escape_the_throttle(app: Flask) -> None:
    for n in range(LIMIT):
        response = request(app, ATTACKER, **bearer(bad_token()),
                           **{"X-Forwarded-For": f"192.0.2.{n}"})
        assert response.status_code == 401
    response = request(app, ATTACKER, **bearer(token_for(app)),
                       **{"X-Forwarded-For": "192.0.2.200", "X-Real-IP": "192.0.2.201",
                          "Forwarded": "for=192.0.2.202"})
    too_many(response)


def test_ipv6_address_rotation_within_a_64_does_not_escape_the_throttle(app: Flask) -> None:
    for n in range(LIMIT):
        assert with_token(app, f"2001:db8:1:2::{n + 1:x}", bad_token()).status_code == 401
    too_many(with_token(app, "2001:db8:1:2:ffff:ffff:ffff:fffe", token_for(app)))
    assert with_token(app, "2001:db8:1:3::1", token_for(app)).status_code == 200
