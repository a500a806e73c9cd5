"""Storage faults: a private Redis is killed (or frozen) under a running app, then restarted.

Each policy of ``APIGUARD_RATELIMIT_ON_STORAGE_ERROR`` is checked end to end: no 500s, no
request hangs (every request must finish within ``HANG_GUARD`` seconds: a timeout guard, not a
speed benchmark), the configured behaviour while down, a warning on logger ``flask_apiguard``
both ways, and counting in Redis again once it is back. Revocation fails closed whatever the
policy."""

from __future__ import annotations

import logging
import signal
import threading
import time
import types
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from flask_apiguard import ApiGuard, public, rate_limit
from flask_apiguard import storage as storage_module
from flask_apiguard.errors import ServiceUnavailable
from flask_apiguard.storage import SharedState, Verdict

from .conftest import PrivateRedis, bearer, problem, token_for

pytestmark = [pytest.mark.slow, pytest.mark.redis]

POLICIES = ("fallback", "open", "closed")
HANG_GUARD = 2.0
LIMIT = 5
LOGGER = "flask_apiguard"
#: Longest wait for requests to be counted in Redis again after it returns: it is retried every
#: half second, so about one second; the slack is for a loaded machine (the exact bound is
#: checked with a controlled clock in test_a_returning_storage_is_noticed_within_a_second).
RECOVERY_WAIT = 3.0


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


# -- recovery: noticed within about a second, probed by one request at a time ---------------------

class SteppedClock:
    """``time.monotonic`` as storage.py sees it, moved by the test (``time.time`` stays real)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_000.0
        fake = types.SimpleNamespace(monotonic=lambda: self.now, time=time.time)
        monkeypatch.setattr(storage_module, "time", fake)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FlakyBackend:
    """A primary backend that is down until told otherwise, counting the calls it gets."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def admit(self, *args: Any) -> Verdict:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(10)
        if self.down:
            raise ConnectionError("storage down")
        return Verdict()


def flaky_state(monkeypatch: pytest.MonkeyPatch) -> tuple[SharedState, FlakyBackend, SteppedClock]:
    clock = SteppedClock(monkeypatch)
    shared = SharedState("memory://", {}, "fixed-window", "closed")
    backend = FlakyBackend()
    shared._primary = backend  # type: ignore[assignment]
    return shared, backend, clock


def ask(shared: SharedState) -> str:
    try:
        shared.admit((), False, None, (), False)
    except ServiceUnavailable:
        return "503"
    return "ok"


def test_a_down_storage_is_retried_every_half_second(monkeypatch: pytest.MonkeyPatch) -> None:
    # the retry schedule was 1, 2, then every 4 s: up to 4 s of needless 503s after a return
    shared, backend, clock = flaky_state(monkeypatch)
    assert ask(shared) == "503" and backend.calls == 1
    for _ in range(20):  # the same instant: no request probes again
        assert ask(shared) == "503"
    assert backend.calls == 1
    for step in range(2, 12):  # every half second, however long it has been down
        clock.advance(0.5)
        assert [ask(shared) for _ in range(5)] == ["503"] * 5
        assert backend.calls == step
    backend.down = False
    clock.advance(0.5)
    assert ask(shared) == "ok"
    assert [ask(shared) for _ in range(3)] == ["ok"] * 3  # and every request goes to it again


def test_one_request_probes_a_down_storage_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # every request after the retry time probed the storage at once, each waiting its timeout
    shared, backend, clock = flaky_state(monkeypatch)
    assert ask(shared) == "503"
    clock.advance(0.6)
    backend.entered.clear()
    backend.release.clear()
    probe = threading.Thread(target=ask, args=(shared,))
    probe.start()
    try:
        assert backend.entered.wait(10)
        clock.advance(5)  # however long the probe hangs, the others keep the policy
        assert [ask(shared) for _ in range(10)] == ["503"] * 10
        assert backend.calls == 2
    finally:
        backend.release.set()
        probe.join(10)


def test_a_returning_storage_is_noticed_within_a_second(
        make_app: Callable[..., Flask], private_redis: PrivateRedis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # after a return, closed kept answering 503 for 2-3.5 s: ~1,000 needless refusals at 300 req/s
    clock = SteppedClock(monkeypatch)
    app = fault_app(make_app, private_redis.url, "closed")
    client = Timed(app.test_client())
    assert client.get("/limited").status_code == 200
    private_redis.stop()
    for _ in range(12):  # a long outage: ten seconds of requests
        assert client.get("/limited").status_code == 503
        clock.advance(1.0)
    private_redis.start()
    clock.advance(1.0)
    response = client.get("/limited")
    assert response.status_code == 200, response.data[:200]
    store = redis.Redis.from_url(private_redis.url, socket_timeout=2)
    assert counter_keys(store), "served, but not counted in Redis"
