"""Smaller findings of the first code review, one test each."""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import pytest

from flask_apiguard import ApiGuard, public, rate_limit
from flask_apiguard.apikeys import MemoryKeyStore
from flask_apiguard.ratelimit.memory import LocalStorage
from flask_apiguard.ratelimit.shared import SharedState, redacted

from ..conftest import SECRET, bearer, problem


@pytest.mark.parametrize("audience", ["", []])
def test_an_empty_aud_is_still_an_aud(client: Any, audience: Any) -> None:
    token = jwt.encode({"sub": "a", "exp": int(time.time()) + 60, "aud": audience}, SECRET,
                       algorithm="HS256")
    assert problem(client.get("/private", headers=bearer(token)))["error"] == "invalid_token"


def test_storage_uri_secrets_never_reach_the_log(caplog: Any) -> None:
    assert redacted("redis://user:pw@host:6390/1?password=hunter2") == "redis://host:6390/1"
    with caplog.at_level(logging.WARNING, logger="flask_apiguard"):
        SharedState("redis://127.0.0.1:1/0?password=hunter2", {}, "fixed-window", "open").admit(
            (), False, None, (), False)
    assert "hunter2" not in caplog.text


def test_plain_http_redirect_is_not_cacheable_without_trusted_hosts(client: Any) -> None:
    response = client.get("/health", base_url="http://evil.com",
                          headers={"Authorization": "Bearer x"})
    assert response.status_code == 301
    assert response.headers["Cache-Control"] == "no-store"


def test_a_scope_is_one_counter_whatever_each_view_allows(make_app: Any) -> None:
    app = make_app(init=False)

    @app.get("/a")
    @public
    @rate_limit("3/hour", scope="sms")
    def a() -> Any:
        return {}

    @app.get("/c")
    @public
    @rate_limit("5/hour", scope="sms")
    def c() -> Any:
        return {}

    ApiGuard(app)
    client = app.test_client()
    assert [client.get("/a").status_code for _ in range(3)] == [200] * 3
    assert [client.get("/c").status_code for _ in range(3)] == [200, 200, 429]


def test_the_memory_sweep_survives_concurrent_expiry() -> None:
    import threading

    storage = LocalStorage()
    storage.SWEEP_EVERY = 0
    errors: list[BaseException] = []

    def work(prefix: str) -> None:
        try:
            for i in range(300):
                storage.incr(f"{prefix}{i}", 0.001)
                storage.get(f"{prefix}{i - 1}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{n}-",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []


def test_a_wrong_secret_never_reads_the_key_record() -> None:
    store = MemoryKeyStore("agk")
    plaintext, key = store.create("k")
    read: list[str] = []
    original = store._fetch
    store._fetch = lambda key_id: read.append(key_id) or original(key_id)  # type: ignore[method-assign]
    assert store.verify(plaintext[:-1] + ("0" if plaintext[-1] != "0" else "1")) is None
    assert read == []
    assert store.verify(plaintext) == key and read == [key.key_id]


def test_numbers_beyond_float_range_are_malformed(app: Any, client: Any) -> None:
    from ..conftest import token_for

    response = client.post("/echo", data='{"a": 1e999}', content_type="application/json",
                           headers=bearer(token_for(app)))
    assert problem(response)["error"] == "malformed_json"


def test_first_hit_of_a_redis_sliding_window_has_a_reset(redis_url: str,
                                                         storage_options: dict[str, Any]) -> None:
    from limits import parse

    from flask_apiguard.ratelimit.probes import LimitProbe

    shared = SharedState(redis_url, storage_options, "sliding-window-counter", "closed")
    verdict = shared.admit((), False, None, (LimitProbe(parse("5/minute"), ("a", "b", "c")),), True)
    assert verdict.window is not None and verdict.window.reset_in >= 59
