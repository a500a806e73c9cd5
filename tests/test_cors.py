"""CORS through flask-cors: exact origins, whole-match patterns, preflight before auth."""

from __future__ import annotations

from typing import Any

import pytest

from flask_apiguard import ApiGuardConfigError

ORIGIN = "https://app.example.com"


@pytest.fixture
def cors_app(make_app: Any) -> Any:
    return make_app(APIGUARD_CORS_ORIGINS=[ORIGIN, r"re:https://[a-z0-9-]+\.partner\.test"],
                    APIGUARD_RATELIMIT_DEFAULT="2/minute")


def preflight(client: Any, origin: str, method: str = "POST", headers: str = "content-type") -> Any:
    return client.options("/echo", headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    })


def test_no_cors_headers_when_unconfigured(client: Any) -> None:
    response = client.get("/health", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Vary" not in response.headers


def test_allowed_origin_on_success_and_error(cors_app: Any) -> None:
    client = cors_app.test_client()
    for response in (client.get("/health", headers={"Origin": ORIGIN}),
                     client.get("/private", headers={"Origin": ORIGIN})):
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
        assert exposed == {"X-Request-ID", "RateLimit-Limit", "RateLimit-Remaining",
                           "RateLimit-Reset", "Retry-After"}
        assert "Origin" in response.headers["Vary"]
        assert "Access-Control-Allow-Credentials" not in response.headers


def test_vary_origin_on_every_response_when_configured(cors_app: Any) -> None:
    client = cors_app.test_client()
    assert client.get("/health").headers["Vary"] == "Origin"
    assert client.get("/health", headers={"Origin": "https://evil.test"}).headers["Vary"] == "Origin"


def test_disallowed_origin_gets_no_cors_headers(cors_app: Any) -> None:
    response = cors_app.test_client().get("/health", headers={"Origin": "https://evil.test"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_patterns_match_the_whole_origin(cors_app: Any) -> None:
    client = cors_app.test_client()
    good = client.get("/health", headers={"Origin": "https://shop.partner.test"})
    assert good.headers["Access-Control-Allow-Origin"] == "https://shop.partner.test"
    for bad in ("https://shop.partner.test.evil.net", "https://shop.partner.testevil",
                "http://shop.partner.test", "https://a.b.partner.test"):
        response = client.get("/health", headers={"Origin": bad})
        assert "Access-Control-Allow-Origin" not in response.headers, bad


def test_brackets_in_an_exact_origin_match_only_themselves(make_app: Any) -> None:
    # An exact origin with '[' or '*' reached flask-cors as an unanchored regex (a prefix match).
    app = make_app(APIGUARD_CORS_ORIGINS=["http://[::1]:3000"], APIGUARD_CORS_CREDENTIALS=True)
    client = app.test_client()
    ok = client.get("/health", headers={"Origin": "http://[::1]:3000"})
    assert ok.headers["Access-Control-Allow-Origin"] == "http://[::1]:3000"
    bad = client.get("/health", headers={"Origin": "http://1:3000.attacker.net"})
    assert "Access-Control-Allow-Origin" not in bad.headers


def test_a_wildcard_in_an_exact_origin_is_refused_at_start_up(make_app: Any) -> None:
    # A '*' in an exact origin silently became a regex instead of failing at start-up.
    with pytest.raises(ApiGuardConfigError, match="wildcard needs a pattern"):
        make_app(APIGUARD_CORS_ORIGINS=["https://*.example.com"])


def test_preflight_is_answered_before_auth_and_not_counted(cors_app: Any) -> None:
    client = cors_app.test_client()
    for _ in range(5):
        response = preflight(client, ORIGIN, headers="content-type, authorization")
        assert response.status_code == 204
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) == \
            {"GET", "POST", "PUT", "PATCH", "DELETE"}
        assert response.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        assert response.headers["Access-Control-Max-Age"] == "3600"
        assert "RateLimit-Limit" not in response.headers
        assert response.headers["X-Request-ID"]
    # the default limit of 2/minute is untouched by the five preflights
    assert client.get("/health").headers["RateLimit-Remaining"] == "1"


def test_preflight_for_disallowed_origin_or_method(cors_app: Any) -> None:
    client = cors_app.test_client()
    for response in (preflight(client, "https://evil.test"), preflight(client, ORIGIN, "TRACE")):
        assert response.status_code == 204
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Methods" not in response.headers


def test_preflight_filters_unlisted_request_headers(cors_app: Any) -> None:
    response = preflight(cors_app.test_client(), ORIGIN, headers="x-evil, content-type")
    assert response.headers["Access-Control-Allow-Headers"] == "content-type"


def test_credentials(make_app: Any) -> None:
    app = make_app(APIGUARD_CORS_ORIGINS=[ORIGIN], APIGUARD_CORS_CREDENTIALS=True)
    response = app.test_client().get("/health", headers={"Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_wildcard_reflects_origin_without_credentials(make_app: Any) -> None:
    app = make_app(APIGUARD_CORS_ORIGINS=["*"])
    response = app.test_client().get("/health", headers={"Origin": "https://any.test"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://any.test"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_existing_vary_is_kept(make_app: Any) -> None:
    from flask import make_response

    from flask_apiguard import ApiGuard, public

    app = make_app(init=False, APIGUARD_CORS_ORIGINS=[ORIGIN])

    @app.get("/varied")
    @public
    def varied() -> Any:
        response = make_response({"ok": 1})
        response.headers["Vary"] = "Accept-Encoding"
        return response

    ApiGuard(app)
    assert app.test_client().get("/varied").headers["Vary"] == "Accept-Encoding, Origin"


def test_origin_cache_is_bounded(cors_app: Any) -> None:
    client = cors_app.test_client()
    for i in range(1100):
        client.get("/nope", headers={"Origin": f"https://random{i}.evil"})
    assert len(cors_app.extensions["apiguard"].cors._cache) <= 1024
