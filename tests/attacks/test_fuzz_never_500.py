"""Property-based fuzzing: whatever arrives as a body or a query string, the answer is never a
500, and every refusal is problem+json."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from flask import Flask, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, fields

from flask_apiguard import ApiGuard, public, validate

from ..conftest import problem

ALLOWED = {200, 201, 400, 413, 415}
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


class Address(Schema):
    city = fields.String(required=True)
    zip = fields.String()


class Order(Schema):
    customer = fields.String(required=True)
    quantity = fields.Integer()
    price = fields.Float()
    tags = fields.List(fields.String())
    address = fields.Nested(Address)
    meta = fields.Dict(keys=fields.String(), values=fields.Raw())
    active = fields.Boolean()


@pytest.fixture
def fuzz_app(make_app: Callable[..., Flask]) -> Flask:
    """One app per test, shared by every example: a validated view and a raw one."""
    app: Flask = make_app(init=False, APIGUARD_RATELIMIT_DEFAULT=None,
                          APIGUARD_AUTH_FAILURE_LIMIT=None, APIGUARD_SECURITY_LOG=False)

    @app.post("/validated")
    @public
    @validate(Order)
    def validated(json_data: dict[str, Any]) -> Any:
        return {"ok": True}, 201

    @app.post("/raw")
    @public
    def raw() -> Any:
        document = request.get_json(silent=True)
        return {"kind": type(document).__name__}

    @app.get("/search")
    @public
    @validate({"q": fields.String(), "page": fields.Integer(), "ids": fields.List(fields.Integer()),
               "sort": fields.String(), "when": fields.DateTime()}, location="query")
    def search(query_data: dict[str, Any]) -> Any:
        return {"keys": sorted(query_data)}

    ApiGuard(app)
    return app


def check(response: Any) -> None:
    assert response.status_code in ALLOWED, (response.status_code, response.data[:300])
    if response.status_code >= 400:
        problem(response)


FIELD_NAMES = st.sampled_from(["customer", "quantity", "price", "tags", "address", "meta",
                               "active", "city", "zip"])
KEYS = st.one_of(FIELD_NAMES, st.text(max_size=12))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(),
                    st.floats(allow_nan=False), st.text(max_size=40))
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=6),
                               st.dictionaries(KEYS, children, max_size=6)),
    max_leaves=40,
)


@FUZZ
@given(document=DOCUMENTS, ascii_only=st.booleans())
def test_random_json_documents_never_500(fuzz_app: Flask, document: Any,
                                         ascii_only: bool) -> None:
    client = fuzz_app.test_client()
    body = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    for path in ("/validated", "/raw"):
        check(client.post(path, data=body, content_type="application/json"))


@FUZZ
@given(fields_=st.dictionaries(FIELD_NAMES, DOCUMENTS, max_size=8))
def test_random_objects_against_the_schema_never_500(fuzz_app: Flask,
                                                     fields_: dict[str, Any]) -> None:
    response = fuzz_app.test_client().post("/validated", data=json.dumps(fields_),
                                           content_type="application/json")
    check(response)
    if response.status_code == 400:
        assert problem(response)["error"] in ("validation_error", "invalid_body", "malformed_json")


@FUZZ
@given(body=st.binary(max_size=2048),
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8",
                                     "application/vnd.api+json", "text/plain"]))
def test_random_bytes_never_500(fuzz_app: Flask, body: bytes, content_type: str) -> None:
    client = fuzz_app.test_client()
    for path in ("/validated", "/raw"):
        check(client.post(path, data=body, content_type=content_type))


@FUZZ
@given(prefix=st.sampled_from([b"", b"{", b"[", b'{"customer": ', b'{"a": "']),
       body=st.binary(max_size=512),
       suffix=st.sampled_from([b"", b"}", b"]", b'"}', b"\\", b"\\ud800"]))
def test_json_shaped_bytes_never_500(fuzz_app: Flask, prefix: bytes, body: bytes,
                                     suffix: bytes) -> None:
    data = prefix + body + suffix
    check(fuzz_app.test_client().post("/validated", data=data, content_type="application/json"))


QUERY_KEYS = st.one_of(st.sampled_from(["q", "page", "ids", "sort", "when"]), st.text(max_size=8))


@FUZZ
@given(pairs=st.lists(st.tuples(QUERY_KEYS, st.text(max_size=20)), max_size=8))
def test_random_query_pairs_never_500(fuzz_app: Flask, pairs: list[tuple[str, str]]) -> None:
    query = urlencode(
        [(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass"))
         for k, v in pairs])
    response = fuzz_app.test_client().get("/search?" + query)
    check(response)
    if response.status_code == 400:
        assert problem(response)["error"] in ("validation_error", "duplicate_parameter")


@FUZZ
@given(raw=st.text(max_size=80))
def test_random_raw_query_strings_never_500(fuzz_app: Flask, raw: str) -> None:
    # odd characters, stray % escapes, ; and & separators, sent as the client sent them
    query = quote(raw, safe="=&;%+[]$?/:")
    check(fuzz_app.test_client().get("/search", query_string=query))
