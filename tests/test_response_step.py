"""The guard's response step runs in ``start_response``, around the app's WSGI callable: every
response Flask sends passes there once, after every app hook."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Response, abort, current_app, request, url_for

from flask_apiguard import ApiGuard, current_identity, public, rate_limit

from .conftest import bearer, problem, token_for

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


def _health_middleware(app: Any) -> None:
    """A health check answered by middleware installed before the guard."""
    inner = app.wsgi_app

    def health(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/ping":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"pong"]
        return inner(environ, start_response)

    app.wsgi_app = health


def test_middleware_installed_before_the_guard_gets_the_headers(make_app: Any) -> None:
    app = make_app(init=False)
    _health_middleware(app)
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


def test_the_500_of_a_failing_app_hook_has_the_guard_headers(make_app: Any) -> None:
    # An app's after_request hook that raised stripped the guard's headers from Flask's 500.
    app = make_app(PROPAGATE_EXCEPTIONS=False)

    @app.after_request
    def broken(response: Any) -> Any:
        raise RuntimeError("a bug in the app's hook")

    response = app.test_client().get("/health")
    assert response.status_code == 500
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert problem(response)["error"] == "internal_error"


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


def test_a_raising_app_hook_gives_one_event_for_the_500(make_app: Any, caplog: Any) -> None:
    # A raising app hook made the guard process the response Flask discards too: two events.
    app = make_app(init=False, PROPAGATE_EXCEPTIONS=False)

    @app.after_request
    def broken(response: Any) -> Any:
        raise RuntimeError("bug")

    ApiGuard(app)
    with caplog.at_level(logging.WARNING, logger="flask_apiguard.security"):
        response = app.test_client().get("/private")
    assert response.status_code == 500
    events = [r.getMessage() for r in caplog.records if r.name == "flask_apiguard.security"]
    assert len(events) == 1 and '"status": 500' in events[0]


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


def test_a_sub_request_inside_a_view_never_takes_the_outer_state(make_app: Any) -> None:
    app = make_app(init=False)
    _health_middleware(app)
    sub_ids: list[str] = []

    @app.post("/login")
    @public
    @rate_limit("2 per minute", key="ip", count="failures")
    def login() -> Any:
        sub_ids.append(current_app.test_client().get("/ping").headers["X-Request-ID"])
        return {"error": "wrong password"}, 401

    ApiGuard(app)
    client = app.test_client()
    responses = [client.post("/login", json={}) for _ in range(4)]
    assert [r.status_code for r in responses] == [401, 401, 429, 429]
    assert len(sub_ids) == 2
    assert not set(sub_ids) & {r.headers["X-Request-ID"] for r in responses}


def test_contexts_pushed_inside_a_view_neither_settle_nor_replace_its_request(
        make_app: Any) -> None:
    # A request handled inside another (same g) settled or replaced the outer request's state.
    app = make_app(init=False)

    @app.post("/login")
    @public
    @rate_limit("3 per 15 minutes", key="ip", count="failures")
    def login() -> Any:
        with current_app.test_request_context():
            url_for("login", _external=True)
        inner = current_app.test_client().get("/health")
        assert inner.status_code == 200
        if request.get_json(silent=True) != {"password": "right"}:
            abort(401)
        return {"ok": True}

    ApiGuard(app)
    client = app.test_client()
    # successful logins cost nothing, even with contexts pushed inside the view
    assert [client.post("/login", json={"password": "right"}).status_code for _ in range(5)] \
        == [200] * 5
    assert [client.post("/login", json={"password": "wrong"}).status_code for _ in range(4)] \
        == [401, 401, 401, 429]
    state = app.extensions["apiguard"].shared.primary
    assert all(not places for places in state.inflight._places.values())


def test_guarded_apps_mounted_inside_each_other_add_their_headers_once(make_app: Any) -> None:
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    inner = make_app(APIGUARD_RATELIMIT_DEFAULT="5 per minute")
    outer = make_app(init=False, APIGUARD_CORS_ORIGINS=["https://a.example.com"])
    outer.wsgi_app = DispatcherMiddleware(outer.wsgi_app, {"/inner": inner})  # type: ignore[method-assign]
    ApiGuard(outer)
    response = outer.test_client().get("/inner/health", headers={"Origin": "https://a.example.com"})
    assert response.status_code == 200
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "X-Request-ID", "X-Frame-Options"):
        assert len(response.headers.getlist(name)) == 1, name
    assert "Vary" not in response.headers  # the inner app has no CORS: the outer's is not applied


def test_a_response_started_late_is_settled_by_its_status(make_app: Any) -> None:
    app = make_app(init=False)
    inner = app.wsgi_app

    def deferring(environ: dict[str, Any], start_response: Any) -> Any:
        started: list[Any] = []
        body = inner(environ, lambda status, headers, exc_info=None: started.append((status, headers)))

        def stream() -> Any:
            start_response(*started[0])  # PEP 3333 allows starting on the first read
            yield from body

        return stream()

    app.wsgi_app = deferring  # type: ignore[method-assign]

    @app.post("/login")
    @public
    @rate_limit("2 per minute", key="ip", count="failures")
    def login() -> Any:
        return {"ok": True}

    ApiGuard(app)
    client = app.test_client()
    responses = [client.post("/login", json={}) for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4  # successes are never counted
    assert all(r.headers["X-Content-Type-Options"] == "nosniff" for r in responses)
    backend = app.extensions["apiguard"].shared.primary
    assert all(not places for places in backend.inflight._places.values())


def test_a_failing_security_log_does_not_break_the_response(make_app: Any, caplog: Any) -> None:
    app = make_app()

    class Broken(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise ValueError("a broken log filter")

    security = logging.getLogger("flask_apiguard.security")
    broken = Broken()
    security.addFilter(broken)
    try:
        with caplog.at_level(logging.WARNING, logger="flask_apiguard.security"):
            response = app.test_client().get("/private")
    finally:
        security.removeFilter(broken)
    assert response.status_code == 401
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert any("response step failed" in r.getMessage() for r in caplog.records)


def test_the_callers_header_list_is_never_changed(make_app: Any) -> None:
    app = make_app(init=False)
    constant = [("Content-Type", "text/plain")]
    inner = app.wsgi_app

    def fixed(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/fixed":
            start_response("200 OK", constant)
            return [b"fixed"]
        return inner(environ, start_response)

    app.wsgi_app = fixed  # type: ignore[method-assign]
    ApiGuard(app)
    client = app.test_client()
    ids = {client.get("/fixed").headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3
    assert constant == [("Content-Type", "text/plain")]


def test_probe_caches_share_one_bound_per_app(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from flask_apiguard.ratelimit import probes as ratelimit

    monkeypatch.setattr(ratelimit, "_CACHE_SIZE", 50)
    app = make_app(APIGUARD_RATELIMIT_DEFAULT="1000 per minute", APIGUARD_TRUSTED_PROXIES=1)

    @app.get("/a")
    @public
    def a() -> Any:
        return {}

    client = app.test_client()
    for n in range(80):
        for path in ("/a", "/health"):
            assert client.get(path, headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code == 200
    assert len(app.extensions["apiguard"].probe_cache._found) <= 50


def test_a_sub_request_with_a_copy_of_the_environ_has_its_own_state(make_app: Any) -> None:
    from werkzeug.test import run_wsgi_app

    app = make_app(init=False)
    seen: list[Any] = []

    @app.post("/login")
    @rate_limit("2 per minute", key="ip", count="failures")
    def login() -> Any:
        # a batch step: one sub-request through the whole app, with a copy of this environ
        environ = dict(request.environ, PATH_INFO="/health", REQUEST_METHOD="GET")
        environ.pop("CONTENT_LENGTH", None)
        _, status, sub_headers = run_wsgi_app(current_app, environ, buffered=True)
        seen.append((status, sub_headers["X-Request-ID"], current_identity.subject))
        return {"ok": True}

    ApiGuard(app)
    client = app.test_client()
    token = bearer(token_for(app, "ada"))
    responses = [client.post("/login", json={}, headers=token) for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4  # successes are never counted
    assert [subject for _, _, subject in seen] == ["ada"] * 4  # still the caller after it
    assert all(status.startswith("200") for status, _, _ in seen)
    assert not {sub for _, sub, _ in seen} & {r.headers["X-Request-ID"] for r in responses}
    backend = app.extensions["apiguard"].shared.primary
    assert all(not places for places in backend.inflight._places.values())


def test_one_environ_served_by_two_guarded_apps_gets_headers_from_each(make_app: Any) -> None:
    from werkzeug.test import EnvironBuilder

    first, second = make_app(), make_app()
    environ = EnvironBuilder("/health", base_url="https://localhost").get_environ()
    for app in (first, second):
        started: list[Any] = []

        def start_response(status: str, headers: Any, exc_info: Any = None,
                           started: list[Any] = started) -> None:
            started.append(dict(headers))

        b"".join(app(environ, start_response))
        assert started[0].get("X-Frame-Options") == "DENY"
        assert started[0].get("X-Request-ID")


def test_a_cascade_that_drops_a_guarded_404_lets_the_next_app_finish(make_app: Any) -> None:
    # an outer guarded app whose WSGI stack tries app A, and app B when A answers 404
    outer, first, second = make_app(init=False), make_app(), make_app()

    @second.post("/only-here")
    @public
    @rate_limit("2 per minute", key="ip", count="failures")
    def only_here() -> Any:
        return {"ok": True}

    def cascade(environ: dict[str, Any], start_response: Any) -> Any:
        answered: list[Any] = []
        body = first(environ, lambda status, headers, exc_info=None: answered.append(status))
        if answered and answered[0].startswith("404"):
            if hasattr(body, "close"):
                body.close()
            return second(environ, start_response)
        raise AssertionError("expected a 404 from the first app")

    outer.wsgi_app = cascade  # type: ignore[method-assign]
    ApiGuard(outer)
    client = outer.test_client()
    responses = [client.post("/only-here", json={}) for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    for response in responses:
        assert response.headers.getlist("X-Frame-Options") == ["DENY"]
        assert len(response.headers.getlist("RateLimit-Limit")) == 1


def test_middleware_between_nested_guards_keeps_its_changes(make_app: Any) -> None:
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    inner = make_app(APIGUARD_RATELIMIT_DEFAULT="5 per minute")
    outer = make_app(init=False, APIGUARD_CORS_ORIGINS=["https://a.example.com"])

    def without_frame_options(app: Any) -> Any:
        def middleware(environ: dict[str, Any], start_response: Any) -> Any:
            def filtering(status: str, headers: Any, exc_info: Any = None) -> Any:
                kept = [h for h in headers if h[0] != "X-Frame-Options"]  # a new list
                return start_response(status, kept, exc_info)

            return app(environ, filtering)

        return middleware

    outer.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        outer.wsgi_app, {"/inner": without_frame_options(inner)})
    ApiGuard(outer)
    response = outer.test_client().get("/inner/health", headers={"Origin": "https://a.example.com"})
    assert response.status_code == 200
    assert response.headers.getlist("X-Frame-Options") == []  # the middleware's choice stands
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "X-Request-ID"):
        assert len(response.headers.getlist(name)) == 1, name
    assert "Vary" not in response.headers


def test_a_cascade_with_environ_copies_reports_the_answering_app_only(make_app: Any) -> None:
    from flask import abort

    outer, first, second = (make_app(init=False, APIGUARD_RATELIMIT_DEFAULT="5 per minute")
                            for _ in range(3))

    @first.post("/login")
    @public
    def not_here() -> Any:
        abort(404)

    @second.post("/login")
    @public
    @rate_limit("2 per minute", key="ip", count="failures")
    def login() -> Any:
        return {"ok": True}

    ApiGuard(first)
    ApiGuard(second)

    def cascade(environ: dict[str, Any], start_response: Any) -> Any:
        refused: list[str] = []

        def first_try(status: str, headers: Any, exc_info: Any = None) -> Any:
            if status.startswith("404"):
                refused.append(status)
                return lambda data: None
            return start_response(status, headers, exc_info)

        body = first(environ.copy(), first_try)
        if not refused:
            return body
        b"".join(body)
        if hasattr(body, "close"):
            body.close()
        return second(environ.copy(), start_response)

    outer.wsgi_app = cascade  # type: ignore[method-assign]
    ApiGuard(outer)
    client = outer.test_client()
    for _ in range(3):
        response = client.post("/login", json={})
        assert response.status_code == 200
        assert response.headers.getlist("RateLimit-Limit") == ["2"]
        assert response.headers.getlist("RateLimit-Remaining") == ["2"]
        assert len(response.headers.getlist("X-Request-ID")) == 1


def test_a_view_that_forwards_its_own_environ_keeps_its_request_id(make_app: Any) -> None:
    from flask import abort

    app = make_app(init=False)

    @app.get("/page")
    def page() -> Any:
        environ = request.environ
        path, environ["PATH_INFO"] = environ["PATH_INFO"], "/health"
        b"".join(current_app.wsgi_app(environ, lambda status, headers, exc_info=None: None))
        environ["PATH_INFO"] = path
        abort(403)

    ApiGuard(app)
    response = app.test_client().get("/page", headers=bearer(token_for(app, "ada")))
    assert response.status_code == 403
    assert response.headers["X-Request-ID"] == response.get_json()["request_id"]
