"""``guard.openapi()``: the OpenAPI 3.1 document written from the enforced policies, served at
``APIGUARD_OPENAPI_ROUTE``, merged into APIFlask's and flask-smorest's documents, and checked
against the example app by Schemathesis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.views import MethodView
from marshmallow import Schema, fields
from openapi_spec_validator import validate as validate_spec

from flask_apiguard import (
    ApiGuard,
    ApiGuardConfigError,
    deprecated,
    public,
    rate_limit,
    rate_limit_exempt,
    require_api_key,
    require_jwt,
    roles,
    scopes,
    validate,
)

from .conftest import SECRET, HttpsClient, base_config, bearer, token_for


class ItemIn(Schema):
    name = fields.String(required=True)
    tags = fields.List(fields.String())


class Page(Schema):
    limit = fields.Integer(load_default=10)
    tag = fields.List(fields.String())


def document(app: Flask, **kwargs: Any) -> dict[str, Any]:
    with app.app_context():
        doc: dict[str, Any] = ApiGuard().openapi(**kwargs)
    validate_spec(doc)
    return doc


@pytest.fixture
def api(make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    """An app with one view of each kind of policy."""

    def factory(**config: Any) -> Flask:
        app = make_app(init=False, **config)

        @app.get("/items")
        @require_jwt(optional=True)
        @validate(Page, location="query")
        def list_items(query_data: Any) -> Any:
            """List the items.

            More text that is not the summary.
            """
            return {"items": []}

        @app.post("/items")
        @require_jwt
        @roles("editor")
        @scopes("items:write")
        @rate_limit("10/minute")
        @validate(ItemIn)
        def create_item(json_data: Any) -> Any:
            return json_data, 201

        @app.get("/items/<int:item_id>")
        @require_jwt
        @require_api_key(scopes=["items:read"])
        def get_item(item_id: int) -> Any:
            return {"id": item_id}

        @app.put("/items/<uuid:item_id>/tags/<any(red,blue):colour>")
        @require_api_key
        @rate_limit_exempt
        @validate({"note": fields.String()}, location="form")
        @validate({"X-Tenant": fields.String(required=True)}, location="headers")
        def tag_item(item_id: Any, colour: str, form_data: Any, headers_data: Any) -> Any:
            return "", 204

        @app.get("/files/<path:name>")
        @public
        @rate_limit_exempt
        def files(name: str) -> Any:
            return {"name": name}

        @app.get("/old/<float:ratio>")
        @public
        @deprecated(sunset="2020-01-01", replacement="/new")
        def old(ratio: float) -> Any:
            return {}

        @app.get("/later")
        @deprecated(sunset="2099-01-01", link="https://docs.example/later")
        def later() -> Any:
            return {}

        ApiGuard(app)
        return app

    return factory


def op(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    operation: dict[str, Any] = doc["paths"][path][method]
    return operation


# -- the document -------------------------------------------------------------------------------

def test_document_is_valid_openapi_3_1(api: Callable[..., Flask]) -> None:
    doc = document(api())
    assert doc["openapi"] == "3.1.0"
    assert doc["info"] == {"title": "apiguard_test", "version": "0.0.0"}


def test_every_route_and_method_but_options(api: Callable[..., Flask]) -> None:
    doc = document(api())
    assert sorted(doc["paths"]) == [
        "/echo", "/files/{name}", "/health", "/items", "/items/{item_id}",
        "/items/{item_id}/tags/{colour}", "/later", "/old/{ratio}", "/private",
        "/static/{filename}",
    ]
    assert sorted(doc["paths"]["/items"]) == ["get", "post"]
    for item in doc["paths"].values():
        assert "options" not in item and "head" not in item


def test_head_is_documented_only_where_its_policy_differs(make_app: Callable[..., Flask]) -> None:
    app = make_app(init=False)

    class Thing(MethodView):
        @public
        def get(self) -> Any:
            return {}

        @require_jwt
        def head(self) -> Any:
            return ""

    app.add_url_rule("/thing", view_func=Thing.as_view("thing"))
    ApiGuard(app)
    doc = document(app)
    assert op(doc, "/thing", "get")["security"] == []
    assert op(doc, "/thing", "head")["security"] == [{"jwt": []}]


def test_static_is_documented_only_when_it_is_routed(tmp_path: Path) -> None:
    app = Flask("with_static", instance_path=str(tmp_path / "instance"))
    app.config.update(base_config())
    ApiGuard(app)
    assert op(document(app), "/static/{filename}", "get")["security"] == []
    bare = Flask("without_static", static_folder=None, instance_path=str(tmp_path / "instance"))
    bare.config.update(base_config())
    ApiGuard(bare)
    assert document(bare)["paths"] == {}


def test_title_and_version_from_arguments_or_config(api: Callable[..., Flask]) -> None:
    assert document(api(), title="Items", version="2.1")["info"] == {"title": "Items", "version": "2.1"}
    info = {"title": "Items API", "version": "3", "description": "The items."}
    assert document(api(APIGUARD_OPENAPI_INFO=info))["info"] == info


def test_summary_is_the_first_paragraph_of_the_docstring(api: Callable[..., Flask]) -> None:
    doc = document(api())
    assert op(doc, "/items", "get")["summary"] == "List the items."
    assert op(doc, "/items", "get")["operationId"] == "list_items"
    assert "summary" not in op(doc, "/items", "post")


# -- security -----------------------------------------------------------------------------------

def test_security_per_operation(api: Callable[..., Flask]) -> None:
    doc = document(api())
    assert op(doc, "/health", "get")["security"] == []
    assert op(doc, "/items", "get")["security"] == [{"jwt": []}, {}]
    assert op(doc, "/items", "post")["security"] == [{"jwt": ["items:write"]}]
    assert op(doc, "/items/{item_id}", "get")["security"] == [{"jwt": []},
                                                              {"api_key": ["items:read"]}]
    assert op(doc, "/items/{item_id}/tags/{colour}", "put")["security"] == [{"api_key": []}]
    # default-deny: an undecorated view takes either credential
    assert op(doc, "/private", "get")["security"] == [{"jwt": []}, {"api_key": []}]
    assert op(doc, "/items", "post")["x-apiguard"]["roles"] == [{"any_of": ["editor"]}]


def test_security_schemes_follow_the_config(api: Callable[..., Flask]) -> None:
    doc = document(api(APIGUARD_API_KEY_HEADER="X-Service-Key"))
    assert doc["components"]["securitySchemes"] == {
        "jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "api_key": {"type": "apiKey", "in": "header", "name": "X-Service-Key"},
    }


def test_only_the_schemes_in_use_are_declared(make_app: Callable[..., Flask]) -> None:
    app = make_app(init=False)

    @app.get("/only-jwt")
    @require_jwt
    def only_jwt() -> Any:
        return {}

    ApiGuard(app)
    with app.app_context():
        for rule in list(app.url_map.iter_rules()):
            if rule.endpoint in ("private", "echo"):
                app.view_functions[rule.endpoint] = require_jwt(lambda: {})
    assert list(document(app)["components"]["securitySchemes"]) == ["jwt"]


def test_without_default_deny_an_undecorated_view_admits_anyone(make_app: Callable[..., Flask]) -> None:
    doc = document(make_app(APIGUARD_DEFAULT_DENY=False))
    assert op(doc, "/private", "get")["security"] == [{"jwt": []}, {"api_key": []}, {}]


# -- parameters and bodies ----------------------------------------------------------------------

def test_path_converters_become_typed_path_parameters(api: Callable[..., Flask]) -> None:
    doc = document(api())

    def params(path: str, method: str = "get") -> dict[str, Any]:
        return {p["name"]: p for p in op(doc, path, method)["parameters"] if p["in"] == "path"}

    assert params("/items/{item_id}")["item_id"]["schema"] == {"type": "integer", "minimum": 0}
    tagged = params("/items/{item_id}/tags/{colour}", "put")
    assert tagged["item_id"]["schema"] == {"type": "string", "format": "uuid"}
    assert tagged["colour"]["schema"] == {"type": "string", "enum": ["blue", "red"]}
    assert all(p["required"] for p in tagged.values())
    assert params("/old/{ratio}")["ratio"]["schema"] == {"type": "number", "minimum": 0}
    assert params("/files/{name}")["name"]["schema"]["type"] == "string"


def test_json_body_from_the_validate_schema(api: Callable[..., Flask]) -> None:
    doc = document(api())
    body = op(doc, "/items", "post")["requestBody"]
    assert body["required"] is True
    assert body["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/ItemIn"}}}
    schema = doc["components"]["schemas"]["ItemIn"]
    assert schema["required"] == ["name"]
    assert schema["additionalProperties"] is False  # unknown fields are refused


def test_query_headers_and_form(api: Callable[..., Flask]) -> None:
    doc = document(api())
    query = {p["name"]: p for p in op(doc, "/items", "get")["parameters"]}
    assert query["limit"]["in"] == "query" and query["limit"]["schema"]["type"] == "integer"
    assert query["tag"]["schema"]["type"] == "array"
    put = op(doc, "/items/{item_id}/tags/{colour}", "put")
    [header] = [p for p in put["parameters"] if p["in"] == "header"]
    assert header["name"] == "X-Tenant" and header["required"] is True
    assert set(put["requestBody"]["content"]) == {"application/x-www-form-urlencoded",
                                                  "multipart/form-data"}
    assert put["requestBody"]["required"] is False


def test_a_path_schema_describes_the_path_parameters(make_app: Callable[..., Flask]) -> None:
    app = make_app(init=False)

    @app.get("/users/<name>")
    @public
    @validate({"name": fields.String(validate=lambda s: len(s) < 9)}, location="path")
    def user(name: str, path_data: Any) -> Any:
        return {}

    ApiGuard(app)
    [param] = op(document(app), "/users/{name}", "get")["parameters"]
    assert param == {"in": "path", "name": "name", "required": True, "schema": {"type": "string"}}


def test_two_schema_classes_with_one_name_get_two_components(make_app: Callable[..., Flask]) -> None:
    app = make_app(init=False)
    first = type("Login", (Schema,), {"user": fields.String()})
    second = type("Login", (Schema,), {"email": fields.String()})

    @app.post("/a")
    @public
    @validate(first)
    def a(json_data: Any) -> Any:
        return {}

    @app.post("/b")
    @public
    @validate(second)
    def b(json_data: Any) -> Any:
        return {}

    ApiGuard(app)
    doc = document(app)  # pytest turns apispec's "Multiple schemas resolved" warning into an error
    assert {"Login", "Login2"} <= set(doc["components"]["schemas"])


def test_length_limits_of_the_hardened_fields(make_app: Callable[..., Flask]) -> None:
    from flask_apiguard.fields import Password, SafeString

    app = make_app(init=False)

    class Account(Schema):
        name = SafeString(max_length=64)
        password = Password(required=True)

    @app.post("/accounts")
    @public
    @validate(Account)
    def accounts(json_data: Any) -> Any:
        return {}

    ApiGuard(app)
    properties = document(app)["components"]["schemas"]["Account"]["properties"]
    assert properties["name"]["maxLength"] == 64
    assert properties["password"]["minLength"] == 12 and properties["password"]["maxLength"] == 128


# -- responses ----------------------------------------------------------------------------------

def test_every_error_refers_to_the_problem_schema(api: Callable[..., Flask]) -> None:
    doc = document(api())
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "error", "request_id"}
    assert {"errors", "retry_after"} <= set(problem["properties"])
    for item in doc["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if status != "2XX":
                    assert response["content"] == {"application/problem+json": {
                        "schema": {"$ref": "#/components/schemas/Problem"}}}, status


def statuses(doc: dict[str, Any], path: str, method: str = "get") -> set[str]:
    return set(op(doc, path, method)["responses"])


def test_the_responses_each_route_can_produce(api: Callable[..., Flask]) -> None:
    doc = document(api())
    # public, default limit, no body, no parameters
    assert statuses(doc, "/health") == {"2XX", "400", "429", "4XX", "500"}
    # authenticated, roles and scopes, a JSON body, its own limit
    assert statuses(doc, "/items", "post") == {"2XX", "400", "401", "403", "413", "415", "429",
                                               "4XX", "500"}
    # a path parameter, api key scopes
    assert statuses(doc, "/items/{item_id}") == {"2XX", "400", "401", "403", "404", "429",
                                                 "4XX", "500"}
    # public and exempt: no 401, no 429
    assert statuses(doc, "/files/{name}") == {"2XX", "400", "404", "4XX", "500"}
    # exempt, but credentials are checked (the auth-failure limit)
    put = op(doc, "/items/{item_id}/tags/{colour}", "put")["responses"]
    assert "429" in put and "RateLimit-Limit" not in put["429"]["headers"]
    assert put["415"]["description"].endswith("JSON or a form.")
    # the 429 of a limited view
    headers = op(doc, "/items", "post")["responses"]["429"]["headers"]
    assert headers["Retry-After"]["required"] is True
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(headers)
    assert op(doc, "/private", "get")["responses"]["401"]["headers"]["WWW-Authenticate"]["required"]


def test_503_where_shared_state_can_fail_closed(api: Callable[..., Flask]) -> None:
    assert "503" not in statuses(document(api()), "/private")
    revocation = document(api(APIGUARD_JWT_REVOCATION=True))
    assert "503" in statuses(revocation, "/private")
    assert "503" not in statuses(revocation, "/health")
    closed = document(api(APIGUARD_RATELIMIT_ON_STORAGE_ERROR="closed"))
    assert "503" in statuses(closed, "/health")
    assert "503" not in statuses(closed, "/files/{name}")  # public and exempt: no shared state


def test_deprecated_operations(api: Callable[..., Flask]) -> None:
    doc = document(api())
    old = op(doc, "/old/{ratio}", "get")
    assert old["deprecated"] is True
    assert "410" in old["responses"]
    assert old["x-apiguard"]["sunset"] == "2020-01-01T00:00:00Z"
    later = op(doc, "/later", "get")
    assert later["deprecated"] is True
    assert "2099-01-01" in later["responses"]["410"]["description"]  # from the sunset on
    assert {"Deprecation", "Sunset", "Link"} <= set(later["responses"]["2XX"]["headers"])
    assert "deprecated" not in op(doc, "/health", "get")
    relaxed = document(api(APIGUARD_SUNSET_ENFORCE=False))
    assert "410" not in op(relaxed, "/old/{ratio}", "get")["responses"]


# -- served at APIGUARD_OPENAPI_ROUTE ------------------------------------------------------------

def test_no_route_by_default(api: Callable[..., Flask]) -> None:
    app = api()
    assert "apiguard_openapi" not in app.view_functions
    assert app.test_client().get("/openapi.json").status_code == 404


def test_served_publicly_under_default_deny(api: Callable[..., Flask]) -> None:
    app = api(APIGUARD_OPENAPI_ROUTE="/openapi.json")
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    served = json.loads(response.data)
    assert served == document(app)
    assert op(served, "/openapi.json", "get")["security"] == []
    # rate limited like every public view (the default limit, per client IP)
    assert response.headers["RateLimit-Limit"] == "100"


@pytest.mark.parametrize("value", ["openapi.json", "/docs/<name>", "/open api"])
def test_bad_route_is_a_startup_error(api: Callable[..., Flask], value: str) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_OPENAPI_ROUTE"):
        api(APIGUARD_OPENAPI_ROUTE=value)


def test_bad_info_is_a_startup_error(api: Callable[..., Flask]) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_OPENAPI_INFO"):
        api(APIGUARD_OPENAPI_INFO={"title": 3})


# -- APIFlask and flask-smorest: one document ---------------------------------------------------

def test_apiflask_document_gets_the_guards_part(tmp_path: Path) -> None:
    from apiflask import APIFlask

    app = APIFlask("pets", instance_path=str(tmp_path / "instance"))
    app.test_client_class = HttpsClient
    app.config.update(base_config(APIGUARD_OPENAPI_ROUTE="/guard-openapi.json",
                                  APIGUARD_PUBLIC_ENDPOINTS=["static", "openapi.spec"]))

    class Pet(Schema):
        name = fields.String(required=True)

    @app.get("/pets/<int:pet_id>")
    @app.output(Pet)
    @require_jwt
    @scopes("pets:read")
    def get_pet(pet_id: int) -> Any:
        return {"name": "Rex"}

    @app.post("/pets")
    @app.input(Pet)
    @public
    def add_pet(json_data: Any) -> Any:
        return json_data

    ApiGuard(app)
    doc = document(app)
    assert doc["info"]["title"] == "APIFlask"  # APIFlask's own document
    get = op(doc, "/pets/{pet_id}", "get")
    assert get["security"] == [{"jwt": ["pets:read"]}]
    assert "200" in get["responses"] and "2XX" not in get["responses"]
    assert "401" in get["responses"] and "403" in get["responses"]
    assert op(doc, "/pets", "post")["security"] == []
    assert doc["components"]["securitySchemes"] == {
        "jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
    # APIFlask's own spec route shows it too, and so does the guard's
    client = app.test_client()
    theirs = client.get("/openapi.json").get_json()
    assert op(theirs, "/pets/{pet_id}", "get")["security"] == [{"jwt": ["pets:read"]}]
    served = json.loads(client.get("/guard-openapi.json").data)
    assert served.pop("servers") == [{"url": "https://localhost/"}]  # APIFlask's, in a request
    assert served == doc
    # and the views still work behind the guard
    assert client.get("/pets/1").status_code == 401
    token = token_for(app, scopes=["pets:read"])
    assert client.get("/pets/1", headers=bearer(token)).get_json() == {"name": "Rex"}


def test_apiflask_spec_processor_of_the_app_is_kept(tmp_path: Path) -> None:
    from apiflask import APIFlask

    app = APIFlask("pets", instance_path=str(tmp_path / "instance"))
    app.config.update(base_config())

    @app.spec_processor
    def rename(spec: dict[str, Any]) -> dict[str, Any]:
        spec["info"]["title"] = "Renamed"
        return spec

    @app.get("/pets")
    @require_jwt
    def pets() -> Any:
        return []

    ApiGuard(app)
    with app.app_context():
        theirs = app.spec
    assert theirs["info"]["title"] == "Renamed"  # type: ignore[index]
    assert op(theirs, "/pets", "get")["security"] == [{"jwt": []}]  # type: ignore[arg-type]


def test_flask_smorest_document_gets_the_guards_part(tmp_path: Path) -> None:
    from flask.views import MethodView as SmorestView
    from flask_smorest import Api, Blueprint

    app = Flask("shop", instance_path=str(tmp_path / "instance"))
    app.test_client_class = HttpsClient
    app.config.update(base_config(
        API_TITLE="Shop", API_VERSION="1", OPENAPI_VERSION="3.1.0",
        APIGUARD_OPENAPI_ROUTE="/guard-openapi.json",
    ))
    smorest = Api(app)
    guard = ApiGuard(app)
    blp = Blueprint("orders", __name__, url_prefix="/orders")

    class Order(Schema):
        item = fields.String(required=True)

    @blp.route("/")
    class Orders(SmorestView):
        @blp.response(200, Order(many=True))
        @require_api_key(scopes=["orders:read"])
        def get(self) -> Any:
            return []

        @blp.arguments(Order)
        @blp.response(201, Order)
        @require_jwt
        @roles("clerk")
        def post(self, data: Any) -> Any:
            return data

    smorest.register_blueprint(blp)
    with app.app_context():
        doc = guard.openapi()
    validate_spec(doc)
    assert doc["info"] == {"title": "Shop", "version": "1"}
    get = op(doc, "/orders/", "get")
    assert get["security"] == [{"api_key": ["orders:read"]}]
    post = op(doc, "/orders/", "post")
    assert post["security"] == [{"jwt": []}]
    assert "requestBody" in post and "201" in post["responses"]
    assert {"401", "403", "415"} <= set(post["responses"])
    assert set(doc["components"]["securitySchemes"]) == {"jwt", "api_key"}
    served = app.test_client().get("/guard-openapi.json")
    assert json.loads(served.data) == doc
    assert app.test_client().get("/orders/").status_code == 401


def test_a_problem_schema_of_the_app_is_not_overwritten(tmp_path: Path) -> None:
    from flask_smorest import Api, Blueprint

    app = Flask("shop", instance_path=str(tmp_path / "instance"))
    app.config.update(base_config(API_TITLE="Shop", API_VERSION="1", OPENAPI_VERSION="3.1.0"))
    smorest = Api(app)
    smorest.spec.components.schema("Problem", {"type": "object", "properties": {"x": {}}})
    blp = Blueprint("ping", __name__)

    @blp.route("/ping")
    @require_jwt
    def ping() -> Any:
        return {}

    smorest.register_blueprint(blp)
    ApiGuard(app)
    doc = document(app)
    assert doc["components"]["schemas"]["Problem"] == {"type": "object", "properties": {"x": {}}}
    ref = op(doc, "/ping", "get")["responses"]["401"]["content"]["application/problem+json"]
    assert ref == {"schema": {"$ref": "#/components/schemas/ApiGuardProblem"}}


# -- Schemathesis against the example app --------------------------------------------------------

EXAMPLE_VIEW_ERRORS = {
    # what the example's views answer themselves (abort), documented by the 4XX range only
    ("POST", "/api/auth/login"): {401},
    ("POST", "/api/users"): {409},
    ("POST", "/api/notes"): {403},
}


@pytest.mark.slow
def test_schemathesis_finds_nothing_against_the_example_app(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    from example_app import create_app

    for name in list(os.environ):
        if name.startswith(("APIGUARD_", "EXAMPLE_")):
            monkeypatch.delenv(name)
    app = create_app({
        "TESTING": True,
        "EXAMPLE_DATABASE": str(tmp_path / "example.sqlite3"),
        "EXAMPLE_ADMIN_PASSWORD": "violet-anchor-93-thimble",
        "EXAMPLE_PASSWORD_METHOD": "pbkdf2:sha256:1000",
        "APIGUARD_JWT_SECRET": SECRET,
        "APIGUARD_API_KEY_STORE": f"sqlite:///{tmp_path / 'keys.sqlite3'}",
        # room for many requests from one address; the example's own limits stay
        "APIGUARD_RATELIMIT_DEFAULT": "10000 per minute",
        "APIGUARD_AUTH_FAILURE_LIMIT": "10000 per minute",
    })
    # the document as served, loaded through the app itself (in-process WSGI calls)
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app, base_url="https://localhost")
    with app.app_context():
        validate_spec(ApiGuard().openapi())

    def token() -> str:
        with app.app_context():
            issued: str = ApiGuard().issue_token("admin", roles=["admin", "user"],
                                                 scopes=["notes:read", "notes:write"])
        return issued

    def only_documented_view_errors(ctx: Any, response: Any, case: Any) -> bool | None:
        """A status the document lists only as the 4XX range must be one the view raises."""
        documented = set(case.operation.definition.raw["responses"])
        if response.status_code < 400 or str(response.status_code) in documented:
            return None
        key = (case.method.upper(), case.operation.path)
        assert response.status_code in EXAMPLE_VIEW_ERRORS.get(key, set()), (
            f"{key}: {response.status_code} is not documented")
        return True

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance,
              only_documented_view_errors]
    deadline = time.monotonic() + 240
    seen: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = st.one_of(operation.as_strategy(),
                             operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE))

        @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=strategy, authenticated=st.booleans())
        def exercise(case: Any, authenticated: bool) -> None:
            headers = bearer(token()) if authenticated else {}
            response = case.call(base_url="https://localhost", headers=headers)
            seen.setdefault(case.operation.label, set()).add(response.status_code)
            case.validate_response(response, checks=checks)

        exercise()
        assert time.monotonic() < deadline, "the Schemathesis run took too long"
    # protected routes were exercised past authentication, not only refused
    assert 200 in seen["GET /api/notes"] and 401 in seen["GET /api/notes"]
    assert 201 in seen["POST /api/notes"]
    assert 200 in seen["GET /api/v1/notes"]
