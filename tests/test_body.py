"""Steps 6 and 10: body size, media type, JSON well-formedness, depth, ``$`` keys, repeated
query parameters, in that order and before any schema sees the data."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, request
from marshmallow import fields
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response

from flask_apiguard import ApiGuard, public, require_jwt, signals, validate
from flask_apiguard.layers.body import depth_exceeds

from .conftest import bearer, problem, token_for


@dataclass
class Guarded:
    """A test app, and the names of the views that ran."""

    app: Flask
    calls: list[str] = field(default_factory=list)


def build(make_app: Callable[..., Flask], **config: Any) -> Guarded:
    """An app with public and protected views reading the body, a form view and query views."""
    config.setdefault("APIGUARD_RATELIMIT_DEFAULT", None)
    app = make_app(init=False, **config)
    guarded = Guarded(app)

    @app.route("/open", methods=["POST", "PUT", "PATCH", "DELETE"])
    @public
    def open_view() -> Any:
        guarded.calls.append("open")
        return {"json": request.get_json(silent=True), "data": request.get_data(as_text=True)}

    @app.post("/secure")
    @require_jwt
    def secure() -> Any:
        guarded.calls.append("secure")
        return {"json": request.get_json(silent=True)}

    @app.post("/items")
    @public
    @validate({"name": fields.String(required=True), "tags": fields.List(fields.String())})
    def items(json_data: dict[str, Any]) -> Any:
        guarded.calls.append("items")
        document = request.get_json()
        return {"loaded": json_data, "raw": document}, 201

    @app.post("/form")
    @public
    @validate({"name": fields.String(required=True)}, location="form")
    def form(form_data: dict[str, Any]) -> Any:
        guarded.calls.append("form")
        return {"form": form_data}

    @app.get("/args")
    @public
    def args() -> Any:
        guarded.calls.append("args")
        return {"args": {k: request.args.getlist(k) for k in request.args}}

    @app.get("/search")
    @public
    @validate({"ids": fields.List(fields.Integer()), "q": fields.String()}, location="query")
    def search(query_data: dict[str, Any]) -> Any:
        guarded.calls.append("search")
        return {"query": query_data, "args": {k: request.args.getlist(k) for k in request.args}}

    ApiGuard(app)
    return guarded


@pytest.fixture
def guarded(make_app: Callable[..., Flask]) -> Guarded:
    return build(make_app)


def post_json_bytes(client: Any, path: str, data: bytes | str, **kwargs: Any) -> Any:
    return client.post(path, data=data, content_type="application/json", **kwargs)


# -- 413 payload_too_large (step 6) ----------------------------------------------------------

def test_body_over_the_default_limit_is_413(guarded: Guarded) -> None:
    app = guarded.app
    body = json.dumps({"blob": "x" * 10240})
    response = post_json_bytes(app.test_client(), "/open", body)
    assert response.status_code == 413
    assert problem(response)["error"] == "payload_too_large"
    assert guarded.calls == []


def test_body_at_the_limit_passes(make_app: Callable[..., Flask]) -> None:
    guarded = build(make_app, APIGUARD_MAX_CONTENT_LENGTH=100)
    app = guarded.app
    client = app.test_client()
    exact = json.dumps({"blob": "x" * (100 - 12)})
    assert len(exact) == 100
    assert post_json_bytes(client, "/open", exact).status_code == 200
    over = json.dumps({"blob": "x" * (101 - 12)})
    response = post_json_bytes(client, "/open", over)
    assert response.status_code == 413
    assert problem(response)["error"] == "payload_too_large"
    assert guarded.calls == ["open"]


def test_size_is_checked_before_authentication(guarded: Guarded) -> None:
    app = guarded.app
    response = post_json_bytes(app.test_client(), "/secure", b"[" + b"1," * 6000 + b"1]")
    assert response.status_code == 413
    assert problem(response)["error"] == "payload_too_large"
    assert "WWW-Authenticate" not in response.headers


def test_body_is_not_read_when_content_length_is_too_large(
    guarded: Guarded,
) -> None:
    app = guarded.app
    stream = io.BytesIO(b"{" * 20000)
    response = app.test_client().post("/open", input_stream=stream, content_length=20000,
                                      content_type="application/json")
    assert response.status_code == 413
    assert problem(response)["error"] == "payload_too_large"
    assert stream.tell() == 0
    assert guarded.calls == []


def chunked_environ(path: str, body: bytes, content_type: str = "application/json",
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A chunked upload as a server that de-chunks presents it: no CONTENT_LENGTH."""
    environ = EnvironBuilder(path=path, method="POST", base_url="https://localhost",
                             headers=headers or {},
                             environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["CONTENT_TYPE"] = content_type
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input_terminated"] = True
    environ["wsgi.input"] = io.BytesIO(body)
    return environ


def test_chunked_upload_without_content_length_over_the_limit_is_413(
    guarded: Guarded,
) -> None:
    app = guarded.app
    body = json.dumps({"blob": "x" * 50000}).encode()
    response = Response.from_app(app, chunked_environ("/open", body))
    assert response.status_code == 413
    assert problem(response)["error"] == "payload_too_large"
    assert guarded.calls == []


def test_chunked_upload_over_the_limit_is_not_truncated_and_accepted(
    guarded: Guarded,
) -> None:
    # The first 10 240 bytes are a valid document; the rest is padding past the limit.
    app = guarded.app
    body = b'{"a": 1}' + b" " * 50000
    response = Response.from_app(app, chunked_environ("/open", body))
    assert response.status_code == 413
    assert problem(response)["error"] == "payload_too_large"
    assert guarded.calls == []


def test_chunked_upload_within_the_limit_passes(guarded: Guarded) -> None:
    app = guarded.app
    response = Response.from_app(app, chunked_environ("/open", b'{"small": true}'))
    assert response.status_code == 200
    assert json.loads(response.get_data())["json"] == {"small": True}


def test_chunked_upload_to_a_protected_view_over_the_limit(
    guarded: Guarded,
) -> None:
    app = guarded.app
    body = b"[" + b"1," * 30000 + b"1]"
    anonymous = Response.from_app(app, chunked_environ("/secure", body))
    assert anonymous.status_code in (401, 413)
    authorised = Response.from_app(app, chunked_environ(
        "/secure", body, headers=bearer(token_for(app))))
    assert authorised.status_code == 413
    assert problem(authorised)["error"] == "payload_too_large"
    assert guarded.calls == []


def unannounced_body(body: bytes) -> dict[str, Any]:
    """A request body as an HTTP/2 server hands it over without content-length."""
    return {"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True,
            "CONTENT_TYPE": "application/json"}


@pytest.mark.parametrize(("body", "error"), [
    (b'{"x": "' + b"a" * 50_000 + b'"}', "payload_too_large"),
    (b'{"a": {"$where": "1"}}', "invalid_body"),
    (b"[" * 40 + b"]" * 40, "invalid_body"),
    (b'{"a": ', "malformed_json"),
])
def test_a_body_without_content_length_is_checked_like_any_other(app: Any, body: bytes,
                                                                  error: str) -> None:
    # A body with no Content-Length on a terminated stream (HTTP/2) skipped every body check.
    # the test client always sets CONTENT_LENGTH; take it away, as an HTTP/2 request may
    response = app.test_client().open("/echo", method="POST", headers=bearer(token_for(app)),
                           environ_overrides={**unannounced_body(body), "CONTENT_LENGTH": ""})
    assert problem(response)["error"] == error


def test_an_unannounced_body_to_a_public_view_is_size_checked_before_use(app: Any) -> None:
    # The same unannounced body reached a public view unread and unbounded.
    response = app.test_client().open(
        "/health", method="GET",
        environ_overrides={**unannounced_body(b"x" * 20_000), "CONTENT_LENGTH": ""})
    assert problem(response)["error"] == "payload_too_large"


def test_flask_max_content_length_smaller_than_ours_wins(make_app: Callable[..., Flask]) -> None:
    app = build(make_app, MAX_CONTENT_LENGTH=64).app
    client = app.test_client()
    assert post_json_bytes(client, "/open", json.dumps({"a": "x" * 40})).status_code == 200
    response = post_json_bytes(client, "/open", json.dumps({"a": "x" * 100}))
    assert response.status_code == 413
    assert problem(response)["error"] == "payload_too_large"


def test_our_limit_smaller_than_flasks_wins(make_app: Callable[..., Flask]) -> None:
    app = build(make_app, MAX_CONTENT_LENGTH=1_000_000, APIGUARD_MAX_CONTENT_LENGTH=64).app
    response = post_json_bytes(app.test_client(), "/open", json.dumps({"a": "x" * 100}))
    assert response.status_code == 413


def test_raised_limit_admits_larger_bodies(make_app: Callable[..., Flask]) -> None:
    app = build(make_app, APIGUARD_MAX_CONTENT_LENGTH=100_000).app
    body = json.dumps({"blob": "x" * 50000})
    response = post_json_bytes(app.test_client(), "/open", body)
    assert response.status_code == 200
    assert len(response.get_json()["json"]["blob"]) == 50000


def test_form_body_over_the_limit_is_413(make_app: Callable[..., Flask]) -> None:
    guarded = build(make_app, APIGUARD_MAX_CONTENT_LENGTH=200)
    app = guarded.app
    response = app.test_client().post("/form", data={"name": "x" * 500})
    assert response.status_code == 413
    assert problem(response)["error"] == "payload_too_large"
    assert guarded.calls == []


# -- 415 unsupported_media_type (step 10) -----------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_non_json_body_is_415_on_every_method(guarded: Guarded,
                                                method: str) -> None:
    app = guarded.app
    response = app.test_client().open("/open", method=method, data="hello",
                                      content_type="text/plain")
    assert response.status_code == 415
    assert problem(response)["error"] == "unsupported_media_type"
    assert guarded.calls == []


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/json", "application/xml", "application/x-json", "application/jsonp",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
    "application/octet-stream",
])
def test_other_media_types_are_415_on_a_view_without_validate(
    guarded: Guarded, content_type: str,
) -> None:
    app = guarded.app
    response = app.test_client().post("/open", data='{"a": 1}', content_type=content_type)
    assert response.status_code == 415
    assert problem(response)["error"] == "unsupported_media_type"
    assert guarded.calls == []


def test_body_without_content_type_is_415(guarded: Guarded) -> None:
    app = guarded.app
    environ = EnvironBuilder(path="/open", method="POST", base_url="https://localhost",
                             data=b'{"a": 1}').get_environ()
    environ.pop("CONTENT_TYPE", None)
    response = Response.from_app(app, environ)
    assert response.status_code == 415
    assert problem(response)["error"] == "unsupported_media_type"


def test_media_type_is_checked_after_authentication(guarded: Guarded) -> None:
    app = guarded.app
    client = app.test_client()
    anonymous = client.post("/secure", data="x", content_type="text/plain")
    assert anonymous.status_code == 401
    authorised = client.post("/secure", data="x", content_type="text/plain",
                             headers=bearer(token_for(app)))
    assert authorised.status_code == 415


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
    "application/merge-patch+json", "application/vnd.api+json", "application/problem+json",
])
def test_json_media_types_pass(guarded: Guarded, content_type: str) -> None:
    app = guarded.app
    response = app.test_client().post("/open", data='{"a": 1}', content_type=content_type)
    assert response.status_code == 200
    assert response.get_json()["json"] == {"a": 1}


def test_empty_body_without_content_type_passes(guarded: Guarded) -> None:
    app = guarded.app
    client = app.test_client()
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = client.open("/open", method=method)
        assert response.status_code == 200, method
        assert response.get_json() == {"json": None, "data": ""}


def test_empty_body_with_another_content_type_passes(guarded: Guarded) -> None:
    app = guarded.app
    response = app.test_client().post("/open", data=b"", content_type="text/plain")
    assert response.status_code == 200


def test_form_view_accepts_urlencoded_and_multipart(guarded: Guarded) -> None:
    app = guarded.app
    client = app.test_client()
    urlencoded = client.post("/form", data={"name": "ann"})
    assert urlencoded.status_code == 200
    assert urlencoded.get_json() == {"form": {"name": "ann"}}
    multipart = client.post("/form", data={"name": "bob"}, content_type="multipart/form-data")
    assert multipart.status_code == 200
    assert multipart.get_json() == {"form": {"name": "bob"}}
    plain = client.post("/form", data="name=eve", content_type="text/plain")
    assert plain.status_code == 415
    assert problem(plain)["error"] == "unsupported_media_type"


def test_json_only_off_lets_other_types_through(make_app: Callable[..., Flask]) -> None:
    app = build(make_app, APIGUARD_JSON_ONLY=False).app
    response = app.test_client().post("/open", data="hello", content_type="text/plain")
    assert response.status_code == 200
    assert response.get_json()["data"] == "hello"
    # a body that claims JSON is still checked
    bad = app.test_client().post("/open", data="{nope", content_type="application/json")
    assert bad.status_code == 400
    assert problem(bad)["error"] == "malformed_json"


# -- 400 malformed_json -----------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    pytest.param(b'{"a": 1', id="truncated"),
    pytest.param(b'{"a": "unterminated', id="unterminated-string"),
    pytest.param(b'{"a": 1} trailing', id="trailing-garbage"),
    pytest.param(b'{"a": 1}{"b": 2}', id="two-documents"),
    pytest.param(b"{'a': 1}", id="single-quotes"),
    pytest.param(b'{"a": 1,}', id="trailing-comma"),
    pytest.param(b'{"a": NaN}', id="nan"),
    pytest.param(b'{"a": Infinity}', id="infinity"),
    pytest.param(b"[-Infinity]", id="minus-infinity"),
    pytest.param(b'{"a": "\xff\xfe"}', id="invalid-utf8"),
    pytest.param(b'{"a": "\xc3"}', id="truncated-utf8"),
    pytest.param(b'{"a": "\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
    pytest.param(b'{"a": "\\ud800"}', id="lone-high-surrogate-escape"),
    pytest.param(b'{"a": "\\udc00x"}', id="lone-low-surrogate-escape"),
    pytest.param(b'{"\\uD800": 1}', id="lone-surrogate-in-key"),
    pytest.param('{"a": "\\ud800"}'.encode("utf-16"), id="lone-surrogate-escape-in-utf16"),
    pytest.param(b"   ", id="only-whitespace"),
])
def test_malformed_json_is_400(guarded: Guarded, body: bytes) -> None:
    app = guarded.app
    response = post_json_bytes(app.test_client(), "/open", body)
    assert response.status_code == 400
    content = problem(response)
    assert content["error"] == "malformed_json"
    assert "Traceback" not in content["detail"] and "line 1" not in content["detail"]
    assert guarded.calls == []


def test_valid_surrogate_pair_escape_is_fine(guarded: Guarded) -> None:
    app = guarded.app
    response = post_json_bytes(app.test_client(), "/open", b'{"a": "\\ud83d\\ude00"}')
    assert response.status_code == 200
    assert response.get_json()["json"] == {"a": "\U0001f600"}


def test_numbers_beyond_float_range_are_malformed(app: Any, client: Any) -> None:
    # 1e999 was parsed as Infinity, a value JSON cannot carry.
    response = client.post("/echo", data='{"a": 1e999}', content_type="application/json",
                           headers=bearer(token_for(app)))
    assert problem(response)["error"] == "malformed_json"


def test_malformed_json_on_a_validated_view_is_not_a_validation_error(
    guarded: Guarded,
) -> None:
    app = guarded.app
    response = post_json_bytes(app.test_client(), "/items", b'{"name": ')
    assert response.status_code == 400
    assert problem(response)["error"] == "malformed_json"
    assert guarded.calls == []


# -- 400 invalid_body: depth ------------------------------------------------------------------

def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


def nested_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_depth_at_the_limit_passes(guarded: Guarded) -> None:
    app = guarded.app
    client = app.test_client()
    assert post_json_bytes(client, "/open", nested(32)).status_code == 200
    assert post_json_bytes(client, "/open", nested_objects(32)).status_code == 200


@pytest.mark.parametrize("body", [nested(33), nested_objects(33),
                                  '[{"a": [{"b": ' + nested(30) + "}]}]"])
def test_depth_over_the_limit_is_400_invalid_body(guarded: Guarded,
                                                  body: str) -> None:
    app = guarded.app
    response = post_json_bytes(app.test_client(), "/open", body)
    assert response.status_code == 400
    assert problem(response)["error"] == "invalid_body"
    assert guarded.calls == []


def test_configured_depth(make_app: Callable[..., Flask]) -> None:
    app = build(make_app, APIGUARD_MAX_JSON_DEPTH=3).app
    client = app.test_client()
    assert post_json_bytes(client, "/open", '{"a": [{"b": 1}]}').status_code == 200
    response = post_json_bytes(client, "/open", '{"a": [{"b": [1]}]}')
    assert response.status_code == 400
    assert problem(response)["error"] == "invalid_body"


def test_ten_thousand_deep_body_is_400_not_a_recursion_error(
    make_app: Callable[..., Flask],
) -> None:
    guarded = build(make_app, APIGUARD_MAX_CONTENT_LENGTH=100_000)
    app = guarded.app
    client = app.test_client()
    for body in (nested(10000), "[" * 10000, nested_objects(10000)):
        response = post_json_bytes(client, "/open", body)
        assert response.status_code == 400
        assert problem(response)["error"] == "invalid_body"
    assert guarded.calls == []


def test_deep_body_is_refused_even_when_the_depth_limit_is_high(
    make_app: Callable[..., Flask],
) -> None:
    # Python's parser recurses; whatever the configured depth, a 10 000-deep body is no 500.
    app = build(make_app, APIGUARD_MAX_CONTENT_LENGTH=100_000,
                      APIGUARD_MAX_JSON_DEPTH=100_000).app
    response = post_json_bytes(app.test_client(), "/open", nested(20000))
    assert response.status_code in (200, 400)
    assert response.status_code != 500


def test_brackets_inside_strings_do_not_count(guarded: Guarded) -> None:
    app = guarded.app
    client = app.test_client()
    for text in ("[" * 1000, "{" * 1000, '\\"' + "[" * 500, "\\\\" + "{[" * 300):
        body = '{"text": "' + text + '"}'
        response = post_json_bytes(client, "/open", body)
        assert response.status_code == 200, text[:10]
        assert response.get_json()["json"] == json.loads(body)


def test_brackets_in_keys_do_not_count(guarded: Guarded) -> None:
    app = guarded.app
    body = json.dumps({"[" * 100: ["{" * 100]})
    assert post_json_bytes(app.test_client(), "/open", body).status_code == 200


def test_the_depth_scan_is_linear_on_hostile_strings() -> None:
    """A hang guard, not a benchmark: quadratic work on 2 MB would take hours."""
    # The depth scan's string regex backtracked on unterminated strings: quadratic time.
    done = threading.Event()
    results: list[bool] = []

    def scan() -> None:
        for body in (b'"\\' * 1_000_000 + b"[" * 40, b'"' * 2_000_000 + b"[" * 40,
                     b"[" * 40 + b'"\\"' * 700_000):
            results.append(depth_exceeds(body, 32))
        done.set()

    threading.Thread(target=scan, daemon=True).start()
    assert done.wait(20), "the depth scan did not finish: quadratic?"
    assert results == [False, True, True]


# -- 400 invalid_body: operator keys ----------------------------------------------------------

@pytest.mark.parametrize("body", [
    pytest.param('{"$where": "1 == 1"}', id="top-level"),
    pytest.param('{"user": {"name": {"$ne": null}}}', id="nested"),
    pytest.param('{"filters": [{"age": {"$gt": 0}}]}', id="inside-a-list"),
    pytest.param('[[[{"$or": []}]]]', id="inside-nested-lists"),
    pytest.param('{"\\u0024where": "sleep(1000)"}', id="escaped-dollar"),
    pytest.param('{"a": {"\\u0024gt": ""}}', id="escaped-dollar-nested"),
    pytest.param('{"$": 1}', id="bare-dollar"),
])
def test_operator_keys_are_400_invalid_body(guarded: Guarded, body: str) -> None:
    app = guarded.app
    response = post_json_bytes(app.test_client(), "/open", body)
    assert response.status_code == 400
    assert problem(response)["error"] == "invalid_body"
    assert guarded.calls == []


def test_dollar_elsewhere_is_fine(guarded: Guarded) -> None:
    app = guarded.app
    body = {"price": "$5", "a$b": 1, "list": ["$where"], "note": {"cost": "$$$"}}
    response = post_json_bytes(app.test_client(), "/open", json.dumps(body))
    assert response.status_code == 200
    assert response.get_json()["json"] == body


def test_operator_keys_allowed_when_switched_off(make_app: Callable[..., Flask]) -> None:
    app = build(make_app, APIGUARD_REJECT_OPERATOR_KEYS=False).app
    response = post_json_bytes(app.test_client(), "/open", '{"q": {"$gt": 1}}')
    assert response.status_code == 200
    assert response.get_json()["json"] == {"q": {"$gt": 1}}


def test_operator_keys_are_refused_before_the_schema(guarded: Guarded) -> None:
    app = guarded.app
    response = post_json_bytes(app.test_client(), "/items", '{"name": {"$ne": ""}}')
    assert response.status_code == 400
    assert problem(response)["error"] == "invalid_body"


# -- 400 duplicate_parameter ------------------------------------------------------------------

def test_repeated_query_parameter_is_400(guarded: Guarded) -> None:
    app = guarded.app
    response = app.test_client().get("/args?role=user&role=admin")
    assert response.status_code == 400
    content = problem(response)
    assert content["error"] == "duplicate_parameter"
    assert guarded.calls == []


def test_repeated_query_parameter_on_a_validated_view(guarded: Guarded) -> None:
    app = guarded.app
    client = app.test_client()
    response = client.get("/search?q=a&q=b")
    assert response.status_code == 400
    assert problem(response)["error"] == "duplicate_parameter"
    listed = client.get("/search?ids=1&ids=2&q=a")
    assert listed.status_code == 200
    assert listed.get_json()["query"] == {"ids": [1, 2], "q": "a"}


def test_distinct_parameters_pass(guarded: Guarded) -> None:
    app = guarded.app
    response = app.test_client().get("/args?a=1&b=2&c=")
    assert response.status_code == 200
    assert response.get_json()["args"] == {"a": ["1"], "b": ["2"], "c": [""]}


def test_duplicate_params_first(make_app: Callable[..., Flask]) -> None:
    app = build(make_app, APIGUARD_DUPLICATE_PARAMS="first").app
    client = app.test_client()
    response = client.get("/args?role=user&role=admin&x=1")
    assert response.status_code == 200
    assert response.get_json()["args"] == {"role": ["user"], "x": ["1"]}
    search = client.get("/search?q=a&q=b&ids=1&ids=2")
    assert search.get_json()["query"] == {"q": "a", "ids": [1, 2]}


def test_duplicate_params_last(make_app: Callable[..., Flask]) -> None:
    app = build(make_app, APIGUARD_DUPLICATE_PARAMS="last").app
    client = app.test_client()
    response = client.get("/args?role=user&role=admin")
    assert response.get_json()["args"] == {"role": ["admin"]}
    search = client.get("/search?q=a&q=b")
    assert search.get_json()["query"] == {"q": "b"}


def test_duplicate_params_allow(make_app: Callable[..., Flask]) -> None:
    app = build(make_app, APIGUARD_DUPLICATE_PARAMS="allow").app
    response = app.test_client().get("/args?role=user&role=admin")
    assert response.status_code == 200
    assert response.get_json()["args"] == {"role": ["user", "admin"]}


# -- 400 validation_error, and the view's own view of the body -------------------------------

def test_schema_failure_is_400_validation_error(guarded: Guarded) -> None:
    app = guarded.app
    response = post_json_bytes(app.test_client(), "/items", '{"tags": "not-a-list"}')
    assert response.status_code == 400
    content = problem(response)
    assert content["error"] == "validation_error"
    assert set(content["errors"]) == {"name", "tags"}
    assert guarded.calls == []


def test_view_reads_the_same_parsed_document(guarded: Guarded) -> None:
    app = guarded.app
    response = post_json_bytes(app.test_client(), "/items", '{"name": "a", "tags": ["x"]}')
    assert response.status_code == 201
    assert response.get_json() == {"loaded": {"name": "a", "tags": ["x"]},
                                   "raw": {"name": "a", "tags": ["x"]}}


# -- signals ----------------------------------------------------------------------------------

def test_refusals_are_announced_on_their_signals(guarded: Guarded) -> None:
    app = guarded.app
    rejected: list[tuple[str, int]] = []
    failed: list[tuple[str, int]] = []

    def on_rejected(sender: Any, **event: Any) -> None:
        rejected.append((event["error"], event["status"]))

    def on_failed(sender: Any, **event: Any) -> None:
        failed.append((event["error"], event["status"]))

    client = app.test_client()
    with signals.request_rejected.connected_to(on_rejected, app), \
            signals.validation_failed.connected_to(on_failed, app):
        post_json_bytes(client, "/open", "{")
        post_json_bytes(client, "/open", nested(40))
        client.post("/open", data="x", content_type="text/plain")
        post_json_bytes(client, "/open", json.dumps({"a": "x" * 20000}))
        client.get("/args?a=1&a=2")
        post_json_bytes(client, "/items", "{}")
    assert rejected == [("malformed_json", 400), ("invalid_body", 400),
                        ("unsupported_media_type", 415), ("payload_too_large", 413),
                        ("duplicate_parameter", 400)]
    assert failed == [("validation_error", 400)]
