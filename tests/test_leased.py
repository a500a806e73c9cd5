"""``APIGUARD_STORAGE_MODE = "leased"`` on real Redis: leased rate-limit units spent in each
process, reads from keys Redis invalidates, and what stays exact (never more admitted than a
limit, across instances, processes, a lost invalidation connection and a Redis restart)."""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from flask import Flask, request

from flask_apiguard import ApiGuard, ApiGuardConfigError, concurrency_limit, public, rate_limit
from flask_apiguard.ratelimit.leased import LeasedBackend
from flask_apiguard.ratelimit.leases import LEASE_MAX, SHARE
from flask_apiguard.state import guard_state

from .conftest import SECRET, HttpsClient, base_config, bearer, own_keys, problem, token_for

pytestmark = pytest.mark.redis

#: Seconds a test waits for the invalidation connection or a push (a hang guard, not a
#: benchmark: the delay itself is measured in benchmarks/ and reported in docs/ratelimit.rst).
PATIENCE = 5.0
HOT = 100_000
LIMIT = 50
WORKERS, REQUESTS, ROUNDS = 4, 40, 20
#: Exactness is about counting, not faults (see tests/test_storage.py's EXACT_OPTIONS).
EXACT_OPTIONS = {"socket_timeout": 10.0, "socket_connect_timeout": 10.0}


def leased_app(uri: str, options: dict[str, Any], instance_path: str, **config: Any) -> Flask:
    """An app in leased mode with a hot route, a route limited to ``LIMIT`` per minute per
    ``?bucket=``, a JWT route, a ``count="failures"`` login and a ``@concurrency_limit``."""
    app = Flask("apiguard_leased", instance_path=instance_path)
    app.test_client_class = HttpsClient
    settings: dict[str, Any] = {
        "APIGUARD_STORAGE_URI": uri, "APIGUARD_STORAGE_OPTIONS": options,
        "APIGUARD_STORAGE_MODE": "leased", "APIGUARD_RATELIMIT_DEFAULT": None,
        "APIGUARD_JWT_REVOCATION": True, "APIGUARD_AUTH_FAILURE_LIMIT": "3 per minute"}
    app.config.update(base_config(**{**settings, **config}))

    @app.get("/hot")
    @public
    @rate_limit(f"{HOT} per minute")
    def hot() -> Any:
        return {"ok": True}

    @app.get("/exact")
    @public
    @rate_limit(f"{LIMIT} per minute", key=lambda: request.args.get("bucket", "-"))
    def exact() -> Any:
        return {"ok": True}

    @app.get("/me")
    @rate_limit(f"{HOT} per minute")
    def me() -> Any:
        return {"ok": True}

    @app.post("/login")
    @public
    @rate_limit("3/minute", key="ip", count="failures")
    def login() -> Any:
        return {"error": "bad credentials"}, 401

    @app.get("/one-at-a-time")
    @public
    @concurrency_limit(1)
    def one_at_a_time() -> Any:
        return {"ok": True}

    ApiGuard(app)
    return app


def backend(app: Flask) -> LeasedBackend:
    primary = guard_state(app).shared.primary
    assert isinstance(primary, LeasedBackend)
    return primary


def ready(app: Flask) -> LeasedBackend:
    """The app's backend once its invalidation connection is up."""
    found = backend(app)
    deadline = time.monotonic() + PATIENCE
    while not found.absent.ready():
        assert time.monotonic() < deadline, "the invalidation connection did not come up"
        time.sleep(0.01)
    return found


def serving(make_leased: Any, hot: int = 0, **config: Any) -> tuple[Flask, LeasedBackend, Any]:
    """A leased app once its invalidation connection is up, its backend and a test client,
    after ``hot`` requests to ``/hot`` (so that a lease of ``/hot`` is held)."""
    app = make_leased(**config)
    found = ready(app)
    client = app.test_client()
    for _ in range(hot):
        client.get("/hot")
    return app, found, client


def wait_until(condition: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < PATIENCE, what
        time.sleep(0.001)
    return time.monotonic() - started


@pytest.fixture
def make_leased(redis_url: str, storage_options: dict[str, Any],
                tmp_path: Path) -> Any:
    made: list[Flask] = []

    def factory(uri: str = redis_url, **config: Any) -> Flask:
        app = leased_app(uri, {**storage_options, **config.pop("options", {})},
                         str(tmp_path / str(len(made))), **config)
        made.append(app)
        return app

    yield factory
    for app in made:
        primary = guard_state(app).shared._primary
        if isinstance(primary, LeasedBackend):
            primary.close()


def counter_value(client: Any, prefix: str, part: str) -> int:
    """The sum of the counters under ``prefix`` whose key holds ``part``."""
    return sum(int(client.get(key) or 0) for key in own_keys(client, prefix) if part in key)


# -- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["memory://", "redis+cluster://127.0.0.1:7000",
                                 "redis+sentinel://127.0.0.1:26379/mymaster"])
def test_leased_mode_needs_one_redis_server(uri: str, tmp_path: Path) -> None:
    with pytest.raises(ApiGuardConfigError, match=r"APIGUARD_STORAGE_MODE.*one Redis server"):
        leased_app(uri, {}, str(tmp_path))


def test_leased_mode_refuses_the_moving_window(redis_url: str, tmp_path: Path) -> None:
    with pytest.raises(ApiGuardConfigError, match=r"APIGUARD_STORAGE_MODE.*moving-window"):
        leased_app(redis_url, {}, str(tmp_path), APIGUARD_RATELIMIT_STRATEGY="moving-window")


def test_an_unknown_storage_mode_is_refused(redis_url: str, tmp_path: Path) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_STORAGE_MODE"):
        leased_app(redis_url, {}, str(tmp_path), APIGUARD_STORAGE_MODE="fast")


# -- leases ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["sliding-window-counter", "fixed-window"])
def test_a_key_seen_once_takes_a_lease_of_one(make_leased: Any, redis_run: Any,
                                              redis_prefix: str, strategy: str) -> None:
    app = make_leased(APIGUARD_RATELIMIT_STRATEGY=strategy)
    ready(app)
    response = app.test_client().get("/exact?bucket=once")
    assert response.status_code == 200
    assert counter_value(redis_run.client, redis_prefix, "fn:once") == 1


@pytest.mark.parametrize("strategy", ["sliding-window-counter", "fixed-window"])
def test_a_hot_key_is_served_mostly_without_a_round_trip(make_leased: Any, redis_run: Any,
                                                         redis_prefix: str, strategy: str) -> None:
    app = make_leased(APIGUARD_RATELIMIT_STRATEGY=strategy)
    found = ready(app)
    client = app.test_client()
    before = found.round_trips
    statuses = Counter(client.get("/hot").status_code for _ in range(600))
    trips = found.round_trips - before
    counted = counter_value(redis_run.client, redis_prefix, "view:hot")
    print(f"{strategy}: 600 requests, {trips} round trips, {counted} units counted in Redis")
    assert statuses == {200: 600}
    assert trips <= 20  # leases double: 1, 2, 4, ... LEASE_MAX
    # every admitted request was counted before it was admitted; what is held here, at most
    # one lease, is counted too
    assert 600 <= counted <= 600 + LEASE_MAX


@pytest.mark.parametrize("strategy", ["sliding-window-counter", "fixed-window"])
def test_leased_units_are_counted_as_limits_counts_hits(make_leased: Any, redis_url: str,
                                                       redis_prefix: str, strategy: str) -> None:
    from limits import parse
    from limits.storage import storage_from_string
    from limits.strategies import STRATEGIES

    app = make_leased(APIGUARD_RATELIMIT_STRATEGY=strategy)
    found = ready(app)
    client = app.test_client()
    for _ in range(30):
        assert client.get("/exact?bucket=c").status_code == 200
    held = sum(lease.units for key, lease in found.leases._leases.items() if "fn:c" in key[0])
    assert held > 0
    # limits' own strategy, on limits' own storage, reads the leased units as hits
    storage = storage_from_string(redis_url, key_prefix=redis_prefix)
    stats = STRATEGIES[strategy](storage).get_window_stats(
        parse(f"{LIMIT} per minute"), "apiguard", "view:exact", "fn:c")
    assert stats.remaining == LIMIT - 30 - held


def test_the_window_headers_count_down_from_the_lease(make_leased: Any) -> None:
    app = make_leased()
    ready(app)
    client = app.test_client()
    remaining = [int(client.get("/exact?bucket=h").headers["RateLimit-Remaining"])
                 for _ in range(10)]
    assert remaining == list(range(LIMIT - 1, LIMIT - 11, -1))


def test_two_instances_never_admit_more_than_the_limit(make_leased: Any, redis_run: Any,
                                                       redis_prefix: str) -> None:
    apps = [make_leased(), make_leased()]
    clients = [ready(app) and app.test_client() for app in apps]
    statuses = Counter(clients[n % 2].get("/exact?bucket=two").status_code for n in range(120))
    assert statuses[200] <= LIMIT
    # both keep asking until the end, so every leased unit is spent
    assert statuses[200] == LIMIT
    assert counter_value(redis_run.client, redis_prefix, "fn:two") == LIMIT


def test_the_last_units_of_a_window_are_leased_one_by_one(make_leased: Any) -> None:
    _app, found, client = serving(make_leased)
    for _ in range(LIMIT - 2 * SHARE):
        client.get("/exact?bucket=last")
    key = next(k for k in found.leases._leases if "fn:last" in k[0])
    lease = found.leases._leases[key]
    # what was left when the lease was taken: granted at most one SHARE-th of it
    assert lease.granted <= max(1, (LIMIT - (LIMIT - 2 * SHARE - lease.granted)) // SHARE)
    for _ in range(2 * SHARE - 1):
        client.get("/exact?bucket=last")
        if found.leases._leases[key].granted > 1:
            assert found.leases._leases[key].remaining >= SHARE


def test_a_refused_request_gives_back_the_units_it_was_promised(make_leased: Any, redis_run: Any,
                                                               redis_prefix: str) -> None:
    # two limits on one request: the local lease of one must not be spent when the other
    # refuses the request in its round trip (all or nothing)
    app = make_leased()

    @app.get("/two-limits")
    @public
    @rate_limit("1000 per minute", key=lambda: "wide")
    @rate_limit("2 per minute", key=lambda: request.args["who"])
    def two_limits() -> Any:
        return {"ok": True}

    found = ready(app)
    client = app.test_client()
    statuses = [client.get(f"/two-limits?who={who}").status_code
                for who in ("a", "a", "a", "a", "b")]
    assert statuses == [200, 200, 429, 429, 200]
    wide = next(lease for key, lease in found.leases._leases.items() if "fn:wide" in key[0])
    # three admitted requests, each paid once with "wide" units (leased or held here)
    assert counter_value(redis_run.client, redis_prefix, "fn:wide") - wide.units == 3


def test_leases_are_given_back_when_the_backend_closes(make_leased: Any, redis_run: Any,
                                                       redis_prefix: str) -> None:
    _app, found, _client = serving(make_leased, hot=40)
    assert counter_value(redis_run.client, redis_prefix, "view:hot") > 40  # a lease held
    found.close()
    assert counter_value(redis_run.client, redis_prefix, "view:hot") == 40


def test_a_forked_child_never_spends_its_parents_leases(make_leased: Any) -> None:
    _app, found, _client = serving(make_leased, hot=20)
    probe = next(iter(found.leases._leases))
    assert found.leases._leases[probe].units > 0
    pid = os.fork()
    if pid == 0:  # the child: its parent's leases are void, its first request leases anew
        try:
            found.absent.ready()
            lease = found.leases._leases.get(probe)
            os._exit(0 if lease is None or lease.epoch != found.absent.epoch else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_reset_forgets_the_leases(make_leased: Any) -> None:
    app, found, client = serving(make_leased, hot=20)
    guard_state(app).shared.reset()
    assert not found.leases._leases
    assert client.get("/hot").headers["RateLimit-Remaining"] == str(HOT - 1)


# -- cached reads ---------------------------------------------------------------------------------

def warm(client: Any, token: str, requests: int = 30) -> None:
    for _ in range(requests):
        assert client.get("/me", headers=bearer(token)).status_code == 200


def test_a_token_revoked_elsewhere_is_refused_within_the_invalidation_delay(
        make_leased: Any) -> None:
    first, second = make_leased(), make_leased()
    found = ready(second)
    ready(first)
    token = token_for(first)
    client = second.test_client()
    warm(client, token)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert found.absent.absent(found._revoked_prefix + jti)  # "not revoked", from the cache
    trips = found.round_trips
    warm(client, token)
    assert found.round_trips - trips <= 2  # (a lease may end meanwhile)
    with first.app_context():
        ApiGuard().revoke_token(token)
    revoked_at = time.monotonic()
    wait_until(lambda: not found.absent.absent(found._revoked_prefix + jti),
               "no invalidation arrived")
    delay = time.monotonic() - revoked_at
    print(f"revocation reached the other instance in {1000 * delay:.2f} ms")
    refused = client.get("/me", headers=bearer(token))
    assert refused.status_code == 401
    assert problem(refused)["error"] == "token_revoked"


def test_a_token_revoked_here_is_refused_at_once(make_leased: Any) -> None:
    app = make_leased()
    ready(app)
    token = token_for(app)
    client = app.test_client()
    warm(client, token)
    with app.app_context():
        ApiGuard().revoke_token(token)
    assert client.get("/me", headers=bearer(token)).status_code == 401


def test_auth_failures_counted_elsewhere_reach_a_cached_client(make_leased: Any) -> None:
    first, second = make_leased(), make_leased()
    ready(first)
    found = ready(second)
    client = second.test_client()
    token = token_for(second)
    warm(client, token)
    probe = guard_state(second).failure_limit.probes("127.0.0.1")[0]
    assert all(found.absent.absent(key) for key in found._keys(probe))
    bad = first.test_client()
    for _ in range(3):
        assert bad.get("/me", headers=bearer("not.a.token")).status_code == 401
    wait_until(lambda: client.get("/me", headers=bearer(token)).status_code == 429,
               "the failures counted by the other instance were not seen")


def test_a_lost_invalidation_connection_falls_back_to_one_round_trip(
        make_leased: Any, redis_run: Any) -> None:
    app, found, client = serving(make_leased)
    token = token_for(app)
    warm(client, token)
    assert found.absent._absent
    killed = found.absent.client_id
    redis_run.client.client_kill_filter(_id=killed)
    wait_until(lambda: not found.absent.usable, "the lost connection went unnoticed")
    assert not found.absent._absent  # everything known is forgotten at once
    trips = found.round_trips
    assert client.get("/me", headers=bearer(token)).status_code == 200
    if not found.absent.usable:  # (it may be back already)
        assert found.round_trips == trips + 1
    wait_until(lambda: found.absent.usable and found.absent.client_id != killed,
               "the invalidation connection did not come back")
    warm(client, token)
    assert found.absent._absent


def test_a_restarted_redis_voids_the_leases(private_redis: Any, make_leased: Any) -> None:
    app = make_leased(private_redis.url, APIGUARD_RATELIMIT_ON_STORAGE_ERROR="closed")
    ready(app)
    client = app.test_client()
    before = Counter(client.get("/exact?bucket=r").status_code for _ in range(30))
    assert before == {200: 30}
    private_redis.stop()
    private_redis.start()
    wait_until(lambda: client.get("/exact?bucket=r").status_code != 503,
               "Redis did not come back")
    after = Counter(client.get("/exact?bucket=r").status_code for _ in range(80))
    fresh = redis.Redis(port=private_redis.port)
    counted = sum(int(fresh.get(k) or 0) for k in fresh.scan_iter(match="*fn:r*"))
    fresh.close()
    # every request admitted since the restart was counted by the new server: none was
    # paid with units leased from the old one
    assert after[200] + 1 <= counted <= LIMIT
    assert after[500] == 0


def test_failures_only_limits_and_concurrency_stay_exact(make_leased: Any) -> None:
    first, second = make_leased(), make_leased()
    found = ready(first)
    ready(second)
    clients = [first.test_client(), second.test_client()]
    statuses = [clients[n % 2].post("/login", json={}).status_code for n in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    trips = found.round_trips
    assert clients[0].get("/one-at-a-time").status_code == 200
    assert found.round_trips == trips + 1  # a place is taken in Redis, every time


def test_the_private_names_of_redis_py_we_rely_on_exist() -> None:
    import inspect

    from redis.connection import Connection

    conn = Connection(protocol=3)
    assert hasattr(conn._parser, "set_invalidation_push_handler")
    assert "push_request" in inspect.signature(Connection.read_response).parameters


# -- exactness across processes (the figure: 4 x 40 against 50, 20 times) ---------------

def leased_worker(uri: str, options: dict[str, Any], instance_path: str, barrier: Any,
                  results: Any) -> None:
    app = leased_app(uri, options, instance_path, APIGUARD_RATELIMIT_ON_STORAGE_ERROR="closed")
    client = app.test_client()
    ready(app)
    client.get("/exact?bucket=warm-up")
    for round_number in range(ROUNDS):
        barrier.wait(timeout=60)
        counts = Counter(client.get(f"/exact?bucket=round-{round_number}").status_code
                         for _ in range(REQUESTS))
        results.put((round_number, dict(counts)))


@pytest.mark.slow
def test_four_processes_never_admit_more_than_the_limit(redis_url: str,
                                                        storage_options: dict[str, Any],
                                                        tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    results = context.Queue()
    options = {**storage_options, **EXACT_OPTIONS}
    workers = [context.Process(target=leased_worker,
                               args=(redis_url, options, str(tmp_path / str(n)), barrier, results))
               for n in range(WORKERS)]
    for worker in workers:
        worker.start()
    rounds: dict[int, Counter[int]] = {n: Counter() for n in range(ROUNDS)}
    deadline = time.monotonic() + 240
    got = 0
    try:
        while got < WORKERS * ROUNDS and time.monotonic() < deadline:
            try:
                number, counts = results.get(timeout=0.5)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    break
                continue
            rounds[number].update(counts)
            got += 1
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert [w.exitcode for w in workers] == [0] * WORKERS, "a worker process failed"
    assert got == WORKERS * ROUNDS
    admitted = [rounds[n][200] for n in range(ROUNDS)]
    print(f"leased: {WORKERS} processes x {REQUESTS} against {LIMIT}, {ROUNDS} runs: admitted "
          f"{admitted}, mean {sum(admitted) / ROUNDS:.2f}, max {max(admitted)}")
    for n in range(ROUNDS):
        assert set(rounds[n]) <= {200, 429}, rounds[n]
        assert sum(rounds[n].values()) == WORKERS * REQUESTS
    assert max(admitted) <= LIMIT


def test_a_redis_that_refuses_client_tracking_leaves_one_round_trip_per_request(
        private_redis: Any, make_leased: Any, caplog: pytest.LogCaptureFixture) -> None:
    admin = redis.Redis(port=private_redis.port)
    admin.acl_setuser("limited", enabled=True, nopass=True, keys=["*"],
                      commands=["+@all", "-client"])
    admin.close()
    url = f"redis://limited@127.0.0.1:{private_redis.port}/0"
    app = make_leased(url)
    found = backend(app)
    client = app.test_client()
    statuses = Counter(client.get("/exact?bucket=acl").status_code for _ in range(5))
    wait_until(lambda: "could not be opened" in caplog.text, "nothing was logged")
    statuses.update(client.get("/exact?bucket=acl").status_code for _ in range(5))
    assert statuses == {200: 10}
    assert not found.absent.usable
    assert found.round_trips == 10  # every request went the exact way
    assert caplog.text.count("could not be opened") == 1
    assert "NoPermissionError" in caplog.text


# -- review round: leased mode attacked ----------------------------------------------------------

def test_a_lease_taken_under_a_large_limit_never_pays_under_a_smaller_one(
        make_leased: Any) -> None:
    # a scope= counter is shared by limits of different amounts: /big's leased units paid
    # for /small's requests (111 of 400 admitted where exact mode admits none)
    app = make_leased()

    @app.get("/big")
    @public
    @rate_limit("10000/minute", scope="s")
    def big() -> Any:
        return {"ok": True}

    @app.get("/small")
    @public
    @rate_limit("10/minute", scope="s")
    def small() -> Any:
        return {"ok": True}

    ready(app)
    client = app.test_client()
    assert Counter(client.get("/big").status_code for _ in range(400)) == {200: 400}
    small_statuses = Counter(client.get("/small").status_code for _ in range(50))
    assert small_statuses == {429: 50}
    refused = client.get("/small")
    assert refused.headers["RateLimit-Limit"] == "10"


def test_two_limits_of_one_request_on_one_counter_never_overspend_a_lease(
        make_leased: Any, redis_run: Any, redis_prefix: str) -> None:
    app = make_leased()

    @app.get("/twice")
    @public
    @rate_limit("1000/minute", scope="t")
    @rate_limit("1000/minute", scope="t")
    def twice() -> Any:
        return {"ok": True}

    found = ready(app)
    client = app.test_client()
    for _ in range(100):
        assert client.get("/twice").status_code == 200
    held = sum(lease.units for key, lease in found.leases._leases.items() if "scope:t" in key[0])
    # each request counted twice, as in exact mode, and nothing spent that was not counted
    assert counter_value(redis_run.client, redis_prefix, "scope:t") == 200 + held


def test_a_flushed_redis_voids_the_leases(private_redis: Any, make_leased: Any) -> None:
    # FLUSHDB emptied the counters but the units held here stayed spendable: 1031 admitted
    # against a limit of 1000
    app = make_leased(private_redis.url)
    found = ready(app)
    client = app.test_client()
    for _ in range(20):
        assert client.get("/exact?bucket=f").status_code == 200
    epoch = found.absent.epoch
    admin = redis.Redis(port=private_redis.port)
    admin.flushdb()
    wait_until(lambda: found.absent.epoch != epoch, "the flush was not heard")
    after = Counter(client.get("/exact?bucket=f").status_code for _ in range(80))
    counted = sum(int(admin.get(k) or 0) for k in admin.scan_iter(match="*fn:f*"))
    admin.close()
    assert after[200] <= counted <= LIMIT


def test_a_forked_child_gives_back_none_of_its_parents_leases(make_leased: Any, redis_run: Any,
                                                              redis_prefix: str) -> None:
    # each child exiting normally (atexit) gave the parent's units back, and the parent
    # then spent them too: 250 admitted against 200
    _app, found, _client = serving(make_leased, hot=20)
    before = counter_value(redis_run.client, redis_prefix, "view:hot")
    pid = os.fork()
    if pid == 0:
        try:
            found.give_back()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert counter_value(redis_run.client, redis_prefix, "view:hot") == before


def test_a_forked_child_serves_although_its_parent_held_the_lease_lock(make_leased: Any) -> None:
    app, found, client = serving(make_leased)
    client.get("/hot")
    with found.leases.lock:  # as a sibling thread of a gthread worker may hold it at fork time
        pid = os.fork()
        if pid == 0:
            import signal

            signal.alarm(10)  # a hang guard: the child would block on the copied lock
            try:
                ready(app)  # the child's own invalidation connection: leases are used again
                ok = all(client.get("/hot").status_code == 200 for _ in range(3))
                os._exit(0 if ok else 1)
            finally:
                os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_token_revoked_elsewhere_is_refused_whatever_the_clients_encoding(
        make_leased: Any) -> None:
    # the pushes' key names were decoded as UTF-8, a latin-1 client wrote them: a revoked
    # "café" token stayed "not revoked" in the other process's cache for good
    first = make_leased(options={"encoding": "latin-1"})
    second = make_leased(options={"encoding": "latin-1"})
    found = ready(second)
    ready(first)
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "iat": now, "exp": now + 600, "jti": "café"}, SECRET,
                       algorithm="HS256")
    client = second.test_client()
    warm(client, token)
    assert found.absent.absent(found._revoked_prefix + "café")
    with first.app_context():
        ApiGuard().revoke_token(token)
    wait_until(lambda: not found.absent.absent(found._revoked_prefix + "café"),
               "the push did not reach the cache")
    assert client.get("/me", headers=bearer(token)).status_code == 401


def test_a_dropped_app_stops_its_tracking_thread(redis_url: str, storage_options: dict[str, Any],
                                                tmp_path: Path) -> None:
    # an app made per tenant or per test left a thread and a Redis connection behind
    import gc

    app = leased_app(redis_url, storage_options, str(tmp_path))
    thread = ready(app).absent._thread
    assert thread is not None and thread.is_alive()
    del app
    gc.collect()
    wait_until(lambda: not thread.is_alive(), "the tracking thread outlived its app")


def test_a_write_pushed_after_a_flush_is_never_cached_as_absent() -> None:
    # remember() read the stripes before taking the lock; a flush push replaced them and a
    # write push for the key landed on the new list: the revoked key was cached as absent
    from flask_apiguard.ratelimit.tracking import AbsentKeys

    absent = AbsentKeys(redis.Redis(), ["p:"])
    absent.usable = True
    key = "p:revoked"
    snapshot = absent.snapshot()
    lock = absent._lock

    class Interleaved:
        def __enter__(self) -> Any:
            absent._lock = lock
            absent._invalidated([b"invalidate", None])
            absent._invalidated([b"invalidate", [key.encode()]])
            return lock.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            return lock.__exit__(*exc)

    absent._lock = Interleaved()  # type: ignore[assignment]
    absent.remember([key], snapshot)
    assert not absent.absent(key)


def test_the_invalidation_connection_never_waits_longer_than_its_watchdog(
        make_leased: Any) -> None:
    # its reads took APIGUARD_STORAGE_OPTIONS' socket_timeout: with None (or 30 s), a reply
    # stalled half-way held the thread, and "not revoked" answers, for as long
    from flask_apiguard.ratelimit.tracking import AbsentKeys

    app = make_leased(options={"socket_timeout": None, "socket_connect_timeout": 30})
    found = ready(app)
    connection = found.absent.connection
    assert connection.socket_timeout == AbsentKeys.PING_TIMEOUT
    assert connection.socket_connect_timeout == AbsentKeys.PING_TIMEOUT


def test_a_forked_child_exits_although_its_parent_held_the_lease_lock(make_leased: Any) -> None:
    # the child's give-back at exit took the copied lock before asking whose table it was
    _app, found, _client = serving(make_leased, hot=20)
    with found.leases.lock:
        pid = os.fork()
        if pid == 0:
            import signal

            signal.alarm(10)  # a hang guard
            try:
                found.give_back()  # what atexit runs, before the child served anything
                os._exit(0)
            finally:
                os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_stalled_invalidation_connection_is_noticed_by_its_watchdog(
        private_redis: Any, make_leased: Any) -> None:
    # a connection that stops answering without closing (CLIENT PAUSE stands in for a dead
    # network path): no push can arrive, so the cache must stop being believed
    from flask_apiguard.ratelimit.tracking import AbsentKeys

    app = make_leased(private_redis.url)
    found = ready(app)
    admin = redis.Redis(port=private_redis.port)
    paused_for = AbsentKeys.PING_EVERY + AbsentKeys.PING_TIMEOUT + 2.0
    admin.client_pause(int(paused_for * 1000), all=True)
    started = time.monotonic()
    while found.absent.usable:
        assert time.monotonic() - started < paused_for, "the stall went unnoticed"
        time.sleep(0.05)
    noticed = time.monotonic() - started
    print(f"a stalled invalidation connection noticed after {noticed:.2f} s")
    assert noticed <= AbsentKeys.PING_EVERY + AbsentKeys.PING_TIMEOUT + 1.0  # a loaded machine
    wait_until(lambda: found.absent.usable, "the connection did not come back after the pause")
    admin.close()


def test_a_client_under_its_auth_failure_limit_is_read_from_the_cache(make_leased: Any) -> None:
    # every request from an IP with a failure in the window made a round trip (its counters
    # existed): behind one NAT, one mistyped password sent everyone to Redis for 15 minutes
    app, found, client = serving(make_leased)
    token = token_for(app)
    assert client.get("/me", headers=bearer("not.a.token")).status_code == 401  # one failure
    warm(client, token)
    probe = guard_state(app).failure_limit.probes("127.0.0.1")[0]
    assert all(found.absent.absent(key) for key in found._keys(probe))  # under the limit
    trips = found.round_trips
    warm(client, token)
    assert found.round_trips - trips <= 2  # (a lease may end meanwhile)
    for _ in range(2):  # two more: the limit (3 per minute) is reached
        assert client.get("/me", headers=bearer("not.a.token")).status_code == 401
    assert client.get("/me", headers=bearer(token)).status_code == 429


def test_a_revoked_token_counts_as_an_auth_failure(make_leased: Any) -> None:
    # the lease script answered "revoked" without counting the failure the exact gate
    # counts: replaying a revoked token was never throttled
    app, _found, client = serving(make_leased)
    token = token_for(app)
    warm(client, token)
    with app.app_context():
        ApiGuard().revoke_token(token)
    statuses = [client.get("/me", headers=bearer(token)).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


def delivered_or_applied(found: LeasedBackend, keys: Sequence[str]) -> bool:
    import select

    absent = found.absent
    if not all(absent.absent(key) for key in keys):
        return True
    sock = absent._sock
    return absent._busy or (sock is not None and bool(select.select([sock], [], [], 0)[0]))


def test_a_busy_worker_never_believes_a_push_it_has_not_applied(make_leased: Any,
                                                                redis_run: Any) -> None:
    # a push waited in the socket while the tracking thread waited for the interpreter lock
    # (a worker busy serving: 50 to 400 ms), and the cached "passes" was believed meanwhile:
    # an IP that had just reached its auth-failure limit got 200s from the other workers
    import threading

    app, found, client = serving(make_leased)
    token = token_for(app)
    warm(client, token)
    probe = guard_state(app).failure_limit.probes("127.0.0.1")[0]
    keys = found._keys(probe)
    assert all(found.absent.absent(key) for key in keys)
    stop = threading.Event()

    def busy() -> None:  # another request thread of this worker, never waiting on I/O
        while not stop.is_set():
            sum(range(10_000))

    spinner = threading.Thread(target=busy)
    spinner.start()
    try:
        admitted = 0
        for _ in range(20):
            # another worker counts failures up to the limit (3 per minute)
            redis_run.client.set(keys[-1], 3, px=120_000)
            # Redis delivers the push a moment later (a network's delay, documented); from
            # then on, applied or not, the cache must not be believed
            delivered = time.monotonic() + 1.0
            while not delivered_or_applied(found, keys) and time.monotonic() < delivered:
                pass
            if client.get("/me", headers=bearer(token)).status_code != 429:
                admitted += 1
            redis_run.client.delete(keys[-1])
            warm(client, token, 3)
    finally:
        stop.set()
        spinner.join()
    assert admitted == 0
