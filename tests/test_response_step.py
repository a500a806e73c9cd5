"""The guard's response step runs in ``start_response``, around the app's WSGI callable: every
response Flask sends passes there once, after every app hook."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Response, current_app, request

from flask_apiguard import ApiGuard, current_identity, public, rate_limit

from .conftest import bearer, token_for

SECURITY = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options")


def test_a_crashing_failures_view_is_counted_and_gives_its_place_back(make_app: Any) -> None:
    app = make_app(init=False)  # TESTING: the exception goes up to the caller

    @app.post("/login")
    @public
    @rate_limit("2 per minute", key="ip", count="failures")
    def login() -> Any:
        raise RuntimeError("the password backend is down")

    ApiGuard(app)
    client = app.test_client()
    for _ in range(2):
        with pytest.raises(RuntimeError):
            client.post("/login", json={})
    backend = app.extensions["apiguard"].shared.primary
    assert all(not places for places in backend.inflight._places.values())
    assert client.post("/login", json={}).status_code == 429


def test_middleware_installed_before_the_guard_gets_the_headers(make_app: Any) -> None:
    app = make_app(init=False)
    inner = app.wsgi_app

    def answers_itself(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/ping":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"pong"]
        return inner(environ, start_response)

    app.wsgi_app = answers_itself  # type: ignore[method-assign]
    ApiGuard(app)
    response = app.test_client().get("/ping")
    assert response.get_data() == b"pong"
    for name in SECURITY:
        assert name in response.headers
    assert len(response.headers["X-Request-ID"]) == 32


def test_middleware_that_copies_the_environ_keeps_the_request_state(make_app: Any) -> None:
    app = make_app(init=False, APIGUARD_RATELIMIT_DEFAULT="5 per minute")
    inner = app.wsgi_app

    def copies(environ: dict[str, Any], start_response: Any) -> Any:
        return inner(dict(environ), start_response)

    app.wsgi_app = copies  # type: ignore[method-assign]
    ApiGuard(app)
    response = app.test_client().get("/private", headers=bearer(token_for(app, "ada")))
    assert response.status_code == 200
    assert response.get_json()["subject"] == "ada"
    assert response.headers["RateLimit-Limit"] == "5"
    assert response.headers["RateLimit-Remaining"] == "4"
    assert response.headers["Cache-Control"] == "no-store"  # credentials were sent


@pytest.mark.parametrize(("vary", "expected"), [
    (None, ["Origin"]),
    ("Accept-Encoding", ["Accept-Encoding, Origin"]),
    ("accept-encoding, origin", ["accept-encoding, origin"]),
    ("*", ["*"]),
    ("X-Origin-Hint", ["X-Origin-Hint, Origin"]),
])
def test_vary_names_origin_once(make_app: Any, vary: str | None, expected: list[str]) -> None:
    app = make_app(init=False, APIGUARD_CORS_ORIGINS=["https://app.example.com"])

    @app.get("/varied")
    @public
    def varied() -> Any:
        response = Response("{}", mimetype="application/json")
        if vary is not None:
            response.headers["Vary"] = vary
        return response

    ApiGuard(app)
    response = app.test_client().get("/varied", headers={"Origin": "https://app.example.com"})
    assert response.headers.getlist("Vary") == expected
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


def test_headers_set_by_an_app_hook_are_left_alone(make_app: Any) -> None:
    app = make_app(init=False)

    @app.after_request
    def own(response: Response) -> Response:
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        response.headers["X-Request-ID"] = "from-the-app"
        return response

    ApiGuard(app)
    response = app.test_client().get("/health")
    assert response.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert response.headers.getlist("X-Request-ID") == ["from-the-app"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_context_pushed_inside_a_request_has_its_own_identity(make_app: Any) -> None:
    app = make_app(init=False)
    seen: list[Any] = []

    @app.get("/outer")
    def outer() -> Any:
        seen.append(current_identity.subject)
        with current_app.test_request_context("/somewhere"):
            seen.append(current_identity.is_authenticated)
        seen.append(current_identity.subject)
        return {"request_id_kept": request.environ.get("flask_apiguard.state") is not None}

    ApiGuard(app)
    response = app.test_client().get("/outer", headers=bearer(token_for(app, "ada")))
    assert response.status_code == 200 and response.get_json() == {"request_id_kept": True}
    assert seen == ["ada", False, "ada"]


def test_the_event_of_a_refusal_is_recorded_once(make_app: Any, caplog: Any) -> None:
    app = make_app()
    with caplog.at_level(logging.WARNING, logger="flask_apiguard.security"):
        response = app.test_client().get("/private")
    assert response.status_code == 401
    events = [r.getMessage() for r in caplog.records if r.name == "flask_apiguard.security"]
    assert len(events) == 1 and '"status": 401' in events[0]
    assert response.headers["X-Request-ID"] in events[0]


def test_a_failing_settle_still_sends_the_response_with_its_headers(
        make_app: Any, caplog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(init=False)

    @app.post("/login")
    @public
    @rate_limit("5 per minute", key="ip", count="failures")
    def login() -> Any:
        return {"error": "wrong password"}, 401

    ApiGuard(app)
    shared = app.extensions["apiguard"].shared

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug while settling")

    monkeypatch.setattr(shared, "settle", broken)
    with caplog.at_level(logging.ERROR, logger="flask_apiguard"):
        response = app.test_client().post("/login", json={})
    assert response.status_code == 401
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert any("settling" in r.getMessage() for r in caplog.records)
