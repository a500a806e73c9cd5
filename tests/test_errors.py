"""Every error is application/problem+json (RFC 9457); an app's own handler still wins."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import abort

from flask_apiguard import ApiGuard, public
from flask_apiguard.errors import InvalidToken, error_code_for

from .conftest import problem


def test_problem_members(client: Any) -> None:
    body = problem(client.get("/private"))
    assert body == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": body["detail"],
        "error": "unauthorized",
        "request_id": body["request_id"],
    }


def test_error_type_base(make_app: Any) -> None:
    app = make_app(APIGUARD_ERROR_TYPE_BASE="https://errors.example.com/")
    body = problem(app.test_client().get("/private"))
    assert body["type"] == "https://errors.example.com/unauthorized"


def test_unhandled_exception_is_a_safe_500(make_app: Any) -> None:
    app = make_app(init=False, PROPAGATE_EXCEPTIONS=False)

    @app.get("/boom")
    @public
    def boom() -> Any:
        raise RuntimeError("secret database password is hunter2 at /srv/app/db.py")

    ApiGuard(app)
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    body = problem(response)
    assert body["error"] == "internal_error"
    text = response.get_data(as_text=True)
    assert "hunter2" not in text and "Traceback" not in text and "/srv" not in text
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_app_abort_keeps_its_message_and_gets_a_code(make_app: Any) -> None:
    app = make_app(init=False)

    @app.get("/gone")
    @public
    def gone() -> Any:
        abort(404, "No such note.")

    @app.get("/teapot")
    @public
    def teapot() -> Any:
        abort(418)

    ApiGuard(app)
    client = app.test_client()
    body = problem(client.get("/gone"))
    assert (body["error"], body["detail"]) == ("not_found", "No such note.")
    assert problem(client.get("/teapot"))["error"] == "i_m_a_teapot"


def test_app_errorhandler_wins(make_app: Any) -> None:
    app = make_app(init=False)

    @app.errorhandler(401)
    def custom_401(exc: Any) -> Any:
        return {"custom": True, "error": getattr(exc, "error", None)}, 401

    @app.errorhandler(InvalidToken)
    def custom_invalid(exc: InvalidToken) -> Any:
        return {"invalid": exc.detail}, 401

    ApiGuard(app)
    client = app.test_client()
    response = client.get("/private")
    assert response.get_json() == {"custom": True, "error": "unauthorized"}
    # our headers are on the app's own error response too
    assert response.headers["X-Request-ID"] and response.headers["Cache-Control"] == "no-store"
    response = client.get("/private", headers={"Authorization": "Bearer x.y.z"})
    assert response.get_json() == {"invalid": "The token is malformed."}


def test_errors_are_ascii_json_even_for_odd_input(client: Any) -> None:
    response = client.get("/\u202egnp.exe")
    assert response.status_code == 404
    assert response.get_data().isascii()
    json.loads(response.get_data())


def test_error_codes_for_statuses() -> None:
    assert error_code_for(413) == "payload_too_large"
    assert error_code_for(503) == "service_unavailable"
    assert error_code_for(422) == "unprocessable_content" or error_code_for(422) == "unprocessable_entity"
    assert error_code_for(599) == "internal_error"


def test_an_exception_in_a_teardown_hook_is_a_problem_500(make_app: Any, caplog: Any) -> None:
    # It ended as the server's own HTML 500: no security headers, no request id, no record.
    import logging

    app = make_app(init=False, PROPAGATE_EXCEPTIONS=False)

    @app.teardown_request
    def failing_teardown(exc: BaseException | None) -> None:
        raise RuntimeError("teardown failed reading /srv/app/secret.txt")

    ApiGuard(app)
    caplog.set_level(logging.INFO, logger="flask_apiguard.security")
    calls: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        calls.append((status, headers))
        return lambda data: None

    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder("/health", base_url="https://localhost").get_environ()
    body = b"".join(app.wsgi_app(environ, start_response))
    assert [status for status, _ in calls] == ["500 INTERNAL SERVER ERROR"]
    headers = dict(calls[0][1])
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    payload = json.loads(body)
    assert payload["error"] == "internal_error"
    assert payload["request_id"] == headers["X-Request-ID"]
    assert b"/srv" not in body and b"Traceback" not in body
    records = [json.loads(r.getMessage()) for r in caplog.records
               if r.name == "flask_apiguard.security"]
    assert [(r["status"], r["request_id"]) for r in records] == [(500, headers["X-Request-ID"])]

    response = app.test_client().get("/health")
    assert response.status_code == 500
    assert problem(response)["error"] == "internal_error"


def test_an_exception_in_a_teardown_hook_propagates_in_testing_mode(make_app: Any) -> None:
    # Flask's own rule for view errors (PROPAGATE_EXCEPTIONS, or TESTING) applies here too.
    app = make_app(init=False)

    @app.teardown_request
    def failing_teardown(exc: BaseException | None) -> None:
        raise RuntimeError("teardown failed")

    ApiGuard(app)
    with pytest.raises(RuntimeError, match="teardown failed"):
        app.test_client().get("/health")
