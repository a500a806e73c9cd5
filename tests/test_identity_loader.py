"""``@guard.identity_loader`` and ``current_identity.user``: once per request, after the
credential is verified and before ``@roles``, for JWTs and API keys alike."""

from __future__ import annotations

from typing import Any

from flask import Flask

from flask_apiguard import ApiGuard, Identity, current_identity, public, require_api_key, roles

from .conftest import base_config, bearer, problem, token_for


def _app(users: dict[str, Any], calls: list[Identity], *, run_async: bool = False,
         **config: Any) -> tuple[Flask, ApiGuard]:
    from .conftest import HttpsClient

    app = Flask("loader_test")
    app.test_client_class = HttpsClient
    app.config.update(base_config(**config))
    guard = ApiGuard()

    if run_async:
        @guard.identity_loader
        async def load_async(identity: Identity) -> Any:
            calls.append(identity)
            return users.get(identity.subject or "")
    else:
        @guard.identity_loader
        def load(identity: Identity) -> Any:
            calls.append(identity)
            return users.get(identity.subject or "")

    @app.get("/me")
    def me() -> Any:
        return {"user": current_identity.user, "subject": current_identity.subject}

    @app.get("/admin")
    @roles("admin")
    def admin() -> Any:
        return {"user": current_identity.user}

    @app.get("/open")
    @public
    def open_view() -> Any:
        return {"user": current_identity.user}

    @app.get("/keyed")
    @require_api_key
    def keyed() -> Any:
        return {"user": current_identity.user}

    guard.init_app(app)
    return app, guard


def test_the_loaders_result_is_current_identity_user() -> None:
    calls: list[Identity] = []
    app, _ = _app({"alice": {"name": "Alice"}}, calls)
    response = app.test_client().get("/me", headers=bearer(token_for(app, "alice")))
    assert response.json == {"user": {"name": "Alice"}, "subject": "alice"}
    assert len(calls) == 1 and calls[0].method == "jwt" and calls[0].user is None


def test_a_deleted_users_valid_token_is_refused() -> None:
    users = {"alice": {"name": "Alice"}}
    app, _ = _app(users, [])
    client = app.test_client()
    token = bearer(token_for(app, "alice"))
    assert client.get("/me", headers=token).status_code == 200
    del users["alice"]  # the token itself stays valid (and cached)
    response = client.get("/me", headers=token)
    assert response.status_code == 401
    assert problem(response)["error"] == "invalid_token"


def test_it_runs_before_roles_once_per_request() -> None:
    calls: list[Identity] = []
    app, _ = _app({"bob": "Bob"}, calls)
    client = app.test_client()
    assert client.get("/admin", headers=bearer(token_for(app, "bob"))).status_code == 403
    assert len(calls) == 1  # loaded, then refused by @roles
    # an unknown user is refused as unauthenticated, before @roles is asked
    response = client.get("/admin", headers=bearer(token_for(app, "nobody", roles=["admin"])))
    assert response.status_code == 401
    assert client.get("/admin", headers=bearer(token_for(app, "bob", roles=["admin"]))).json \
        == {"user": "Bob"}
    assert len(calls) == 3


def test_it_runs_for_api_keys_and_answers_invalid_api_key() -> None:
    users: dict[str, Any] = {"svc-1": "Service one"}
    app, guard = _app(users, [])
    with app.app_context():
        known, _ = guard.api_keys.create("ci", owner="svc-1")
        orphan, _ = guard.api_keys.create("old", owner="svc-gone")
    client = app.test_client()
    assert client.get("/keyed", headers={"X-API-Key": known}).json == {"user": "Service one"}
    response = client.get("/keyed", headers={"X-API-Key": orphan})
    assert response.status_code == 401
    assert problem(response)["error"] == "invalid_api_key"


def test_it_does_not_run_for_anonymous_callers_or_public_views() -> None:
    calls: list[Identity] = []
    app, _ = _app({"alice": "Alice"}, calls)
    client = app.test_client()
    assert client.get("/open", headers=bearer(token_for(app, "alice"))).json == {"user": None}
    assert client.get("/me").status_code == 401
    assert calls == []


def test_a_coroutine_loader() -> None:
    app, _ = _app({"alice": "Alice"}, [], run_async=True)
    response = app.test_client().get("/me", headers=bearer(token_for(app, "alice")))
    assert response.json == {"user": "Alice", "subject": "alice"}


def test_refusals_by_the_loader_count_as_failed_authentications() -> None:
    app, _ = _app({}, [], APIGUARD_AUTH_FAILURE_LIMIT="2 per minute")
    client = app.test_client()
    token = bearer(token_for(app, "ghost"))
    assert [client.get("/me", headers=token).status_code for _ in range(3)] == [401, 401, 429]


def test_it_never_runs_for_a_throttled_revoked_or_rate_limited_caller() -> None:
    # The loader (a database query) ran before the shared state's answer: for revoked tokens,
    # throttled clients and every request over a limit.
    from flask_apiguard import rate_limit

    calls: list[Identity] = []
    app = Flask("loader_refused")
    from .conftest import HttpsClient

    app.test_client_class = HttpsClient
    app.config.update(base_config(APIGUARD_JWT_REVOCATION=True,
                                  APIGUARD_AUTH_FAILURE_LIMIT="2 per minute"))
    guard = ApiGuard()

    @guard.identity_loader
    def load(identity: Identity) -> Any:
        calls.append(identity)
        return {"name": identity.subject}

    @app.get("/limited")
    @rate_limit("2/minute")
    def limited() -> Any:
        return {"user": current_identity.user}

    guard.init_app(app)
    client = app.test_client()
    revoked = token_for(app, "revoked")
    with app.app_context():
        guard.revoke_token(revoked)
    assert client.get("/limited", headers=bearer(revoked)).status_code == 401
    assert calls == []
    token = token_for(app, "alice")
    codes = [client.get("/limited", headers=bearer(token)).status_code for _ in range(6)]
    assert codes == [200, 200, 429, 429, 429, 429]
    assert len(calls) == 2  # the two admitted requests only
    throttled = Flask("loader_throttled")
    throttled.test_client_class = HttpsClient
    throttled.config.update(base_config(APIGUARD_AUTH_FAILURE_LIMIT="2 per minute"))
    other = ApiGuard()
    other.identity_loader(load)

    @throttled.get("/me")
    def me() -> Any:
        return {"user": current_identity.user}

    other.init_app(throttled)
    calls.clear()
    tclient = throttled.test_client()
    for _ in range(3):
        tclient.get("/me", headers=bearer("a.b.c"))
    assert tclient.get("/me", headers=bearer(token_for(throttled))).status_code == 429
    assert calls == []
