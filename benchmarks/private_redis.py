"""A ``redis-server`` of a benchmark's own on a free loopback port, without persistence.

For figures no other client can pollute (``INFO commandstats`` of a shared server counts
everyone's commands) and for a server to kill and restart at will (``redis_restart.py``).
Never the shared server: nothing here connects to any port but the one this process started.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from types import TracebackType
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def available() -> bool:
    return shutil.which("redis-server") is not None


class PrivateRedis:
    """``redis-server --port <free> --save "" --appendonly no`` on 127.0.0.1; :meth:`start`
    again after :meth:`kill` restarts it on the same port, empty."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._probe: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        """Start the server and wait until it answers. A port found free can be taken by another
        program before the server binds it: then a first start tries another port; a restart
        keeps its port (the apps know it) and fails instead."""
        for _ in range(5):
            if self._launch(timeout):
                return
            if self._started_once:
                break
            self.port = free_port()
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")

    def _launch(self, timeout: float) -> bool:
        import redis

        process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        probe = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    # the server answering must be this one, not another program's on the port
                    if probe.info("server")["process_id"] == process.pid:
                        self.process, self._started_once = process, True
                        return True
                    break
                except (redis.RedisError, OSError):
                    time.sleep(0.02)
        finally:
            probe.close()
        process.kill()
        process.wait(timeout=10)
        return False

    def kill(self) -> None:
        """``kill -9`` the server (nothing is saved: it restarts empty)."""
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_timeout=5)

    def command_calls(self) -> dict[str, int]:
        """Calls per command so far (``INFO commandstats``: scripts' own calls included), by
        the names Redis gives them (``evalsha``, ``client|tracking``). Asked on one connection
        kept open, so that between two calls the only command of this object's own is one
        ``INFO`` (its connection's ``HELLO`` and ``CLIENT SETINFO`` precede the first)."""
        if self._probe is None:
            self._probe = self.client()
        stats = self._probe.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.kill()
