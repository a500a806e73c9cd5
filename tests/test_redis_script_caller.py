"""The gate's own EVALSHA path (``redis_gate.ScriptCaller``) against real Redis servers: a
flushed script is loaded again, a connection Redis closed is noticed before use, an answer
that arrives late is never read by the next request, and a forked child opens its own
connections."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from typing import Any

import pytest
import redis
from limits import parse

from flask_apiguard.errors import ServiceUnavailable
from flask_apiguard.ratelimit.gate import RedisScriptBackend
from flask_apiguard.ratelimit.probes import LimitProbe
from flask_apiguard.ratelimit.shared import SharedState

from .conftest import PrivateRedis

pytestmark = pytest.mark.redis

ITEM = parse("1000/hour")


def probe(name: str) -> list[LimitProbe]:
    return [LimitProbe(ITEM, ("apiguard", "view:caller", name))]


def remaining(shared: SharedState, name: str) -> int:
    verdict = shared.admit((), False, None, probe(name), True)
    assert verdict.window is not None
    return verdict.window.remaining


def test_a_flushed_script_is_loaded_again(private_redis: PrivateRedis) -> None:
    # SCRIPT FLUSH empties the script cache of the whole server: a server of the test's own
    shared = SharedState(private_redis.url, {}, "fixed-window", "closed")
    assert isinstance(shared.primary, RedisScriptBackend)
    assert remaining(shared, "a") == 999
    redis.Redis.from_url(private_redis.url).script_flush()
    assert remaining(shared, "a") == 998
    assert shared._down_since is None


@pytest.fixture
def named(storage_options: dict[str, Any], redis_prefix: str) -> dict[str, Any]:
    """Storage options whose connections carry this test's name (``CLIENT SETNAME``), so that
    :func:`kill_clients` closes them and no one else's on the shared server."""
    return {**storage_options, "client_name": redis_prefix}


def kill_clients(url: str, name: str) -> None:
    """Close, server side, every connection named ``name`` (this test's, see ``named``)."""
    with redis.Redis.from_url(url) as admin:
        ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
        assert ids, f"no connection named {name}"
        for client_id in ids:
            admin.client_kill_filter(_id=client_id)


def test_a_connection_closed_by_redis_is_replaced_before_use(redis_url: str, named: dict[str, Any],
                                                             caplog: Any) -> None:
    shared = SharedState(redis_url, named, "fixed-window", "fallback")
    backend = shared.primary
    assert isinstance(backend, RedisScriptBackend)
    assert remaining(shared, "b") == 999
    assert len(backend.script._idle) == 1
    kill_clients(redis_url, named["client_name"])
    with caplog.at_level(logging.WARNING, logger="flask_apiguard"):
        assert remaining(shared, "b") == 998  # counted on Redis, not on the fallback
    assert shared._down_since is None
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]


def test_dropped_connections_go_back_to_the_pool(redis_url: str, named: dict[str, Any]) -> None:
    # a pool capped at 4 connections survives any number of dropped ones
    shared = SharedState(redis_url, {**named, "max_connections": 4}, "fixed-window", "closed")
    for cycle in range(12):
        assert remaining(shared, "cap") == 999 - 2 * cycle
        kill_clients(redis_url, named["client_name"])
        assert remaining(shared, "cap") == 998 - 2 * cycle
    backend = shared.primary
    assert isinstance(backend, RedisScriptBackend)
    assert backend.script.pool._created_connections <= 4


def test_a_restarted_redis_costs_no_refusal(private_redis: PrivateRedis, caplog: Any) -> None:
    shared = SharedState(private_redis.url, {}, "fixed-window", "closed")
    assert remaining(shared, "r") == 999
    private_redis.stop()
    private_redis.start()
    with caplog.at_level(logging.WARNING, logger="flask_apiguard"):
        assert remaining(shared, "r") == 999  # a new server: the counter starts again
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]


def test_a_late_answer_is_never_read_by_the_next_request(private_redis: PrivateRedis) -> None:
    shared = SharedState(private_redis.url, {"socket_timeout": 0.2}, "fixed-window", "closed")
    backend = shared.primary
    assert isinstance(backend, RedisScriptBackend)
    assert remaining(shared, "c") == 999
    assert remaining(shared, "d") == 999
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(ServiceUnavailable):
            shared.admit((), False, None, probe("c"), True)  # times out: its answer comes later
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    assert backend.script._idle == []  # the connection that timed out was dropped
    shared._retry_at = 0.0  # do not wait for the circuit breaker
    time.sleep(0.1)
    # "d" must read d's counter (998), not the late answer about c
    assert remaining(shared, "d") == 998
    assert remaining(shared, "c") == 997  # the timed-out request was counted by Redis


def _child_admits(url: str, shared_holder: list[SharedState], queue: Any) -> None:
    shared = shared_holder[0]
    try:
        queue.put([remaining(shared, "e") for _ in range(3)])
    except BaseException as exc:  # pragma: no cover - reported to the parent
        queue.put(repr(exc))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_uses_its_own_connections(redis_url: str,
                                                 storage_options: dict[str, Any]) -> None:
    shared = SharedState(redis_url, storage_options, "fixed-window", "closed")
    backend = shared.primary
    assert isinstance(backend, RedisScriptBackend)
    assert remaining(shared, "e") == 999
    parent_connection = backend.script._idle[0]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_admits, args=(redis_url, [shared], queue))
    child.start()
    answer = queue.get(timeout=20)
    child.join(20)
    assert answer == [998, 997, 996]
    # the parent's connection was not used by the child and still answers correctly
    assert backend.script._idle[0] is parent_connection
    assert remaining(shared, "e") == 995


C_FORK = """
import ctypes, os, sys
from limits import parse
from flask_apiguard.ratelimit.probes import LimitProbe
from flask_apiguard.ratelimit.shared import SharedState
shared = SharedState(sys.argv[1], {"key_prefix": sys.argv[2]}, "fixed-window", "closed")
def left(name):
    return shared.admit((), False, None, [LimitProbe(parse("100000/hour"),
                        ("apiguard", "view:cfork", name))], True).window.remaining
left("warm-up")  # the parent has a connection before it forks
pid = ctypes.CDLL(None).fork()  # as uWSGI forks: no Python at-fork hooks run
me = "child" if pid == 0 else "parent"
wrong = sum(left(me) != 100000 - i for i in range(1, 301))
print(me, wrong, flush=True)
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_fork_without_python_hooks_never_shares_a_socket(redis_url: str, redis_prefix: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", C_FORK, redis_url, redis_prefix], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(done.stdout.split("\n")[:2]) == ["child 0", "parent 0"], done.stdout


class RedisProxy:
    """A TCP proxy to Redis on a free port; :meth:`forward` decides, per chunk, whether it
    passes (True) or the flow ends there (False, after doing what the subclass wants)."""

    def __init__(self, target: tuple[str, int]) -> None:
        import socket
        import threading

        self.target, self.flows = target, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def forward(self, flow: dict[str, Any], data: bytes, from_client: bool) -> bool:
        raise NotImplementedError

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            flow: dict[str, Any] = {"client": client, "up": socket.create_connection(self.target)}
            self.flows.append(flow)
            for source, target, from_client in ((client, flow["up"], True),
                                                (flow["up"], client, False)):
                threading.Thread(target=self._pipe, args=(flow, source, target, from_client),
                                 daemon=True).start()

    def _pipe(self, flow: dict[str, Any], source: Any, target: Any, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if not self.forward(flow, data, from_client):
                    return
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.close()


class DropOneAnswer(RedisProxy):
    """Once armed, lets the next EVALSHA through and closes the client's connection instead
    of passing the answer back (the script ran)."""

    armed = False

    def forward(self, flow: dict[str, Any], data: bytes, from_client: bool) -> bool:
        import socket

        if from_client and self.armed and b"EVALSHA" in data:
            self.armed, flow["drop"] = False, True
        if not from_client and flow.get("drop"):
            flow["client"].shutdown(socket.SHUT_RDWR)
            return False
        return True


def test_the_script_is_never_sent_twice(redis_url: str, storage_options: dict[str, Any]) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    proxy = DropOneAnswer((parts.hostname or "127.0.0.1", parts.port or 6379))
    try:
        shared = SharedState(f"redis://127.0.0.1:{proxy.port}{parts.path}", storage_options,
                             "fixed-window", "closed")
        assert remaining(shared, "once") == 999
        proxy.armed = True
        with pytest.raises(ServiceUnavailable):  # the answer is lost: the fault policy answers
            shared.admit((), False, None, probe("once"), True)
        shared._retry_at = 0.0
        # Redis ran the lost one once, not twice: this is the third hit
        assert remaining(shared, "once") == 997
    finally:
        proxy.listener.close()


def test_a_burst_as_wide_as_the_pool_leaves_room_for_other_commands(
        redis_url: str, storage_options: dict[str, Any], redis_prefix: str) -> None:
    import threading

    width = 4
    shared = SharedState(redis_url, {**storage_options, "max_connections": width}, "fixed-window",
                         "closed")
    backend = shared.primary
    assert isinstance(backend, RedisScriptBackend)
    caller = backend.script
    run, barrier = caller._run, threading.Barrier(width)

    def together(conn: Any, keys: Any, arg: str) -> Any:
        barrier.wait(timeout=5)  # every request of the burst holds a connection at once
        return run(conn, keys, arg)

    caller._run = together  # type: ignore[method-assign]
    # a client of the test's own: its in-flight places are its own on a shared server
    login = [LimitProbe(parse("5/minute"), ("apiguard", "view:login", f"ip:{redis_prefix}"),
                        hit=False)]
    verdicts: list[Any] = []
    threads = [threading.Thread(target=lambda: verdicts.append(
        shared.admit((), False, None, login, True))) for _ in range(width)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    caller._run = run  # type: ignore[method-assign]
    assert len(verdicts) == width and len(caller._idle) <= width // 2
    # the burst is over: settling (a plain command through the pool) finds a connection
    for verdict in verdicts:
        shared.settle(verdict.backend, verdict.reserved, verdict.token, True, True)
    assert shared._down_since is None
    assert remaining(shared, "after-burst") == 999


class SilentDrop(RedisProxy):
    """Once its flows are expired, answers the next packet from the client with a reset: a
    NAT or load balancer that forgot an idle flow (no FIN before)."""

    def expire(self) -> None:
        for flow in self.flows:
            flow["expired"] = True

    def forward(self, flow: dict[str, Any], data: bytes, from_client: bool) -> bool:
        import socket
        import struct

        if from_client and flow.get("expired"):
            flow["client"].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            flow["client"].close()
            flow["up"].close()
            return False
        return True


def _target(url: str) -> tuple[tuple[str, int], str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return (parts.hostname or "127.0.0.1", parts.port or 6379), parts.path


def test_a_long_idle_connection_answers_a_ping_before_the_script(
        redis_url: str, storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from flask_apiguard.ratelimit.gate import ScriptCaller

    target, path = _target(redis_url)
    proxy = SilentDrop(target)
    monkeypatch.setattr(ScriptCaller, "IDLE_CHECK", 0.2)
    try:
        shared = SharedState(f"redis://127.0.0.1:{proxy.port}{path}", storage_options,
                             "fixed-window", "closed")
        assert remaining(shared, "idle") == 999
        time.sleep(0.4)
        proxy.expire()  # dropped silently while idle: no poll can see it
        assert remaining(shared, "idle") == 998
        assert shared._down_since is None
    finally:
        proxy.listener.close()


def test_a_kept_connection_that_fails_takes_its_siblings_with_it(
        redis_url: str, storage_options: dict[str, Any]) -> None:
    import threading

    target, path = _target(redis_url)
    proxy = SilentDrop(target)
    try:
        shared = SharedState(f"redis://127.0.0.1:{proxy.port}{path}", storage_options,
                             "fixed-window", "closed")
        backend = shared.primary
        assert isinstance(backend, RedisScriptBackend)
        caller = backend.script
        run, barrier = caller._run, threading.Barrier(3)

        def together(conn: Any, keys: Any, arg: str) -> Any:
            barrier.wait(timeout=5)
            return run(conn, keys, arg)

        caller._run = together  # type: ignore[method-assign]
        threads = [threading.Thread(target=remaining, args=(shared, "sib")) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        caller._run = run  # type: ignore[method-assign]
        assert len(caller._idle) == 3
        proxy.expire()  # every kept flow is dead, none idle long enough to be pinged
        with pytest.raises(ServiceUnavailable):
            shared.admit((), False, None, probe("sib"), True)
        assert caller._idle == []  # the siblings went with it
        shared._retry_at = 0.0
        assert remaining(shared, "sib") == 996  # a fresh connection, at once
    finally:
        proxy.listener.close()


def test_without_poll_select_checks_the_connection(redis_url: str, named: dict[str, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from flask_apiguard.ratelimit import script as redis_gate

    monkeypatch.setattr(redis_gate, "_poll", None)  # as on Windows
    shared = SharedState(redis_url, named, "fixed-window", "closed")
    assert remaining(shared, "sel") == 999
    kill_clients(redis_url, named["client_name"])
    assert remaining(shared, "sel") == 998
    assert shared._down_since is None


def test_a_pool_of_one_connection_is_never_kept(redis_url: str, storage_options: dict[str, Any],
                                                redis_prefix: str) -> None:
    shared = SharedState(redis_url, {**storage_options, "max_connections": 1}, "fixed-window",
                         "closed")
    login = [LimitProbe(parse("5/minute"), ("apiguard", "view:login", f"ip:{redis_prefix}"),
                        hit=False)]
    verdict = shared.admit((), False, None, login, True)
    backend = shared.primary
    assert isinstance(backend, RedisScriptBackend)
    assert backend.script._idle == []
    shared.settle(verdict.backend, verdict.reserved, verdict.token, True, True)  # needs it
    assert shared._down_since is None
    assert remaining(shared, "one") == 999
