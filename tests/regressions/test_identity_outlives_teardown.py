"""current_identity stays the caller's in a streamed body and in teardown code; an app hook
that raises yields one security event, for the 500 the client gets."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, stream_with_context

from flask_apiguard import ApiGuard, current_identity, require_jwt

from ..conftest import bearer, token_for


def test_identity_in_a_streamed_body_and_in_teardown(make_app: Any) -> None:
    app = make_app(init=False)
    seen: list[Any] = []

    @app.teardown_request
    def early_teardown(exc: Any) -> None:  # registered before init_app: runs after the guard's
        seen.append(("teardown", current_identity.subject))

    @app.get("/stream")
    @require_jwt
    def stream() -> Any:
        def body() -> Any:
            yield f"{current_identity.subject}"

        return Response(stream_with_context(body()))

    ApiGuard(app)
    response = app.test_client().get("/stream", headers=bearer(token_for(app, "alice")))
    assert response.get_data(as_text=True) == "alice"
    assert ("teardown", "alice") in seen


def test_a_raising_app_hook_gives_one_event_for_the_500(make_app: Any, caplog: Any) -> None:
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
