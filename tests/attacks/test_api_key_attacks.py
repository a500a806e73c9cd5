"""Attacks on API keys, one test per attack: enumeration, replay of revoked or expired keys,
malformed keys, keys smuggled in the query string, SQL-shaped key ids."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_apiguard import ApiGuard, ApiKey, current_identity

from ..conftest import bearer, problem

QUIET = {"APIGUARD_AUTH_FAILURE_LIMIT": None, "APIGUARD_RATELIMIT_DEFAULT": None}


def key_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    app = make_app(init=False, **{**QUIET, **config})

    @app.get("/whoami")
    def whoami() -> Any:
        return {"key_id": current_identity.key_id, "method": current_identity.method}

    ApiGuard(app)
    return app


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return key_app(make_app)


def create(app: Flask, **kwargs: Any) -> tuple[str, ApiKey]:
    with app.app_context():
        plaintext, key = ApiGuard().api_keys.create("k", **kwargs)
        return plaintext, key


def send(app: Flask, plaintext: str) -> Any:
    return app.test_client().get("/whoami", headers={"X-API-Key": plaintext})


def refused_key(response: Any, plaintext: str = "") -> dict[str, Any]:
    assert response.status_code == 401, (response.status_code, response.data[:300])
    body = problem(response)
    assert body["error"] == "invalid_api_key"
    assert "WWW-Authenticate" in response.headers
    if len(plaintext) >= 8:
        text = response.get_data(as_text=True) + repr(list(response.headers.items()))
        assert plaintext not in text
        secret = plaintext.rsplit("_", 1)[-1]
        if len(secret) >= 8:
            assert secret not in text
    return body


def comparable(response: Any) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    """Status, body without request_id, and headers without X-Request-ID."""
    body = json.loads(response.data)
    body.pop("request_id")
    headers = sorted((k, v) for k, v in response.headers.items() if k != "X-Request-ID")
    return response.status_code, body, headers


def test_api_key_enumeration_unknown_id_and_wrong_secret_look_the_same(app: Flask) -> None:
    plaintext, key = create(app)
    assert send(app, plaintext).status_code == 200
    wrong_secret = f"agk_{key.key_id}_{secrets.token_hex(32)}"
    unknown_id = f"agk_{secrets.token_hex(8)}_{plaintext.rsplit('_', 1)[1]}"
    unknown_both = f"agk_{secrets.token_hex(8)}_{secrets.token_hex(32)}"
    responses = [send(app, candidate) for candidate in (wrong_secret, unknown_id, unknown_both)]
    for response, candidate in zip(responses, (wrong_secret, unknown_id, unknown_both),
                                   strict=True):
        refused_key(response, candidate)
    first = comparable(responses[0])
    for response in responses[1:]:
        assert comparable(response) == first
    assert len({r.headers["X-Request-ID"] for r in responses}) == 3


def test_api_key_enumeration_revoked_and_expired_share_the_error(app: Flask) -> None:
    revoked, revoked_key = create(app)
    expired, _ = create(app, expires_in=0.2)
    with app.app_context():
        ApiGuard().api_keys.revoke(revoked_key.key_id)
    time.sleep(0.3)
    unknown = send(app, f"agk_{secrets.token_hex(8)}_{secrets.token_hex(32)}")
    for response, candidate in ((send(app, revoked), revoked), (send(app, expired), expired)):
        refused_key(response, candidate)
        assert comparable(response) == comparable(unknown)


def test_revoked_api_key_is_refused(app: Flask) -> None:
    plaintext, key = create(app)
    assert send(app, plaintext).get_json()["key_id"] == key.key_id
    with app.app_context():
        assert ApiGuard().api_keys.revoke(key.key_id) is True
    refused_key(send(app, plaintext), plaintext)


def test_expired_api_key_is_refused(app: Flask) -> None:
    plaintext, _ = create(app, expires_in=0.5)
    assert send(app, plaintext).status_code == 200
    time.sleep(0.7)
    refused_key(send(app, plaintext), plaintext)


def malformed(valid: str, key_id: str) -> dict[str, str]:
    secret = valid.rsplit("_", 1)[1]
    return {
        "wrong-prefix": f"xyz_{key_id}_{secret}",
        "prefix-uppercase": f"AGK_{key_id}_{secret}",
        "no-prefix": f"{key_id}_{secret}",
        "too-short": "agk_1",
        "secret-truncated": valid[:-1],
        "secret-extended": valid + "0",
        "secret-uppercase": f"agk_{key_id}_{secret.upper()}",
        "extra-segment": f"{valid}_00",
        "dash-separators": valid.replace("_", "-"),
        "ten-kilobytes": "agk_" + "a" * 10_240,
        "valid-then-ten-kilobytes": valid + "0" * 10_240,
        "unicode": f"agk_{key_id}_{'é' * 64}",
        "unicode-digits": f"agk_{key_id}_{'١' * 64}",
        "fullwidth": f"ａｇｋ_{key_id}_{secret}",
        "nul": f"agk_{key_id}\x00_{secret}",
        "nul-suffix": valid + "\x00",
        "latin1-bytes": "agk_" + "ключ".encode().decode("latin-1"),
        "whitespace-inside": f"agk_{key_id} _{secret}",
        "only-underscores": "__",
        "percent-encoded": valid.replace("_", "%5F"),
    }


def test_malformed_api_keys_are_refused_never_500(app: Flask) -> None:
    valid, key = create(app)
    for name, candidate in malformed(valid, key.key_id).items():
        response = send(app, candidate)
        assert response.status_code != 500, name
        refused_key(response, candidate)
    assert send(app, valid).status_code == 200


def test_api_key_in_the_query_string_is_ignored(app: Flask) -> None:
    plaintext, _ = create(app)
    client = app.test_client()
    for param in ("api_key", "apikey", "key", "X-API-Key", "x_api_key", "access_token"):
        response = client.get(f"/whoami?{param}={plaintext}")
        assert response.status_code == 401, param
        assert problem(response)["error"] == "unauthorized"
        assert plaintext not in response.get_data(as_text=True)


def test_api_key_in_a_cookie_or_body_is_ignored(app: Flask) -> None:
    plaintext, _ = create(app)
    client = app.test_client()
    client.set_cookie("X-API-Key", plaintext)
    client.set_cookie("api_key", plaintext)
    response = client.get("/whoami")
    assert response.status_code == 401
    assert problem(response)["error"] == "unauthorized"
    response = app.test_client().post("/echo", json={"api_key": plaintext})
    assert response.status_code == 401
    assert problem(response)["error"] == "unauthorized"


def test_api_key_as_a_bearer_token_is_not_an_api_key(app: Flask) -> None:
    plaintext, _ = create(app)
    response = app.test_client().get("/whoami", headers=bearer(plaintext))
    assert response.status_code == 401
    assert plaintext not in response.get_data(as_text=True)


SQL_IDS = ["' OR '1'='1", "1' OR 1=1--", "%", "*", "' UNION SELECT * FROM apiguard_api_keys--",
           "x'; DROP TABLE apiguard_api_keys;--", "0000000000000000' OR ''='"]


@pytest.mark.parametrize("store_uri", ["sqlite:///sqli.sqlite3", "memory://"])
def test_sql_injection_shaped_key_ids_are_refused(make_app: Any, store_uri: str) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    plaintext, key = create(app)
    secret = plaintext.rsplit("_", 1)[1]
    for key_id in SQL_IDS:
        for candidate in (f"agk_{key_id}_{secret}", f"agk_{key_id}", f"{key_id}",
                          f"agk_{key.key_id}{key_id}_{secret}"):
            refused_key(send(app, candidate), candidate)
    with app.app_context():
        keys = ApiGuard().api_keys
        assert keys.verify(f"agk_{SQL_IDS[0]}_{secret}") is None
        assert keys.get(SQL_IDS[0]) is None
        assert keys.revoke(SQL_IDS[0]) is False
        assert [k.key_id for k in keys.list()] == [key.key_id]
        assert keys.get(key.key_id) == key
    assert send(app, plaintext).get_json()["key_id"] == key.key_id
