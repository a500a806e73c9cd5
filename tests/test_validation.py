"""``@validate``: schemas built once, five locations, unknown fields, the error shape, and its
place in the pipeline (after authentication and authorization)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Blueprint, Flask, request
from flask.views import MethodView
from marshmallow import EXCLUDE, INCLUDE, RAISE, Schema, fields, validates_schema
from marshmallow import ValidationError as MarshmallowValidationError
from marshmallow import validate as mv

from flask_apiguard import (
    ApiGuard,
    ApiGuardConfigError,
    current_identity,
    public,
    require_api_key,
    require_jwt,
    roles,
    validate,
)

from .conftest import bearer, problem, token_for


class AddressSchema(Schema):
    street = fields.String(required=True)
    zip = fields.String(required=True, validate=mv.Length(equal=5))


class ItemSchema(Schema):
    sku = fields.String(required=True)
    qty = fields.Integer(required=True, validate=mv.Range(min=1))


class OrderSchema(Schema):
    customer = fields.String(required=True)
    email = fields.Email()
    count = fields.Integer()
    address = fields.Nested(AddressSchema)
    items = fields.List(fields.Nested(ItemSchema))


class UserSchema(Schema):
    name = fields.String(required=True)


class LenientSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True)


class KeepAllSchema(Schema):
    class Meta:
        unknown = INCLUDE

    name = fields.String(required=True)


def new_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    config.setdefault("APIGUARD_RATELIMIT_DEFAULT", None)
    app: Flask = make_app(init=False, **config)
    return app


def post_json(client: Any, path: str, body: Any, **kwargs: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json", **kwargs)


# -- the schema argument ----------------------------------------------------------------------

@pytest.mark.parametrize("schema", [
    pytest.param(UserSchema, id="class"),
    pytest.param(UserSchema(), id="instance"),
    pytest.param({"name": fields.String(required=True)}, id="dict"),
])
def test_schema_class_instance_or_dict(make_app: Callable[..., Flask], schema: Any) -> None:
    app = new_app(make_app)

    @app.post("/users")
    @public
    @validate(schema)
    def create(json_data: dict[str, Any]) -> Any:
        return {"got": json_data}, 201

    ApiGuard(app)
    client = app.test_client()
    ok = post_json(client, "/users", {"name": "ann"})
    assert ok.status_code == 201
    assert ok.get_json() == {"got": {"name": "ann"}}
    bad = post_json(client, "/users", {})
    assert bad.status_code == 400
    assert problem(bad)["errors"] == {"name": ["Missing data for required field."]}


def test_schema_is_built_once_at_decoration_time(make_app: Callable[..., Flask]) -> None:
    built: list[int] = []

    class Counted(Schema):
        name = fields.String()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(1)
            super().__init__(*args, **kwargs)

    app = new_app(make_app)

    @app.post("/counted")
    @public
    @validate(Counted)
    def counted(json_data: dict[str, Any]) -> Any:
        return json_data

    assert len(built) == 1
    ApiGuard(app)
    client = app.test_client()
    for name in ("a", "b", "c"):
        assert post_json(client, "/counted", {"name": name}).get_json() == {"name": name}
    assert len(built) == 1


@pytest.mark.parametrize("schema", [
    pytest.param(dict, id="not-a-schema-class"),
    pytest.param("UserSchema", id="a-string"),
    pytest.param({"name": "string"}, id="dict-of-non-fields"),
])
def test_bad_schema_is_refused_at_decoration(schema: Any) -> None:
    with pytest.raises(TypeError):
        validate(schema)


def test_bad_location_and_arg_name_are_refused_at_decoration() -> None:
    with pytest.raises(TypeError, match="location"):
        validate(UserSchema, location="cookies")
    with pytest.raises(TypeError, match="arg_name"):
        validate(UserSchema, arg_name="not an identifier")


def test_validate_on_a_class_is_refused() -> None:
    with pytest.raises(TypeError):

        @validate(UserSchema)
        class Users(MethodView):
            def post(self) -> Any:
                return {}


def test_two_validations_for_one_location_raise_at_decoration() -> None:
    with pytest.raises(TypeError, match="json"):

        @validate(UserSchema)
        @validate(LenientSchema)
        def twice(json_data: Any) -> Any:
            return json_data

    with pytest.raises(TypeError, match="query"):

        @validate({"a": fields.String()}, location="query", arg_name="one")
        @validate({"b": fields.String()}, location="query", arg_name="two")
        def twice_query(one: Any, two: Any) -> Any:
            return one, two


# -- what the view receives -------------------------------------------------------------------

def test_view_gets_loaded_data_and_the_same_parsed_document(
    make_app: Callable[..., Flask],
) -> None:
    app = new_app(make_app)

    @app.post("/orders")
    @public
    @validate(OrderSchema)
    def order(json_data: dict[str, Any]) -> Any:
        first = request.get_json()
        return {"loaded": json_data, "raw": first, "same": first is request.get_json()}, 201

    ApiGuard(app)
    body = {"customer": "ann", "count": "5", "address": {"street": "Main", "zip": "12345"}}
    response = post_json(app.test_client(), "/orders", body)
    assert response.status_code == 201
    content = response.get_json()
    assert content["loaded"] == {**body, "count": 5}
    assert content["raw"] == body
    assert content["same"] is True


def test_arg_name(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.post("/users")
    @public
    @validate(UserSchema, arg_name="user")
    def create(user: dict[str, Any]) -> Any:
        return {"user": user}

    ApiGuard(app)
    assert post_json(app.test_client(), "/users", {"name": "ann"}).get_json() == {
        "user": {"name": "ann"}}


def test_query_location(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.get("/search")
    @public
    @validate({"q": fields.String(required=True), "page": fields.Integer(load_default=1)},
              location="query")
    def search(query_data: dict[str, Any]) -> Any:
        return query_data

    ApiGuard(app)
    client = app.test_client()
    assert client.get("/search?q=cats").get_json() == {"q": "cats", "page": 1}
    assert client.get("/search?q=cats&page=3").get_json() == {"q": "cats", "page": 3}
    bad = client.get("/search?page=x")
    assert bad.status_code == 400
    content = problem(bad)
    assert content["error"] == "validation_error"
    assert set(content["errors"]) == {"q", "page"}


def test_query_list_accepts_repeated_values(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.get("/things")
    @public
    @validate({"id": fields.List(fields.Integer()), "sort": fields.String()}, location="query")
    def things(query_data: dict[str, Any]) -> Any:
        return query_data

    @app.get("/keyed")
    @public
    @validate({"ids": fields.List(fields.Integer(), data_key="id")}, location="query")
    def keyed(query_data: dict[str, Any]) -> Any:
        return query_data

    ApiGuard(app)
    client = app.test_client()
    assert client.get("/things?id=1&id=2").get_json() == {"id": [1, 2]}
    assert client.get("/things?id=7").get_json() == {"id": [7]}
    assert client.get("/keyed?id=1&id=2&id=3").get_json() == {"ids": [1, 2, 3]}
    bad = client.get("/things?id=1&id=x")
    assert bad.status_code == 400
    assert problem(bad)["errors"] == {"id": {"1": ["Not a valid integer."]}}
    repeated = client.get("/things?id=1&sort=a&sort=b")
    assert repeated.status_code == 400
    assert problem(repeated)["error"] == "duplicate_parameter"


def test_form_location(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.post("/signup")
    @public
    @validate({"name": fields.String(required=True), "age": fields.Integer()}, location="form")
    def signup(form_data: dict[str, Any]) -> Any:
        return form_data, 201

    ApiGuard(app)
    client = app.test_client()
    ok = client.post("/signup", data={"name": "ann", "age": "30"})
    assert ok.status_code == 201
    assert ok.get_json() == {"name": "ann", "age": 30}
    multipart = client.post("/signup", data={"name": "bob"}, content_type="multipart/form-data")
    assert multipart.get_json() == {"name": "bob"}
    bad = client.post("/signup", data={"age": "old"})
    assert bad.status_code == 400
    assert set(problem(bad)["errors"]) == {"name", "age"}


def test_headers_location_ignores_extra_headers(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.get("/tenant")
    @public
    @validate({"tenant": fields.String(required=True, data_key="X-Tenant"),
               "trace": fields.Integer(data_key="X-Trace")}, location="headers")
    def tenant(headers_data: dict[str, Any]) -> Any:
        return headers_data

    ApiGuard(app)
    client = app.test_client()
    ok = client.get("/tenant", headers={"x-tenant": "acme", "X-Trace": "42",
                                        "X-Something-Else": "ignored", "User-Agent": "t"})
    assert ok.status_code == 200
    assert ok.get_json() == {"tenant": "acme", "trace": 42}
    missing = client.get("/tenant")
    assert missing.status_code == 400
    content = problem(missing)
    assert content["error"] == "validation_error"
    assert content["errors"] == {"X-Tenant": ["Missing data for required field."]}


def test_path_location(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.get("/users/<user_id>")
    @public
    @validate({"user_id": fields.UUID()}, location="path")
    def user(user_id: str, path_data: dict[str, Any]) -> Any:
        return {"raw": user_id, "loaded": str(path_data["user_id"]),
                "type": type(path_data["user_id"]).__name__}

    ApiGuard(app)
    client = app.test_client()
    uid = "0b8ab1a4-9f39-4d3c-8f2a-2a8f1f3f1f8e"
    assert client.get(f"/users/{uid}").get_json() == {"raw": uid, "loaded": uid, "type": "UUID"}
    bad = client.get("/users/not-a-uuid")
    assert bad.status_code == 400
    assert problem(bad)["errors"] == {"user_id": ["Not a valid UUID."]}


def test_a_url_argument_with_the_same_name_is_refused(make_app: Any) -> None:
    # Only an endpoint's first rule was checked for a URL variable clashing with arg_name.
    app = make_app(init=False, PROPAGATE_EXCEPTIONS=True)

    @app.get("/items/<path_data>")
    @public
    @validate({"path_data": fields.String()}, location="path")
    def item(path_data: str) -> Any:
        return {}

    ApiGuard(app)
    with pytest.raises(ApiGuardConfigError, match="arg_name"):
        app.test_client().get("/items/x")


def test_stacked_locations(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.put("/shops/<int:shop_id>/items")
    @public
    @validate({"shop_id": fields.Integer(validate=mv.Range(max=100))}, location="path")
    @validate({"dry_run": fields.Boolean(load_default=False)}, location="query")
    @validate(ItemSchema)
    @validate({"version": fields.Integer(data_key="If-Match")}, location="headers",
              arg_name="precondition")
    def put_item(shop_id: int, path_data: Any, query_data: Any, json_data: Any,
                 precondition: Any) -> Any:
        return {"path": path_data, "query": query_data, "json": json_data,
                "headers": precondition}

    ApiGuard(app)
    client = app.test_client()
    response = client.put("/shops/7/items?dry_run=true", data=json.dumps({"sku": "a", "qty": 2}),
                          content_type="application/json", headers={"If-Match": "3"})
    assert response.status_code == 200
    assert response.get_json() == {"path": {"shop_id": 7}, "query": {"dry_run": True},
                                   "json": {"sku": "a", "qty": 2}, "headers": {"version": 3}}
    bad_path = client.put("/shops/700/items", data=json.dumps({"sku": "a", "qty": 2}),
                          content_type="application/json")
    assert bad_path.status_code == 400
    assert set(problem(bad_path)["errors"]) == {"shop_id"}
    bad_json = client.put("/shops/7/items", data=json.dumps({"sku": "a"}),
                          content_type="application/json")
    assert bad_json.status_code == 400
    assert problem(bad_json)["errors"] == {"qty": ["Missing data for required field."]}


# -- unknown fields ---------------------------------------------------------------------------

def test_unknown_json_fields_are_rejected(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.post("/users")
    @public
    @validate(UserSchema)
    def create(json_data: Any) -> Any:
        return json_data

    @app.post("/orders")
    @public
    @validate(OrderSchema)
    def order(json_data: Any) -> Any:
        return json_data

    ApiGuard(app)
    client = app.test_client()
    response = post_json(client, "/users", {"name": "ann", "is_admin": True})
    assert response.status_code == 400
    assert problem(response)["errors"] == {"is_admin": ["Unknown field."]}
    nested = post_json(client, "/orders", {"customer": "c", "address": {
        "street": "s", "zip": "12345", "extra": 1}})
    assert nested.status_code == 400
    assert problem(nested)["errors"] == {"address": {"extra": ["Unknown field."]}}


def test_unknown_query_form_and_path_fields_are_rejected(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.get("/search")
    @public
    @validate({"q": fields.String()}, location="query")
    def search(query_data: Any) -> Any:
        return query_data

    @app.post("/signup")
    @public
    @validate({"name": fields.String()}, location="form")
    def signup(form_data: Any) -> Any:
        return form_data

    @app.get("/a/<first>/<second>")
    @public
    @validate({"first": fields.String()}, location="path")
    def both(first: str, second: str, path_data: Any) -> Any:
        return path_data

    ApiGuard(app)
    client = app.test_client()
    query = client.get("/search?q=a&debug=1")
    assert query.status_code == 400
    assert problem(query)["errors"] == {"debug": ["Unknown field."]}
    form = client.post("/signup", data={"name": "a", "role": "admin"})
    assert form.status_code == 400
    assert problem(form)["errors"] == {"role": ["Unknown field."]}
    path = client.get("/a/x/y")
    assert path.status_code == 400
    assert problem(path)["errors"] == {"second": ["Unknown field."]}


def test_schema_meta_unknown_wins(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.post("/lenient")
    @public
    @validate(LenientSchema)
    def lenient(json_data: Any) -> Any:
        return json_data

    @app.post("/keep")
    @public
    @validate(KeepAllSchema)
    def keep(json_data: Any) -> Any:
        return json_data

    class LenientQuery(Schema):
        class Meta:
            unknown = EXCLUDE

        q = fields.String()

    @app.get("/search")
    @public
    @validate(LenientQuery, location="query")
    def search(query_data: Any) -> Any:
        return query_data

    ApiGuard(app)
    client = app.test_client()
    assert post_json(client, "/lenient", {"name": "a", "x": 1}).get_json() == {"name": "a"}
    assert post_json(client, "/keep", {"name": "a", "x": 1}).get_json() == {"name": "a", "x": 1}
    assert client.get("/search?q=a&utm_source=mail").get_json() == {"q": "a"}


def test_inherited_meta_unknown_wins_for_headers(make_app: Callable[..., Flask]) -> None:
    class StrictBase(Schema):
        class Meta:
            unknown = RAISE

    class Strict(StrictBase):
        tenant = fields.String(data_key="X-Tenant")

    app = new_app(make_app)

    @app.get("/tenant")
    @public
    @validate(Strict, location="headers")
    def tenant(headers_data: Any) -> Any:
        return headers_data

    ApiGuard(app)
    response = app.test_client().get("/tenant", headers={"X-Tenant": "a", "X-Other": "b"})
    # only declared headers are collected, so there is nothing unknown to raise on
    assert response.get_json() == {"tenant": "a"}


# -- the error shape --------------------------------------------------------------------------

def test_error_shape_nested_and_list_indexes(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.post("/orders")
    @public
    @validate(OrderSchema)
    def order(json_data: Any) -> Any:
        return json_data

    ApiGuard(app)
    body = {"email": "nope", "address": {"zip": "1"},
            "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 0}, {"qty": "x"}]}
    response = post_json(app.test_client(), "/orders", body)
    assert response.status_code == 400
    content = problem(response)
    assert content["error"] == "validation_error"
    assert content["title"] == "Bad Request"
    errors = content["errors"]
    assert errors["customer"] == ["Missing data for required field."]
    assert errors["email"] == ["Not a valid email address."]
    assert errors["address"] == {"street": ["Missing data for required field."],
                                 "zip": ["Length must be 5."]}
    assert set(errors["items"]) == {"1", "2"}
    assert errors["items"]["1"] == {"qty": ["Must be greater than or equal to 1."]}
    assert set(errors["items"]["2"]) == {"sku", "qty"}

    def check(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                assert isinstance(key, str)
                check(value)
        else:
            assert isinstance(node, list) and all(isinstance(m, str) for m in node)

    check(errors)


def test_schema_level_errors(make_app: Callable[..., Flask]) -> None:
    class Range(Schema):
        low = fields.Integer(required=True)
        high = fields.Integer(required=True)

        @validates_schema
        def ordered(self, data: dict[str, Any], **kwargs: Any) -> None:
            if data["low"] > data["high"]:
                raise MarshmallowValidationError("low must not exceed high.")

    app = new_app(make_app)

    @app.post("/range")
    @public
    @validate(Range)
    def range_view(json_data: Any) -> Any:
        return json_data

    ApiGuard(app)
    client = app.test_client()
    response = post_json(client, "/range", {"low": 5, "high": 1})
    assert response.status_code == 400
    assert problem(response)["errors"] == {"_schema": ["low must not exceed high."]}
    for not_an_object in ([1, 2], "text", 3, None):
        wrong = post_json(client, "/range", not_an_object)
        assert wrong.status_code == 400
        assert problem(wrong)["error"] == "validation_error"


def test_empty_body_is_validated_as_an_empty_object(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.post("/users")
    @public
    @validate(UserSchema)
    def create(json_data: Any) -> Any:
        return json_data

    ApiGuard(app)
    response = app.test_client().post("/users")
    assert response.status_code == 400
    assert problem(response)["errors"] == {"name": ["Missing data for required field."]}


def test_rejected_values_are_not_echoed(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    class Profile(Schema):
        email = fields.Email(required=True)
        age = fields.Integer(validate=mv.Range(min=0, max=150))
        colour = fields.String(validate=mv.OneOf(["red", "green"]))
        website = fields.URL()
        born = fields.Date()
        nick = fields.String(validate=mv.Length(max=3))

    @app.post("/profile")
    @public
    @validate(Profile)
    def profile(json_data: Any) -> Any:
        return json_data

    ApiGuard(app)
    body = {"email": "SECRET1<script>", "age": "SECRET2", "colour": "SECRET3",
            "website": "javascript:SECRET4", "born": "SECRET5", "nick": "SECRET6"}
    response = post_json(app.test_client(), "/profile", body)
    assert response.status_code == 400
    content = problem(response)
    assert set(content["errors"]) == set(body)
    assert b"SECRET" not in response.data
    assert b"<script>" not in response.data


# -- order in the pipeline --------------------------------------------------------------------

def test_validation_runs_after_authentication_and_authorization(
    make_app: Callable[..., Flask],
) -> None:
    app = new_app(make_app)
    ran: list[str] = []

    @app.post("/admin/users")
    @require_jwt
    @roles("admin")
    @validate(UserSchema)
    def create(json_data: Any) -> Any:
        ran.append(json_data["name"])
        return {"by": current_identity.subject, "user": json_data}, 201

    ApiGuard(app)
    client = app.test_client()
    invalid = {"unknown": 1}
    anonymous = post_json(client, "/admin/users", invalid)
    assert anonymous.status_code == 401
    body = problem(anonymous)
    assert body["error"] == "unauthorized"
    assert "errors" not in body
    garbage = client.post("/admin/users", data="{not json", content_type="application/json")
    assert garbage.status_code == 401
    user = post_json(client, "/admin/users", invalid, headers=bearer(token_for(app, "bob")))
    assert user.status_code == 403
    assert "errors" not in problem(user)
    admin = bearer(token_for(app, "root", roles=["admin"]))
    refused = post_json(client, "/admin/users", invalid, headers=admin)
    assert refused.status_code == 400
    assert problem(refused)["error"] == "validation_error"
    ok = post_json(client, "/admin/users", {"name": "ann"}, headers=admin)
    assert ok.status_code == 201
    assert ok.get_json() == {"by": "root", "user": {"name": "ann"}}
    assert ran == ["ann"]


def test_validation_after_api_key_authentication(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.get("/reports")
    @require_api_key(scopes=["reports:read"])
    @validate({"year": fields.Integer(required=True)}, location="query")
    def reports(query_data: Any) -> Any:
        return query_data

    ApiGuard(app)
    with app.app_context():
        plaintext, _ = ApiGuard().api_keys.create(
            "ci", scopes=["reports:read"])
    client = app.test_client()
    assert client.get("/reports?year=x").status_code == 401
    refused = client.get("/reports?year=x", headers={"X-API-Key": plaintext})
    assert refused.status_code == 400
    assert problem(refused)["errors"] == {"year": ["Not a valid integer."]}
    assert client.get("/reports?year=2024", headers={"X-API-Key": plaintext}).get_json() == {
        "year": 2024}


# -- blueprints, MethodView, async ------------------------------------------------------------

def test_blueprint_views(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)
    bp = Blueprint("api", __name__, url_prefix="/api")

    @bp.post("/users")
    @require_jwt
    @validate(UserSchema)
    def create(json_data: Any) -> Any:
        return json_data, 201

    app.register_blueprint(bp)
    ApiGuard(app)
    client = app.test_client()
    token = bearer(token_for(app))
    assert post_json(client, "/api/users", {"name": "a"}).status_code == 401
    assert post_json(client, "/api/users", {"name": "a"}, headers=token).status_code == 201
    bad = post_json(client, "/api/users", {"name": 1}, headers=token)
    assert bad.status_code == 400
    assert problem(bad)["errors"] == {"name": ["Not a valid string."]}


def test_method_view_methods(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @require_jwt
    class Users(MethodView):
        @validate({"limit": fields.Integer(load_default=10)}, location="query")
        def get(self, query_data: Any) -> Any:
            return {"limit": query_data["limit"]}

        @roles("admin")
        @validate(UserSchema)
        def post(self, json_data: Any) -> Any:
            return {"created": json_data}, 201

    app.add_url_rule("/users", view_func=Users.as_view("users"))
    ApiGuard(app)
    client = app.test_client()
    user = bearer(token_for(app))
    admin = bearer(token_for(app, "root", roles=["admin"]))
    assert client.get("/users?limit=x").status_code == 401
    assert client.get("/users", headers=user).get_json() == {"limit": 10}
    bad_query = client.get("/users?limit=x", headers=user)
    assert bad_query.status_code == 400
    assert problem(bad_query)["errors"] == {"limit": ["Not a valid integer."]}
    assert post_json(client, "/users", {"x": 1}, headers=user).status_code == 403
    bad_body = post_json(client, "/users", {"x": 1}, headers=admin)
    assert bad_body.status_code == 400
    assert set(problem(bad_body)["errors"]) == {"name", "x"}
    created = post_json(client, "/users", {"name": "ann"}, headers=admin)
    assert created.status_code == 201
    assert created.get_json() == {"created": {"name": "ann"}}


def test_async_views(make_app: Callable[..., Flask]) -> None:
    pytest.importorskip("asgiref")
    app = new_app(make_app)

    @app.post("/async/users")
    @require_jwt
    @validate(UserSchema)
    async def create(json_data: Any) -> Any:
        return {"async": True, "user": json_data, "by": current_identity.subject}, 201

    class AsyncItems(MethodView):
        @public
        @validate(ItemSchema)
        async def post(self, json_data: Any) -> Any:
            return {"item": json_data}, 201

    app.add_url_rule("/async/items", view_func=AsyncItems.as_view("async_items"))
    ApiGuard(app)
    client = app.test_client()
    token = bearer(token_for(app, "zed"))
    assert post_json(client, "/async/users", {"name": "a"}).status_code == 401
    ok = post_json(client, "/async/users", {"name": "a"}, headers=token)
    assert ok.status_code == 201
    assert ok.get_json() == {"async": True, "user": {"name": "a"}, "by": "zed"}
    bad = post_json(client, "/async/users", {"name": "a", "admin": True}, headers=token)
    assert bad.status_code == 400
    assert problem(bad)["errors"] == {"admin": ["Unknown field."]}
    item = post_json(client, "/async/items", {"sku": "s", "qty": 1})
    assert item.status_code == 201
    assert item.get_json() == {"item": {"sku": "s", "qty": 1}}


def test_decorator_order_does_not_matter(make_app: Callable[..., Flask]) -> None:
    app = new_app(make_app)

    @app.post("/one")
    @validate(UserSchema)
    @roles("admin")
    @require_jwt
    def one(json_data: Any) -> Any:
        return json_data

    @app.post("/two")
    @require_jwt
    @roles("admin")
    @validate(UserSchema)
    def two(json_data: Any) -> Any:
        return json_data

    ApiGuard(app)
    client = app.test_client()
    user = bearer(token_for(app))
    admin = bearer(token_for(app, "root", roles=["admin"]))
    for path in ("/one", "/two"):
        assert post_json(client, path, {"bad": 1}).status_code == 401
        assert post_json(client, path, {"bad": 1}, headers=user).status_code == 403
        assert post_json(client, path, {"bad": 1}, headers=admin).status_code == 400
        assert post_json(client, path, {"name": "a"}, headers=admin).get_json() == {"name": "a"}


def test_validate_above_the_route_decorator_still_validates(make_app: Any) -> None:
    # @validate above the route decorator wrapped a function Flask never called: no validation.
    app = make_app(init=False)

    @validate({"name": fields.String(required=True)})
    @app.post("/above")
    @public
    def above(json_data: dict[str, Any]) -> Any:
        return {"name": json_data["name"]}

    ApiGuard(app)
    client = app.test_client()
    assert client.post("/above", json={"name": "x"}).get_json() == {"name": "x"}
    refused = client.post("/above", json={"nom": "x"})
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "validation_error"


def test_a_password_context_field_that_is_not_in_the_schema_fails_when_declared() -> None:
    # A misnamed context field was found only by the first load: a 500 on the first request.
    from flask_apiguard.fields import Password

    with pytest.raises(ValueError, match="'usernme' is not a field of the schema"):
        validate({"username": fields.String(), "password": Password(context_fields=("usernme",))})
