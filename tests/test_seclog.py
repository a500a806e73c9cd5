"""The security log: one single-line JSON record per security event, never a secret."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from flask import Flask, abort
from marshmallow import fields

from flask_apiguard import ApiGuard, public, rate_limit, require_api_key, roles, signals, validate

from .conftest import SECRET, bearer, problem, token_for

LOGGER = "flask_apiguard.security"
FIELDS = {"time", "event", "source", "request_id", "method", "path", "status", "client_ip",
          "endpoint", "subject", "key_id", "user_agent"}


@pytest.fixture
def seclog(caplog: pytest.LogCaptureFixture) -> Callable[[], list[tuple[logging.LogRecord, dict[str, Any]]]]:
    """``seclog()``: the security records so far, each with its parsed JSON message."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    def records() -> list[tuple[logging.LogRecord, dict[str, Any]]]:
        return [(r, json.loads(r.getMessage())) for r in caplog.records if r.name == LOGGER]

    return records


def guarded_app(make_app: Any, **config: Any) -> Flask:
    """``make_app`` plus views that refuse in every way the pipeline knows."""
    config.setdefault("PROPAGATE_EXCEPTIONS", False)
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

    @app.get("/search")
    @public
    def search() -> Any:
        return {"ok": True}

    @app.get("/limited")
    @public
    @rate_limit("1/minute")
    def limited() -> Any:
        return {"ok": True}

    @app.get("/boom")
    @public
    def boom() -> Any:
        raise RuntimeError("the view failed")

    @app.get("/status/<int:code>")
    @public
    def status(code: int) -> Any:
        abort(code)

    @app.get("/files/<name>")
    def files(name: str) -> Any:
        return {"name": name}

    ApiGuard(app)
    return app


def expired_token() -> str:
    now = int(time.time())
    return jwt.encode({"sub": "alice", "iat": now - 600, "exp": now - 300}, SECRET, "HS256")


def foreign_token() -> str:
    other = "Zq8Lw3Nx7Kc1Vb5Mj9Hg2Fd6Sa4Pt0Ry3Eu8Io1Wl5Qk7Xz"
    return jwt.encode({"sub": "mallory", "exp": int(time.time()) + 300}, other, "HS256")


# -- one record, field by field -------------------------------------------------------------

def test_invalid_token_record_field_by_field(make_app: Any, seclog: Any) -> None:
    app = guarded_app(make_app)
    before = datetime.now(UTC)
    response = app.test_client().get(
        "/private", headers={**bearer(foreign_token()), "User-Agent": "curl/8.5.0"}
    )
    assert response.status_code == 401
    [(record, entry)] = seclog()
    assert record.levelno == logging.WARNING
    assert "\n" not in record.getMessage() and record.getMessage().isascii()
    assert set(entry) >= FIELDS
    assert entry["event"] == "invalid_token" == problem(response)["error"]
    assert entry["source"] == "guard"
    assert entry["request_id"] == response.headers["X-Request-ID"]
    assert entry["method"] == "GET"
    assert entry["path"] == "/private"
    assert entry["status"] == 401
    assert entry["client_ip"] == "127.0.0.1"
    assert entry["endpoint"] == "private"
    assert entry["subject"] is None
    assert entry["key_id"] is None
    assert entry["user_agent"] == "curl/8.5.0"
    assert entry["time"].endswith("Z")
    logged_at = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= logged_at <= datetime.now(UTC) + timedelta(seconds=1)


def test_forbidden_record_names_the_jwt_subject(make_app: Any, seclog: Any) -> None:
    app = guarded_app(make_app)
    token = token_for(app, "alice", roles=["user"])
    response = app.test_client().get("/admin", headers=bearer(token))
    assert response.status_code == 403
    [(record, entry)] = seclog()
    assert record.levelno == logging.WARNING
    assert (entry["event"], entry["source"], entry["status"]) == ("forbidden", "guard", 403)
    assert (entry["endpoint"], entry["path"], entry["method"]) == ("admin", "/admin", "GET")
    assert entry["subject"] == "alice"
    assert entry["key_id"] is None


def test_forbidden_record_names_the_api_key_id(make_app: Any, seclog: Any) -> None:
    app = guarded_app(make_app)
    with app.app_context():
        plaintext, key = app.extensions["apiguard"].api_keys.create("bot", scopes=["read"],
                                                                     owner="svc-reports")
    response = app.test_client().get("/keyed", headers={"X-API-Key": plaintext})
    assert response.status_code == 403
    [(_, entry)] = seclog()
    assert entry["event"] == "forbidden"
    assert entry["key_id"] == key.key_id
    assert entry["subject"] == "svc-reports"
    assert entry["request_id"] == response.headers["X-Request-ID"]


def test_client_ip_is_resolved_through_trusted_proxies_only(make_app: Any, seclog: Any) -> None:
    forged = {"X-Forwarded-For": "198.51.100.9"}
    direct = guarded_app(make_app).test_client()
    assert direct.get("/private", headers=forged).status_code == 401
    proxied = guarded_app(make_app, APIGUARD_TRUSTED_PROXIES=1).test_client()
    assert proxied.get("/private", headers=forged).status_code == 401
    assert [entry["client_ip"] for _, entry in seclog()] == ["127.0.0.1", "198.51.100.9"]


# -- one record per event --------------------------------------------------------------------

def _bad_tokens(client: Any, app: Flask) -> Any:
    for _ in range(2):
        client.get("/private", headers=bearer(foreign_token()))
    return client.get("/private", headers=bearer(foreign_token()))


def _revoked(client: Any, app: Flask) -> Any:
    token = token_for(app)
    with app.app_context():
        ApiGuard().revoke_token(token)
    return client.get("/private", headers=bearer(token))


def _limited(client: Any, app: Flask) -> Any:
    client.get("/limited")
    return client.get("/limited")


GUARD_EVENTS: list[tuple[str, dict[str, Any], Callable[[Any, Flask], Any], int, str | None]] = [
    ("unauthorized", {}, lambda c, a: c.get("/private"), 401, "private"),
    ("invalid_token", {}, lambda c, a: c.get("/private", headers=bearer(foreign_token())),
     401, "private"),
    ("token_expired", {}, lambda c, a: c.get("/private", headers=bearer(expired_token())),
     401, "private"),
    ("token_revoked", {"APIGUARD_JWT_REVOCATION": True}, _revoked, 401, "private"),
    ("invalid_api_key", {}, lambda c, a: c.get("/private", headers={"X-API-Key": "agk_x_y"}),
     401, "private"),
    ("forbidden", {},
     lambda c, a: c.get("/admin", headers=bearer(token_for(a, roles=["user"]))), 403, "admin"),
    ("method_not_allowed", {}, lambda c, a: c.open("/health", method="PROPFIND"), 405, None),
    ("method_not_allowed", {}, lambda c, a: c.delete("/health"), 405, None),
    ("invalid_host", {"APIGUARD_TRUSTED_HOSTS": ["api.example.com"]},
     lambda c, a: c.get("/health"), 400, None),
    ("https_required", {}, lambda c, a: c.post("/submit", json={"name": "x"},
                                               base_url="http://localhost"), 403, None),
    ("payload_too_large", {"APIGUARD_MAX_CONTENT_LENGTH": 64},
     lambda c, a: c.post("/submit", json={"name": "x" * 200}), 413, "submit"),
    ("unsupported_media_type", {},
     lambda c, a: c.post("/submit", data="name=x", content_type="text/plain"), 415, "submit"),
    ("malformed_json", {},
     lambda c, a: c.post("/submit", data='{"name": ', content_type="application/json"),
     400, "submit"),
    ("invalid_body", {}, lambda c, a: c.post("/submit", json={"name": {"$ne": 1}}), 400, "submit"),
    ("duplicate_parameter", {}, lambda c, a: c.get("/search?q=1&q=2"), 400, "search"),
    ("validation_error", {}, lambda c, a: c.post("/submit", json={}), 400, "submit"),
    ("rate_limit_exceeded", {}, _limited, 429, "limited"),
    ("too_many_auth_failures", {"APIGUARD_AUTH_FAILURE_LIMIT": "2/minute"}, _bad_tokens,
     429, "private"),
]


@pytest.mark.parametrize(
    ("event", "config", "send", "status", "endpoint"), GUARD_EVENTS,
    ids=[f"{e[0]}-{i}" for i, e in enumerate(GUARD_EVENTS)],
)
def test_each_guard_refusal_is_one_record(make_app: Any, seclog: Any, event: str,
                                          config: dict[str, Any],
                                          send: Callable[[Any, Flask], Any], status: int,
                                          endpoint: str | None) -> None:
    app = guarded_app(make_app, **config)
    response = send(app.test_client(), app)
    assert response.status_code == status
    assert problem(response)["error"] == event
    record, entry = seclog()[-1]
    assert record.levelno == logging.WARNING
    assert entry["event"] == event
    assert entry["source"] == "guard"
    assert entry["status"] == status
    assert entry["request_id"] == response.headers["X-Request-ID"]
    assert entry["method"] == response.request.method
    assert entry["path"] == response.request.path
    assert entry["client_ip"] == "127.0.0.1"
    if endpoint is not None:
        assert entry["endpoint"] == endpoint


def test_every_failed_request_of_a_series_is_logged(make_app: Any, seclog: Any) -> None:
    app = guarded_app(make_app, APIGUARD_AUTH_FAILURE_LIMIT="2/minute")
    _bad_tokens(app.test_client(), app)
    assert [e["event"] for _, e in seclog()] == ["invalid_token", "invalid_token",
                                                 "too_many_auth_failures"]


def test_storage_unavailable_is_an_error_record(make_app: Any, seclog: Any, dead_port: int) -> None:
    app = guarded_app(make_app, APIGUARD_STORAGE_URI=f"redis://127.0.0.1:{dead_port}/0",
                      APIGUARD_RATELIMIT_ON_STORAGE_ERROR="closed")
    response = app.test_client().get("/limited")
    assert response.status_code == 503
    [(record, entry)] = seclog()
    assert record.levelno == logging.ERROR
    assert (entry["event"], entry["source"], entry["status"]) == \
        ("service_unavailable", "guard", 503)


@pytest.mark.parametrize(("code", "event"), [
    (401, "unauthorized"), (403, "forbidden"), (413, "payload_too_large"),
    (415, "unsupported_media_type"), (429, "too_many_requests"), (503, "service_unavailable"),
])
def test_statuses_from_the_app_itself_are_logged_as_app(make_app: Any, seclog: Any, code: int,
                                                        event: str) -> None:
    app = guarded_app(make_app)
    response = app.test_client().get(f"/status/{code}")
    assert response.status_code == code
    [(record, entry)] = seclog()
    assert record.levelno == (logging.ERROR if code >= 500 else logging.WARNING)
    assert (entry["event"], entry["source"], entry["status"]) == (event, "app", code)
    assert entry["endpoint"] == "status"
    assert entry["path"] == f"/status/{code}"


def test_unhandled_exception_is_an_error_record(make_app: Any, seclog: Any) -> None:
    app = guarded_app(make_app)
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    [(record, entry)] = seclog()
    assert record.levelno == logging.ERROR
    assert (entry["event"], entry["source"], entry["status"]) == ("internal_error", "app", 500)
    assert entry["endpoint"] == "boom"
    assert "the view failed" not in record.getMessage()


def test_no_record_for_success_or_ordinary_client_errors(make_app: Any, seclog: Any) -> None:
    app = guarded_app(make_app)
    client = app.test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/private", headers=bearer(token_for(app))).status_code == 200
    assert client.post("/submit", json={"name": "x"}).status_code == 200
    assert client.get("/status/400").status_code == 400
    assert client.get("/status/409").status_code == 409
    assert client.get("/health", base_url="http://localhost").status_code == 301
    assert seclog() == []


def test_unknown_path_is_neither_logged_nor_signalled(app: Any, client: Any, caplog: Any) -> None:
    # Each 404 of a scanner wrote a security record and sent request_rejected.
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **event: Any) -> None:
        received.append(event)

    with signals.request_rejected.connected_to(receiver, app), \
            caplog.at_level(logging.INFO, logger="flask_apiguard.security"):
        response = client.get("/wp-admin/setup.php")
    assert response.status_code == 404
    assert received == []
    assert [r for r in caplog.records if r.name == "flask_apiguard.security"] == []


def test_wrong_method_on_a_real_route_is_still_an_event(app: Any, client: Any) -> None:
    # Keeping 404s quiet must not silence a 405 on a route that exists.
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **event: Any) -> None:
        received.append(event)

    with signals.request_rejected.connected_to(receiver, app):
        assert client.delete("/health").status_code == 405
    assert [e["error"] for e in received] == ["method_not_allowed"]


# -- what never reaches the log ---------------------------------------------------------------

def test_secrets_never_reach_the_log(make_app: Any, seclog: Any,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = guarded_app(make_app)
    client = app.test_client()
    token = token_for(app, "alice", roles=["user"])
    query_token = token_for(app, "bob")
    bad_token = foreign_token()
    with app.app_context():
        key, _ = app.extensions["apiguard"].api_keys.create("bot", scopes=["read"])
    cookie = "session=c00kie-Value-7Hq2Lx9"
    password = "correct-horse-battery-staple-91"
    client.set_cookie("session", "c00kie-Value-7Hq2Lx9")
    assert client.get(f"/admin?access_token={query_token}&api_key={key}",
                      headers={**bearer(token), "Cookie": cookie}).status_code == 403
    assert client.get("/keyed?password=" + password, headers={"X-API-Key": key}).status_code == 403
    assert client.get("/private", headers=bearer(bad_token)).status_code == 401
    assert client.post("/submit", json={"password": password, "name": 5}).status_code == 400
    assert client.post(f"/echo?token={query_token}", json={"password": password},
                       headers={"Authorization": f"Basic {password}"}).status_code == 401
    entries = seclog()
    assert [e["event"] for _, e in entries] == ["forbidden", "forbidden", "invalid_token",
                                                "validation_error", "unauthorized"]
    secrets = [token, query_token, bad_token, key, key.rsplit("_", 1)[1], "c00kie-Value-7Hq2Lx9",
               password, "access_token", "api_key=", "?"]
    for record, entry in entries:
        dumped = repr(vars(record))
        for secret in secrets:
            assert secret not in dumped, f"{secret!r} leaked into {entry}"
        assert not {"authorization", "cookie", "body", "query", "password", "api_key"} & {
            k.lower() for k in entry}
    assert entries[0][1]["path"] == "/admin"


# -- log injection ----------------------------------------------------------------------------

def test_log_injection_via_path_and_user_agent_is_escaped(make_app: Any, seclog: Any) -> None:
    app = guarded_app(make_app)
    forged = '{"event": "login_ok", "subject": "admin"}'
    user_agent = f"curl/8.5.0\r\n{forged}\u202e\x1b[31m\x00"
    response = app.test_client().get(
        "/files/report%0d%0a%7B%22event%22%3A%22login_ok%22%7D%E2%80%AEfdp.exe",
        environ_overrides={"HTTP_USER_AGENT": user_agent},
    )
    assert response.status_code == 401
    [(record, entry)] = seclog()
    message = record.getMessage()
    assert message.isascii()
    assert "\r" not in message and "\n" not in message and "\x1b" not in message
    assert "\x00" not in message and "\u202e" not in message
    assert "\\r\\n" in message and "\\u202e" in message and "\\u001b" in message
    assert entry["event"] == "unauthorized"
    assert entry["path"] == '/files/report\r\n{"event":"login_ok"}\u202efdp.exe'
    assert entry["user_agent"] == user_agent
    assert len(message.splitlines()) == 1


def test_log_injection_via_the_token_subject_is_escaped(make_app: Any, seclog: Any) -> None:
    app = guarded_app(make_app)
    subject = 'eve\n{"event": "login_ok"}\u2028\u202e'
    token = token_for(app, subject, roles=["user"])
    assert app.test_client().get("/admin", headers=bearer(token)).status_code == 403
    [(record, entry)] = seclog()
    assert record.getMessage().isascii() and len(record.getMessage().splitlines()) == 1
    assert entry["subject"] == subject


def test_huge_user_agent_is_clipped(make_app: Any, seclog: Any) -> None:
    app = guarded_app(make_app)
    app.test_client().get("/private", headers={"User-Agent": "A" * 7000})
    [(record, entry)] = seclog()
    assert entry["user_agent"].startswith("A" * 100)
    assert len(record.getMessage()) < 2000


# -- switched off ------------------------------------------------------------------------------

def test_security_log_off_writes_nothing_but_signals_still_fire(make_app: Any,
                                                                seclog: Any) -> None:
    app = guarded_app(make_app, APIGUARD_SECURITY_LOG=False)
    sent: list[dict[str, Any]] = []

    def receiver(sender: Flask, **event: Any) -> None:
        sent.append(event)

    client = app.test_client()
    with signals.auth_failed.connected_to(receiver, sender=app):
        assert client.get("/private").status_code == 401
    assert client.get("/boom").status_code == 500
    assert client.get("/status/403").status_code == 403
    assert seclog() == []
    assert [event["error"] for event in sent] == ["unauthorized"]
