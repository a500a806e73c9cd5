"""Step 9, rate limits, on memory storage: defaults, declared and stacked limits, keys,
``count="failures"`` (its bound on parallel guesses on Redis too), the ``RateLimit-*``
headers and the 429 answer."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, abort, request
from flask.testing import FlaskClient

from flask_apiguard import (
    ApiGuard,
    ApiGuardConfigError,
    concurrency_limit,
    current_identity,
    public,
    rate_limit,
    rate_limit_exempt,
    require_api_key,
    roles,
    signals,
)

from .conftest import CounterClock, bearer, problem, token_for

STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
RATELIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
IP_A = "203.0.113.10"
IP_B = "203.0.113.20"


def _tenant() -> str | None:
    """A callable key: the tenant header (``None`` without it, ``""`` when it is empty)."""
    return request.headers.get("X-Tenant")


def build(make_app: Callable[..., Flask], **config: Any) -> Flask:
    """An app with a view per rate-limit feature (default limit ``2/minute`` unless told)."""
    config.setdefault("APIGUARD_RATELIMIT_DEFAULT", "2/minute")
    app = make_app(init=False, **config)
    seen: list[tuple[str | None, str | None]] = []
    app.config["SEEN_BY_KEY"] = seen

    def identity_and_tenant() -> str:
        tenant = request.headers.get("X-Tenant")
        seen.append((current_identity.subject, tenant))
        return f"tenant-{tenant}"

    def add(rule: str, *decorators: Callable[[Any], Any]) -> None:
        def view() -> Any:  # a fresh function per rule: the policy lives on it
            return {"ok": True}

        for decorator in reversed(decorators):
            view = decorator(view)
        app.add_url_rule(rule, rule.strip("/").replace("-", "_"), view)

    add("/a", public)
    add("/b", public)
    add("/declared", public, rate_limit("5/minute"))
    add("/stacked-second-first", public, rate_limit("2/second"), rate_limit("3/minute"))
    add("/stacked-minute-first", public, rate_limit("3/minute"), rate_limit("2/second"))
    add("/stacked-hour", public, rate_limit("10/minute"), rate_limit("3/hour"))
    add("/one", public, rate_limit("3/minute", scope="shared"))
    add("/two", public, rate_limit("3/minute", scope="shared"))
    add("/costly", public, rate_limit("10/minute", cost=3))
    add("/exempt", public, rate_limit_exempt)
    add("/public-auto", public, rate_limit("2/minute"))
    add("/by-auto", rate_limit("2/minute"))
    add("/by-user", rate_limit("2/minute", key="user"))
    add("/by-ip", rate_limit("2/minute", key="ip"))
    add("/by-key", require_api_key, rate_limit("2/minute", key="api_key"))
    add("/by-fn", rate_limit("2/minute", key=identity_and_tenant))
    add("/fn-public", public, rate_limit("2/minute", key=_tenant))
    add("/admin", roles("admin"), rate_limit("2/minute", key="ip"))

    @app.post("/login")
    @public
    @rate_limit("3/minute", key="ip", count="failures")
    def login() -> Any:
        body = request.get_json(silent=True) or {}
        if body.get("password") == "correct horse battery staple":
            return {"token": "t"}
        return {"error": "bad credentials"}, 401

    ApiGuard(app)
    return app


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return build(make_app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def statuses(client: FlaskClient, path: str, times: int, **kwargs: Any) -> list[int]:
    return [client.get(path, **kwargs).status_code for _ in range(times)]


def from_ip(ip: str) -> dict[str, Any]:
    return {"environ_base": {"REMOTE_ADDR": ip}}


def assert_limited(response: Any) -> dict[str, Any]:
    """A 429 ``rate_limit_exceeded`` with ``Retry-After`` equal to the body's ``retry_after``."""
    assert response.status_code == 429, response.data[:200]
    body = problem(response)
    assert body["error"] == "rate_limit_exceeded"
    assert isinstance(body["retry_after"], int)
    assert body["retry_after"] >= 1
    assert response.headers["Retry-After"] == str(body["retry_after"])
    return body


# -- the default limit --------------------------------------------------------------------------

def test_default_limit_applies_per_view(client: FlaskClient) -> None:
    assert statuses(client, "/a", 2) == [200, 200]
    assert_limited(client.get("/a"))
    # /b has its own counter, and another client its own bucket on /a
    assert statuses(client, "/b", 3) == [200, 200, 429]
    assert client.get("/a", **from_ip(IP_B)).status_code == 200


def test_default_limit_covers_protected_views(app: Flask, client: FlaskClient) -> None:
    headers = bearer(token_for(app, "alice"))
    assert statuses(client, "/private", 3, headers=headers) == [200, 200, 429]
    assert client.get("/private", headers=headers).headers["RateLimit-Limit"] == "2"


def test_no_default_limit_means_no_limit_and_no_headers(make_app: Any) -> None:
    app = build(make_app, APIGUARD_RATELIMIT_DEFAULT=None)
    client = app.test_client()
    headers = bearer(token_for(app, "alice"))
    for path, kwargs in (("/a", {}), ("/private", {"headers": headers})):
        for _ in range(30):
            response = client.get(path, **kwargs)
            assert response.status_code == 200
            for name in (*RATELIMIT_HEADERS, "Retry-After"):
                assert name not in response.headers
    # a declared limit still applies
    assert statuses(client, "/public-auto", 3) == [200, 200, 429]


def test_declared_limit_replaces_the_default(client: FlaskClient) -> None:
    responses = [client.get("/declared") for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert {r.headers["RateLimit-Limit"] for r in responses} == {"5"}
    assert [r.headers["RateLimit-Remaining"] for r in responses] == ["4", "3", "2", "1", "0"]
    body = assert_limited(client.get("/declared"))
    assert body["retry_after"] <= 60


def test_exempt_view_has_no_limit_and_no_headers(make_app: Any) -> None:
    client = build(make_app, APIGUARD_RATELIMIT_DEFAULT="1/minute").test_client()
    for _ in range(20):
        response = client.get("/exempt")
        assert response.status_code == 200
        for name in RATELIMIT_HEADERS:
            assert name not in response.headers
    assert statuses(client, "/a", 2) == [200, 429]


# -- stacked limits, scope, cost ----------------------------------------------------------------

STACKED = ("/stacked-second-first", "/stacked-minute-first")


def exhaust_the_second(client: FlaskClient) -> None:
    """Two requests on each stacked view, then the 2/second limit refuses the third."""
    for path in STACKED:
        first, second = client.get(path), client.get(path)
        assert (first.status_code, second.status_code) == (200, 200)
        # 2/second is nearer exhaustion than 3/minute, whatever the declaration order
        assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == ("2", "1")
        assert (second.headers["RateLimit-Limit"], second.headers["RateLimit-Remaining"]) == \
            ("2", "0")
        third = client.get(path)
        body = assert_limited(third)
        assert third.headers["RateLimit-Limit"] == "2"
        assert third.headers["RateLimit-Remaining"] == "0"
        assert body["retry_after"] == 1


def test_stacked_limits_the_tighter_wins(make_app: Any) -> None:
    # moving-window: a per-second window that really is empty a second later
    exhaust_the_second(build(make_app, APIGUARD_RATELIMIT_STRATEGY="moving-window").test_client())


def test_stacked_limits_once_the_minute_is_spent_retry_after_names_the_minute(
        make_app: Any, counter_clock: CounterClock) -> None:
    # the counters' clock is stopped, then moved on by 1.1 s (was a sleep: under load the
    # requests of "one second" could be more than a second apart)
    counter_clock.freeze(into_window=10.0)
    client = build(make_app, APIGUARD_RATELIMIT_STRATEGY="moving-window").test_client()
    exhaust_the_second(client)
    counter_clock.advance(1.1)
    for path in STACKED:
        # the second has passed, the minute has not: at most one more is admitted, then
        # every answer is about 3/minute; a Retry-After of 1 s would send the client back
        # into another refusal
        later = [client.get(path) for _ in range(4)]
        codes = [r.status_code for r in later]
        assert codes.count(200) <= 1, (path, codes)
        assert codes[-1] == 429
        for response in later:
            assert response.headers["RateLimit-Limit"] == "3", (path, codes)
            assert response.headers["RateLimit-Remaining"] == "0", (path, codes)
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) > 2, (path, codes)


# The counters' clock is stopped at a known point of the clock hour (it was the wall clock, and
# the test accepted "seconds to the hour" as a workaround, which hid which case ran): the
# sliding-window counter lets a retry through as the hour turns (limits weighs the three hits
# just below the limit then), so the honest wait is the time to the hour, which is more than
# the minute's wait except in the hour's last minute, tested on its own.
@pytest.mark.parametrize(("into_the_hour", "retry_after"), [(600.0, 3000), (3590.0, 10)])
def test_stacked_limits_report_the_window_closest_to_exhaustion(
        client: FlaskClient, counter_clock: CounterClock, into_the_hour: float,
        retry_after: int) -> None:
    counter_clock.freeze(into_window=into_the_hour)
    # 10/minute then 3/hour: the hour is nearer exhaustion although declared last
    responses = [client.get("/stacked-hour") for _ in range(3)]
    assert [(r.headers["RateLimit-Limit"], r.headers["RateLimit-Remaining"])
            for r in responses] == [("3", "2"), ("3", "1"), ("3", "0")]
    refused = client.get("/stacked-hour")
    body = assert_limited(refused)
    assert refused.headers["RateLimit-Limit"] == "3"
    assert body["retry_after"] == retry_after
    assert refused.headers["Retry-After"] == str(retry_after)
    counter_clock.advance(retry_after - 1)  # a second early: still refused
    assert_limited(client.get("/stacked-hour"))
    counter_clock.advance(1.01)  # just past the wait it named: admitted
    assert client.get("/stacked-hour").status_code == 200


def test_scope_shares_one_counter_between_views(client: FlaskClient) -> None:
    remaining = [client.get(p).headers["RateLimit-Remaining"] for p in ("/one", "/two", "/one")]
    assert remaining == ["2", "1", "0"]
    assert_limited(client.get("/two"))
    assert_limited(client.get("/one"))
    # still one bucket per client within the scope
    assert client.get("/two", **from_ip(IP_B)).status_code == 200


def test_a_scope_is_one_counter_whatever_each_view_allows(make_app: Any) -> None:
    # Views sharing a scope= with different limits each kept a counter of their own.
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


def test_cost_uses_up_that_much(client: FlaskClient) -> None:
    responses = [client.get("/costly") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [r.headers["RateLimit-Remaining"] for r in responses] == ["7", "4", "1"]
    refused = client.get("/costly")  # one unit left, three needed
    assert_limited(refused)
    assert refused.headers["RateLimit-Remaining"] == "0"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_limits(make_app: Any, strategy: str) -> None:
    client = build(make_app, APIGUARD_RATELIMIT_STRATEGY=strategy).test_client()
    responses = [client.get("/declared") for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert [r.headers["RateLimit-Remaining"] for r in responses] == ["4", "3", "2", "1", "0"]
    for _ in range(3):
        assert_limited(client.get("/declared"))
    assert client.get("/declared", **from_ip(IP_B)).status_code == 200


def test_unknown_strategy_is_refused_at_start_up(make_app: Any) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_RATELIMIT_STRATEGY"):
        make_app(APIGUARD_RATELIMIT_STRATEGY="leaky-bucket")


# -- keys ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/by-auto", "/by-user"])
def test_subjects_on_one_ip_have_their_own_budgets(app: Flask, client: FlaskClient,
                                                   path: str) -> None:
    alice, bob = bearer(token_for(app, "alice")), bearer(token_for(app, "bob"))
    assert statuses(client, path, 3, headers=alice) == [200, 200, 429]
    assert statuses(client, path, 2, headers=bob) == [200, 200]
    assert_limited(client.get(path, headers=bob))
    # the subject, not the address, is the bucket: alice from elsewhere is still limited
    assert_limited(client.get(path, headers=alice, **from_ip(IP_B)))


def test_auto_key_uses_the_ip_without_identity(app: Flask, client: FlaskClient) -> None:
    assert statuses(client, "/public-auto", 3, **from_ip(IP_A)) == [200, 200, 429]
    assert client.get("/public-auto", **from_ip(IP_B)).status_code == 200
    # a @public view ignores credentials, so a token does not open a fresh bucket
    token = bearer(token_for(app, "alice"))
    assert_limited(client.get("/public-auto", headers=token, **from_ip(IP_A)))


def test_ip_key_is_shared_by_subjects_on_one_ip(app: Flask, client: FlaskClient) -> None:
    alice, bob = bearer(token_for(app, "alice")), bearer(token_for(app, "bob"))
    assert client.get("/by-ip", headers=alice).status_code == 200
    assert client.get("/by-ip", headers=bob).status_code == 200
    assert_limited(client.get("/by-ip", headers=alice))
    assert_limited(client.get("/by-ip", headers=bob))
    assert client.get("/by-ip", headers=alice, **from_ip(IP_B)).status_code == 200


def test_api_key_key_gives_each_key_its_budget(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        keys = ApiGuard().api_keys
        first, _ = keys.create("first", owner="acme")
        second, _ = keys.create("second", owner="acme")
    assert statuses(client, "/by-key", 3, headers={"X-API-Key": first}) == [200, 200, 429]
    assert_limited(client.get("/by-key", headers={"X-API-Key": first}, **from_ip(IP_B)))
    assert statuses(client, "/by-key", 2, headers={"X-API-Key": second}) == [200, 200]


def test_callable_key_reads_request_and_identity(app: Flask, client: FlaskClient) -> None:
    alice, bob = bearer(token_for(app, "alice")), bearer(token_for(app, "bob"))
    assert statuses(client, "/by-fn", 2, headers={**alice, "X-Tenant": "t1"}) == [200, 200]
    # the callable's string is the bucket: bob in tenant t1 shares it, alice in t2 does not
    assert_limited(client.get("/by-fn", headers={**bob, "X-Tenant": "t1"}))
    assert client.get("/by-fn", headers={**alice, "X-Tenant": "t2"}).status_code == 200
    # the callable ran after authentication: it always saw the request's subject
    assert set(app.config["SEEN_BY_KEY"]) == {("alice", "t1"), ("bob", "t1"), ("alice", "t2")}


def test_callable_key_returning_nothing_falls_back_to_the_ip(client: FlaskClient) -> None:
    assert client.get("/fn-public", **from_ip(IP_A)).status_code == 200  # None
    assert client.get("/fn-public", headers={"X-Tenant": ""}, **from_ip(IP_A)).status_code == 200
    assert_limited(client.get("/fn-public", **from_ip(IP_A)))
    # another address is another bucket, and a real tenant string its own one
    assert statuses(client, "/fn-public", 2, **from_ip(IP_B)) == [200, 200]
    assert client.get("/fn-public", headers={"X-Tenant": "t1"}, **from_ip(IP_A)).status_code == 200


def test_ipv6_clients_are_grouped_by_64(client: FlaskClient) -> None:
    assert statuses(client, "/public-auto", 2, **from_ip("2001:db8:1:2::1")) == [200, 200]
    # another address in the same /64 is the same client
    assert_limited(client.get("/public-auto", **from_ip("2001:db8:1:2:ffff:ffff:ffff:9")))
    assert client.get("/public-auto", **from_ip("2001:db8:1:3::1")).status_code == 200


def test_forged_forwarded_for_does_not_open_a_fresh_bucket(client: FlaskClient) -> None:
    codes = [client.get("/public-auto", headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code
             for n in range(4)]
    assert codes == [200, 200, 429, 429]


def test_client_ip_behind_a_trusted_proxy(make_app: Any) -> None:
    client = build(make_app, APIGUARD_TRUSTED_PROXIES=1).test_client()
    proxy = {"REMOTE_ADDR": "10.0.0.1"}

    def via_proxy(forwarded_for: str) -> int:
        return client.get("/public-auto", environ_base=proxy,
                          headers={"X-Forwarded-For": forwarded_for}).status_code

    assert [via_proxy("198.51.100.7") for _ in range(3)] == [200, 200, 429]
    assert via_proxy("198.51.100.8") == 200
    # a client-supplied left-most entry is not believed: the proxy's right-most entry is
    assert via_proxy("192.0.2.99, 198.51.100.7") == 429


# -- count="failures" ---------------------------------------------------------------------------

GOOD = {"password": "correct horse battery staple"}
BAD = {"password": "hunter2"}


def test_login_brute_force_counts_only_failures(client: FlaskClient) -> None:
    for _ in range(10):
        response = client.post("/login", json=GOOD)
        assert response.status_code == 200
        assert response.headers["RateLimit-Limit"] == "3"
        assert response.headers["RateLimit-Remaining"] == "3"  # successes cost nothing
    assert [client.post("/login", json=BAD).status_code for _ in range(3)] == [401] * 3
    # exhausted: a correct password is refused too, until the window passes
    assert_limited(client.post("/login", json=GOOD))
    assert_limited(client.post("/login", json=BAD))
    # another address is not affected
    assert client.post("/login", json=GOOD, **from_ip(IP_B)).status_code == 200


def test_login_successes_between_failures_cost_nothing(client: FlaskClient) -> None:
    assert [client.post("/login", json=BAD).status_code for _ in range(2)] == [401, 401]
    assert [client.post("/login", json=GOOD).status_code for _ in range(10)] == [200] * 10
    assert client.post("/login", json=BAD).status_code == 401
    assert_limited(client.post("/login", json=GOOD))


def test_login_failure_reports_what_is_left_after_it(client: FlaskClient) -> None:
    # a refused login used one unit: its RateLimit-Remaining says what is left after it
    remaining = [client.post("/login", json=BAD).headers["RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]


def slow_login_app(make_app: Any, **config: Any) -> Any:
    """``/login`` limited to 5 failures per 15 minutes, whose password check takes 0.2 s;
    ``app.checks`` has one entry per check that ran."""
    app = make_app(init=False, **config)
    checks: list[int] = []

    @app.post("/login")
    @public
    @rate_limit("5 per 15 minutes", key="ip", count="failures")
    def login() -> Any:
        checks.append(1)
        time.sleep(0.2)  # a password hash
        if (request.get_json(silent=True) or {}).get("password") != "right":
            abort(401, "Wrong username or password.")
        return {"ok": True}

    ApiGuard(app)
    app.checks = checks  # type: ignore[attr-defined]
    return app


def hammer(app: Any, count: int, password: str = "wrong") -> Counter[int]:
    """``count`` logins sent at once, one thread each: how many got each status."""
    answers: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        response = app.test_client().post("/login", json={"password": password})
        with lock:
            answers.append(response.status_code)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return Counter(answers)


@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_fifty_parallel_guesses_run_at_most_five_password_checks(
        make_app: Any, storage: str, request: Any) -> None:
    # Parallel guesses all passed the count="failures" test before the first was counted.
    config = {}
    if storage == "redis":
        config = request.getfixturevalue("redis_config")()
    app = slow_login_app(make_app, **config)
    answers = hammer(app, 50)
    assert answers[401] <= 5 and answers[401] + answers[429] == 50, answers
    assert len(app.checks) <= 5
    # and the five failures are counted: the next guess, even a right one, is refused
    assert app.test_client().post("/login", json={"password": "right"}).status_code == 429


def test_parallel_successes_give_their_place_back(make_app: Any) -> None:
    # The places that bound parallel guesses must be released by successes, not leak.
    app = slow_login_app(make_app)
    for _ in range(3):
        assert hammer(app, 5, password="right") == Counter({200: 5})
    assert hammer(app, 5) == Counter({401: 5})
    assert app.test_client().post("/login", json={"password": "right"}).status_code == 429


# -- headers and the 429 answer -----------------------------------------------------------------

def test_headers_count_down_and_429_carries_retry_after(client: FlaskClient) -> None:
    responses = [client.get("/a") for _ in range(2)]
    assert [r.headers["RateLimit-Limit"] for r in responses] == ["2", "2"]
    assert [r.headers["RateLimit-Remaining"] for r in responses] == ["1", "0"]
    for response in responses:
        assert 0 <= int(response.headers["RateLimit-Reset"]) <= 60
    refused = client.get("/a")
    body = assert_limited(refused)
    assert refused.headers["RateLimit-Limit"] == "2"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(refused.headers["RateLimit-Reset"]) <= 60
    assert 1 <= body["retry_after"] <= 60
    # the 429 is an answer of the guard like any other: security headers and no caching
    assert refused.headers["X-Content-Type-Options"] == "nosniff"
    assert refused.headers["Cache-Control"] == "no-store"


def test_headers_off_removes_ratelimit_headers_but_not_retry_after(make_app: Any) -> None:
    client = build(make_app, APIGUARD_RATELIMIT_HEADERS=False).test_client()
    ok = client.get("/a")
    assert ok.status_code == 200
    refused = [client.get("/a") for _ in range(2)][-1]
    for response in (ok, refused):
        for name in RATELIMIT_HEADERS:
            assert name not in response.headers
    assert_limited(refused)


def test_rate_limited_signal_is_sent(app: Flask, client: FlaskClient) -> None:
    received: list[Any] = []

    def receiver(sender: Any, **extra: Any) -> None:
        received.append(sender)

    with signals.rate_limited.connected_to(receiver, sender=app):
        statuses(client, "/a", 3)
    assert received == [app]


# -- what is never counted, and where step 9 sits -----------------------------------------------

def test_preflight_and_options_are_never_counted(make_app: Any) -> None:
    origin = "https://app.example.com"
    client = build(make_app, APIGUARD_CORS_ORIGINS=[origin]).test_client()
    for _ in range(5):
        response = client.options("/a", headers={"Origin": origin,
                                                 "Access-Control-Request-Method": "GET"})
        assert response.status_code == 204
        assert "RateLimit-Limit" not in response.headers
        plain = client.options("/a")
        assert plain.status_code < 300
        assert "RateLimit-Limit" not in plain.headers
    assert client.get("/a").headers["RateLimit-Remaining"] == "1"


def test_unauthenticated_requests_do_not_use_the_views_budget(app: Flask,
                                                              client: FlaskClient) -> None:
    for _ in range(5):
        assert problem(client.get("/by-ip"))["error"] == "unauthorized"
    for _ in range(3):
        assert problem(client.get("/by-ip", headers=bearer("not.a.token")))["error"] == \
            "invalid_token"
    response = client.get("/by-ip", headers=bearer(token_for(app, "alice")))
    assert response.status_code == 200
    assert response.headers["RateLimit-Remaining"] == "1"


def test_forbidden_requests_do_not_use_the_views_budget(app: Flask, client: FlaskClient) -> None:
    alice = bearer(token_for(app, "alice"))
    for _ in range(5):
        assert problem(client.get("/admin", headers=alice))["error"] == "forbidden"
    response = client.get("/admin", headers=bearer(token_for(app, "root", roles=["admin"])))
    assert response.status_code == 200
    assert response.headers["RateLimit-Remaining"] == "1"


# -- bad declarations ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, kwargs", [
    (("lots",), {}),
    (("10 per fortnight",), {}),
    (("",), {}),
    (("5/minute",), {"key": "session"}),
    (("5/minute",), {"key": 42}),
    (("5/minute",), {"count": "successes"}),
    (("5/minute",), {"cost": 0}),
    (("5/minute",), {"cost": -1}),
    (("5/minute",), {"cost": 1.5}),
    (("5/minute",), {"scope": "a/b"}),
    (("5/minute",), {"scope": ""}),
])
def test_bad_rate_limit_arguments_fail_at_decoration(args: tuple[Any, ...],
                                                      kwargs: dict[str, Any]) -> None:
    with pytest.raises(ApiGuardConfigError):
        rate_limit(*args, **kwargs)


# -- limits that follow the business: limit=callable, exempt_when -------------------------------

PLANS = {"free": "2/minute", "pro": "4/minute"}


def plan_limit() -> str:
    """A limit per plan, read from the caller's token (an unknown plan gets the free one)."""
    return PLANS.get(str(current_identity.claims.get("plan")), PLANS["free"])


def business_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    """``/plan`` limited by plan, ``/odd`` by a callable the test chooses (``app.config
    ["LIMIT"]``), ``/internal`` with an ``exempt_when`` the test chooses (``EXEMPT``)."""
    app = make_app(init=False, APIGUARD_RATELIMIT_DEFAULT=None, **config)

    @app.get("/plan")
    @rate_limit(limit=plan_limit)
    def plan() -> Any:
        return {"ok": True}

    def chosen() -> Any:
        value = app.config["LIMIT"]
        if isinstance(value, BaseException):
            raise value
        return value

    @app.get("/odd")
    @public
    @rate_limit(limit=chosen, key="ip")
    def odd() -> Any:
        return {"ok": True}

    def exempt() -> Any:
        value = app.config["EXEMPT"]
        if isinstance(value, BaseException):
            raise value
        return value

    @app.get("/internal")
    @public
    @rate_limit("2/minute", exempt_when=exempt)
    @rate_limit("3/minute", scope="internal-hour")
    def internal() -> Any:
        return {"ok": True}

    @app.post("/plan-login")
    @public
    @rate_limit(limit=lambda: "2/minute", key="ip", count="failures", cost=1)
    def plan_login() -> Any:
        abort(401)

    ApiGuard(app)
    return app


def _statuses(client: FlaskClient, path: str, n: int, **kwargs: Any) -> list[int]:
    return [client.get(path, **kwargs).status_code for _ in range(n)]


@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_limit_callable_gives_each_plan_its_limit(make_app: Any, storage: str,
                                                   request: Any) -> None:
    config = request.getfixturevalue("redis_config")() if storage == "redis" else {}
    app = business_app(make_app, **config)
    client = app.test_client()
    free = bearer(token_for(app, "ann", plan="free"))
    pro = bearer(token_for(app, "bob", plan="pro"))
    assert _statuses(client, "/plan", 3, headers=free) == [200, 200, 429]
    assert _statuses(client, "/plan", 5, headers=pro) == [200, 200, 200, 200, 429]
    assert client.get("/plan", headers=pro).headers["RateLimit-Limit"] == "4"


def test_limit_callable_string_is_parsed_once_per_distinct_value(
        make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import flask_apiguard.ratelimit.probes as probes_module

    parsed: list[str] = []
    real = probes_module.parse_many

    def counting(text: str) -> Any:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(probes_module, "parse_many", counting)
    app = business_app(make_app)
    client = app.test_client()
    app.config["LIMIT"] = "50/minute"
    _statuses(client, "/odd", 5)
    app.config["LIMIT"] = "60/minute"
    _statuses(client, "/odd", 5)
    assert parsed == ["50/minute", "60/minute"]


def test_limit_callable_cache_is_bounded(make_app: Any) -> None:
    app = business_app(make_app)
    client = app.test_client()
    state = app.extensions["apiguard"]
    for n in range(1, 1100):
        app.config["LIMIT"] = f"{n + 10}/minute"
        assert client.get("/odd").status_code == 200
    assert len(state.limit_cache._parsed) <= 1024
    assert len(state.limit_cache._resolved) <= 1024


def test_a_plan_change_keeps_the_count(make_app: Any) -> None:
    # a callable limit's counter leaves the amount out: upgrading mid-window is no reset
    app = business_app(make_app)
    client = app.test_client()
    app.config["LIMIT"] = "2/minute"
    assert _statuses(client, "/odd", 3) == [200, 200, 429]
    app.config["LIMIT"] = "3/minute"
    assert _statuses(client, "/odd", 2) == [200, 429]


@pytest.mark.parametrize("returned", [
    RuntimeError("plan service down"), None, 10, b"10/minute", "lots", "",
])
def test_a_failing_limit_callable_answers_500_never_unlimited(
        make_app: Any, returned: Any, caplog: pytest.LogCaptureFixture) -> None:
    app = business_app(make_app)
    app.config["LIMIT"] = returned
    with caplog.at_level("ERROR", logger="flask_apiguard"):
        response = app.test_client().get("/odd")
    assert response.status_code == 500
    assert problem(response)["error"] == "internal_error"
    assert "plan service down" not in response.get_data(as_text=True)
    assert any("could not be decided" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_exempt_when_skips_only_its_own_limit(make_app: Any, storage: str,
                                               request: Any) -> None:
    config = request.getfixturevalue("redis_config")() if storage == "redis" else {}
    app = business_app(make_app, **config)
    client = app.test_client()
    app.config["EXEMPT"] = True
    # the 2/minute limit is skipped; the scope's 3/minute still applies
    assert _statuses(client, "/internal", 4) == [200, 200, 200, 429]


def test_exempt_when_false_keeps_the_limit(make_app: Any) -> None:
    app = business_app(make_app)
    app.config["EXEMPT"] = 0
    assert _statuses(app.test_client(), "/internal", 3) == [200, 200, 429]


def test_a_raising_exempt_when_answers_500_never_exempt(make_app: Any) -> None:
    app = business_app(make_app)
    app.config["EXEMPT"] = LookupError("no such header")
    response = app.test_client().get("/internal")
    assert response.status_code == 500
    assert problem(response)["error"] == "internal_error"


def test_limit_callable_works_with_count_failures(make_app: Any) -> None:
    app = business_app(make_app)
    client = app.test_client()
    assert [client.post("/plan-login").status_code for _ in range(3)] == [401, 401, 429]


@pytest.mark.parametrize("kwargs", [
    {"limit": 10},
    {"limit": "5/minute", "exempt_when": True},
    {"limit": "5/minute", "exempt_when": "yes"},
])
def test_bad_business_limit_arguments_fail_at_decoration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ApiGuardConfigError):
        rate_limit(**kwargs)


# -- APIGUARD_RATELIMIT_EXEMPT_NETWORKS ----------------------------------------------------------

def exempt_networks_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    app = make_app(init=False, APIGUARD_RATELIMIT_DEFAULT="2/minute",
                   APIGUARD_RATELIMIT_EXEMPT_NETWORKS=["10.0.0.0/8", "2001:db8::/32"],
                   APIGUARD_AUTH_FAILURE_LIMIT="2/minute", **config)

    @app.get("/limited")
    @public
    def limited() -> Any:
        return {"ok": True}

    ApiGuard(app)
    return app


@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_exempt_networks_are_not_rate_limited(make_app: Any, storage: str,
                                              request: Any) -> None:
    config = request.getfixturevalue("redis_config")() if storage == "redis" else {}
    app = exempt_networks_app(make_app, **config)
    client = app.test_client()
    for address in ("10.1.2.3", "2001:db8::7", "::ffff:10.9.9.9"):
        environ = {"REMOTE_ADDR": address}
        answers = [client.get("/limited", environ_base=environ) for _ in range(4)]
        assert [r.status_code for r in answers] == [200] * 4, address
        assert "RateLimit-Limit" not in answers[0].headers
    outside = {"REMOTE_ADDR": IP_A}
    assert _statuses(client, "/limited", 3, environ_base=outside) == [200, 200, 429]


def test_a_forged_forwarded_for_exempts_no_one(make_app: Any) -> None:
    app = exempt_networks_app(make_app)
    client = app.test_client()
    forged = {"REMOTE_ADDR": IP_A}
    headers = {"X-Forwarded-For": "10.0.0.1"}
    assert _statuses(client, "/limited", 3, environ_base=forged, headers=headers) \
        == [200, 200, 429]


def test_exempt_networks_follow_the_trusted_proxy(make_app: Any) -> None:
    app = exempt_networks_app(make_app, APIGUARD_TRUSTED_PROXIES=1)
    client = app.test_client()
    proxy = {"REMOTE_ADDR": "192.0.2.1"}
    assert _statuses(client, "/limited", 4, environ_base=proxy,
                     headers={"X-Forwarded-For": "10.0.0.1"}) == [200] * 4
    assert _statuses(client, "/limited", 3, environ_base=proxy,
                     headers={"X-Forwarded-For": "10.0.0.1, 198.51.100.4"}) == [200, 200, 429]


def test_exempt_networks_keep_the_auth_failure_limit(make_app: Any) -> None:
    # a security control, not a business limit: an internal client guessing tokens is stopped
    app = exempt_networks_app(make_app)
    client = app.test_client()
    inside = {"REMOTE_ADDR": "10.1.2.3"}
    answers = [client.get("/private", environ_base=inside, headers=bearer("x.y.z")).status_code
               for _ in range(3)]
    assert answers == [401, 401, 429]


# -- @concurrency_limit -------------------------------------------------------------------------

def concurrency_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    """``/slow`` admits 2 requests of one client at once and waits for ``app.release``;
    ``/crash`` admits 1 and raises; ``/per-user`` admits 1 per subject."""
    app = make_app(init=False, **config)
    app.release = threading.Event()  # type: ignore[attr-defined]
    app.inside = []  # type: ignore[attr-defined]

    @app.get("/slow")
    @public
    @concurrency_limit(2, key="ip")
    def slow() -> Any:
        app.inside.append(1)  # type: ignore[attr-defined]
        app.release.wait(10)  # type: ignore[attr-defined]
        return {"ok": True}

    @app.get("/crash")
    @public
    @concurrency_limit(1)
    def crash() -> Any:
        raise RuntimeError("boom")

    @app.get("/per-user")
    @concurrency_limit(1, key="user")
    def per_user() -> Any:
        app.inside.append(current_identity.subject)  # type: ignore[attr-defined]
        app.release.wait(10)  # type: ignore[attr-defined]
        return {"ok": True}

    ApiGuard(app)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    return app


def _in_parallel(app: Any, path: str, count: int, refused: int,
                 headers: list[dict[str, str]] | None = None) -> list[Any]:
    """``count`` requests at once; once ``refused`` of them were answered, the others are
    released."""
    answers: list[Any] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        response = app.test_client().get(path, headers=(headers or [{}] * count)[n])
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (len(answers) < refused
                                           or len(app.inside) < count - refused):
        time.sleep(0.01)
    app.release.set()
    for thread in threads:
        thread.join(10)
    return answers


@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_concurrency_limit_bounds_requests_in_flight(make_app: Any, storage: str,
                                                     request: Any) -> None:
    config = request.getfixturevalue("redis_config")() if storage == "redis" else {}
    app = concurrency_app(make_app, **config)
    answers = _in_parallel(app, "/slow", 5, refused=3)
    assert Counter(r.status_code for r in answers) == Counter({200: 2, 429: 3})
    for response in answers:
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "1"
            body = problem(response)
            assert body["error"] == "rate_limit_exceeded" and body["retry_after"] == 1
    # every place was given back: the next requests are admitted again
    app.inside.clear()
    assert Counter(r.status_code for r in _in_parallel(app, "/slow", 2, refused=0)) \
        == Counter({200: 2})


@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_crashed_request_gives_its_place_back(make_app: Any, storage: str,
                                                request: Any) -> None:
    config = request.getfixturevalue("redis_config")() if storage == "redis" else {}
    app = concurrency_app(make_app, **config)
    client = app.test_client()
    assert [client.get("/crash").status_code for _ in range(3)] == [500, 500, 500]


def test_concurrency_limit_keys_by_user(make_app: Any) -> None:
    app = concurrency_app(make_app)
    ann, bob = bearer(token_for(app, "ann")), bearer(token_for(app, "bob"))
    answers = _in_parallel(app, "/per-user", 3, refused=1, headers=[ann, bob, ann])
    assert Counter(r.status_code for r in answers) == Counter({200: 2, 429: 1})
    assert sorted(app.inside) == ["ann", "bob"]


def test_exempt_networks_are_not_concurrency_limited(make_app: Any) -> None:
    app = concurrency_app(make_app, APIGUARD_RATELIMIT_EXEMPT_NETWORKS=["127.0.0.0/8"])
    answers = _in_parallel(app, "/slow", 4, refused=0)
    assert Counter(r.status_code for r in answers) == Counter({200: 4})


@pytest.mark.parametrize("args, kwargs", [((0,), {}), ((1.5,), {}), ((True,), {}),
                                          (("2",), {}), ((2,), {"key": "session"})])
def test_bad_concurrency_limit_arguments_fail_at_import(args: tuple[Any, ...],
                                                         kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        concurrency_limit(*args, **kwargs)


def test_routes_without_business_limits_stay_on_the_plain_path(make_app: Any) -> None:
    # precomputed at compile time: the pipeline's one check for callables, places and
    # exempt networks
    app = business_app(make_app)
    state = app.extensions["apiguard"]
    with app.app_context():  # routes are compiled in a request (an adopted limiter is found)
        assert state.route("private", "GET").plain_limits is True
        assert state.route("plan", "GET").plain_limits is False
        assert state.route("internal", "GET").plain_limits is False
    slow = concurrency_app(make_app)
    with slow.app_context():
        assert slow.extensions["apiguard"].route("slow", "GET").plain_limits is False
    exempting = make_app(APIGUARD_RATELIMIT_EXEMPT_NETWORKS=["10.0.0.0/8"])
    with exempting.app_context():
        assert exempting.extensions["apiguard"].route("private", "GET").plain_limits is False
