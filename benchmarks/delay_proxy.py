"""A TCP proxy that holds every chunk for a fixed time: a simulated network in front of Redis.

``python benchmarks/delay_proxy.py --target 127.0.0.1:6379 [--delay-ms 1] [--port 0]`` listens
on 127.0.0.1 and forwards each connection to the target until interrupted (or for
``--seconds``). ``--delay-ms`` is the **round-trip** time added: each chunk read from either
side is written to the other ``delay_ms / 2`` after it was read, so a command and its answer
take ``delay_ms`` longer, as over a network with that round-trip time, and a message the
server sends unprompted (a RESP3 invalidation push) arrives ``delay_ms / 2`` later.

One thread runs every connection with :mod:`selectors` and a deadline per chunk, so a chunk
waiting never holds another connection's; chunks leave in the order they came, a partial
write waits for the socket to drain, and a side's end of stream (or a reset) is passed on to
the other side after the data before it. ``select(2)`` is used for its microsecond timeouts
(``epoll`` and ``poll`` round up to whole milliseconds, which would add up to 1 ms per chunk).
The proxy runs on the same machine as what it measures and spends some CPU per chunk, which a
real network would not: on the project's 2-core VM a ``PING`` from one client takes about
0.16 ms through the proxy at ``--delay-ms 0`` and 1.3 ms at 1 (0.12 ms direct).

As a module (``load.py`` starts one per run)::

    with DelayProxy(("127.0.0.1", 6379), delay_ms=1) as proxy:
        url = proxy.url("redis://127.0.0.1:6379/8")   # the same URL through the proxy

``count=True`` also counts the commands clients send (RESP arrays, by name as ``INFO
commandstats`` names them: ``evalsha``, ``client|tracking``): the top-level commands, which
Redis's own statistics cannot tell apart from the ones scripts run (:meth:`DelayProxy.commands`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

#: Bytes read at a time, and the bytes a direction may hold before its sender is paused.
CHUNK = 65536
HIGH_WATER = 4 * 1024 * 1024
#: Commands whose subcommand ``INFO commandstats`` names too (``client|tracking``).
_CONTAINERS = frozenset({b"client", b"script", b"config", b"command", b"object", b"memory",
                         b"function", b"cluster", b"acl", b"xinfo", b"latency", b"slowlog"})


class CommandParser:
    """Counts the commands in a client's stream of RESP arrays (or inline commands) into
    ``sink``; fed the stream in chunks of any size."""

    def __init__(self, sink: Counter[str], lock: threading.Lock) -> None:
        self.buffer = bytearray()
        self.sink = sink
        self.lock = lock

    def feed(self, data: bytes) -> None:
        self.buffer += data
        pos = 0
        names: list[str] = []
        while True:
            parsed = self._one(pos)
            if parsed is None:
                break
            pos, name = parsed
            names.append(name)
        del self.buffer[:pos]
        if names:
            with self.lock:
                self.sink.update(names)

    def _one(self, pos: int) -> tuple[int, str] | None:
        """(the position after the command at ``pos``, its name), or None when incomplete."""
        buf = self.buffer
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        if buf[pos:pos + 1] != b"*":  # an inline command: words on one line
            return end + 2, _name(bytes(buf[pos:end]).split())
        count = int(buf[pos + 1:end])
        pos = end + 2
        words: list[bytes] = []
        for _ in range(count):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            start = end + 2
            stop = start + int(buf[pos + 1:end])
            if len(buf) < stop + 2:
                return None
            if len(words) < 2:
                words.append(bytes(buf[start:stop]))
            pos = stop + 2
        return pos, _name(words)


def _name(words: list[bytes]) -> str:
    if not words:
        return "(empty)"
    name = words[0].lower()
    if name in _CONTAINERS and len(words) > 1:
        name += b"|" + words[1].lower()
    return name.decode("ascii", "replace")


class _Direction:
    """One way of a connection: chunks read from ``src``, each due at a deadline on ``dst``."""

    __slots__ = ("blocked", "done", "dst", "eof", "parser", "queue", "queued", "src")

    def __init__(self, src: socket.socket, dst: socket.socket, parser: CommandParser | None) -> None:
        self.src, self.dst, self.parser = src, dst, parser
        #: (deadline, bytes); None for the end of the stream
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued = 0
        self.eof = False  # src has ended: nothing more is read
        self.done = False  # the end was passed on: dst's write side is shut
        self.blocked = False  # dst's send buffer is full: wait until it is writable

    def flush(self, now: float) -> None:
        """Send every chunk that is due, in order. :raises OSError: the peer is gone."""
        while self.queue and not self.blocked:
            deadline, data = self.queue[0]
            if deadline > now:
                return
            if data is None:
                self.queue.popleft()
                with contextlib.suppress(OSError):
                    self.dst.shutdown(socket.SHUT_WR)
                self.done = True
                return
            try:
                sent = self.dst.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                self.queue[0] = (deadline, data[sent:])
                self.blocked = True
            else:
                self.queue.popleft()
            self.queued -= sent


class _Connection:
    def __init__(self, client: socket.socket, upstream: socket.socket,
                 parser: CommandParser | None) -> None:
        self.client, self.upstream = client, upstream
        self.up = _Direction(client, upstream, parser)
        self.down = _Direction(upstream, client, None)
        self.masks = {client: 0, upstream: 0}

    def directions(self) -> tuple[_Direction, _Direction]:
        return self.up, self.down

    def finished(self) -> bool:
        return self.up.done and self.down.done

    def wanted(self, sock: socket.socket) -> int:
        """The events to wait for on ``sock``: reading while its direction is open and not
        over the high-water mark; writing while the direction towards it is blocked."""
        reading = self.up if sock is self.client else self.down
        writing = self.down if sock is self.client else self.up
        mask = 0
        if not reading.eof and reading.queued < HIGH_WATER:
            mask |= selectors.EVENT_READ
        if writing.blocked:
            mask |= selectors.EVENT_WRITE
        return mask


class DelayProxy:
    """Forwards ``listen`` (127.0.0.1, a free port by default) to ``target`` with ``delay_ms``
    added per round trip (half each way). A context manager; :meth:`start` and :meth:`close`
    otherwise. ``count=True`` counts the clients' commands (:meth:`commands`)."""

    def __init__(self, target: tuple[str, int], delay_ms: float = 1.0, *,
                 listen: tuple[str, int] = ("127.0.0.1", 0), count: bool = False) -> None:
        if delay_ms < 0:
            raise ValueError("delay_ms must be 0 or more")
        self.target = target
        self.delay_ms = delay_ms
        self.one_way = delay_ms / 2000.0
        self.count = count
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._listener = socket.create_server(listen)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.SelectSelector()
        self._connections: set[_Connection] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"delay-proxy-{self.port}", daemon=True)
        #: connections accepted so far (each to its own upstream connection)
        self.accepted = 0

    # -- use --------------------------------------------------------------------------------

    def url(self, url: str) -> str:
        """``url`` (``redis://[user:pass@]host:port/db?...``) pointed at this proxy instead."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@" if credentials else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{self.port}"))

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._connections)

    def commands(self) -> Counter[str]:
        """The commands clients have sent through the proxy so far, by name (``count=True``)."""
        with self._lock:
            return Counter(self._counts)

    def start(self) -> DelayProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop forwarding: every connection is closed, then the listener."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._wake_w.close()

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        selector = self._selector
        selector.register(self._listener, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                for key, events in selector.select(self._timeout()):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(64)
                    else:
                        self._ready(key.data, key.fileobj, events)  # type: ignore[arg-type]
                now = time.monotonic()
                for connection in list(self._connections):
                    self._flush(connection, now)
        finally:
            for connection in list(self._connections):
                self._drop(connection)
            selector.close()
            self._listener.close()
            self._wake_r.close()

    def _timeout(self) -> float | None:
        """Seconds until the next chunk is due; None when nothing waits."""
        soonest: float | None = None
        for connection in self._connections:
            for direction in connection.directions():
                if direction.queue and not direction.blocked:
                    due = direction.queue[0][0]
                    soonest = due if soonest is None else min(soonest, due)
        return None if soonest is None else max(0.0, soonest - time.monotonic())

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()  # the target is down: the client sees its connection closed
            return
        self.accepted += 1
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        parser = CommandParser(self._counts, self._lock) if self.count else None
        connection = _Connection(client, upstream, parser)
        self._connections.add(connection)
        self._watch(connection)

    def _ready(self, connection: _Connection, sock: socket.socket, events: int) -> None:
        if connection not in self._connections:
            return
        now = time.monotonic()
        if events & selectors.EVENT_WRITE:
            (connection.down if sock is connection.client else connection.up).blocked = False
        if events & selectors.EVENT_READ:
            direction = connection.up if sock is connection.client else connection.down
            data: bytes | None
            try:
                data = sock.recv(CHUNK)
            except BlockingIOError:
                data = None  # nothing to read after all
            except OSError:
                self._drop(connection)  # reset: the other side is closed at once
                return
            if data is None:
                pass
            elif data:
                direction.queue.append((now + self.one_way, data))
                direction.queued += len(data)
                if direction.parser is not None:
                    direction.parser.feed(data)
            else:
                direction.eof = True
                direction.queue.append((now + self.one_way, None))
        self._flush(connection, now)

    def _flush(self, connection: _Connection, now: float) -> None:
        try:
            connection.up.flush(now)
            connection.down.flush(now)
        except OSError:
            self._drop(connection)
            return
        if connection.finished():
            self._drop(connection)
        else:
            self._watch(connection)

    def _watch(self, connection: _Connection) -> None:
        for sock in (connection.client, connection.upstream):
            wanted = connection.wanted(sock)
            current = connection.masks[sock]
            if wanted == current:
                continue
            if current == 0:
                self._selector.register(sock, wanted, connection)
            elif wanted == 0:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, wanted, connection)
            connection.masks[sock] = wanted

    def _drop(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        for sock in (connection.client, connection.upstream):
            if connection.masks[sock]:
                self._selector.unregister(sock)
                connection.masks[sock] = 0
            sock.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:6379", help="host:port to forward to")
    parser.add_argument("--delay-ms", type=float, default=1.0,
                        help="round-trip time added, half each way (default 1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on, 127.0.0.1 (default: free)")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: until interrupted)")
    args = parser.parse_args(argv)
    proxy = DelayProxy(_address(args.target), args.delay_ms, listen=("127.0.0.1", args.port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with proxy:
        print(f"127.0.0.1:{proxy.port} -> {args.target}, +{args.delay_ms:g} ms per round trip "
              f"(pid {os.getpid()})", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
