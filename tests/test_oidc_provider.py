"""End to end against a real OpenID Provider: npm's ``oidc-provider`` under Node.js
(tests/oidc/server.mjs), issuing client-credentials JWT access tokens. Discovery, key
rotation, removed keys, a provider killed mid-run and an unknown-``kid`` flood, with real
time and real HTTP (no fake clock here)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from flask import Flask

from flask_apiguard import current_identity, scopes
from flask_apiguard.layers.jwt.remote import KeySource
from flask_apiguard.state import guard_state

from .conftest import bearer, problem
from .jwks_server import sign


def _guarded(make_app: Any, provider: Any, **config: Any) -> Flask:
    settings = {
        "APIGUARD_JWT_SECRET": None,
        "APIGUARD_JWT_ALGORITHMS": ["RS256"],
        "APIGUARD_JWT_ISSUER": provider.issuer,
        "APIGUARD_JWT_AUDIENCE": "https://api.example",
        "APIGUARD_JWT_OIDC_DISCOVERY": True,
        "APIGUARD_AUTH_FAILURE_LIMIT": None,
        "APIGUARD_RATELIMIT_DEFAULT": None,
        **config,
    }
    app = make_app(init=False, **settings)

    @app.get("/notes")
    @scopes("read:notes")
    def notes() -> Any:
        return {"client": current_identity.subject, "scopes": sorted(current_identity.scopes)}

    from flask_apiguard import ApiGuard

    ApiGuard(app)
    return app


def _source(app: Flask) -> KeySource:
    (source,) = guard_state(app).jwt.sources
    return source


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_client_credentials_token_is_accepted(make_app: Any, oidc_provider: Any,
                                                rsa_key: Any) -> None:
    oidc_provider.start(("key-1", rsa_key))
    app = _guarded(make_app, oidc_provider)
    response = app.test_client().get("/notes", headers=bearer(oidc_provider.token()))
    assert response.status_code == 200, response.data
    assert response.json == {"client": "api-client", "scopes": ["read:notes"]}
    assert oidc_provider.jwks_hits() == 1  # fetched once, at start-up
    # a token the provider issued without the scope this view needs
    other = oidc_provider.token(scope="write:notes")
    assert app.test_client().get("/notes", headers=bearer(other)).status_code == 403


def test_a_rotated_key_is_accepted_after_exactly_one_refetch(
        make_app: Any, oidc_provider: Any, rsa_key: Any, other_rsa_key: Any) -> None:
    oidc_provider.start(("key-1", rsa_key))
    app = _guarded(make_app, oidc_provider, APIGUARD_JWT_JWKS_REFETCH_COOLDOWN=1)
    client = app.test_client()
    assert client.get("/notes", headers=bearer(oidc_provider.token())).status_code == 200
    source = _source(app)
    fetches = source.fetch_count
    oidc_provider.stop()
    oidc_provider.start(("key-2", other_rsa_key), ("key-1", rsa_key))  # key-2 signs now
    token = oidc_provider.token()
    assert '"kid":"key-2"' in _header(token)
    time.sleep(1.1)  # the cooldown after the start-up fetch
    assert client.get("/notes", headers=bearer(token)).status_code == 200
    assert source.fetch_count == fetches + 1
    assert oidc_provider.jwks_hits() == 1
    for _ in range(20):
        assert client.get("/notes", headers=bearer(oidc_provider.token())).status_code == 200
    assert source.fetch_count == fetches + 1 and oidc_provider.jwks_hits() == 1


def test_a_token_of_a_removed_key_is_refused_once_the_cache_lets_it_go(
        make_app: Any, oidc_provider: Any, rsa_key: Any, other_rsa_key: Any) -> None:
    oidc_provider.start(("key-1", rsa_key))
    app = _guarded(make_app, oidc_provider, APIGUARD_JWT_JWKS_CACHE_TTL=2,
                   APIGUARD_JWT_JWKS_REFETCH_COOLDOWN=1)
    client = app.test_client()
    old = bearer(oidc_provider.token())
    assert client.get("/notes", headers=old).status_code == 200
    oidc_provider.stop()
    oidc_provider.start(("key-2", other_rsa_key))  # key-1 is gone
    assert client.get("/notes", headers=old).status_code == 200  # still cached
    time.sleep(2.1)
    client.get("/notes", headers=old)  # the TTL passed: a background refresh starts
    _wait_for(lambda: set(_source(app).keys) == {"key-2"})
    response = client.get("/notes", headers=old)
    assert response.status_code == 401 and problem(response)["error"] == "invalid_token"
    assert client.get("/notes", headers=bearer(oidc_provider.token())).status_code == 200


def test_the_provider_killed_mid_run_changes_nothing_for_cached_keys(
        make_app: Any, oidc_provider: Any, rsa_key: Any) -> None:
    oidc_provider.start(("key-1", rsa_key))
    app = _guarded(make_app, oidc_provider, APIGUARD_JWT_JWKS_CACHE_TTL=1,
                   APIGUARD_JWT_JWKS_REFETCH_COOLDOWN=1)
    client = app.test_client()
    first, second = oidc_provider.token(), oidc_provider.token()
    assert client.get("/notes", headers=bearer(first)).status_code == 200
    oidc_provider.stop()
    time.sleep(1.1)  # past the TTL: the refresh fails, the last good keys stay
    assert client.get("/notes", headers=bearer(first)).status_code == 200
    _wait_for(lambda: _source(app).last_error is not None)
    assert client.get("/notes", headers=bearer(second)).status_code == 200  # not cached before
    assert set(_source(app).keys) == {"key-1"}


def test_no_keys_answers_503_until_the_provider_comes_up(make_app: Any, oidc_provider: Any,
                                                         rsa_key: Any) -> None:
    app = _guarded(make_app, oidc_provider, APIGUARD_JWT_JWKS_REFETCH_COOLDOWN=1)
    client = app.test_client()
    forged = bearer(sign(rsa_key, "key-1", iss=oidc_provider.issuer, aud="https://api.example"))
    response = client.get("/notes", headers=forged)
    assert response.status_code == 503 and problem(response)["error"] == "service_unavailable"
    assert client.get("/health").status_code == 200
    oidc_provider.start(("key-1", rsa_key))
    time.sleep(1.1)
    assert client.get("/notes", headers=bearer(oidc_provider.token())).status_code == 200


def test_an_unknown_kid_flood_fetches_at_most_once_per_cooldown(
        make_app: Any, oidc_provider: Any, rsa_key: Any, other_rsa_key: Any) -> None:
    cooldown = 2
    oidc_provider.start(("key-1", rsa_key))
    app = _guarded(make_app, oidc_provider, APIGUARD_JWT_JWKS_REFETCH_COOLDOWN=cooldown)
    client = app.test_client()
    valid = bearer(oidc_provider.token())
    forged = [bearer(sign(other_rsa_key, secrets.token_hex(8), iss=oidc_provider.issuer,
                          aud="https://api.example")) for _ in range(1000)]
    time.sleep(cooldown + 0.1)
    hits = oidc_provider.jwks_hits()
    slowest_valid = 0.0
    started = time.monotonic()
    for n, headers in enumerate(forged):
        assert client.get("/notes", headers=headers).status_code == 401
        if n % 50 == 0:
            begun = time.perf_counter()
            assert client.get("/notes", headers=valid).status_code == 200
            slowest_valid = max(slowest_valid, time.perf_counter() - begun)
    elapsed = time.monotonic() - started
    fetched = oidc_provider.jwks_hits() - hits
    assert 1 <= fetched <= 1 + int(elapsed // cooldown), (fetched, elapsed)
    assert slowest_valid < 0.1  # valid requests never wait for the flood's fetches


@pytest.mark.parametrize("claimed", ["http://127.0.0.1:1", "https://evil.example"])
def test_a_provider_token_for_another_issuer_is_refused(make_app: Any, oidc_provider: Any,
                                                        rsa_key: Any, claimed: str) -> None:
    oidc_provider.start(("key-1", rsa_key))
    app = _guarded(make_app, oidc_provider)
    token = sign(rsa_key, "key-1", iss=claimed, aud="https://api.example")
    assert app.test_client().get("/notes", headers=bearer(token)).status_code == 401


def _header(token: str) -> str:
    import base64

    segment = token.split(".")[0]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode()
