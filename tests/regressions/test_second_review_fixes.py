"""Findings of the second code review, one test each."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest
from flask.views import MethodView
from marshmallow import Schema

from flask_apiguard import ApiGuard, public, require_jwt
from flask_apiguard.apikeys import MemoryKeyStore
from flask_apiguard.fields import SanitizedHTML
from flask_apiguard.layers.body import depth_exceeds
from flask_apiguard.ratelimit.places import RedisInflight
from flask_apiguard.ratelimit.redis_client import INFLIGHT_PREFIX
from flask_apiguard.ratelimit.shared import redacted

from ..conftest import bearer, problem, token_for


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
    # the test client always sets CONTENT_LENGTH; take it away, as an HTTP/2 request may
    response = app.test_client().open("/echo", method="POST", headers=bearer(token_for(app)),
                           environ_overrides={**unannounced_body(body), "CONTENT_LENGTH": ""})
    assert problem(response)["error"] == error


def test_an_unannounced_body_to_a_public_view_is_size_checked_before_use(app: Any) -> None:
    response = app.test_client().open(
        "/health", method="GET",
        environ_overrides={**unannounced_body(b"x" * 20_000), "CONTENT_LENGTH": ""})
    assert problem(response)["error"] == "payload_too_large"


def test_the_depth_scan_is_linear_on_hostile_strings() -> None:
    """A hang guard, not a benchmark: quadratic work on 2 MB would take hours."""
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


def test_sanitized_html_refuses_deep_markup_before_parsing() -> None:
    class Note(Schema):
        body = SanitizedHTML(backend="bleach")

    errors = Note().validate({"body": "<ul><li>" * 1_001})
    assert errors == {"body": ["Too much markup: at most 1000 tags."]}
    assert Note().validate({"body": "x" * 10_001}) == {"body": ["Longer than maximum length 10000."]}
    assert Note().load({"body": "<b>ok</b>"}) == {"body": "<b>ok</b>"}


def test_a_lost_redis_place_expires_even_while_the_counter_is_busy(redis_url: str,
                                                                   redis_prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    places = RedisInflight(client)
    key = f"{redis_prefix}:k"  # a counter name of the test's own on the shared server
    places.add(key, "dead-worker", 2)
    client.zadd(INFLIGHT_PREFIX + key, {"dead-worker:1": 1, "dead-worker:2": 1})  # long expired
    places.add(key, "live", 1)  # traffic refreshes the key, not the lost places
    assert places.get(key) == 1
    places.release(key, "live", 1)
    assert places.get(key) == 0
    client.unlink(INFLIGHT_PREFIX + key)


def test_redaction_survives_odd_passwords() -> None:
    assert redacted("redis://user:pa?ss-word-123@host:6379/0") == "redis://host:6379/0"
    assert redacted("redis://:Abc#Def9Ghi@host") == "redis://host"


def test_head_with_its_own_policy_is_listed(make_app: Any) -> None:
    from flask_apiguard.cli import route_table

    app = make_app(init=False, APIGUARD_DEFAULT_DENY=False)

    @require_jwt
    class Report(MethodView):
        def get(self) -> Any:
            return {}

        @public
        def head(self) -> Any:
            return ""

    app.add_url_rule("/report", view_func=Report.as_view("report"))
    ApiGuard(app)
    with app.app_context():
        rows = [r for r in route_table() if r["endpoint"] == "report"]
    assert sorted(m for r in rows for m in r["methods"]) == ["GET", "HEAD"]
    assert {tuple(r["methods"]): r["public"] for r in rows} == {("GET",): False, ("HEAD",): True}


@pytest.mark.parametrize("name", ["evil\x1b]0;pwned\x07", "rtl\u202emoc.evil", "a\nb"])
def test_key_names_must_be_printable(name: str) -> None:
    with pytest.raises(ValueError, match="printable"):
        MemoryKeyStore("agk").create(name)
    with pytest.raises(ValueError, match="printable"):
        MemoryKeyStore("agk").create("ok", owner=name)


def test_example_notes_need_a_user_account(tmp_path: Any) -> None:
    from example_app import create_app

    app = create_app({"TESTING": True, "APIGUARD_FORCE_HTTPS": False,
                      "EXAMPLE_DATABASE": str(tmp_path / "db.sqlite3"),
                      "EXAMPLE_ADMIN_PASSWORD": "a long admin passphrase",
                      "EXAMPLE_PASSWORD_METHOD": "pbkdf2:sha256:1000",
                      "APIGUARD_API_KEY_STORE": "memory://",
                      "APIGUARD_JWT_SECRET": "kT3vQ9xLm2Zr7Wb1Hc5Jp8Nd4Fs6Gy0Aq3Ue9Ri2Ol7Mk1Vx"})
    with app.app_context():
        plaintext, _ = app.extensions["apiguard"].api_keys.create(
            "ownerless", scopes=["notes:read", "notes:write"])
    response = app.test_client().post("/api/notes", json={"title": "t"},
                                      headers={"X-API-Key": plaintext})
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"


def test_sqlite_store_survives_workers_starting_together(tmp_path: Any) -> None:
    import multiprocessing

    path = str(tmp_path / "keys.sqlite3")
    context = multiprocessing.get_context("spawn")
    with context.Pool(6) as pool:
        outcomes = pool.map(_open_store, [path] * 6)
    assert outcomes == ["ok"] * 6


def _open_store(path: str) -> str:
    from flask_apiguard.apikeys import SqliteKeyStore

    try:
        SqliteKeyStore("agk", path).create("k")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"
