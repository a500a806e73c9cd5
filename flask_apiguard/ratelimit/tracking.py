"""Keys known to be absent from Redis, kept true by Redis itself (``CLIENT TRACKING``).

In ``APIGUARD_STORAGE_MODE = "leased"`` a request reads two kinds of state that almost never
stop it: the auth-failure counters of its client IP (a client that never failed has none) and
the denylist entry of its token's ``jti`` (a token that was never revoked has none). Once a
round trip has seen such keys absent, :class:`AbsentKeys` remembers it, and the next requests
read the answer here instead of asking Redis. Auth-failure counters found *under their limit*
are remembered with them: they are as good as absent for the next request, since only a
write (which Redis pushes) can bring them closer to the limit.

What keeps the answer true is a connection of its own, in RESP3, with
``CLIENT TRACKING ON BCAST PREFIX <auth-failure counters> PREFIX <denylist>``: Redis pushes
the name of every key written under those prefixes, by any client, and a thread of this
process forgets those names (``flushdb`` and ``flushall`` forget everything). A token revoked
by any process is therefore refused by every worker as soon as the push arrives (measured in
``docs/ratelimit.rst``).

Races are closed this way:

- a round trip takes a :meth:`~AbsentKeys.snapshot` before it is sent; its answer is
  remembered only if no push about the same keys (a stripe of them, by hash) came in since,
  and the connection was not lost meanwhile: an answer read before a write can never be kept
  after that write's push;
- when the tracking connection breaks (or a ``PING`` sent on it goes unanswered for
  ``PING_TIMEOUT`` seconds), everything known is forgotten at once and :attr:`usable` turns
  false: the guard goes back to one round trip per request until the connection is back,
  since a push may have been lost with it. The epoch it bumps also voids this process's
  leases (:mod:`flask_apiguard.ratelimit.leases`): units leased from a Redis that restarted
  are not counted in the new one;
- a forked child starts with nothing known and its own connection (the process id is compared
  on every call, as :class:`~flask_apiguard.ratelimit.script.ScriptCaller` does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

log = logging.getLogger("flask_apiguard")

_STRIPES = 4096
_MASK = _STRIPES - 1


class AbsentKeys:
    """Redis keys known absent while the tracking connection is up. See the module docstring.

    :param client: the storage's redis-py client (its pool gives the connection options).
    :param prefixes: the key prefixes Redis reports writes under.
    :param max_keys: at most this many keys are remembered (then it starts afresh).
    """

    #: Seconds between two ``PING``\\ s on an idle tracking connection, and how long one may
    #: go unanswered before the connection counts as lost.
    PING_EVERY = 1.0
    PING_TIMEOUT = 2.0
    #: Seconds between two attempts to reconnect.
    RETRY_EVERY = 0.5

    def __init__(self, client: Any, prefixes: Iterable[str], max_keys: int = 100_000,
                 on_fork: Callable[[], None] | None = None) -> None:
        self.pool = client.connection_pool
        kwargs = getattr(self.pool, "connection_kwargs", {})
        #: Key names in pushes are decoded as the client encodes them.
        self._encoding = (kwargs.get("encoding") or "utf-8", kwargs.get("encoding_errors") or "strict")
        self._on_fork = on_fork
        self.prefixes = tuple(sorted(set(prefixes)))
        self.max_keys = max_keys
        #: True while the tracking connection is up: only then is :meth:`absent` believed.
        self.usable = False
        #: Bumped whenever what was known may be stale (connection lost or re-made, fork).
        self.epoch = 0
        self._absent: dict[str, None] = {}
        self._seq = 0
        self._stripes = [0] * _STRIPES
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Pushes applied and the last time one arrived (``time.monotonic``), for tests
        #: and benchmarks.
        self.pushes = 0
        self.last_push = 0.0
        self.client_id: int | None = None
        #: The tracking socket while it is listened to, and whether its thread is applying
        #: what it read (see :meth:`quiet`).
        self._sock: Any = None
        self._busy = False
        #: The tracking connection while it is up.
        self.connection: Any = None

    # -- the request side ---------------------------------------------------------------------
    def ready(self) -> bool:
        """Whether :meth:`absent` may be believed now; starts the tracking thread in this
        process when it is not running (the first request, or the first after a fork)."""
        if self._pid != os.getpid():
            self._after_fork()
        if self._thread is None:
            self._start()
        return self.usable

    def absent(self, key: str) -> bool:
        return key in self._absent

    def snapshot(self) -> tuple[int, int]:
        """Taken before a round trip, given back to :meth:`remember`."""
        return self.epoch, self._seq

    def remember(self, keys: Sequence[str], snapshot: tuple[int, int]) -> None:
        """Record ``keys`` as absent, as a round trip begun at ``snapshot`` saw them, unless a
        push about any of them (or a lost connection) came in since."""
        epoch, seq = snapshot
        with self._lock:
            if not self.usable or self.epoch != epoch:
                return
            stripes = self._stripes
            if any(stripes[hash(key) & _MASK] > seq for key in keys):
                return
            found = self._absent
            if len(found) + len(keys) > self.max_keys:
                found.clear()
            for key in keys:
                found[key] = None

    def discard(self, key: str) -> None:
        """Forget ``key`` now (this process wrote it; the push will follow)."""
        with self._lock:
            self._seq += 1
            self._absent.pop(key, None)
            self._stripes[hash(key) & _MASK] = self._seq

    def forget(self) -> None:
        """Forget every key, and void this process's leases (a new epoch)."""
        self._forget(self.usable)

    # -- the tracking side --------------------------------------------------------------------
    def _invalidated(self, push: Sequence[Any]) -> object:
        """The handler of an ``invalidate`` push: ``[b"invalidate", [key, ...]]``, or
        ``[b"invalidate", None]`` after a flush."""
        keys = push[1] if len(push) > 1 else None
        with self._lock:
            self._seq += 1
            seq = self._seq
            if keys is None:  # FLUSHDB, FLUSHALL: the counters leases were taken from are gone
                self._absent.clear()
                self._stripes = [seq] * _STRIPES
                self.epoch += 1
            else:
                found, stripes = self._absent, self._stripes
                encoding, errors = self._encoding
                for raw in keys:
                    try:
                        key = raw.decode(encoding, errors) if isinstance(raw, bytes) else str(raw)
                    except UnicodeDecodeError:  # not a name this client could have written
                        continue
                    found.pop(key, None)
                    stripes[hash(key) & _MASK] = seq
            self.pushes += 1
            self.last_push = time.monotonic()
        return _PUSH

    def _forget(self, usable: bool) -> None:
        with self._lock:
            self.epoch += 1
            self._absent.clear()
            self.usable = usable

    def _after_fork(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()  # a fork may copy it held
        self._thread = None
        self._stop = threading.Event()
        self._sock, self._busy = None, False  # the parent's socket is the parent's
        self._forget(False)
        if self._on_fork is not None:
            self._on_fork()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="apiguard-tracking",
                                            daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the tracking thread (the process keeps working, one round trip per request)."""
        self._stop.set()
        self._forget(False)

    def _connect(self) -> Any:
        kwargs = dict(getattr(self.pool, "connection_kwargs", {}))
        kwargs["protocol"] = 3
        kwargs.pop("retry", None)
        # a read must never outlast the watchdog, whatever APIGUARD_STORAGE_OPTIONS says: a
        # reply stalled half-way would otherwise hold the thread (and stale answers) for good
        kwargs["socket_timeout"] = self.PING_TIMEOUT
        kwargs["socket_connect_timeout"] = min(kwargs.get("socket_connect_timeout") or
                                               self.PING_TIMEOUT, self.PING_TIMEOUT)
        kwargs["client_name"] = f"apiguard-tracking-{os.getpid()}"
        conn = self.pool.connection_class(**kwargs)
        conn.connect()
        # redis-py hands invalidation pushes to this handler (private, pinned by a test)
        conn._parser.set_invalidation_push_handler(self._invalidated)
        args: list[str] = ["CLIENT", "TRACKING", "ON", "BCAST"]
        for prefix in self.prefixes:
            args += ["PREFIX", prefix]
        conn.send_command(*args)
        conn.read_response()
        conn.send_command("CLIENT", "ID")
        #: The tracking connection's ``CLIENT ID`` (tests kill it to simulate a lost link).
        self.client_id = int(conn.read_response())
        self.connection = conn
        return conn

    def _run(self) -> None:
        was_down = False
        was_up = False
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._connect()
                self._forget(True)
                if was_down:
                    log.warning("flask-apiguard: Redis invalidations are back; cached reads "
                                "resume.")
                was_down, was_up = False, True
                self._listen(conn)
            except Exception as exc:  # any failure: forget everything, retry
                self._forget(False)
                if not was_down and not self._stop.is_set():
                    log.warning("flask-apiguard: the Redis invalidation connection %s (%s: %s); "
                                "one round trip per request until it is back.",
                                "is lost" if was_up else "could not be opened",
                                type(exc).__name__, str(exc)[:200])
                was_down = True
            finally:
                self.connection = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.disconnect()
            self._stop.wait(self.RETRY_EVERY)

    def _listen(self, conn: Any) -> None:
        ping_sent: float | None = None
        last_heard = time.monotonic()
        sock = conn._sock
        self._sock = sock
        try:
            while not self._stop.is_set():
                # wait without reading: until this thread reads it, what Redis pushed stays in
                # the socket, where quiet() sees it
                readable, _, _ = select.select([sock], [], [], self.PING_EVERY / 4)
                if readable or _pending(sock):
                    self._busy = True  # set before a byte is taken off the socket
                    try:
                        while True:  # every message buffered, so nothing is left unapplied
                            reply = conn.read_response(push_request=True)
                            if reply is not _PUSH:
                                ping_sent = None  # the PONG
                            if not conn.can_read(timeout=0):
                                break
                    finally:
                        self._busy = False
                    last_heard = time.monotonic()
                    continue
                now = time.monotonic()
                if ping_sent is not None:
                    if now - ping_sent > self.PING_TIMEOUT:
                        raise TimeoutError("the tracking connection did not answer a PING")
                elif now - last_heard >= self.PING_EVERY:
                    conn.send_command("PING")
                    ping_sent = now
        finally:
            self._sock = None
        self._forget(False)

    def quiet(self) -> bool:
        """Whether every push Redis sent this process has been applied: nothing waits in the
        tracking connection and its thread is not applying anything. A push sitting there
        while the thread waits for the interpreter lock (a busy worker: tens of
        milliseconds) would otherwise leave a stale answer believed; then the request asks
        Redis instead."""
        sock = self._sock
        if self._busy or sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):  # closed meanwhile
            return False
        return not readable and not _pending(sock)


def _pending(sock: Any) -> bool:
    """TLS records already decrypted inside the socket object (no longer visible to select)."""
    pending = getattr(sock, "pending", None)
    return bool(pending()) if pending is not None else False


_PUSH = object()
