"""ApiGuard/init_app, per-app state, and the pipeline over plain views, blueprints, classes."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Blueprint, Flask, request
from flask.views import MethodView, View

from flask_apiguard import ApiGuard, ApiGuardConfigError, current_identity, public, require_jwt, roles
from flask_apiguard.state import GuardState

from .conftest import SECRET, HttpsClient, base_config, bearer, problem, token_for


def test_init_app_stores_state_under_one_name(make_app: Any) -> None:
    app = make_app()
    assert isinstance(app.extensions["apiguard"], GuardState)


def test_factory_pattern_and_second_init_raises(tmp_path: Any) -> None:
    guard = ApiGuard()
    app = Flask("factory", instance_path=str(tmp_path))
    app.config.update(base_config())
    guard.init_app(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        guard.init_app(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        ApiGuard(app)


def test_the_guard_keeps_no_app(make_app: Any) -> None:
    guard = ApiGuard()
    guard.init_app(make_app(init=False))
    assert not any(isinstance(v, Flask) for v in vars(guard).values())


def test_one_guard_two_apps_do_not_share_settings(tmp_path: Any) -> None:
    guard = ApiGuard()
    apps = []
    for name, limit in (("one", "1/minute"), ("two", "3/minute")):
        app = Flask(name, instance_path=str(tmp_path / name))
        app.test_client_class = HttpsClient
        app.config.update(base_config(APIGUARD_RATELIMIT_DEFAULT=limit,
                                      APIGUARD_CORS_ORIGINS=[f"https://{name}.example"]))

        @app.get("/ping")
        @public
        def ping() -> Any:
            return {"ok": True}

        guard.init_app(app)
        apps.append(app)
    one, two = (a.test_client() for a in apps)
    assert [one.get("/ping").status_code for _ in range(2)] == [200, 429]
    assert [two.get("/ping").status_code for _ in range(4)] == [200, 200, 200, 429]
    allowed = one.get("/ping", headers={"Origin": "https://two.example"})
    assert "Access-Control-Allow-Origin" not in allowed.headers
    assert apps[0].extensions["apiguard"].config.ratelimit_default == "1/minute"
    assert apps[1].extensions["apiguard"].config.ratelimit_default == "3/minute"


def test_bad_config_fails_at_start_up_naming_the_key(tmp_path: Any) -> None:
    app = Flask("bad", instance_path=str(tmp_path))
    app.config.update(base_config(APIGUARD_MAX_JSON_DEPTH="deep"))
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_MAX_JSON_DEPTH"):
        ApiGuard(app)


def test_default_deny_answers_401_with_problem_json(client: Any) -> None:
    response = client.get("/private")
    assert response.status_code == 401
    body = problem(response)
    assert body["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_public_view_is_open(client: Any) -> None:
    assert client.get("/health").get_json() == {"status": "healthy"}


def test_public_endpoints_config_opens_an_endpoint(make_app: Any) -> None:
    app = make_app(APIGUARD_PUBLIC_ENDPOINTS=["static", "private"])
    assert app.test_client().get("/private").status_code == 200


def test_default_deny_off_leaves_undecorated_views_open(make_app: Any) -> None:
    app = make_app(APIGUARD_DEFAULT_DENY=False)
    client = app.test_client()
    assert client.get("/private").get_json() == {"subject": None, "method": None}
    # credentials sent to such a view are still checked
    assert client.get("/private", headers=bearer("garbage.token.here")).status_code == 401
    ok = client.get("/private", headers=bearer(token_for(app, "bob")))
    assert ok.get_json() == {"subject": "bob", "method": "jwt"}


def test_unknown_path_is_404_before_authentication(client: Any) -> None:
    response = client.get("/does-not-exist", headers=bearer("not-a-token"))
    assert response.status_code == 404
    assert problem(response)["error"] == "not_found"


def test_wrong_method_is_405_before_authentication(client: Any) -> None:
    response = client.delete("/private")
    assert response.status_code == 405
    assert problem(response)["error"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "HEAD", "OPTIONS"}


def test_options_never_reaches_a_view(make_app: Any) -> None:
    # An OPTIONS request that is not a preflight ran a view declaring OPTIONS unauthenticated.
    app = make_app(init=False)
    ran: list[str] = []

    @app.route("/admin/data", methods=["GET", "OPTIONS"])
    @require_jwt
    @roles("admin")
    def admin_data() -> Any:
        ran.append("view")
        return {"secret": "payroll"}

    class Users(MethodView):
        decorators = [require_jwt]

        @roles("admin")
        def options(self) -> Any:
            ran.append("options")
            return {"leak": True}

    app.add_url_rule("/users", view_func=Users.as_view("users"))
    ApiGuard(app)
    client = app.test_client()
    for path in ("/admin/data", "/users"):
        response = client.options(path)
        assert response.status_code == 200
        assert b"payroll" not in response.data and b"leak" not in response.data
        assert "OPTIONS" in response.headers["Allow"]
    assert ran == []
    assert client.get("/admin/data").status_code == 401


def test_trailing_slash_redirect_is_not_an_error(make_app: Any) -> None:
    app = make_app(init=False)

    @app.get("/folder/")
    @public
    def folder() -> Any:
        return {"ok": True}

    ApiGuard(app)
    response = app.test_client().get("/folder")
    assert response.status_code == 308
    assert response.headers["X-Request-ID"]


def test_blueprint_views(make_app: Any) -> None:
    app = make_app(init=False)
    bp = Blueprint("api", __name__, url_prefix="/api")

    @bp.get("/open")
    @public
    def open_view() -> Any:
        return {"ok": True}

    @bp.get("/admin")
    @require_jwt
    @roles("admin")
    def admin() -> Any:
        return {"subject": current_identity.subject}

    app.register_blueprint(bp)
    ApiGuard(app)
    client = app.test_client()
    assert client.get("/api/open").status_code == 200
    assert client.get("/api/admin").status_code == 401
    assert client.get("/api/admin", headers=bearer(token_for(app))).status_code == 403
    admin_token = token_for(app, "root", roles=["admin"])
    assert client.get("/api/admin", headers=bearer(admin_token)).get_json() == {"subject": "root"}


def test_method_view_policies_per_method_and_class(make_app: Any) -> None:
    app = make_app(init=False)

    @require_jwt
    class Notes(MethodView):
        @public
        def get(self) -> Any:
            return {"notes": []}

        @roles("editor")
        def post(self) -> Any:
            return {"by": current_identity.subject}, 201

        def delete(self) -> Any:
            return "", 204

    app.add_url_rule("/notes", view_func=Notes.as_view("notes"))
    ApiGuard(app)
    client = app.test_client()
    assert client.get("/notes").status_code == 200
    assert client.post("/notes").status_code == 401
    assert client.post("/notes", headers=bearer(token_for(app))).status_code == 403
    editor = token_for(app, "ed", roles=["editor"])
    assert client.post("/notes", headers=bearer(editor)).status_code == 201
    assert client.delete("/notes").status_code == 401
    assert client.delete("/notes", headers=bearer(token_for(app))).status_code == 204


def test_subclass_policy_does_not_leak_to_parent(make_app: Any) -> None:
    app = make_app(init=False)

    class Base(MethodView):
        def get(self) -> Any:
            return {"ok": True}

    @public
    class Open(Base):
        pass

    app.add_url_rule("/base", view_func=Base.as_view("base"))
    app.add_url_rule("/open", view_func=Open.as_view("open"))
    ApiGuard(app)
    client = app.test_client()
    assert client.get("/open").status_code == 200
    assert client.get("/base").status_code == 401


def test_plain_view_class_with_decorators_attribute(make_app: Any) -> None:
    app = make_app(init=False)

    class Hello(View):
        decorators = [public]

        def dispatch_request(self) -> Any:
            return {"hello": "world"}

    app.add_url_rule("/hello", view_func=Hello.as_view("hello"))
    ApiGuard(app)
    assert app.test_client().get("/hello").get_json() == {"hello": "world"}


def test_async_views(make_app: Any) -> None:
    pytest.importorskip("asgiref")
    app = make_app(init=False)

    @app.get("/async")
    @require_jwt
    async def async_view() -> Any:
        return {"subject": current_identity.subject}

    ApiGuard(app)
    client = app.test_client()
    assert client.get("/async").status_code == 401
    assert client.get("/async", headers=bearer(token_for(app, "zed"))).get_json() == {"subject": "zed"}


def test_app_hooks_run_after_the_guard(make_app: Any) -> None:
    app = make_app(init=False)
    seen: list[str] = []

    @app.before_request
    def app_hook() -> None:
        seen.append(request.path)

    ApiGuard(app)
    client = app.test_client()
    client.get("/nowhere")
    client.get("/health")
    # the guard answered the unknown path before the app's own hook ran
    assert seen == ["/health"]


def test_current_identity_outside_a_request_is_anonymous() -> None:
    app = Flask("plain")
    with app.test_request_context():
        assert not current_identity.is_authenticated
        assert current_identity.roles == frozenset()


def test_secret_is_required_for_tokens(tmp_path: Any) -> None:
    app = Flask("nokey", instance_path=str(tmp_path))
    app.test_client_class = HttpsClient
    app.config.update(base_config(APIGUARD_JWT_SECRET=None))

    @app.get("/x")
    def x() -> Any:
        return {}

    guard = ApiGuard(app)
    with app.app_context(), pytest.raises(RuntimeError, match="signing key"):
        guard.issue_token("a")
    response = app.test_client().get("/x", headers=bearer("a.b.c"))
    assert problem(response)["error"] == "invalid_token"
    assert SECRET  # the shared secret is unused here


def test_public_on_a_wrapped_copy_keeps_the_original_route_protected(make_app: Any) -> None:
    # functools.wraps shared the policy record: public(cached(view)) opened /report too.
    import functools

    app = make_app(init=False)

    def report() -> Any:
        return {"report": True}

    def cached(view: Any) -> Any:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)

        return wrapper

    app.add_url_rule("/report", "report", report)
    app.add_url_rule("/partner/report", "partner_report", public(cached(report)))
    ApiGuard(app)
    client = app.test_client()
    assert client.get("/partner/report").status_code == 200
    assert client.get("/report").status_code == 401


def test_a_replaced_view_function_brings_its_own_policy(make_app: Any) -> None:
    # The compiled policy was cached per endpoint: the old view's @public outlived it.
    app = make_app(init=False)

    @app.get("/thing")
    @public
    def thing() -> Any:
        return {"open": True}

    ApiGuard(app)
    client = app.test_client()
    assert client.get("/thing").status_code == 200

    def protected_thing() -> Any:
        return {"open": False}

    app.view_functions["thing"] = protected_thing
    assert client.get("/thing").status_code == 401
    assert client.get("/thing", headers=bearer(token_for(app))).get_json() == {"open": False}


def test_url_value_preprocessors_run_only_for_admitted_requests(make_app: Any) -> None:
    # Flask runs url_value_preprocessors before every before_request hook: an app's tenant
    # lookup ran, unthrottled and unlogged, for requests the guard then refused.
    from flask import Blueprint

    app = make_app(init=False)
    seen: list[str] = []
    bp = Blueprint("tenants", __name__)

    @app.url_value_preprocessor
    def app_lookup(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values and "tenant" in values:
            seen.append("app:" + values["tenant"])

    @bp.url_value_preprocessor
    def bp_lookup(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values and "tenant" in values:
            seen.append("bp:" + values.pop("tenant"))

    @bp.get("/t/<tenant>/data")
    def data() -> Any:
        return {"ok": True}

    app.register_blueprint(bp)
    ApiGuard(app)
    client = app.test_client()
    assert client.get("/t/acme/data").status_code == 401
    assert client.get("/t/acme/data", headers=bearer("not-a-token")).status_code == 401
    assert seen == []
    assert client.get("/t/acme/data", headers=bearer(token_for(app))).status_code == 200
    assert seen == ["app:acme", "bp:acme"]
