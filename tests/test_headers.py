"""Security headers from flask-talisman, precomputed; HSTS only on HTTPS; Cache-Control."""

from __future__ import annotations

from typing import Any

import pytest
from flask import make_response

from flask_apiguard import ApiGuard, public

from .conftest import bearer, token_for

CONTRACT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Permissions-Policy": "geolocation=(), microphone=(), camera=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Permitted-Cross-Domain-Policies": "none",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
}


def test_every_contract_header_on_success_and_error(client: Any) -> None:
    for response in (client.get("/health"), client.get("/private"), client.get("/nope")):
        for name, value in CONTRACT_HEADERS.items():
            assert response.headers.get(name) == value, (name, response.status_code)
        assert len(response.headers["X-Request-ID"]) == 32


def test_hsts_only_over_https(make_app: Any) -> None:
    app = make_app(APIGUARD_FORCE_HTTPS=False)
    plain = app.test_client().get("/health", base_url="http://localhost")
    assert plain.status_code == 200
    assert "Strict-Transport-Security" not in plain.headers
    assert plain.headers["X-Frame-Options"] == "DENY"


def test_hsts_options_and_off(make_app: Any) -> None:
    app = make_app(APIGUARD_HSTS={"max_age": 63072000, "include_subdomains": True, "preload": True})
    value = app.test_client().get("/health").headers["Strict-Transport-Security"]
    assert value == "max-age=63072000; includeSubDomains; preload"
    app = make_app(APIGUARD_HSTS=None)
    assert "Strict-Transport-Security" not in app.test_client().get("/health").headers


def test_header_options(make_app: Any) -> None:
    app = make_app(
        APIGUARD_CSP={"default-src": "'self'", "img-src": ["'self'", "data:"]},
        APIGUARD_FRAME_OPTIONS="SAMEORIGIN",
        APIGUARD_REFERRER_POLICY="no-referrer",
        APIGUARD_PERMISSIONS_POLICY="geolocation=()",
        APIGUARD_EXTRA_HEADERS={"Cross-Origin-Resource-Policy": None, "X-Robots-Tag": "noindex"},
    )
    headers = app.test_client().get("/health").headers
    assert headers["Content-Security-Policy"] == "default-src 'self'; img-src 'self' data:"
    assert headers["X-Frame-Options"] == "SAMEORIGIN"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Permissions-Policy"] == "geolocation=()"
    assert headers["X-Robots-Tag"] == "noindex"
    assert "Cross-Origin-Resource-Policy" not in headers
    app = make_app(APIGUARD_CSP=None, APIGUARD_FRAME_OPTIONS=None, APIGUARD_REFERRER_POLICY=None)
    headers = app.test_client().get("/health").headers
    assert "Content-Security-Policy" not in headers and "X-Frame-Options" not in headers
    assert "Referrer-Policy" not in headers


def test_a_view_own_header_wins(make_app: Any) -> None:
    app = make_app(init=False)

    @app.get("/docs")
    @public
    def docs() -> Any:
        response = make_response("<html></html>")
        response.headers["Content-Security-Policy"] = "default-src 'self'"
        response.headers["Cache-Control"] = "public, max-age=60"
        return response

    ApiGuard(app)
    response = app.test_client().get("/docs", headers={"Authorization": "Bearer x"})
    assert response.headers.getlist("Content-Security-Policy") == ["default-src 'self'"]
    assert response.headers["Cache-Control"] == "public, max-age=60"


def test_cache_control_no_store_on_every_response_by_default(app: Any, client: Any) -> None:
    # An API's answers are personal by default: a public 200 had no Cache-Control at all.
    assert client.get("/health").headers["Cache-Control"] == "no-store"
    assert client.get("/private").headers["Cache-Control"] == "no-store"


def test_cache_control_only_where_needed_when_not_always(make_app: Any) -> None:
    app = make_app(APIGUARD_CACHE_CONTROL_ALWAYS=False)
    client = app.test_client()
    assert "Cache-Control" not in client.get("/health").headers
    assert client.get("/private").headers["Cache-Control"] == "no-store"
    ok = client.get("/private", headers=bearer(token_for(app)))
    assert ok.status_code == 200 and ok.headers["Cache-Control"] == "no-store"
    assert client.get("/health", headers={"X-API-Key": "x"}).headers["Cache-Control"] == "no-store"


def test_cache_control_off(make_app: Any) -> None:
    app = make_app(APIGUARD_CACHE_CONTROL=None)
    assert "Cache-Control" not in app.test_client().get("/private").headers


def test_session_cookie_defaults_hardened(make_app: Any) -> None:
    app = make_app()
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"


@pytest.mark.parametrize("cache_control", ["no-store", None])
@pytest.mark.parametrize("always", [True, False])
def test_every_redirect_with_an_unchecked_host_is_kept_out_of_caches(
        make_app: Any, cache_control: str | None, always: bool) -> None:
    # Only the guard's own 301 got no-store; routing's 308 and redirect_to rules, whose
    # Location also echoes the Host, were cacheable with a forged host.
    app = make_app(init=False, APIGUARD_CACHE_CONTROL=cache_control,
                   APIGUARD_CACHE_CONTROL_ALWAYS=always)

    @app.get("/folder/")
    @public
    def folder() -> Any:
        return {"ok": True}

    app.add_url_rule("/old", "old", redirect_to="/health")
    ApiGuard(app)
    client = app.test_client()
    for path, status in (("/folder", 308), ("/old", 308)):
        response = client.get(path, headers={"Host": "evil.example"})
        assert response.status_code == status
        assert response.headers["Cache-Control"] == "no-store"
    plain = client.get("/health", base_url="http://evil.example")
    assert plain.status_code == 301 and plain.headers["Cache-Control"] == "no-store"


def test_a_redirect_with_a_checked_host_follows_the_cache_setting(make_app: Any) -> None:
    app = make_app(init=False, APIGUARD_TRUSTED_HOSTS=["api.example.com"],
                   APIGUARD_CACHE_CONTROL_ALWAYS=False)

    @app.get("/folder/")
    @public
    def folder() -> Any:
        return {"ok": True}

    ApiGuard(app)
    response = app.test_client().get("/folder", base_url="https://api.example.com")
    assert response.status_code == 308
    assert "Cache-Control" not in response.headers
