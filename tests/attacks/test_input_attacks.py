"""Attacks on request bodies and parameters, one test per attack, named after it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, request
from marshmallow import Schema, fields
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response

from flask_apiguard import ApiGuard, public, require_jwt, validate

from ..conftest import bearer, problem, token_for


class UserCreateSchema(Schema):
    name = fields.String(required=True)
    email = fields.Email(required=True)


class LoginSchema(Schema):
    username = fields.String(required=True)
    password = fields.String(required=True)


@dataclass
class Target:
    """A test app, and the names of the views that ran."""

    app: Flask
    ran: list[str] = field(default_factory=list)


def build(make_app: Callable[..., Flask], **config: Any) -> Target:
    config.setdefault("APIGUARD_RATELIMIT_DEFAULT", None)
    app: Flask = make_app(init=False, **config)
    target = Target(app)
    ran = target.ran

    @app.post("/raw")
    @public
    def raw() -> Any:
        ran.append("raw")
        document = request.get_json(silent=True)
        return {"kind": type(document).__name__, "size": len(request.get_data())}

    @app.post("/users")
    @require_jwt
    @validate(UserCreateSchema)
    def create_user(json_data: dict[str, Any]) -> Any:
        ran.append("users")
        return {"user": json_data}, 201

    @app.post("/login")
    @public
    @validate(LoginSchema)
    def login(json_data: dict[str, Any]) -> Any:
        ran.append("login")
        return {"ok": True}

    @app.get("/members")
    @public
    @validate({"role": fields.String()}, location="query")
    def members(query_data: dict[str, Any]) -> Any:
        ran.append("members")
        return {"role": query_data.get("role"), "args": request.args.getlist("role")}

    ApiGuard(app)
    return target


@pytest.fixture
def target(make_app: Callable[..., Flask]) -> Target:
    return build(make_app)


def send(client: Any, path: str, body: bytes | str, content_type: str = "application/json",
         **kwargs: Any) -> Any:
    return client.post(path, data=body, content_type=content_type, **kwargs)


# -- JSON bombs -------------------------------------------------------------------------------

def test_json_bomb_by_depth(make_app: Callable[..., Flask]) -> None:
    target = build(make_app, APIGUARD_MAX_CONTENT_LENGTH=200_000)
    app = target.app
    client = app.test_client()
    for body in ("[" * 10000 + "]" * 10000, "[" * 100_000, '{"a":' * 10000 + "0" + "}" * 10000):
        response = send(client, "/raw", body)
        assert response.status_code == 400
        assert problem(response)["error"] == "invalid_body"
    assert target.ran == []


def test_json_bomb_by_depth_within_the_default_size(target: Target) -> None:
    app = target.app
    response = send(app.test_client(), "/login", "[" * 5000 + "]" * 5000)
    assert response.status_code == 400
    assert problem(response)["error"] == "invalid_body"


def test_json_bomb_by_width(target: Target) -> None:
    app = target.app
    element = '{"a":1}'
    count = (10_000 - 2) // (len(element) + 1)
    body = "[" + ",".join([element] * count) + "]"
    assert 9_000 < len(body) <= 10_240
    response = send(app.test_client(), "/raw", body)
    assert response.status_code == 200
    assert response.get_json() == {"kind": "list", "size": len(body)}


def test_json_bomb_by_width_a_megabyte_of_numbers(make_app: Callable[..., Flask]) -> None:
    app = build(make_app, APIGUARD_MAX_CONTENT_LENGTH=2_000_000).app
    body = "[" + ",".join(["1"] * 500_000) + "]"
    assert len(body) > 1_000_000
    response = send(app.test_client(), "/raw", body)
    assert response.status_code in (200, 413)
    if response.status_code == 413:
        assert problem(response)["error"] == "payload_too_large"


def test_json_bomb_by_width_a_megabyte_at_the_default_limit(
    target: Target,
) -> None:
    app = target.app
    body = "[" + ",".join(["1"] * 500_000) + "]"
    response = send(app.test_client(), "/raw", body)
    assert response.status_code == 413
    assert target.ran == []


def test_ten_megabyte_body_is_413_unread(target: Target) -> None:
    app = target.app
    size = 10 * 1024 * 1024
    client = app.test_client()
    for path, headers in (("/raw", {}), ("/users", {}), ("/users", bearer(token_for(app)))):
        stream = io.BytesIO(b"[" + b"1," * (size // 2 - 1) + b"1]")
        response = client.post(path, input_stream=stream, content_length=size,
                               content_type="application/json", headers=headers)
        assert response.status_code == 413, path
        assert problem(response)["error"] == "payload_too_large"
        assert stream.tell() == 0, "the body was read"
    assert target.ran == []


def test_ten_megabyte_chunked_body_is_413(target: Target) -> None:
    app = target.app
    environ = EnvironBuilder(path="/raw", method="POST", base_url="https://localhost",
                             environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"CONTENT_TYPE": "application/json", "HTTP_TRANSFER_ENCODING": "chunked",
                    "wsgi.input_terminated": True})
    stream = io.BytesIO(b"[" + b"1," * (5 * 1024 * 1024) + b"1]")
    environ["wsgi.input"] = stream
    response = Response.from_app(app, environ)
    assert response.status_code == 413
    assert problem(response)["error"] == "payload_too_large"
    assert stream.tell() <= 64 * 1024, "more than the limit was read"
    assert target.ran == []


# -- NoSQL operator injection -----------------------------------------------------------------

@pytest.mark.parametrize("body", [
    pytest.param({"username": "admin", "password": {"$gt": ""}}, id="gt-login-bypass"),
    pytest.param({"username": {"$ne": None}, "password": {"$ne": None}}, id="ne-login-bypass"),
    pytest.param({"username": "admin", "password": {"$regex": ".*"}}, id="regex"),
    pytest.param({"$where": "this.password.length > 0"}, id="where-top-level"),
])
def test_mongo_operator_injection_on_login(target: Target,
                                           body: dict[str, Any]) -> None:
    app = target.app
    response = send(app.test_client(), "/login", json.dumps(body))
    assert response.status_code == 400
    assert problem(response)["error"] == "invalid_body"
    assert target.ran == []


@pytest.mark.parametrize("body", [
    pytest.param('{"filter": {"and": [{"or": [{"$where": "sleep(5000)"}]}]}}', id="where-deep"),
    pytest.param('[[[[[{"x": {"y": {"$gt": 0}}}]]]]]', id="gt-deep-in-lists"),
    pytest.param('{"a": [1, "two", {"b": [{"\\u0024where": "1"}]}]}', id="escaped-where-deep"),
    pytest.param('{"a": {"\\u0024\\u0067t": 0}}', id="fully-escaped-gt"),
])
def test_mongo_operator_injection_at_depth(target: Target, body: str) -> None:
    app = target.app
    response = send(app.test_client(), "/raw", body)
    assert response.status_code == 400
    assert problem(response)["error"] == "invalid_body"
    assert target.ran == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_mongo_operator_injection_smuggled_in_utf16(target: Target,
                                                    encoding: str) -> None:
    # RFC 8259 requires UTF-8; Python's json.loads also detects UTF-16/32 from the bytes
    app = target.app
    body = '{"username": "admin", "password": {"\\u0024gt": ""}}'.encode(encoding)
    response = send(app.test_client(), "/login", body)
    assert response.status_code == 400
    assert problem(response)["error"] in ("invalid_body", "malformed_json")
    assert target.ran == []


# -- HTTP parameter pollution -----------------------------------------------------------------

def test_http_parameter_pollution(target: Target) -> None:
    app = target.app
    client = app.test_client()
    for query in ("role=user&role=admin", "role=admin&role=user", "role=user&x=1&role=admin"):
        response = client.get(f"/members?{query}")
        assert response.status_code == 400
        assert problem(response)["error"] == "duplicate_parameter"
    assert target.ran == []


def test_http_parameter_pollution_with_encoded_names(target: Target) -> None:
    app = target.app
    response = app.test_client().get("/members?role=user&%72ole=admin")
    assert response.status_code == 400
    assert problem(response)["error"] == "duplicate_parameter"


def test_http_parameter_pollution_first_wins_consistently(make_app: Callable[..., Flask]) -> None:
    app = build(make_app, APIGUARD_DUPLICATE_PARAMS="first").app
    response = app.test_client().get("/members?role=user&role=admin")
    assert response.status_code == 200
    # the schema and the view's own request.args agree on one value
    assert response.get_json() == {"role": "user", "args": ["user"]}


# -- mass assignment --------------------------------------------------------------------------

def test_mass_assignment_of_role(target: Target) -> None:
    app = target.app
    body = {"name": "mallory", "email": "m@example.com", "role": "admin"}
    response = send(app.test_client(), "/users", json.dumps(body),
                    headers=bearer(token_for(app, "mallory")))
    assert response.status_code == 400
    content = problem(response)
    assert content["error"] == "validation_error"
    assert content["errors"] == {"role": ["Unknown field."]}
    assert target.ran == []


def test_mass_assignment_of_several_privileged_fields(target: Target) -> None:
    app = target.app
    body = {"name": "m", "email": "m@example.com", "is_admin": True, "id": 1, "owner": "root"}
    response = send(app.test_client(), "/users", json.dumps(body),
                    headers=bearer(token_for(app, "mallory")))
    assert response.status_code == 400
    assert set(problem(response)["errors"]) == {"is_admin", "id", "owner"}


# -- content-type confusion -------------------------------------------------------------------

def test_content_type_confusion_text_plain_carrying_json(target: Target) -> None:
    # text/plain is a CORS "simple" content type: a cross-site form can send it without preflight
    app = target.app
    for path in ("/raw", "/login"):
        response = send(app.test_client(), path,
                        json.dumps({"username": "a", "password": "b"}), "text/plain")
        assert response.status_code == 415
        assert problem(response)["error"] == "unsupported_media_type"
    assert target.ran == []


def test_content_type_confusion_form_to_a_json_view(target: Target) -> None:
    app = target.app
    client = app.test_client()
    urlencoded = client.post("/login", data={"username": "a", "password": "b"})
    assert urlencoded.status_code == 415
    assert problem(urlencoded)["error"] == "unsupported_media_type"
    multipart = client.post("/login", data={"username": "a", "password": "b"},
                            content_type="multipart/form-data")
    assert multipart.status_code == 415
    assert target.ran == []


def test_content_type_confusion_utf7_charset(target: Target) -> None:
    app = target.app
    body = b'{"username": "+ADw-script+AD4-", "password": "p"}'
    response = send(app.test_client(), "/raw", body, "application/json; charset=utf-7")
    assert response.status_code in (200, 400, 415)
    if response.status_code == 200:
        # the charset parameter is not honoured: the text is never decoded as UTF-7
        assert response.get_json() == {"kind": "dict", "size": len(body)}
    else:
        assert problem(response)["error"] in ("malformed_json", "unsupported_media_type")


def test_content_type_confusion_utf16_body(target: Target) -> None:
    app = target.app
    body = json.dumps({"username": "a", "password": "b"}).encode("utf-16")
    response = send(app.test_client(), "/login", body)
    assert response.status_code in (200, 400)


def test_content_type_confusion_missing_content_type(target: Target) -> None:
    app = target.app
    environ = EnvironBuilder(path="/login", method="POST", base_url="https://localhost",
                             data=b'{"username": "a", "password": "b"}',
                             environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()
    environ.pop("CONTENT_TYPE", None)
    response = Response.from_app(app, environ)
    assert response.status_code == 415
    assert problem(response)["error"] == "unsupported_media_type"
    assert target.ran == []


def test_content_type_confusion_lookalike_json_types(target: Target) -> None:
    app = target.app
    client = app.test_client()
    for content_type in ("application/jsonx", "text/json", "application/x-javascript",
                         "json", "application/json+xml", "application/ json"):
        response = send(client, "/raw", '{"a": 1}', content_type)
        assert response.status_code == 415, content_type
    assert target.ran == []


# -- dangerous characters through fields.SafeString -------------------------------------------

def safe_string_app(make_app: Callable[..., Flask]) -> Flask:
    module = pytest.importorskip("flask_apiguard.fields")
    safe_string = getattr(module, "SafeString", None)
    if safe_string is None:
        pytest.skip("flask_apiguard.fields.SafeString is not written yet")
    app: Flask = make_app(init=False, APIGUARD_RATELIMIT_DEFAULT=None)

    @app.post("/comments")
    @public
    @validate({"author": safe_string(max_length=40), "text": safe_string()})
    def comment(json_data: dict[str, Any]) -> Any:
        return {"saved": json_data}, 201

    ApiGuard(app)
    return app


@pytest.mark.parametrize("text", [
    pytest.param("admin\x00.txt", id="nul"),
    pytest.param("\x00", id="only-nul"),
    pytest.param("a\x1bb", id="escape"),
    pytest.param("line\x0bbreak", id="vertical-tab"),
])
def test_nul_bytes_and_control_characters_in_json_strings(
    make_app: Callable[..., Flask], text: str,
) -> None:
    app = safe_string_app(make_app)
    response = send(app.test_client(), "/comments", json.dumps({"author": text, "text": "ok"}))
    assert response.status_code == 400
    content = problem(response)
    assert content["error"] == "validation_error"
    assert set(content["errors"]) == {"author"}


@pytest.mark.parametrize("char", [
    pytest.param("\u202a", id="LRE"), pytest.param("\u202b", id="RLE"),
    pytest.param("\u202c", id="PDF"), pytest.param("\u202d", id="LRO"),
    pytest.param("\u202e", id="RLO"), pytest.param("\u2066", id="LRI"),
    pytest.param("\u2067", id="RLI"), pytest.param("\u2068", id="FSI"),
    pytest.param("\u2069", id="PDI"),
])
def test_bidi_control_characters_in_json_strings(make_app: Callable[..., Flask],
                                                 char: str) -> None:
    # Trojan Source (CVE-2021-42574): "txt.exe" shown as "exe.txt"
    app = safe_string_app(make_app)
    client = app.test_client()
    for body in (json.dumps({"author": "invoice" + char + "txt.exe", "text": "x"}),
                 json.dumps({"author": "ok", "text": "a" + char + "b"}, ensure_ascii=False)):
        response = send(client, "/comments", body.encode())
        assert response.status_code == 400
        assert problem(response)["error"] == "validation_error"


def test_safe_string_accepts_ordinary_text(make_app: Callable[..., Flask]) -> None:
    app = safe_string_app(make_app)
    body = {"author": "Zoë Ångström 日本", "text": "Hello, world! (fine) & 'quoted'"}
    response = send(app.test_client(), "/comments", json.dumps(body, ensure_ascii=False).encode())
    assert response.status_code == 201
    assert response.get_json() == {"saved": body}
    # a decomposed "é" is stored in its composed (NFC) form
    decomposed = send(app.test_client(), "/comments",
                      json.dumps({"author": "Cafe\u0301", "text": "x"}))
    assert decomposed.get_json() == {"saved": {"author": "Caf\u00e9", "text": "x"}}


def test_markup_in_a_safe_string(make_app: Callable[..., Flask]) -> None:
    app = safe_string_app(make_app)
    response = send(app.test_client(), "/comments",
                    json.dumps({"author": "<img src=x onerror=alert(1)>", "text": "x"}))
    assert response.status_code == 400
    assert set(problem(response)["errors"]) == {"author"}
    assert b"onerror" not in response.data


# -- prototype pollution shaped keys ----------------------------------------------------------

@pytest.mark.parametrize("body", [
    pytest.param({"name": "a", "email": "a@example.com", "__proto__": {"isAdmin": True}},
                 id="proto"),
    pytest.param({"name": "a", "email": "a@example.com",
                  "constructor": {"prototype": {"isAdmin": True}}}, id="constructor"),
])
def test_prototype_pollution_keys_are_unknown_fields(target: Target,
                                                     body: dict[str, Any]) -> None:
    app = target.app
    response = send(app.test_client(), "/users", json.dumps(body),
                    headers=bearer(token_for(app)))
    assert response.status_code == 400
    content = problem(response)
    assert content["error"] == "validation_error"
    polluting = next(k for k in body if k not in ("name", "email"))
    assert content["errors"] == {polluting: ["Unknown field."]}
    assert target.ran == []
