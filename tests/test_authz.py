"""Authorization (pipeline step 8): ``@roles``, ``@scopes``, default-deny, which credential a
view accepts, decorator order and conflicts, and ``@public`` ignoring credentials."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.views import MethodView

from flask_apiguard import (
    ApiGuard,
    current_identity,
    public,
    require_api_key,
    require_jwt,
    roles,
    scopes,
)

from .conftest import SECRET, bearer, problem, token_for


def me() -> dict[str, Any]:
    return {"subject": current_identity.subject, "method": current_identity.method}


def authz_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    app = make_app(init=False, **config)

    @app.get("/any")
    @roles("admin", "editor")
    def any_role() -> Any:
        return me()

    @app.get("/all")
    @roles("admin", "editor", require="all")
    def all_roles() -> Any:
        return me()

    @app.get("/stacked-roles")
    @roles("staff")
    @roles("admin", "auditor")
    def stacked_roles() -> Any:
        return me()

    @app.get("/scoped")
    @scopes("orders:read", "orders:write")
    def scoped() -> Any:
        return me()

    @app.get("/jwt-only")
    @require_jwt
    def jwt_only() -> Any:
        return me()

    @app.get("/key-only")
    @require_api_key
    def key_only() -> Any:
        return me()

    @app.get("/either")
    @require_jwt
    @require_api_key
    def either() -> Any:
        return me()

    @app.get("/either-reversed")
    @require_api_key
    @require_jwt
    def either_reversed() -> Any:
        return me()

    @app.get("/jwt-admin")
    @require_jwt
    @roles("admin")
    def jwt_admin() -> Any:
        return me()

    @app.get("/admin-jwt")
    @roles("admin")
    @require_jwt
    def admin_jwt() -> Any:
        return me()

    @app.get("/key-scope")
    @require_api_key
    @scopes("reports")
    def key_scope() -> Any:
        return me()

    @app.get("/scope-key")
    @scopes("reports")
    @require_api_key
    def scope_key() -> Any:
        return me()

    @app.get("/open")
    @public
    def open_view() -> Any:
        return me()

    ApiGuard(app)
    return app


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return authz_app(make_app)


def get(app: Flask, path: str, token: str | None = None, key: str | None = None) -> Any:
    headers = bearer(token) if token else {}
    if key:
        headers["X-API-Key"] = key
    return app.test_client().get(path, headers=headers)


def api_key(app: Flask, **kwargs: Any) -> str:
    with app.app_context():
        plaintext: str = ApiGuard().api_keys.create("k", **kwargs)[0]
        return plaintext


def forbidden(response: Any) -> None:
    assert response.status_code == 403, response.data[:300]
    body = problem(response)
    assert body["error"] == "forbidden"
    assert body["title"] == "Forbidden"
    assert "WWW-Authenticate" not in response.headers


def unauthorized(response: Any) -> None:
    assert response.status_code == 401, response.data[:300]
    assert problem(response)["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


# -- roles --------------------------------------------------------------------------------------

def test_roles_any(app: Flask) -> None:
    for held in (["admin"], ["editor"], ["admin", "editor"], ["viewer", "editor"]):
        assert get(app, "/any", token_for(app, roles=held)).status_code == 200, held
    for held in ([], ["viewer"], ["administrator"]):
        forbidden(get(app, "/any", token_for(app, roles=held)))


def test_roles_all(app: Flask) -> None:
    assert get(app, "/all", token_for(app, roles=["admin", "editor"])).status_code == 200
    assert get(app, "/all", token_for(app, roles=["editor", "x", "admin"])).status_code == 200
    for held in (["admin"], ["editor"], []):
        forbidden(get(app, "/all", token_for(app, roles=held)))


def test_stacked_roles_must_all_be_met(app: Flask) -> None:
    assert get(app, "/stacked-roles", token_for(app, roles=["staff", "auditor"])).status_code == 200
    forbidden(get(app, "/stacked-roles", token_for(app, roles=["staff"])))
    forbidden(get(app, "/stacked-roles", token_for(app, roles=["admin"])))


def test_roles_from_an_api_key(app: Flask) -> None:
    assert get(app, "/any", key=api_key(app, roles=["editor"])).status_code == 200
    forbidden(get(app, "/any", key=api_key(app, roles=["viewer"])))


def test_roles_without_credentials_is_401_not_403(app: Flask) -> None:
    unauthorized(get(app, "/any"))


def test_roles_require_must_be_any_or_all() -> None:
    with pytest.raises(TypeError):
        roles("admin", require="most")
    with pytest.raises(TypeError):
        roles()


# -- scopes -------------------------------------------------------------------------------------

def test_scopes_from_the_jwt_scope_claim(app: Flask) -> None:
    token = token_for(app, scopes=["orders:read", "orders:write", "extra"])
    assert get(app, "/scoped", token).status_code == 200
    forbidden(get(app, "/scoped", token_for(app, scopes=["orders:read"])))
    forbidden(get(app, "/scoped", token_for(app)))
    # roles are not scopes
    forbidden(get(app, "/scoped", token_for(app, roles=["orders:read", "orders:write"])))


def test_scopes_from_an_api_key(app: Flask) -> None:
    assert get(app, "/scoped", key=api_key(app, scopes=["orders:read", "orders:write"])) \
        .status_code == 200
    forbidden(get(app, "/scoped", key=api_key(app, scopes=["orders:write"])))


def test_scope_names_are_exact(app: Flask) -> None:
    now = int(time.time())
    for scope in ("orders:read orders:writer", "Orders:Read Orders:Write", "orders:*",
                  "orders:read,orders:write"):
        token = jwt.encode({"sub": "a", "exp": now + 60, "scope": scope}, SECRET, "HS256")
        forbidden(get(app, "/scoped", token))


# -- which credential a view accepts ------------------------------------------------------------

def test_default_deny_accepts_a_jwt_or_an_api_key(make_app: Any) -> None:
    app = authz_app(make_app)
    response = get(app, "/private", token_for(app, "alice"))
    assert response.get_json() == {"subject": "alice", "method": "jwt"}
    response = get(app, "/private", key=api_key(app, owner="svc"))
    assert response.get_json() == {"subject": "svc", "method": "api_key"}
    unauthorized(get(app, "/private"))


def test_require_jwt_view_refuses_an_api_key(app: Flask) -> None:
    unauthorized(get(app, "/jwt-only", key=api_key(app)))
    assert get(app, "/jwt-only", token_for(app)).get_json()["method"] == "jwt"


def test_require_api_key_view_refuses_a_jwt(app: Flask) -> None:
    unauthorized(get(app, "/key-only", token_for(app)))
    assert get(app, "/key-only", key=api_key(app)).get_json()["method"] == "api_key"


@pytest.mark.parametrize("path", ["/either", "/either-reversed"])
def test_require_jwt_and_require_api_key_accept_either(app: Flask, path: str) -> None:
    assert get(app, path, token_for(app)).get_json()["method"] == "jwt"
    assert get(app, path, key=api_key(app)).get_json()["method"] == "api_key"
    unauthorized(get(app, path))


def test_api_key_scopes_bind_keys_not_tokens(make_app: Any) -> None:
    # @require_api_key(scopes=...) beside @require_jwt held tokens to the keys' scopes too.
    app = make_app(init=False)

    @app.get("/reports")
    @require_jwt
    @require_api_key(scopes=["reports:read"])
    def reports() -> Any:
        return {"ok": True}

    ApiGuard(app)
    client = app.test_client()
    assert client.get("/reports", headers=bearer(token_for(app))).status_code == 200
    with app.app_context():
        store = app.extensions["apiguard"].api_keys
        scoped, _ = store.create("scoped", scopes=["reports:read"])
        bare, _ = store.create("bare")
    assert client.get("/reports", headers={"X-API-Key": scoped}).status_code == 200
    assert client.get("/reports", headers={"X-API-Key": bare}).status_code == 403


# -- decorator order ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/jwt-admin", "/admin-jwt"])
def test_decorator_order_does_not_matter_for_roles(app: Flask, path: str) -> None:
    assert get(app, path, token_for(app, roles=["admin"])).status_code == 200
    forbidden(get(app, path, token_for(app, roles=["user"])))
    unauthorized(get(app, path, key=api_key(app, roles=["admin"])))
    unauthorized(get(app, path))


@pytest.mark.parametrize("path", ["/key-scope", "/scope-key"])
def test_decorator_order_does_not_matter_for_scopes(app: Flask, path: str) -> None:
    assert get(app, path, key=api_key(app, scopes=["reports"])).status_code == 200
    forbidden(get(app, path, key=api_key(app, scopes=["other"])))
    unauthorized(get(app, path, token_for(app, scopes=["reports"])))


# -- conflicts are caught when the module is imported -------------------------------------------

def test_public_with_roles_raises_at_decoration_time() -> None:
    with pytest.raises(TypeError, match="@public"):
        @public
        @roles("admin")
        def one() -> None: ...

    with pytest.raises(TypeError, match="@public"):
        @roles("admin")
        @public
        def two() -> None: ...


def test_public_with_scopes_or_authentication_raises() -> None:
    for decorator in (scopes("s"), require_jwt, require_api_key, require_jwt(optional=True)):
        with pytest.raises(TypeError):
            def view() -> None: ...

            public(decorator(view))
        with pytest.raises(TypeError):
            def other() -> None: ...

            decorator(public(other))


def test_optional_jwt_with_roles_raises_at_decoration_time() -> None:
    with pytest.raises(TypeError, match="optional"):
        @require_jwt(optional=True)
        @roles("admin")
        def one() -> None: ...

    with pytest.raises(TypeError, match="optional"):
        @roles("admin")
        @require_jwt(optional=True)
        def two() -> None: ...

    with pytest.raises(TypeError, match="optional"):
        @scopes("read")
        @require_jwt(optional=True)
        def three() -> None: ...


def test_optional_at_one_level_never_opens_roles_or_scopes_at_another(make_app: Any) -> None:
    # optional=True at one level (class or method) let anonymous callers past @roles at another.
    app = make_app(init=False)

    @require_jwt(optional=True)
    class Reports(MethodView):
        def get(self) -> Any:
            return {"public": True}

        @roles("admin")
        def delete(self) -> Any:
            return {"deleted": "everything"}

        @scopes("reports:write")
        def post(self) -> Any:
            return {"created": True}

    @roles("editor")
    class Articles(MethodView):
        @require_jwt(optional=True)
        def get(self) -> Any:
            return {"drafts": "unpublished"}

    app.add_url_rule("/reports", view_func=Reports.as_view("reports"))
    app.add_url_rule("/articles", view_func=Articles.as_view("articles"))
    ApiGuard(app)
    client = app.test_client()
    assert client.get("/reports").status_code == 200  # optional really is optional here
    assert client.delete("/reports").status_code == 401
    assert client.post("/reports").status_code == 401
    assert client.get("/articles").status_code == 401
    assert client.get("/articles", headers=bearer(token_for(app))).status_code == 403
    editor = token_for(app, "ed", roles=["editor"])
    assert client.get("/articles", headers=bearer(editor)).status_code == 200


# -- @public ignores credentials ----------------------------------------------------------------

def test_public_view_ignores_credentials(make_app: Any) -> None:
    app = authz_app(make_app, APIGUARD_AUTH_FAILURE_LIMIT="2 per minute")
    valid = token_for(app, "alice")
    for headers in ({"Authorization": "Bearer not-a-token"}, {"Authorization": "Bearer a.b.c"},
                    {"X-API-Key": "agk_bogus"}, bearer(valid), {"Authorization": "Basic eA=="}):
        for _ in range(3):
            response = app.test_client().get("/open", headers=headers)
            assert response.status_code == 200, headers
            assert response.get_json() == {"subject": None, "method": None}
    # none of those invalid credentials were counted against this client
    assert get(app, "/private", valid).status_code == 200


def test_public_view_in_public_endpoints_config_ignores_credentials(make_app: Any) -> None:
    app = authz_app(make_app, APIGUARD_PUBLIC_ENDPOINTS=["static", "private"])
    response = get(app, "/private", "garbage")
    assert response.status_code == 200
    assert response.get_json() == {"subject": None, "method": None}


def test_roles_of_every_decorated_base_class_are_enforced(make_app: Any) -> None:
    # Two decorated bases: the second base's @roles("admin") was silently dropped (200).
    from flask_apiguard import rate_limit, roles

    app = make_app(init=False)

    @roles("admin")
    class AdminView(MethodView):
        pass

    @rate_limit("50 per minute")
    class LimitedView(MethodView):
        pass

    class Reports(LimitedView, AdminView):
        def get(self) -> Any:
            return {"secret": "report"}

    app.add_url_rule("/reports", view_func=Reports.as_view("reports"))
    ApiGuard(app)
    client = app.test_client()
    assert client.get("/reports", headers=bearer(token_for(app, roles=["user"]))).status_code == 403
    ok = client.get("/reports", headers=bearer(token_for(app, roles=["admin"])))
    assert ok.status_code == 200 and ok.headers["RateLimit-Limit"] == "50"
