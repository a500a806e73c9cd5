"""Blinker signals: one per kind of refusal, sent with the app and the documented arguments."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import jwt
import pytest
from blinker import Signal
from flask import Flask, abort
from marshmallow import fields

from flask_apiguard import (
    ApiGuard,
    Identity,
    public,
    rate_limit,
    require_api_key,
    roles,
    signals,
    validate,
)

from .conftest import SECRET, bearer, problem, token_for

KWARGS = {"request_id", "error", "status", "method", "path", "client_ip", "identity"}
ALL_SIGNALS = {
    "auth_failed": signals.auth_failed,
    "access_denied": signals.access_denied,
    "rate_limited": signals.rate_limited,
    "validation_failed": signals.validation_failed,
    "request_rejected": signals.request_rejected,
}

Events = list[tuple[str, Any, dict[str, Any]]]


@contextmanager
def listening(app: Flask, *names: str) -> Iterator[Events]:
    """Record ``(signal name, sender, kwargs)`` for every send of the named signals (all when
    none is named), whatever the sender."""
    events: Events = []
    receivers = []
    with ExitStack() as stack:
        for name in names or tuple(ALL_SIGNALS):
            def receiver(sender: Any, _name: str = name, **kwargs: Any) -> None:
                events.append((_name, sender, kwargs))

            receivers.append(receiver)  # keep a strong reference while connected
            stack.enter_context(ALL_SIGNALS[name].connected_to(receiver))
        yield events


def signal_app(make_app: Any, **config: Any) -> Flask:
    app = make_app(init=False, **config)

    @app.get("/admin")
    @roles("admin")
    def admin() -> Any:
        return {"ok": True}

    @app.get("/keyed")
    @require_api_key(scopes=["write"])
    def keyed() -> Any:
        return {"ok": True}

    @app.post("/submit")
    @public
    @validate({"name": fields.String(required=True)})
    def submit(json_data: dict[str, Any]) -> Any:
        return json_data

    @app.get("/limited")
    @rate_limit("1/minute")
    def limited() -> Any:
        return {"ok": True}

    @app.get("/search")
    @public
    def search() -> Any:
        return {"ok": True}

    @app.get("/status/<int:code>")
    @public
    def status(code: int) -> Any:
        abort(code)

    ApiGuard(app)
    return app


def check_event(event: tuple[str, Any, dict[str, Any]], app: Flask, response: Any, signal: str,
                error: str, identity: Identity | None = None) -> None:
    """Assert every documented keyword argument of one send."""
    name, sender, kwargs = event
    assert name == signal
    assert sender is app
    assert set(kwargs) == KWARGS
    assert kwargs["request_id"] == response.headers["X-Request-ID"]
    assert kwargs["error"] == error == problem(response)["error"]
    assert kwargs["status"] == response.status_code
    assert kwargs["method"] == response.request.method
    assert kwargs["path"] == response.request.path
    assert "?" not in kwargs["path"]
    assert kwargs["client_ip"] == "127.0.0.1"
    assert isinstance(kwargs["identity"], Identity)
    if identity is None:
        assert not kwargs["identity"].is_authenticated
    else:
        assert kwargs["identity"] == identity


# -- one test per signal ----------------------------------------------------------------------

@pytest.mark.parametrize(("error", "headers"), [
    ("unauthorized", lambda: {}),
    ("invalid_token", lambda: bearer("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.")),
    ("token_expired", lambda: bearer(jwt.encode(
        {"sub": "alice", "exp": int(time.time()) - 60}, SECRET, "HS256"))),
    ("invalid_api_key", lambda: {"X-API-Key": "agk_unknown_0000"}),
])
def test_auth_failed(make_app: Any, error: str, headers: Callable[[], dict[str, str]]) -> None:
    app = signal_app(make_app)
    with listening(app) as events:
        response = app.test_client().get("/private?page=2", headers=headers())
    assert response.status_code == 401
    [event] = events
    check_event(event, app, response, "auth_failed", error)
    assert event[2]["path"] == "/private"


def test_access_denied(make_app: Any) -> None:
    app = signal_app(make_app)
    token = token_for(app, "alice", roles=["user"])
    with listening(app) as events:
        response = app.test_client().get("/admin", headers=bearer(token))
    assert response.status_code == 403
    [event] = events
    identity = event[2]["identity"]
    check_event(event, app, response, "access_denied", "forbidden", identity)
    assert identity.is_authenticated and identity.method == "jwt"
    assert identity.subject == "alice" and identity.roles == {"user"}


def test_access_denied_for_an_api_key_lacking_a_scope(make_app: Any) -> None:
    app = signal_app(make_app)
    with app.app_context():
        plaintext, key = app.extensions["apiguard"].api_keys.create("bot", scopes=["read"])
    with listening(app) as events:
        response = app.test_client().get("/keyed", headers={"X-API-Key": plaintext})
    assert response.status_code == 403
    [event] = events
    check_event(event, app, response, "access_denied", "forbidden", event[2]["identity"])
    assert event[2]["identity"].key_id == key.key_id
    assert event[2]["identity"].method == "api_key"


def test_rate_limited(make_app: Any) -> None:
    app = signal_app(make_app)
    client = app.test_client()
    token = token_for(app, "alice")
    assert client.get("/limited", headers=bearer(token)).status_code == 200
    with listening(app) as events:
        response = client.get("/limited", headers=bearer(token))
    assert response.status_code == 429
    [event] = events
    check_event(event, app, response, "rate_limited", "rate_limit_exceeded",
                event[2]["identity"])
    assert event[2]["identity"].subject == "alice"


def test_rate_limited_by_the_auth_failure_limit(make_app: Any) -> None:
    app = signal_app(make_app, APIGUARD_AUTH_FAILURE_LIMIT="2/minute")
    client = app.test_client()
    bad = bearer("not-a-token")
    with listening(app) as events:
        responses = [client.get("/private", headers=bad) for _ in range(3)]
    assert [r.status_code for r in responses] == [401, 401, 429]
    assert [e[0] for e in events] == ["auth_failed", "auth_failed", "rate_limited"]
    check_event(events[2], app, responses[2], "rate_limited", "too_many_auth_failures")


def test_validation_failed(make_app: Any) -> None:
    app = signal_app(make_app)
    with listening(app) as events:
        response = app.test_client().post("/submit", json={"name": 5})
    assert response.status_code == 400
    [event] = events
    check_event(event, app, response, "validation_failed", "validation_error")


REJECTIONS: list[tuple[str, dict[str, Any], Callable[[Any], Any], int]] = [
    ("method_not_allowed", {}, lambda c: c.open("/health", method="PROPFIND"), 405),
    ("method_not_allowed", {}, lambda c: c.put("/health"), 405),
    ("invalid_host", {"APIGUARD_TRUSTED_HOSTS": ["api.example.com"]},
     lambda c: c.get("/health"), 400),
    ("https_required", {}, lambda c: c.post("/submit", json={"name": "x"},
                                            base_url="http://localhost"), 403),
    ("payload_too_large", {"APIGUARD_MAX_CONTENT_LENGTH": 32},
     lambda c: c.post("/submit", json={"name": "x" * 100}), 413),
    ("unsupported_media_type", {},
     lambda c: c.post("/submit", data="<name>x</name>", content_type="application/xml"), 415),
    ("malformed_json", {},
     lambda c: c.post("/submit", data="{'name': 1}", content_type="application/json"), 400),
    ("invalid_body", {}, lambda c: c.post("/submit", json={"$where": "1"}), 400),
    ("invalid_body", {"APIGUARD_MAX_JSON_DEPTH": 3},
     lambda c: c.post("/submit", json={"name": [[[["x"]]]]}), 400),
    ("duplicate_parameter", {}, lambda c: c.get("/search?q=a&q=b"), 400),
    ("service_unavailable", {"APIGUARD_STORAGE_URI": "redis://127.0.0.1:{port}/0",
                             "APIGUARD_RATELIMIT_ON_STORAGE_ERROR": "closed"},
     lambda c: c.get("/search"), 503),
]


@pytest.mark.parametrize(("error", "config", "send", "status"), REJECTIONS,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(REJECTIONS)])
def test_request_rejected(make_app: Any, dead_port: int, error: str, config: dict[str, Any],
                          send: Callable[[Any], Any], status: int) -> None:
    port = dead_port
    config = {k: v.format(port=port) if isinstance(v, str) else v for k, v in config.items()}
    app = signal_app(make_app, **config)
    with listening(app) as events:
        response = send(app.test_client())
    assert response.status_code == status
    [event] = events
    check_event(event, app, response, "request_rejected", error)


def test_client_ip_is_resolved_through_trusted_proxies(make_app: Any) -> None:
    forwarded = {"X-Forwarded-For": "198.51.100.4, 203.0.113.9"}
    sent: list[str] = []
    for hops in (0, 1, 2):
        app = signal_app(make_app, APIGUARD_TRUSTED_PROXIES=hops)
        with listening(app, "auth_failed") as events:
            assert app.test_client().get("/private", headers=forwarded).status_code == 401
        sent.append(events[0][2]["client_ip"])
    assert sent == ["127.0.0.1", "203.0.113.9", "198.51.100.4"]


def test_error_matches_the_problem_type(make_app: Any) -> None:
    app = signal_app(make_app, APIGUARD_ERROR_TYPE_BASE="https://errors.example.com/")
    with listening(app, "auth_failed") as events:
        response = app.test_client().get("/private")
    [(_, _, kwargs)] = events
    assert problem(response)["type"] == "https://errors.example.com/" + kwargs["error"]


# -- what signals never do ---------------------------------------------------------------------

def test_a_raising_receiver_does_not_change_the_response(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = signal_app(make_app)
    client = app.test_client()
    expected = client.get("/admin", headers=bearer(token_for(app, roles=["user"])))

    def explode(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("metrics backend down")

    caplog.set_level(logging.ERROR, logger="flask_apiguard")
    with signals.access_denied.connected_to(explode, sender=app):
        response = client.get("/admin", headers=bearer(token_for(app, roles=["user"])))
    assert response.status_code == 403
    body, reference = problem(response), problem(expected)
    assert {k: v for k, v in body.items() if k != "request_id"} == \
        {k: v for k, v in reference.items() if k != "request_id"}
    assert response.headers["Cache-Control"] == expected.headers["Cache-Control"]
    assert "X-Content-Type-Options" in response.headers
    [record] = [r for r in caplog.records if r.name == "flask_apiguard"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "access_denied" in record.getMessage()


def test_a_raising_receiver_on_a_successful_path_is_never_called(make_app: Any) -> None:
    app = signal_app(make_app)

    def explode(sender: Any, **kwargs: Any) -> None:
        raise AssertionError("no signal may be sent for a successful request")

    with ExitStack() as stack:
        for signal in ALL_SIGNALS.values():
            stack.enter_context(signal.connected_to(explode))
        assert app.test_client().get("/health").status_code == 200


def test_no_signal_for_successful_requests(make_app: Any) -> None:
    app = signal_app(make_app, APIGUARD_CORS_ORIGINS=["https://app.example.com"])
    client = app.test_client()
    token = token_for(app, roles=["admin"])
    with app.app_context():
        key, _ = app.extensions["apiguard"].api_keys.create("bot", scopes=["write"])
    with listening(app) as events:
        assert client.get("/health").status_code == 200
        assert client.get("/private", headers=bearer(token)).status_code == 200
        assert client.get("/admin", headers=bearer(token)).status_code == 200
        assert client.get("/keyed", headers={"X-API-Key": key}).status_code == 200
        assert client.post("/submit", json={"name": "x"}).status_code == 200
        assert client.get("/limited", headers=bearer(token)).status_code == 200
        assert client.get("/health", base_url="http://localhost").status_code == 301
        assert client.options("/submit", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        }).status_code in (200, 204)
    assert events == []


@pytest.mark.parametrize("code", [401, 403, 413, 415, 429, 503])
def test_no_signal_for_statuses_the_app_produced(make_app: Any, code: int) -> None:
    app = signal_app(make_app)
    with listening(app) as events:
        assert app.test_client().get(f"/status/{code}").status_code == code
    assert events == []


def test_signals_carry_their_own_app_as_sender(make_app: Any, tmp_path: Any) -> None:
    one, two = signal_app(make_app), signal_app(make_app)
    seen: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append(sender)

    with signals.auth_failed.connected_to(receiver, sender=one):
        two.test_client().get("/private")
        one.test_client().get("/private")
    assert seen == [one]


def test_signals_are_blinker_signals_in_the_public_module() -> None:
    for name, signal in ALL_SIGNALS.items():
        assert isinstance(signal, Signal)
        assert name in signals.__all__
