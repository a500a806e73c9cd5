"""A request handled inside another (same app context, same g) keeps its own state."""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, request, url_for

from flask_apiguard import ApiGuard, public, rate_limit


def test_inner_contexts_do_not_settle_or_replace_the_outer_request(make_app: Any) -> None:
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
