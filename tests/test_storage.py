"""The shared storage on Redis: one budget for several app instances, threads and processes,
in every URI form (``redis://``, ``rediss://``, ``redis+cluster://``, ``redis+sentinel://``),
every strategy, ``count="failures"``."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import multiprocessing
import queue
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask, request
from limits import parse

from flask_apiguard import ApiGuard, ApiGuardConfigError, concurrency_limit, public, rate_limit
from flask_apiguard.ratelimit.counter import Counter as LimitCounter
from flask_apiguard.ratelimit.memory import LocalStorage
from flask_apiguard.ratelimit.probes import LimitProbe
from flask_apiguard.ratelimit.shared import SharedState, redacted
from flask_apiguard.state import guard_state

from .conftest import IN_CI, HttpsClient, base_config, free_port, own_keys, problem

STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
#: The exactness figures: WORKERS clients of REQUESTS each against a limit of LIMIT per minute.
WORKERS, REQUESTS, LIMIT = 4, 40, 50
GOOD = {"password": "correct horse battery staple"}
#: Seconds no request may take when the storage is down (a hang guard, not a benchmark).
HANG_GUARD = 2.0


def limited_app(uri: str, instance_path: str, strategy: str = "sliding-window-counter",
                **config: Any) -> Flask:
    """An app of its own on ``uri`` with ``/limited`` (3/minute, or ``LIMIT`` per minute on
    ``/exact``) and a ``count="failures"`` ``/login``; the default limit is off."""
    app = Flask("apiguard_storage", instance_path=instance_path)
    app.test_client_class = HttpsClient
    app.config.update(base_config(APIGUARD_STORAGE_URI=uri, APIGUARD_RATELIMIT_STRATEGY=strategy,
                                  APIGUARD_RATELIMIT_DEFAULT=None, **config))

    @app.get("/limited")
    @public
    @rate_limit("3/minute")
    def limited() -> Any:
        return {"ok": True}

    @app.get("/exact")
    @public
    @rate_limit(f"{LIMIT} per minute")
    def exact() -> Any:
        return {"ok": True}

    @app.post("/login")
    @public
    @rate_limit("3/minute", key="ip", count="failures")
    def login() -> Any:
        if (request.get_json(silent=True) or {}) == GOOD:
            return {"token": "t"}
        return {"error": "bad credentials"}, 401

    ApiGuard(app)
    return app


@pytest.fixture
def two_apps(tmp_path: Path) -> Callable[..., tuple[Flask, Flask]]:
    def factory(uri: str, **config: Any) -> tuple[Flask, Flask]:
        return (limited_app(uri, str(tmp_path / "one"), **config),
                limited_app(uri, str(tmp_path / "two"), **config))

    return factory


def assert_one_budget(first: Flask, second: Flask) -> None:
    """Three requests spread over the two instances use up one ``3/minute`` budget."""
    one, two = first.test_client(), second.test_client()
    remaining = [c.get("/limited").headers["RateLimit-Remaining"] for c in (one, two, one)]
    assert remaining == ["2", "1", "0"]
    for client in (two, one):
        refused = client.get("/limited")
        assert refused.status_code == 429
        assert problem(refused)["error"] == "rate_limit_exceeded"


# -- reset (for tests: flask_apiguard.testing) ----------------------------------------------------

def spend(app: Flask) -> None:
    client = app.test_client()
    for _ in range(3):
        assert client.get("/limited").status_code == 200
    assert client.get("/limited").status_code == 429


def test_reset_gives_memory_storage_a_fresh_state(tmp_path: Path) -> None:
    app = limited_app("memory://", str(tmp_path))
    spend(app)
    guard_state(app).shared.reset()
    spend(app)


@pytest.mark.redis
def test_reset_deletes_only_the_keys_under_the_apps_prefix(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    mine = limited_app(redis_url, str(tmp_path / "mine"),
                       APIGUARD_STORAGE_OPTIONS={"key_prefix": f"{redis_prefix}-mine"})
    other = limited_app(redis_url, str(tmp_path / "other"),
                        APIGUARD_STORAGE_OPTIONS={"key_prefix": f"{redis_prefix}-other"})
    spend(mine)
    spend(other)
    client = redis.Redis.from_url(redis_url)
    unrelated = f"{redis_prefix}-unrelated"
    client.set(unrelated, "1", ex=60)
    guard_state(mine).shared.reset()
    assert client.keys(f"{redis_prefix}-mine:*") == []
    assert client.keys(f"{redis_prefix}-other:*") and client.get(unrelated) == b"1"
    spend(mine)
    assert other.test_client().get("/limited").status_code == 429
    client.close()


# -- redis:// -----------------------------------------------------------------------------------

@pytest.mark.redis
def test_two_app_instances_share_one_budget(two_apps: Any, redis_url: str, redis_prefix: str,
                                            storage_options: dict[str, Any]) -> None:
    first, second = two_apps(redis_url, APIGUARD_STORAGE_OPTIONS=storage_options)
    assert_one_budget(first, second)
    keys = own_keys(redis.Redis.from_url(redis_url), redis_prefix)
    assert keys and all("limited" in k for k in keys)


def test_memory_storage_is_per_instance(two_apps: Any) -> None:
    one, two = (app.test_client() for app in two_apps("memory://"))
    assert [one.get("/limited").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert two.get("/limited").status_code == 200


@pytest.mark.redis
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_on_redis(two_apps: Any, redis_url: str, storage_options: dict[str, Any],
                                 strategy: str) -> None:
    first, second = two_apps(redis_url, strategy=strategy, APIGUARD_STORAGE_OPTIONS=storage_options)
    assert_one_budget(first, second)
    other = first.test_client().get("/limited", environ_base={"REMOTE_ADDR": "203.0.113.5"})
    assert other.status_code == 200


@pytest.mark.redis
def test_count_failures_on_redis(two_apps: Any, redis_url: str,
                                 storage_options: dict[str, Any]) -> None:
    first, second = two_apps(redis_url, APIGUARD_STORAGE_OPTIONS=storage_options)
    one, two = first.test_client(), second.test_client()
    assert [c.post("/login", json=GOOD).status_code for c in (one, two) * 5] == [200] * 10
    bad = {"password": "hunter2"}
    assert [c.post("/login", json=bad).status_code for c in (one, two, one)] == [401] * 3
    # the failures of both instances exhausted the shared budget: a good login is refused
    for client in (one, two):
        refused = client.post("/login", json=GOOD)
        assert refused.status_code == 429
        assert problem(refused)["error"] == "rate_limit_exceeded"


@pytest.mark.redis
def test_redis_client_timeouts_default_to_half_a_second(make_app: Any,
                                                        redis_config: Callable[..., Any]) -> None:
    def kwargs(app: Flask) -> dict[str, Any]:
        storage = guard_state(app).shared.primary.storage
        return dict(storage.get_connection().connection_pool.connection_kwargs)

    defaults = kwargs(make_app(**redis_config()))
    assert defaults["socket_timeout"] == 0.5
    assert defaults["socket_connect_timeout"] == 0.5
    chosen = kwargs(make_app(**redis_config(APIGUARD_STORAGE_OPTIONS={"socket_timeout": 2.0})))
    assert chosen["socket_timeout"] == 2.0
    assert chosen["socket_connect_timeout"] == 0.5


def test_storage_uri_secrets_never_reach_the_log(caplog: Any) -> None:
    # The storage URI went into log messages with its password.
    assert redacted("redis://user:pw@host:6390/1?password=hunter2") == "redis://host:6390/1"
    with caplog.at_level(logging.WARNING, logger="flask_apiguard"):
        SharedState("redis://127.0.0.1:1/0?password=hunter2", {}, "fixed-window", "open").admit(
            (), False, None, (), False)
    assert "hunter2" not in caplog.text


def test_storage_uri_redaction_survives_odd_passwords() -> None:
    # The query was cut before the credentials, so a '?' or '#' in a password left part of it.
    assert redacted("redis://user:pa?ss-word-123@host:6379/0") == "redis://host:6379/0"
    assert redacted("redis://:Abc#Def9Ghi@host") == "redis://host"


# -- the other URI forms, against servers of the test's own ---------------------------------------

def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is not installed; under CI=true the storage tests must run.")
        pytest.skip("redis-server is not installed: rediss://, redis+cluster:// and "
                    "redis+sentinel:// need one to start their own servers")
    return binary


def _wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server on port {port} did not start")


@pytest.fixture
def servers() -> Iterator[Callable[..., int]]:
    """``start(*args, port=None, plain=True) -> port``: redis-servers of this test, killed at its end."""
    binary = _redis_server()
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, port: int | None = None, plain: bool = True) -> int:
        port = port or free_port()
        command = [binary, *args, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if plain:
            command += ["--port", str(port)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        _wait_for(port, process)
        return port

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


def _self_signed(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "redis.crt", directory / "redis.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@pytest.fixture
def tls_redis(servers: Callable[..., int], tmp_path: Path) -> tuple[int, str]:
    """A redis-server speaking only TLS, with a self-signed certificate: (port, CA file)."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    try:
        servers("--port", "0", "--tls-port", str(port), "--tls-cert-file", cert,
                "--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no",
                port=port, plain=False)
    except RuntimeError as exc:
        if IN_CI:
            raise
        pytest.skip(f"redis-server cannot serve TLS here (built without it?): {exc}")
    return port, cert


@pytest.mark.redis
def test_rediss_instances_share_one_budget(two_apps: Any, tls_redis: tuple[int, str]) -> None:
    port, ca = tls_redis
    first, second = two_apps(f"rediss://127.0.0.1:{port}/0",
                             APIGUARD_STORAGE_OPTIONS={"ssl_ca_certs": ca})
    assert_one_budget(first, second)


@pytest.mark.redis
def test_rediss_refuses_an_untrusted_certificate(two_apps: Any,
                                                 tls_redis: tuple[int, str]) -> None:
    # no CA given: the self-signed certificate is not trusted, so no counter is ever sent over
    # an unverified connection; the storage counts as down and the closed policy answers 503
    first, _ = two_apps(f"rediss://127.0.0.1:{tls_redis[0]}/0",
                        APIGUARD_RATELIMIT_ON_STORAGE_ERROR="closed")
    response = first.test_client().get("/limited")
    assert response.status_code == 503
    assert problem(response)["error"] == "service_unavailable"


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(50):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@pytest.mark.redis
def test_redis_cluster_instances_share_one_budget(two_apps: Any, servers: Callable[..., int],
                                                  tmp_path: Path) -> None:
    # a one-node cluster holding every slot: a real cluster protocol, MOVED-free
    port = servers("--cluster-enabled", "yes", "--cluster-config-file",
                   str(tmp_path / "nodes.conf"), "--dir", str(tmp_path), port=_cluster_port())
    node = redis.Redis(port=port)
    node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    deadline = time.monotonic() + 10  # a fresh master waits ~2 s before it accepts writes
    while b"cluster_state:ok" not in node.execute_command("CLUSTER", "INFO"):
        assert time.monotonic() < deadline, "the one-node cluster did not come up"
        time.sleep(0.05)
    first, second = two_apps(f"redis+cluster://127.0.0.1:{port}")
    assert_one_budget(first, second)
    assert any(b"apiguard" in k for k in node.keys("*"))


@pytest.mark.redis
def test_redis_sentinel_instances_share_one_budget(two_apps: Any, servers: Callable[..., int],
                                                   tmp_path: Path) -> None:
    master = servers()
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\n"
                    f"sentinel monitor apimaster 127.0.0.1 {master} 1\n")
    servers(str(conf), "--sentinel", port=sentinel_port, plain=False)
    first, second = two_apps(f"redis+sentinel://127.0.0.1:{sentinel_port}/apimaster")
    assert_one_budget(first, second)
    # the counters live on the master the sentinel named
    assert any(b"apiguard" in k for k in redis.Redis(port=master).keys("*"))


@pytest.mark.parametrize("uri", [
    "redis://127.0.0.1:{port}/0",
    "rediss://127.0.0.1:{port}/0",
    "redis+sentinel://127.0.0.1:{port}/apimaster",
    "redis+cluster://127.0.0.1:{port}",
])
def test_every_uri_form_starts_without_its_server(make_app: Any, dead_port: int, uri: str) -> None:
    # a storage that is down at start-up is a storage fault (the policy answers), not bad
    # config; and the Redis client defaults keep the request from hanging (a timeout guard)
    app = make_app(APIGUARD_STORAGE_URI=uri.format(port=dead_port),
                   APIGUARD_RATELIMIT_ON_STORAGE_ERROR="closed")
    started = time.monotonic()
    response = app.test_client().get("/health")
    elapsed = time.monotonic() - started
    assert elapsed < HANG_GUARD, f"the request took {elapsed:.2f} s with the storage down"
    assert response.status_code == 503
    assert problem(response)["error"] == "service_unavailable"


@pytest.mark.parametrize("uri", ["memcached://127.0.0.1:11211", "mongodb://127.0.0.1:27017",
                                 "127.0.0.1:6379", "redis:/no-host", "file:///tmp/x"])
def test_other_storages_are_refused(make_app: Any, uri: str) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_STORAGE_URI"):
        make_app(APIGUARD_STORAGE_URI=uri)


# -- exactness under concurrency ------------------------------------------------------------------

def _count(client: Any, results: Any) -> None:
    counts = Counter(client.get("/exact").status_code for _ in range(REQUESTS))
    results.put(dict(counts))


def spawned_worker(uri: str, options: dict[str, Any], instance_path: str, strategy: str,
                   barrier: Any, results: Any) -> None:
    """One process: its own app and test client, then ``REQUESTS`` requests as fast as it can."""
    client = limited_app(uri, instance_path, strategy, APIGUARD_STORAGE_OPTIONS=options,
                         APIGUARD_RATELIMIT_ON_STORAGE_ERROR="closed").test_client()
    client.get("/limited")  # connect and compile routes before the race (another counter)
    barrier.wait(timeout=60)
    _count(client, results)


#: On Redis no window follows the wall clock: limits' Redis sliding window and fixed window
#: start at a counter's first hit (key TTLs), the moving window at each hit's own time. The
#: counter of ``/exact`` is new in each test (its own key prefix), so the race below is inside
#: one window as long as it lasts less than a minute; no waiting for a clock boundary needed.
ONE_WINDOW = 55.0
#: Exactness is about counting, not faults: the default 0.5 s Redis timeouts can expire on a
#: loaded machine, and the default "fallback" policy then counts in each process's memory,
#: admitting more than the limit without a word. Longer timeouts, and "closed" so that a
#: fault shows as 503s in the counts instead.
EXACT_OPTIONS = {"socket_timeout": 10.0, "socket_connect_timeout": 10.0}


def _within_one_window(started: float) -> None:
    took = time.monotonic() - started
    assert took < ONE_WINDOW, f"the race took {took:.1f} s: longer than one 60 s window"


def _finish_workers(workers: list[Any], results: Any) -> list[Any]:
    """What each started worker reported; every worker is joined (killed past 30 s) and must
    have exited cleanly."""
    try:
        parts = _collect(workers, results)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert [w.exitcode for w in workers] == [0] * WORKERS, "a worker process failed"
    assert len(parts) == WORKERS
    return parts


def _collect(workers: list[Any], results: Any) -> list[dict[int, int]]:
    """Each worker's counts; stops early when a worker died without answering."""
    parts: list[dict[int, int]] = []
    deadline = time.monotonic() + 90
    while len(parts) < len(workers) and time.monotonic() < deadline:
        try:
            parts.append(results.get(timeout=0.5))
        except queue.Empty:
            if not any(worker.is_alive() for worker in workers) and results.empty():
                break
    return parts


def _totals(parts: list[dict[int, int]]) -> Counter[int]:
    total: Counter[int] = Counter()
    for part in parts:
        total.update(part)
    return total


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["sliding-window-counter", "moving-window"])
def test_processes_share_one_exact_budget(redis_url: str, storage_options: dict[str, Any],
                                          tmp_path: Path, strategy: str) -> None:
    # A review saw 128 admitted of 50 here: another run flushed the shared database mid-race
    # (every counter starts again), or a loaded machine timed Redis out and the fallback policy
    # counted in memory. Now the counters are under this test's own prefix, see EXACT_OPTIONS.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    results = context.Queue()
    options = {**storage_options, **EXACT_OPTIONS}
    workers = [context.Process(target=spawned_worker,
                               args=(redis_url, options, str(tmp_path / str(n)), strategy,
                                     barrier, results))
               for n in range(WORKERS)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    parts = _finish_workers(workers, results)
    _within_one_window(started)
    total = _totals(parts)
    print(f"{strategy}: {WORKERS} processes x {REQUESTS}: admitted {total[200]} of limit "
          f"{LIMIT}, refused {total[429]}, per process {parts}")
    assert total[200] == LIMIT
    assert total[429] == WORKERS * REQUESTS - LIMIT
    assert sum(total.values()) == WORKERS * REQUESTS


@pytest.mark.redis
@pytest.mark.slow
def test_threads_on_two_instances_share_one_exact_budget(redis_url: str,
                                                         storage_options: dict[str, Any],
                                                         tmp_path: Path) -> None:
    strategy = "sliding-window-counter"
    apps = [limited_app(redis_url, str(tmp_path / str(n)), strategy,
                        APIGUARD_STORAGE_OPTIONS={**storage_options, **EXACT_OPTIONS},
                        APIGUARD_RATELIMIT_ON_STORAGE_ERROR="closed") for n in range(2)]
    clients = [apps[n % 2].test_client() for n in range(WORKERS)]
    barrier = threading.Barrier(WORKERS)
    results: queue.Queue[dict[int, int]] = queue.Queue()
    errors: list[BaseException] = []

    def run(client: Any) -> None:
        try:
            barrier.wait(timeout=30)
            _count(client, results)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    _within_one_window(started)
    parts = [results.get_nowait() for _ in threads]
    total = _totals(parts)
    print(f"threads: {WORKERS} threads on 2 instances x {REQUESTS}: admitted {total[200]} of "
          f"limit {LIMIT}, refused {total[429]}, per thread {parts}")
    assert total[200] == LIMIT
    assert total[429] == WORKERS * REQUESTS - LIMIT


# -- memory storage: a bounded table ------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, counter_clock: Any) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(time, "time", fake)
    # the counters read this fake clock as it is (1_800_000_000 starts a 15-minute window);
    # with the suite's offset on top, a window could turn mid-test depending on the hour
    counter_clock.offset = 0.0
    return fake


def test_memory_storage_holds_at_most_max_keys(clock: FakeClock) -> None:
    # memory:// kept a counter per client and view for two windows, without bound
    storage = LocalStorage(max_keys=100)
    for n in range(1_000):
        clock.now += 0.01
        storage.incr(f"client-{n}", 60)
        assert len(storage.storage) <= 100
    assert storage.get("client-999") == 1  # the newest counters are kept


def test_memory_storage_evicts_the_counter_nearest_expiry_first(clock: FakeClock) -> None:
    storage = LocalStorage(max_keys=4)
    storage.incr("long-old", 3600)
    clock.now += 1
    storage.incr("short", 10)  # created later, but expires first
    clock.now += 1
    storage.incr("long-a", 3600)
    storage.incr("long-b", 3600)
    storage.incr("long-c", 3600)  # full: the counter closest to its end goes
    assert set(storage.storage) == {"long-old", "long-a", "long-b", "long-c"}
    storage.incr("long-d", 3600)
    assert set(storage.storage) == {"long-a", "long-b", "long-c", "long-d"}


def test_memory_storage_logs_once_when_full(clock: FakeClock,
                                            caplog: pytest.LogCaptureFixture) -> None:
    storage = LocalStorage(max_keys=10)
    with caplog.at_level(logging.WARNING, logger="flask_apiguard"):
        for n in range(100):
            storage.incr(f"k{n}", 60)
    warnings = [r for r in caplog.records if "APIGUARD_MEMORY_STORAGE_MAX_KEYS" in r.getMessage()]
    assert len(warnings) == 1
    assert storage.evicted == 90


def test_memory_storage_keeps_no_lock_per_key(clock: FakeClock) -> None:
    # limits' MemoryStorage made one RLock per counter (134 bytes each, a third of a counter)
    for strategy in ("sliding-window-counter", "fixed-window", "moving-window"):
        storage = LocalStorage()
        counter = LimitCounter(storage, strategy)
        for n in range(200):
            probe = LimitProbe(parse("5/minute"), ("apiguard", "view", f"ip:{n}"))
            counter.hit_window(probe, clock.now)
            counter.test(probe)
            storage.decr(probe.key)
        assert len(storage.locks) == 0, strategy


def test_memory_sweep_is_incremental(clock: FakeClock) -> None:
    # the sweep copied every key on a request thread: 118 ms at 500k keys
    storage = LocalStorage()
    for n in range(20_000):
        storage.incr(f"old-{n}", 1)
    clock.now += 5
    storage._next_sweep = 0  # the periodic sweep is due too
    storage.incr("fresh", 60)
    assert len(storage.storage) > 20_000 - 2 * LocalStorage.SWEEP_BATCH  # a bounded step
    for n in range(10_000):
        storage.incr(f"new-{n}", 60)
    # each new counter sweeps a few expired ones: the expired are all gone by now
    assert len(storage.storage) == 10_001


def test_the_memory_sweep_survives_concurrent_expiry() -> None:
    # The memory sweep walked the live tables: counters expiring in another thread broke it.
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


def test_memory_moving_window_keeps_no_more_entries_than_its_limit(clock: FakeClock) -> None:
    storage = LocalStorage()
    for _ in range(500):
        clock.now += 1
        assert storage.acquire_entry("k", 10, 5)
    assert len(storage.events["k"]) <= 10


def test_memory_storage_max_keys_is_applied_and_validated(make_app: Any) -> None:
    app = make_app(APIGUARD_MEMORY_STORAGE_MAX_KEYS=1_000)
    shared = guard_state(app).shared
    assert shared.memory_max_keys == 1_000
    assert shared.primary.storage.max_keys == 1_000
    assert shared.fallback.storage.max_keys == 1_000
    assert guard_state(make_app()).shared.memory_max_keys == 100_000
    for bad in (0, -5, "many", 2.5, None):
        with pytest.raises(ApiGuardConfigError, match="APIGUARD_MEMORY_STORAGE_MAX_KEYS"):
            make_app(APIGUARD_MEMORY_STORAGE_MAX_KEYS=bad)


def test_a_full_memory_storage_still_limits_the_active_client(make_app: Any) -> None:
    app = make_app(init=False, APIGUARD_MEMORY_STORAGE_MAX_KEYS=50, APIGUARD_RATELIMIT_DEFAULT=None)

    @app.get("/limited")
    @public
    @rate_limit("3/minute", key="ip")
    def limited() -> Any:
        return {"ok": True}

    ApiGuard(app)
    client = app.test_client()
    for n in range(200):  # a flood of distinct clients
        client.get("/limited", environ_base={"REMOTE_ADDR": f"198.51.100.{n % 250}"})
    storage = guard_state(app).shared.primary.storage
    assert len(storage.storage) <= 50
    codes = [client.get("/limited", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code
             for _ in range(4)]
    assert codes == [200, 200, 200, 429]


#: The flood of the eviction tests: one fresh client of each IPv6 /64 (a /48 holds 65,536).
FLOOD_MAX_KEYS = 200


def _flood(client: Any, path: str, **kwargs: Any) -> None:
    for n in range(FLOOD_MAX_KEYS + 1):
        client.open(path, environ_base={"REMOTE_ADDR": f"2001:db8:0:{n + 2:x}::1"}, **kwargs)


def test_a_flood_of_new_clients_does_not_reset_a_throttled_login(make_app: Any) -> None:
    # the counter evicted first was the oldest: a throttled client's, so max_keys + 1 fresh
    # /64s gave it a fresh budget of guesses
    app = make_app(init=False, APIGUARD_MEMORY_STORAGE_MAX_KEYS=FLOOD_MAX_KEYS,
                   APIGUARD_RATELIMIT_DEFAULT=None)

    @app.post("/login")
    @public
    @rate_limit("3 per 15 minutes", key="ip", count="failures")
    def login() -> Any:
        return {"error": "bad password"}, 401

    ApiGuard(app)
    client = app.test_client()
    me = {"REMOTE_ADDR": "2001:db8:0:1::1"}
    assert [client.post("/login", environ_base=me).status_code for _ in range(4)] == \
        [401, 401, 401, 429]
    _flood(client, "/login", method="POST")
    assert client.post("/login", environ_base=me).status_code == 429
    assert guard_state(app).shared.primary.storage.size <= FLOOD_MAX_KEYS


def test_a_flood_of_new_clients_does_not_reset_the_auth_failure_limit(make_app: Any) -> None:
    # the same eviction reset the auth-failure limit of a client guessing tokens
    app = make_app(APIGUARD_MEMORY_STORAGE_MAX_KEYS=FLOOD_MAX_KEYS,
                   APIGUARD_AUTH_FAILURE_LIMIT="3 per 15 minutes")
    client = app.test_client()
    me = {"REMOTE_ADDR": "2001:db8:0:1::1"}
    bad = {"Authorization": "Bearer not-a-token"}
    assert [client.get("/private", headers=bad, environ_base=me).status_code
            for _ in range(4)] == [401, 401, 401, 429]
    _flood(client, "/private", headers=bad)
    assert client.get("/private", headers=bad, environ_base=me).status_code == 429


def test_a_flood_of_new_usernames_does_not_reset_a_throttled_username(make_app: Any) -> None:
    # the same eviction, with key=callable on usernames sent from one address
    app = make_app(init=False, APIGUARD_MEMORY_STORAGE_MAX_KEYS=FLOOD_MAX_KEYS,
                   APIGUARD_RATELIMIT_DEFAULT=None)

    @app.post("/login")
    @public
    @rate_limit("3 per 15 minutes", key=lambda: str(request.get_json()["user"]),
                count="failures")
    def login() -> Any:
        return {"error": "bad password"}, 401

    ApiGuard(app)
    client = app.test_client()
    assert [client.post("/login", json={"user": "alice"}).status_code for _ in range(4)] == \
        [401, 401, 401, 429]
    for n in range(FLOOD_MAX_KEYS + 1):
        client.post("/login", json={"user": f"user-{n}"})
    assert client.post("/login", json={"user": "alice"}).status_code == 429


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_memory_storage_evicts_one_hit_counters_before_those_hit_again(
        clock: FakeClock, strategy: str) -> None:
    # the oldest counter went first, however often its client had been counted
    storage = LocalStorage(max_keys=40)
    counter = LimitCounter(storage, strategy)
    item = parse("3 per 15 minutes")

    def hit(name: str) -> bool:
        return counter.hit(LimitProbe(item, ("apiguard", "login", name)))

    assert [hit("victim") for _ in range(4)] == [True, True, True, False]
    for n in range(1_000):  # one hit each, from ever newer clients
        clock.now += 0.1
        hit(f"flood-{n}")
        assert storage.size <= 40
    assert not hit("victim")
    assert storage.evicted > 900


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_memory_storage_protects_a_counter_at_a_limit_of_one(clock: FakeClock,
                                                             strategy: str) -> None:
    # one hit is a whole budget at a limit of 1: such a counter is no flood counter
    storage = LocalStorage(max_keys=40)
    counter = LimitCounter(storage, strategy)
    once, more = parse("1 per 15 minutes"), parse("5 per 15 minutes")
    assert counter.hit(LimitProbe(once, ("apiguard", "reset-password", "victim")))
    for n in range(1_000):
        clock.now += 0.1
        counter.hit(LimitProbe(more, ("apiguard", "view", f"flood-{n}")))
    assert not counter.hit(LimitProbe(once, ("apiguard", "reset-password", "victim")))


def test_memory_storage_evicts_protected_counters_nearest_expiry_first(clock: FakeClock) -> None:
    # with no one-hit counter left, the protected counter closest to its end goes
    storage = LocalStorage(max_keys=3)
    for key, lifetime in (("long-old", 3600), ("short", 10), ("long", 3600)):
        clock.now += 1
        storage.incr(key, lifetime)
        storage.incr(key, lifetime)
    storage.incr("new", 3600)  # full: no counter on probation but the new one
    assert set(storage.storage) == {"long-old", "long", "new"}
    storage.incr("newer", 3600)  # "new" is on probation: it goes, not a protected counter
    assert set(storage.storage) == {"long-old", "long", "newer"}


def test_evicting_moving_windows_looks_at_a_bounded_number_of_records(
        clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    # _evict queued again every window hit since before it dropped one: O(n) steps (166 ms
    # at 100k windows) in one request, under the lock of the whole table
    windows = 5_000
    storage = LocalStorage(max_keys=2 * windows)
    for n in range(windows):
        storage.acquire_entry(f"w{n}", 10, 600)
    clock.now += 1
    for n in range(windows):  # each window hit again: its queue record is out of date
        storage.acquire_entry(f"w{n}", 10, 600)
    assert storage.size == 2 * windows
    steps = 0
    evict_step = storage._evict_step

    def counted(now: float) -> bool:
        nonlocal steps
        steps += 1
        return evict_step(now)

    monkeypatch.setattr(storage, "_evict_step", counted)
    worst = over = 0
    for n in range(2 * windows // LocalStorage.EVICT_BUDGET + 10):
        clock.now += 0.01
        steps = 0
        assert storage.acquire_entry(f"new-{n}", 10, 600)
        worst = max(worst, steps)
        over = max(over, storage.size - storage.max_keys)
    assert 0 < worst <= LocalStorage.EVICT_BUDGET  # was one step per window: 5,000
    assert over <= 2 * windows // LocalStorage.EVICT_BUDGET  # over its bound briefly...
    assert storage.size <= storage.max_keys  # ...and back within it


# -- Redis: every key under the storage's key_prefix ---------------------------------------------

def _keys_of_run(url: str, marker: str) -> list[str]:
    client = redis.Redis.from_url(url)
    return sorted(k.decode() for k in client.scan_iter(match=f"*{marker}*", count=1000))


def _drop(url: str, keys: list[str]) -> None:
    if keys:
        redis.Redis.from_url(url).delete(*keys)


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["script", "sequential"])
def test_every_key_the_guard_writes_starts_with_the_key_prefix(
        redis_url: str, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    # revoked tokens and in-flight places ignored key_prefix: two runs sharing a Redis collided
    from flask_apiguard.ratelimit import gate as redis_gate
    from flask_apiguard.ratelimit import shared as shared_module

    if backend == "sequential":  # what redis+cluster:// uses
        monkeypatch.setattr(shared_module, "supports_scripts", lambda storage: False)
    marker = uuid.uuid4().hex
    prefix = f"run-{marker}"
    shared = SharedState(redis_url, {"key_prefix": prefix}, "sliding-window-counter", "closed")
    assert isinstance(shared.primary, redis_gate.RedisScriptBackend) == (backend == "script")
    failure = [LimitProbe(parse("5/minute"), ("apiguard", "authfail", f"ip:{marker}"))]
    limit = LimitProbe(parse("5/minute"), ("apiguard", "view:a", f"ip:{marker}"))
    places = LimitProbe(parse("5/minute"), ("apiguard", "view:login", f"ip:{marker}"), hit=False)
    try:
        shared.admit(failure, True, None, (), False)  # an auth-failure counter
        shared.admit(failure, False, None, (limit,), True)  # a rate-limit counter
        shared.revoke(f"jti-{marker}", 60)  # the denylist
        assert shared.admit(failure, False, f"jti-{marker}", (limit,), False).revoked
        held = shared.admit((), False, None, (places,), True)  # an in-flight place
        assert held.reserved == (places,)
        keys = _keys_of_run(redis_url, marker)
        assert keys and all(k.startswith(f"{prefix}:") for k in keys), keys
        kinds = {"authfail", "view:a", "revoked", "inflight"}
        assert {kind for kind in kinds if any(kind in k for k in keys)} == kinds, keys
        assert held.backend is not None
        shared.settle(held.backend, held.reserved, held.token, failed=True)
    finally:
        _drop(redis_url, _keys_of_run(redis_url, marker))


@pytest.mark.redis
def test_without_a_key_prefix_the_key_names_stay_as_they_were(redis_url: str) -> None:
    marker = uuid.uuid4().hex
    shared = SharedState(redis_url, {}, "fixed-window", "closed")
    try:
        shared.revoke(f"jti-{marker}", 60)
        places = LimitProbe(parse("5/minute"), ("apiguard", "view:login", marker), hit=False)
        assert shared.admit((), False, None, (places,), False).reserved
        keys = _keys_of_run(redis_url, marker)
        assert f"apiguard:revoked:jti-{marker}" in keys
        assert f"apiguard:inflight:{places.key}" in keys
    finally:
        _drop(redis_url, _keys_of_run(redis_url, marker))


@pytest.mark.parametrize("prefix", ["", 5, None, ["x"]])
def test_a_key_prefix_must_be_a_string(make_app: Any, prefix: Any) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_STORAGE_OPTIONS"):
        make_app(APIGUARD_STORAGE_URI="redis://127.0.0.1:1/0",
                 APIGUARD_STORAGE_OPTIONS={"key_prefix": prefix})


@pytest.mark.redis
def test_reset_keeps_an_api_key_store_under_the_same_prefix(
        tmp_path: Path, redis_url: str, storage_options: dict[str, Any]) -> None:
    # reset() ran limits' KEYS "<prefix>:*": the app's API keys went with the counters.
    app = limited_app(redis_url, str(tmp_path), APIGUARD_STORAGE_OPTIONS=storage_options,
                      APIGUARD_API_KEY_STORE=redis_url)
    with app.app_context():
        plaintext, _ = ApiGuard().api_keys.create("ci-key")
    spend(app)
    guard_state(app).shared.reset()
    spend(app)
    with app.app_context():
        assert ApiGuard().api_keys.verify(plaintext) is not None


@pytest.mark.parametrize("prefix", ["run*", "a?b", "x[1]", "back\\slash", "tab\tprefix"])
def test_a_key_prefix_holding_a_pattern_is_refused(tmp_path: Path, prefix: str) -> None:
    # "rv*" was accepted, and a reset then deleted another app's "rvOTHER:..." keys.
    with pytest.raises(ApiGuardConfigError, match="key_prefix"):
        limited_app("redis://127.0.0.1:6379/0", str(tmp_path),
                    APIGUARD_STORAGE_OPTIONS={"key_prefix": prefix})


# -- @concurrency_limit across processes ----------------------------------------------------------

#: At most this many requests of one client in flight, whatever the number of workers.
IN_FLIGHT = 2
THREADS, ROUNDS = 3, 4


def spawned_concurrency_worker(uri: str, options: dict[str, Any], instance_path: str,
                               barrier: Any, results: Any) -> None:
    """One process with ``THREADS`` threads, each sending ``ROUNDS`` requests to a slow view
    that counts, in Redis, how many of its requests are inside it at once."""
    app = Flask("apiguard_concurrency", instance_path=instance_path)
    app.test_client_class = HttpsClient
    app.config.update(base_config(APIGUARD_STORAGE_URI=uri, APIGUARD_STORAGE_OPTIONS=options,
                                  APIGUARD_RATELIMIT_DEFAULT=None,
                                  APIGUARD_RATELIMIT_ON_STORAGE_ERROR="closed"))
    counter = redis.Redis.from_url(uri)
    active = f"{options['key_prefix']}:test-active"
    seen: list[int] = []

    @app.get("/slow")
    @public
    @concurrency_limit(IN_FLIGHT, key="ip")
    def slow() -> Any:
        seen.append(int(counter.incr(active)))
        time.sleep(0.15)
        counter.decr(active)
        return {"ok": True}

    ApiGuard(app)
    statuses: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        client = app.test_client()
        for _ in range(ROUNDS):
            code = client.get("/slow").status_code
            with lock:
                statuses.append(code)
            time.sleep(0.02)

    app.test_client().get("/nope")  # connect before the race
    barrier.wait(timeout=60)
    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    results.put({"statuses": dict(Counter(statuses)), "max": max(seen, default=0)})


@pytest.mark.redis
@pytest.mark.slow
def test_four_processes_never_exceed_the_concurrency_limit(
        redis_url: str, storage_options: dict[str, Any], tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    results = context.Queue()
    options = {**storage_options, **EXACT_OPTIONS}
    workers = [context.Process(target=spawned_concurrency_worker,
                               args=(redis_url, options, str(tmp_path / str(n)), barrier,
                                     results))
               for n in range(WORKERS)]
    for worker in workers:
        worker.start()
    parts = _finish_workers(workers, results)
    total = _totals([part["statuses"] for part in parts])
    print(f"{WORKERS} processes x {THREADS} threads x {ROUNDS}: {dict(total)}, "
          f"most in flight at once {max(part['max'] for part in parts)}")
    assert max(part["max"] for part in parts) <= IN_FLIGHT
    assert total[200] >= IN_FLIGHT and total[429] > 0
    assert sum(total.values()) == WORKERS * THREADS * ROUNDS
    assert set(total) <= {200, 429}


# A key= callable returning text with a lone surrogate (app code decoding bytes with
# "surrogateescape", say) reached the Redis client, which cannot encode it: 500. It is now a
# bucket of its own.
@pytest.mark.redis
def test_a_key_no_redis_key_can_hold_still_counts(make_app: Any, redis_config: Any) -> None:
    app = make_app(init=False, **redis_config())

    @app.get("/by-name")
    @public
    @rate_limit("2/minute", key=lambda: request.args["name"].encode().decode("ascii", "surrogateescape"))
    def by_name() -> Any:
        return {"ok": True}

    ApiGuard(app)
    client = app.test_client()
    statuses = [client.get("/by-name?name=caf%C3%A9").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert client.get("/by-name?name=cafe").status_code == 200  # another bucket
