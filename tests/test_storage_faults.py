"""Storage faults: a private Redis is killed (or frozen) under a running app, then restarted.

Each policy of ``APIGUARD_RATELIMIT_ON_STORAGE_ERROR`` is checked end to end: no 500s, no
request hangs (every request must finish within ``HANG_GUARD`` seconds: a timeout guard, not a
speed benchmark), the configured behaviour while down, a warning on logger ``flask_apiguard``
both ways, and counting in Redis again once it is back. Revocation fails closed whatever the
policy."""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from flask_apiguard import ApiGuard, public, rate_limit

from .conftest import PrivateRedis, bearer, problem, token_for

pytestmark = [pytest.mark.slow, pytest.mark.redis]

POLICIES = ("fallback", "open", "closed")
HANG_GUARD = 2.0
LIMIT = 5
LOGGER = "flask_apiguard"
#: Longest wait for the storage to be retried after it returns (1 s, 2 s, then every 4 s).
RECOVERY_WAIT = 6.0


def fault_app(make_app: Callable[..., Flask], url: str, policy: str, **config: Any) -> Flask:
    app = make_app(init=False, APIGUARD_STORAGE_URI=url,
                   APIGUARD_RATELIMIT_ON_STORAGE_ERROR=policy, **config)

    @app.get("/limited")
    @public
    @rate_limit(f"{LIMIT}/minute", key="ip")
    def limited() -> Any:
        return {"ok": True}

    ApiGuard(app)
    return app


class Timed:
    """Sends requests, failing any that takes ``HANG_GUARD`` seconds or answers 500."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.durations: list[float] = []

    def get(self, path: str, **kwargs: Any) -> Any:
        started = time.monotonic()
        response = self.client.get(path, **kwargs)
        elapsed = time.monotonic() - started
        self.durations.append(elapsed)
        assert elapsed < HANG_GUARD, f"GET {path} took {elapsed:.2f} s with the storage down"
        assert response.status_code != 500, response.data[:300]
        return response


def storage_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def counter_keys(store: redis.Redis) -> list[bytes]:
    return list(store.keys("*apiguard*"))


def assert_policy_while_down(policy: str, responses: list[Any]) -> None:
    codes = [r.status_code for r in responses]
    if policy == "fallback":
        # per-process memory limits: never more than the limit admitted since the outage
        admitted = codes.count(200)
        assert 1 <= admitted <= LIMIT, codes
        assert codes[admitted:] == [429] * (len(codes) - admitted), codes
        assert problem(responses[-1])["error"] == "rate_limit_exceeded"
    elif policy == "open":
        assert codes == [200] * len(codes)
    else:
        assert codes == [503] * len(codes)
        for response in responses:
            assert problem(response)["error"] == "service_unavailable"


@pytest.mark.parametrize("policy", POLICIES)
def test_redis_killed_then_restarted(make_app: Any, private_redis: PrivateRedis,
                                     caplog: pytest.LogCaptureFixture, policy: str) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    app = fault_app(make_app, private_redis.url, policy)
    client = Timed(app.test_client())
    store = redis.Redis.from_url(private_redis.url, socket_timeout=2)

    live = [client.get("/limited") for _ in range(2)]
    assert [r.headers["RateLimit-Remaining"] for r in live] == ["4", "3"]
    assert counter_keys(store)
    assert not storage_records(caplog)

    private_redis.stop()
    down = [client.get("/limited") for _ in range(3 * LIMIT)]
    assert_policy_while_down(policy, down)
    went_down = storage_records(caplog)
    assert went_down, "no warning on logger flask_apiguard when the storage went down"
    assert len(went_down) < len(down), "a warning per request is noise, not a signal"
    print(f"{policy}: while down admitted {[r.status_code for r in down].count(200)} of "
          f"{len(down)}, slowest request {max(client.durations[2:]):.3f} s")

    private_redis.start()  # same port, empty
    deadline = time.monotonic() + RECOVERY_WAIT
    while not counter_keys(store):
        assert time.monotonic() < deadline, "requests are not counted in Redis again"
        client.get("/limited")
        time.sleep(0.1)
    recovered = storage_records(caplog)[len(went_down):]
    assert recovered, "no warning on logger flask_apiguard when the storage came back"

    # counted in the shared Redis again: a second instance sees the same budget (the flush
    # empties this test's own redis-server, never a shared one)
    store.flushdb()
    other = Timed(fault_app(make_app, private_redis.url, policy).test_client())
    remaining = [c.get("/limited").headers["RateLimit-Remaining"]
                 for c in (client, other, client)]
    assert remaining == ["4", "3", "2"]


@pytest.mark.parametrize("policy", POLICIES)
def test_redis_frozen_never_hangs_a_request(make_app: Any, private_redis: PrivateRedis,
                                            policy: str) -> None:
    # SIGSTOP: the port still accepts connections but nothing answers, the worst case
    app = fault_app(make_app, private_redis.url, policy)
    client = Timed(app.test_client())
    assert client.get("/limited").status_code == 200
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)
    try:
        down = [client.get("/limited") for _ in range(2 * LIMIT)]
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    assert_policy_while_down(policy, down)
    print(f"{policy} (frozen): statuses {dict(Counter(r.status_code for r in down))}, "
          f"slowest request {max(client.durations[1:]):.3f} s")


@pytest.mark.parametrize("policy", POLICIES)
def test_revocation_fails_closed_while_redis_is_down(make_app: Any, private_redis: PrivateRedis,
                                                     policy: str) -> None:
    app = fault_app(make_app, private_redis.url, policy, APIGUARD_JWT_REVOCATION=True)
    client = Timed(app.test_client())
    token = bearer(token_for(app, "alice"))
    with app.app_context():
        api_key, _ = app.extensions["apiguard"].guard.api_keys.create("robot")
    assert client.get("/private", headers=token).status_code == 200

    private_redis.stop()
    for _ in range(3):
        response = client.get("/private", headers=token)
        assert response.status_code == 503
        assert problem(response)["error"] == "service_unavailable"
    # only the JWT needs the denylist: other requests follow the rate-limit policy
    for response in (client.get("/health"), client.get("/private", headers={"X-API-Key": api_key})):
        assert response.status_code == (503 if policy == "closed" else 200), response.data[:200]
