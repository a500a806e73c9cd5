"""The gate's EVALSHA path: :class:`ScriptCaller` runs the one script of
:mod:`flask_apiguard.ratelimit.gate` on connections kept aside for it."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Sequence
from typing import Any


class ScriptCaller:
    """Runs the gate's script with EVALSHA on connections kept aside for it.

    redis-py's ``Script.__call__`` goes through the client and its pool, which on every call
    also polls the socket for stray data (three system calls) and takes the pool's lock; for
    the one command of every request that is a third of its client-side cost. Here a
    connection is taken from the client's own pool once (``get_connection``: its options,
    timeouts, TLS, Sentinel's master lookup and its connection count all apply) and kept on
    an idle stack, as deep as the number of requests in flight at once in this process:

    - a connection is reused only after a complete answer; any error while sending or reading
      disconnects it and gives it back to the pool, so an answer can never be read by the
      wrong request and the pool's count stays right;
    - before a kept connection is used, one ``poll`` with no wait asks whether it has
      anything to read: a connection Redis closed (a restart, a Sentinel failover, a killed
      client) reads as closed and is reconnected before the script is sent. The script is
      never sent twice: once sent, a lost answer may still have been counted by Redis;
    - ``NOSCRIPT`` (a restarted or flushed Redis) loads the script and runs it again;
    - a forked child never uses its parent's sockets, whatever forked it (the process id is
      compared on every call; uWSGI forks without Python's at-fork hooks);
    - a connection idle for more than ``IDLE_CHECK`` seconds answers a ``PING`` first (a
      NAT may have dropped it silently); when a kept connection fails all the same, the
      other kept ones are dropped too, so the next requests start on fresh ones;
    - fewer than half of the pool's ``max_connections`` (at most 64) are kept, so the other
      commands (releasing places, revoking) always find a connection.
    """

    #: A kept connection idle for longer is sent a ``PING`` (safe to repeat) before the script:
    #: a NAT or load balancer may have dropped it without a word, which no poll can see.
    #: The client's ``health_check_interval`` replaces it when set.
    IDLE_CHECK = 60.0

    def __init__(self, client: Any, source: str) -> None:
        self.pool = client.connection_pool
        self.source = source
        self.sha = _sha1(source)
        self._idle: list[tuple[Any, float]] = []
        self._pid = os.getpid()
        limit = int(getattr(self.pool, "max_connections", 129))
        self._keep = max(0, min(64, (limit - 1) // 2))
        kwargs = getattr(self.pool, "connection_kwargs", {})
        self._idle_check = float(kwargs.get("health_check_interval") or self.IDLE_CHECK)

    def __call__(self, keys: Sequence[str], arg: str) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError

        pid = os.getpid()
        if pid != self._pid:
            self._idle, self._pid = [], pid  # the parent's connections stay the parent's
        idle = self._idle
        try:
            conn, last_used = idle.pop()
        except IndexError:
            conn, last_used = self.pool.get_connection(), None
        try:
            if last_used is not None:
                self._check(conn, time.monotonic() - last_used)
            answer = self._run(conn, keys, arg)
        except BaseException as exc:
            conn.disconnect()
            self.pool.release(conn)
            if last_used is not None and isinstance(exc, RedisConnectionError):
                # A kept connection that still failed: its siblings are likely as dead (a
                # restart or a network change); the next requests open fresh ones.
                self._forget()
            raise
        if len(idle) < self._keep:
            idle.append((conn, time.monotonic()))
        else:
            self.pool.release(conn)
        return answer

    def _check(self, conn: Any, idle_for: float) -> None:
        """Make a kept connection fit to carry the script, without sending the script: a
        closed one is reconnected, a long-idle one must answer a ``PING`` first."""
        if _closed_or_dirty(conn):
            conn.disconnect()
            conn.connect()  # the connection's own connect (Sentinel asks for the master)
            return
        if idle_for > self._idle_check:
            try:
                conn.send_command("PING", check_health=False)
                conn.read_response()
            except Exception:
                conn.disconnect()
                conn.connect()

    def _forget(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.disconnect()
            self.pool.release(conn)

    def _run(self, conn: Any, keys: Sequence[str], arg: str) -> Any:
        from redis.exceptions import NoScriptError

        command = conn.pack_command("EVALSHA", self.sha, len(keys), *keys, arg)
        conn.send_packed_command(command, check_health=False)
        try:
            return conn.read_response()
        except NoScriptError:
            conn.send_command("SCRIPT", "LOAD", self.source, check_health=False)
            conn.read_response()
            conn.send_packed_command(command, check_health=False)
            return conn.read_response()


def _closed_or_dirty(conn: Any) -> bool:
    """Whether a kept connection has anything to read (it should not: every answer was read),
    which means Redis closed it or something is wrong with it: one ``poll`` that does not wait.
    A connection without a socket counts as closed; one of a class that hides its socket
    (a client-side caching proxy) asks redis-py's own check."""
    sock: Any = getattr(conn, "_sock", _HIDDEN)
    if sock is None:
        return True
    if sock is _HIDDEN:
        try:
            return bool(conn.can_read())
        except Exception:
            return True
    if _poll is None:  # no poll(2) (Windows): select does the same for one socket
        readable, _, broken = select.select([sock], [], [sock], 0)
        return bool(readable or broken)
    poller = _poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


_HIDDEN = object()
_poll = getattr(select, "poll", None)


def _sha1(source: str) -> str:
    import hashlib

    return hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()
