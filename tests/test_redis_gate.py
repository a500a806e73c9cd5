"""The one-round-trip Redis gate: same counters as limits' own strategies, one command."""

from __future__ import annotations

from typing import Any

import pytest
from limits import parse
from limits.strategies import STRATEGIES

from flask_apiguard.ratelimit.gate import RedisScriptBackend, compose
from flask_apiguard.ratelimit.places import RedisInflight
from flask_apiguard.ratelimit.probes import LimitProbe
from flask_apiguard.ratelimit.redis_client import INFLIGHT_PREFIX
from flask_apiguard.ratelimit.shared import SharedState

from .conftest import bearer, token_for

STRATEGY_NAMES = ["sliding-window-counter", "fixed-window", "moving-window"]


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_the_script_embeds_limits_own_lua(strategy: str) -> None:
    source = compose(strategy)
    assert "local function" in source
    assert "redis.call" in source


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_gate_counts_what_limits_strategies_read(redis_url: str, storage_options: dict[str, Any],
                                                 strategy: str) -> None:
    shared = SharedState(redis_url, storage_options, strategy, "closed")
    assert isinstance(shared.primary, RedisScriptBackend)
    item = parse("3/minute")
    ids = ("apiguard", "view:x", "ip:198.51.100.1")
    probe = [LimitProbe(item, ids)]
    limits_view = STRATEGIES[strategy](shared.primary.storage)  # type: ignore[arg-type]
    verdicts = [shared.admit((), False, None, probe, True) for _ in range(4)]
    assert [v.breached is None for v in verdicts] == [True, True, True, False]
    assert [v.window.remaining for v in verdicts if v.window] == [2, 1, 0, 0]
    # limits' own strategy, reading the same keys, agrees the budget is spent
    assert limits_view.test(item, *ids) is False
    assert limits_view.get_window_stats(item, *ids).remaining == 0
    # and a hit made by limits' strategy is seen by the gate
    other = ("apiguard", "view:y", "ip:198.51.100.1")
    limits_view.hit(item, *other)
    limits_view.hit(item, *other)
    verdict = shared.admit((), False, None, [LimitProbe(item, other)], True)
    assert verdict.window is not None and verdict.window.remaining == 0


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_gate_order_throttle_then_failure_then_revocation(
        redis_url: str, storage_options: dict[str, Any], redis_prefix: str, strategy: str) -> None:
    shared = SharedState(redis_url, storage_options, strategy, "closed")
    fail = [LimitProbe(parse("2/minute"), ("apiguard", "authfail", "ip:192.0.2.9"))]
    limit = [LimitProbe(parse("10/minute"), ("apiguard", "view:z", "sub:ann"))]
    jti = f"revoked-jti-{redis_prefix}"  # unique to the run until revocation keys are prefixed
    shared.revoke(jti, 60)
    assert shared.admit(fail, False, jti, limit, True).revoked
    assert not shared.admit(fail, True, None, limit, True).throttled  # second failure counted
    throttled = shared.admit(fail, False, None, limit, True)
    assert throttled.throttled and throttled.retry_after >= 1
    # nothing of the view's budget was used by any of these
    verdict = shared.admit((), False, None, limit, True)
    assert verdict.window is not None and verdict.window.remaining == 9


def test_failures_only_probe_holds_a_place_until_it_settles(
        redis_url: str, storage_options: dict[str, Any], redis_prefix: str) -> None:
    shared = SharedState(redis_url, storage_options, "sliding-window-counter", "closed")
    # the client named after the test: its in-flight places are its own even where the guard's
    # own keys do not follow key_prefix yet
    probe = LimitProbe(parse("1/minute"), ("apiguard", "view:login", f"ip:{redis_prefix}"),
                       hit=False)
    first = shared.admit((), False, None, [probe], True)
    assert first.breached is None and first.reserved == (probe,)
    # while the first request is in flight the only place is taken
    assert shared.admit((), False, None, [probe], True).breached is not None
    assert first.backend is not None
    shared.settle(first.backend, first.reserved, first.token, failed=False)  # a success is free
    second = shared.admit((), False, None, [probe], True)
    assert second.breached is None and second.backend is not None
    shared.settle(second.backend, second.reserved, second.token, failed=True)  # a failure counts
    assert shared.admit((), False, None, [probe], True).breached is not None


def test_first_hit_of_a_redis_sliding_window_has_a_reset(redis_url: str,
                                                         storage_options: dict[str, Any]) -> None:
    # On its first hit a Redis sliding window (a key living two windows) reported a reset of 0.
    shared = SharedState(redis_url, storage_options, "sliding-window-counter", "closed")
    verdict = shared.admit((), False, None, (LimitProbe(parse("5/minute"), ("a", "b", "c")),), True)
    assert verdict.window is not None and verdict.window.reset_in >= 59


def test_a_lost_redis_place_expires_even_while_the_counter_is_busy(redis_url: str,
                                                                   redis_prefix: str) -> None:
    # A place lost with its worker lived as long as traffic kept refreshing the counter's key.
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


def _client_commands(url: str, action: Any) -> list[str]:
    """The commands clients sent to Redis while ``action`` ran (commands run inside a script
    are reported as coming from "lua" and are left out)."""
    handshake = {"HELLO", "CLIENT", "ECHO", "SELECT"}  # a new connection's set-up, not a request
    commands = [e["command"].split()[0].upper() for e in _monitor(url, action)
                if e.get("client_type") != "lua"]
    return [c for c in commands if c not in handshake]


@pytest.mark.parametrize(("in_flight", "expected"), [
    pytest.param(None, ["EVALSHA"], id="rate-limits"),
    # with @concurrency_limit the place is taken in the one EVALSHA; the only other command
    # is its release (ZREM) once the response starts, as for count="failures" places
    pytest.param(3, ["EVALSHA", "ZREM"], id="concurrency-limit"),
])
def test_one_round_trip_per_request(private_redis: Any, make_app: Any, in_flight: int | None,
                                    expected: list[str]) -> None:
    """Auth-failure check + revocation + two rate limits: one command (EVALSHA) per request."""
    from flask_apiguard import ApiGuard, concurrency_limit, rate_limit, require_jwt

    app = make_app(init=False, APIGUARD_STORAGE_URI=private_redis.url, APIGUARD_JWT_REVOCATION=True)

    def limited() -> Any:
        return {"ok": True}

    view = require_jwt(rate_limit("100/minute")(rate_limit("1000/hour")(limited)))
    if in_flight is not None:
        view = concurrency_limit(in_flight, key="user")(view)
    app.add_url_rule("/limited", "limited", view)
    ApiGuard(app)
    client = app.test_client()
    token = token_for(app)
    assert client.get("/limited", headers=bearer(token)).status_code == 200  # loads the script

    def ten_requests() -> None:
        for _ in range(10):
            response = client.get("/limited", headers=bearer(token))
            assert response.status_code == 200
            assert response.headers["RateLimit-Limit"] == "100"

    commands = _client_commands(private_redis.url, ten_requests)
    assert commands == expected * 10


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_a_full_concurrency_limit_uses_up_no_rate_limit(
        redis_url: str, storage_options: dict[str, Any], redis_prefix: str,
        strategy: str) -> None:
    shared = SharedState(redis_url, storage_options, strategy, "closed")
    limit = LimitProbe(parse("10/minute"), ("apiguard", "view:x", f"ip:{redis_prefix}"))
    place = LimitProbe(parse("1/minute"), ("apiguard", "conc:x", f"ip:{redis_prefix}"),
                       hit=False, concurrent=True)
    first = shared.admit((), False, None, [limit], True, [place])
    assert not first.busy and first.reserved == (place,) and first.backend is not None
    assert first.window is not None and first.window.remaining == 9
    second = shared.admit((), False, None, [limit], True, [place])
    assert second.busy and second.retry_after == 1
    # a failed response releases its place without counting it anywhere
    shared.settle(first.backend, first.reserved, first.token, failed=True)
    third = shared.admit((), False, None, [limit], True, [place])
    assert not third.busy and third.window is not None
    assert third.window.remaining == 8  # the refused request used up nothing
    assert third.backend is not None
    shared.settle(third.backend, third.reserved, third.token, failed=False)


def test_a_refused_token_is_one_round_trip_too(private_redis: Any, make_app: Any) -> None:
    app = make_app(APIGUARD_STORAGE_URI=private_redis.url)
    client = app.test_client()
    client.get("/private", headers=bearer("bad.token.value"))

    def bad_tokens() -> None:
        for _ in range(3):
            assert client.get("/private", headers=bearer("bad.token.value")).status_code == 401

    assert _client_commands(private_redis.url, bad_tokens) == ["EVALSHA"] * 3


def _monitor(url: str, action: Any) -> list[dict[str, Any]]:
    """Every command Redis ran while ``action`` ran, scripts' own included (MONITOR)."""
    import threading

    import redis

    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        with redis.Redis.from_url(url).monitor() as monitor:
            ready.set()
            for entry in monitor.listen():
                if stop.is_set() and "apiguard-monitor-stop" in entry["command"]:
                    return
                seen.append(entry)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(5)
    action()
    stop.set()
    redis.Redis.from_url(url).echo("apiguard-monitor-stop")
    thread.join(5)
    return seen


def test_the_gate_touches_only_keys_under_the_key_prefix(private_redis: Any, make_app: Any) -> None:
    # the gate read and wrote apiguard:revoked:* and apiguard:inflight:* outside key_prefix
    from flask_apiguard import ApiGuard, rate_limit, require_jwt

    prefix = "run-7f3a"
    app = make_app(init=False, APIGUARD_STORAGE_URI=private_redis.url,
                   APIGUARD_STORAGE_OPTIONS={"key_prefix": prefix}, APIGUARD_JWT_REVOCATION=True)

    @app.post("/login")
    @require_jwt
    @rate_limit("10/minute", count="failures")
    @rate_limit("100/minute")
    def login() -> Any:
        return {"error": "no"}, 401

    ApiGuard(app)
    client = app.test_client()
    token = token_for(app)

    def requests() -> None:
        assert client.post("/login", headers=bearer(token)).status_code == 401
        assert client.get("/private", headers=bearer("bad.token.value")).status_code == 401
        with app.app_context():
            ApiGuard().revoke_token(token)
        assert client.post("/login", headers=bearer(token)).status_code == 401  # revoked

    entries = _monitor(private_redis.url, requests)
    handshake = {"HELLO", "CLIENT", "SELECT", "PING", "SCRIPT", "ECHO"}
    touched: list[str] = []
    for entry in entries:
        words = entry["command"].split()
        name = words[0].upper()
        if name in handshake:
            continue
        if name in ("EVALSHA", "EVAL"):
            touched.extend(words[3:3 + int(words[2])])
        elif name in ("EXISTS", "DEL"):
            touched.extend(words[1:])
        else:
            touched.append(words[1])
    assert touched
    assert [k for k in touched if not k.startswith(f"{prefix}:")] == []
    assert any(":apiguard:revoked:" in k for k in touched)
    assert any(":apiguard:inflight:" in k for k in touched)
