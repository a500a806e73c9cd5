"""Small factories shared by the suite (in the manner of flask-limiter's ``extension_factory``)."""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from benchmarks.private_redis import PrivateRedis as BenchRedis
from flask_apiguard import ApiGuard, public

#: flask-apiguard's own pytest plugin (pyproject.toml's addopts explain why not by entry point).
pytest_plugins = ["flask_apiguard.testing"]

#: A 48-byte HMAC secret with plenty of distinct characters (the audit flags weak ones).
SECRET = "kT3vQ9xLm2Zr7Wb1Hc5Jp8Nd4Fs6Gy0Aq3Ue9Ri2Ol7Mk1Vx"
IN_CI = os.environ.get("CI", "").lower() == "true"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"


class HttpsClient(FlaskClient):
    """A test client whose requests go to ``https://localhost`` unless told otherwise."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        if not args or isinstance(args[0], str):
            kwargs.setdefault("base_url", "https://localhost")
        return super().open(*args, **kwargs)


def base_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "TESTING": True,
        "APIGUARD_JWT_SECRET": SECRET,
        "APIGUARD_API_KEY_STORE": "memory://",
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_app(tmp_path: Any) -> Callable[..., Flask]:
    """``make_app(**config)``: a Flask app with ApiGuard, a public ``/health`` and a protected
    ``/private`` (GET) and ``/echo`` (POST), requests over HTTPS by default."""

    def factory(init: bool = True, **config: Any) -> Flask:
        app = Flask("apiguard_test", instance_path=str(tmp_path / "instance"))
        app.test_client_class = HttpsClient
        app.config.update(base_config(**config))

        @app.get("/health")
        @public
        def health() -> Any:
            return {"status": "healthy"}

        @app.get("/private")
        def private() -> Any:
            from flask_apiguard import current_identity

            return {"subject": current_identity.subject, "method": current_identity.method}

        @app.post("/echo")
        def echo() -> Any:
            from flask import request

            return {"json": request.get_json(silent=True)}

        if init:
            ApiGuard(app)
        return app

    return factory


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def token_for(app: Flask, subject: str = "alice", **kwargs: Any) -> str:
    with app.app_context():
        token: str = ApiGuard().issue_token(subject, **kwargs)
        return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem(response: Any) -> dict[str, Any]:
    """The problem+json body of ``response``, checked for the contract's members."""
    assert response.mimetype == "application/problem+json", response.data[:200]
    body: dict[str, Any] = json.loads(response.data)
    for member in ("type", "title", "status", "detail", "error", "request_id"):
        assert member in body, f"{member} missing from {body}"
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


# -- the counters' clock ----------------------------------------------------------------------

#: A moment at which every clock-aligned window (second, minute, 15 minutes, hour, day) starts.
WINDOWS_START = 1_800_000_000 - 1_800_000_000 % 86_400


class CounterClock:
    """The clock the in-memory counters read: the modules of ``flask_apiguard.ratelimit`` and
    limits' ``MemoryStorage`` call ``time.time()`` through this object (every other ``time`` function,
    and every other module, keep the real clock; tokens are checked against real time).

    limits' memory windows line up with the clock (a minute window turns at :00), and a
    sliding-window counter admits one more request just after a boundary than just before it,
    so a test that counts to a limit fails when a boundary passes mid-test (the last minute of
    an hour, for an hourly limit). Here each test starts 1 ms into every window, however late
    it runs, and the clock goes on at real speed; :meth:`freeze` stops it at a chosen point and
    :meth:`advance` moves it on, for tests about what the windows report."""

    def __init__(self) -> None:
        self.offset = WINDOWS_START + 0.001 - time.time()
        self.frozen: float | None = None

    def time(self) -> float:
        if self.frozen is not None:
            return self.frozen
        return time.time() + self.offset  # read through the module: test_counting fakes it

    def now(self) -> float:
        return self.time()

    def freeze(self, into_window: float = 0.001) -> float:
        """Stop the clock ``into_window`` seconds after :data:`WINDOWS_START`; returns it."""
        self.frozen = WINDOWS_START + into_window
        return self.frozen

    def advance(self, seconds: float) -> None:
        if self.frozen is not None:
            self.frozen += seconds
        else:
            self.offset += seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)  # monotonic, perf_counter, sleep...


#: Fixtures of tests on Redis: there no window follows the wall clock (limits' Redis windows
#: start at a counter's first hit) and the Lua gate, limits' Redis storage and other processes
#: all read the real clock, so those tests keep it.
_REDIS_FIXTURES = frozenset({"redis_run", "private_redis", "servers", "tls_redis"})


@pytest.fixture(autouse=True)
def counter_clock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CounterClock:
    """Every test on memory storage starts at the beginning of every window (see
    :class:`CounterClock`); a test may ``freeze`` or ``advance`` it."""
    import limits.storage.memory

    from flask_apiguard.ratelimit import backend, counter, memory, places, revocations, shared

    clock = CounterClock()
    on_redis = _REDIS_FIXTURES & set(request.fixturenames) or request.node.get_closest_marker("redis")
    if not on_redis:
        for module in (backend, counter, memory, places, revocations, shared, limits.storage.memory):
            if hasattr(module, "time"):
                monkeypatch.setattr(module, "time", clock)
    return clock


# -- keys ---------------------------------------------------------------------------------------

def private_pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture(scope="session")
def rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def ed_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()


# -- Redis --------------------------------------------------------------------------------------
#
# The Redis server of REDIS_URL may be shared: other runs of this suite, other developers. So a
# run never flushes anything. It owns one key prefix, ``agt-<pid>-<random>``; each test gets
# ``<run prefix>-t<n>`` (``redis_prefix``), passes it to the guard as
# ``APIGUARD_STORAGE_OPTIONS={"key_prefix": ...}`` (``storage_options``, ``redis_config``),
# reads raw keys under it only, and its keys are deleted (SCAN MATCH prefix* + UNLINK) when it
# ends, and the whole run's when the session ends. Tests that change the server itself
# (SCRIPT FLUSH, CLIENT KILL of every client, MONITOR, stopping it) use ``private_redis``.

#: This run's key prefix: no other run (another pytest, another clone, another developer) on
#: the same Redis shares it. Only letters, digits and dashes: safe in a SCAN MATCH pattern.
RUN_PREFIX = f"agt-{os.getpid()}-{secrets.token_hex(4)}"
_test_numbers = itertools.count(1)


def delete_keys(client: Any, prefix: str) -> int:
    """Delete the keys starting with ``prefix`` (and only those): SCAN MATCH + UNLINK."""
    assert prefix.startswith(RUN_PREFIX) and re.fullmatch(r"[A-Za-z0-9-]+", prefix), prefix
    deleted = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def redis_test_url() -> str:
    """``REDIS_URL_TESTS`` or ``REDIS_URL`` as given (nothing in it is flushed), else db 9."""
    return os.environ.get("REDIS_URL_TESTS") or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def _redis_or_skip(url: str) -> Any:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5)
        client.ping()
    except Exception as exc:
        message = f"Redis is not reachable at {url} ({type(exc).__name__}); set REDIS_URL"
        if IN_CI:
            pytest.fail(f"{message} - under CI=true the Redis tests must run.")
        pytest.skip(message)
    return client


@dataclass(frozen=True)
class RedisRun:
    """The shared Redis server of this run and its key prefix."""

    url: str
    prefix: str
    client: Any


@pytest.fixture(scope="session")
def redis_run() -> Iterator[RedisRun]:
    url = redis_test_url()
    client = _redis_or_skip(url)
    yield RedisRun(url, RUN_PREFIX, client)
    delete_keys(client, RUN_PREFIX)  # whatever a test left behind, and nothing else
    client.close()


@pytest.fixture
def redis_prefix(redis_run: RedisRun) -> Iterator[str]:
    """This test's own key prefix on the shared Redis; its keys are deleted when it ends."""
    prefix = f"{redis_run.prefix}-t{next(_test_numbers):05d}"
    yield prefix
    delete_keys(redis_run.client, prefix)


@pytest.fixture
def redis_url(redis_run: RedisRun, redis_prefix: str) -> str:
    """The shared Redis (``REDIS_URL``, db 9 by default). Use it with ``storage_options`` (or
    ``redis_config``): the database is shared, only keys under ``redis_prefix`` are this test's."""
    return redis_run.url


@pytest.fixture
def storage_options(redis_prefix: str) -> dict[str, Any]:
    """``APIGUARD_STORAGE_OPTIONS`` (and ``SharedState`` options) that keep to this test's keys."""
    return {"key_prefix": redis_prefix}


@pytest.fixture
def redis_config(redis_url: str, storage_options: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """``redis_config(**config)``: guard config on the shared Redis under this test's prefix
    (``APIGUARD_STORAGE_OPTIONS`` given here are added to the prefix)."""

    def factory(**config: Any) -> dict[str, Any]:
        options = {**storage_options, **config.pop("APIGUARD_STORAGE_OPTIONS", {})}
        return {"APIGUARD_STORAGE_URI": redis_url, "APIGUARD_STORAGE_OPTIONS": options, **config}

    return factory


def own_keys(client: Any, prefix: str) -> list[str]:
    """The keys under ``prefix`` (this test's), sorted, as text."""
    return sorted(k.decode() if isinstance(k, bytes) else k
                  for k in client.scan_iter(match=f"{prefix}*", count=1000))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis(BenchRedis):
    """A ``redis-server`` of the test's own on a free port, to kill and restart at will (the
    benchmarks' own, :mod:`benchmarks.private_redis`): it never talks to another run's server."""

    def stop(self) -> None:
        self.kill()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is not installed; under CI=true the fault tests must run.")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port where nothing listens, held for the test: it is bound (so no other run's
    server can take it meanwhile) but not listening, so connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


# -- SQL databases (the SQL key store) ----------------------------------------------------------
#
# PostgreSQL and MariaDB may be shared as Redis is: a run never touches a table it did not
# make. Each test gets its own table, ``agt_<pid>_<random>_t<n>``, names it in the store URL
# (``?apiguard_table=``), and drops it when it ends; the stores it opened are closed first.

#: The databases the SQL key store is tested on, and the environment variables that move them.
SQL_DATABASES = {
    "postgresql": ("POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mysql": ("MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
#: This run's table prefix on the shared databases (letters, digits, underscores).
SQL_RUN_PREFIX = f"agt_{os.getpid()}_{secrets.token_hex(4)}"


def sql_test_url(backend: str) -> str:
    variable, default = SQL_DATABASES[backend]
    return os.environ.get(variable) or default


class SqlDatabases:
    """The shared databases of this run, reached on first use (skipped when unreachable,
    required under ``CI=true``), and the tables this run made on them."""

    def __init__(self) -> None:
        self.engines: dict[str, Any] = {}

    def reach(self, backend: str) -> Any:
        if backend not in self.engines:
            url = sql_test_url(backend)
            shown = url.partition("?")[0].rpartition("@")[2]
            try:
                import sqlalchemy

                engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 2},
                                                  poolclass=sqlalchemy.pool.NullPool)
                with engine.connect():
                    pass
            except Exception as exc:
                message = (f"{backend} is not reachable at {shown} ({type(exc).__name__}); "
                           f"set {SQL_DATABASES[backend][0]}")
                if IN_CI:
                    pytest.fail(f"{message} - under CI=true the SQL key store tests must run.")
                pytest.skip(message)
            self.engines[backend] = engine
        return self.engines[backend]

    def drop(self, backend: str, table: str) -> None:
        """Drop ``table``, which must be one of this run's."""
        import sqlalchemy

        assert table.startswith(SQL_RUN_PREFIX) and re.fullmatch(r"\w+", table), table
        with self.engines[backend].begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS {table}"))

    def leftovers(self, backend: str) -> list[str]:
        import sqlalchemy

        names = sqlalchemy.inspect(self.engines[backend]).get_table_names()
        return [name for name in names if name.startswith(SQL_RUN_PREFIX)]


@pytest.fixture(scope="session")
def sql_databases() -> Iterator[SqlDatabases]:
    databases = SqlDatabases()
    yield databases
    for backend, engine in databases.engines.items():
        for table in databases.leftovers(backend):  # whatever a test left behind, only ours
            databases.drop(backend, table)
        engine.dispose()


_table_numbers = itertools.count(1)


@dataclass(frozen=True)
class SqlTable:
    backend: str
    table: str
    url: str


@pytest.fixture
def sql_table(sql_databases: SqlDatabases,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], SqlTable]]:
    """``sql_table(backend)``: a table name of this test's own on ``postgresql`` or ``mysql``
    and the store URL naming it. Every SQL key store the test opens is closed, and its tables
    dropped, when it ends."""
    from flask_apiguard.apikeys import SqlKeyStore

    stores: list[SqlKeyStore] = []
    tables: list[SqlTable] = []
    opened = SqlKeyStore.__init__

    def tracked(self: SqlKeyStore, *args: Any, **kwargs: Any) -> None:
        stores.append(self)
        opened(self, *args, **kwargs)

    monkeypatch.setattr(SqlKeyStore, "__init__", tracked)

    def factory(backend: str) -> SqlTable:
        sql_databases.reach(backend)
        table = f"{SQL_RUN_PREFIX}_t{next(_table_numbers):05d}"
        url = sql_test_url(backend)
        made = SqlTable(backend, table, f"{url}{'&' if '?' in url else '?'}apiguard_table={table}")
        tables.append(made)
        return made

    yield factory
    for store in stores:
        if hasattr(store, "engine"):
            store.close()
    for made in tables:
        sql_databases.drop(made.backend, made.table)

# -- identity providers -------------------------------------------------------------------------

@pytest.fixture
def jwks_server() -> Iterator[Any]:
    """A :class:`tests.jwks_server.JwksServer` on a free loopback port, stopped afterwards."""
    from .jwks_server import JwksServer

    server = JwksServer()
    yield server
    server.stop()


class ProviderClock:
    """The clock of :mod:`flask_apiguard.layers.jwt.remote` (TTLs and cooldowns), moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def provider_clock(monkeypatch: pytest.MonkeyPatch) -> ProviderClock:
    from flask_apiguard.layers.jwt import remote

    clock = ProviderClock()
    monkeypatch.setattr(remote, "time", clock)
    return clock


def provider_config(url: str, **overrides: Any) -> dict[str, Any]:
    """Guard config for tokens of a provider whose JWKS is at ``url`` (no key of the app's own)."""
    return {"APIGUARD_JWT_SECRET": None, "APIGUARD_JWT_ALGORITHMS": ["RS256"],
            "APIGUARD_JWT_JWKS_URL": url, **overrides}


OIDC_DIR = os.path.join(os.path.dirname(__file__), "oidc")
OIDC_CLIENT = ("api-client", "a-long-client-secret-for-tests-only")


class OidcProvider:
    """npm's ``oidc-provider`` (tests/oidc/server.mjs) on a free loopback port: started with
    given keys (the first signs), restarted with others to rotate, stopped by its pid."""

    def __init__(self, node: str, folder: Any) -> None:
        self.node = node
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *keys: tuple[str, Any]) -> None:
        from jwt.algorithms import RSAAlgorithm

        jwks = []
        for kid, key in keys:
            jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
            jwk.update(kid=kid, use="sig", alg="RS256")
            jwks.append(jwk)
        keys_file = self.folder / f"keys-{secrets.token_hex(4)}.json"
        keys_file.write_text(json.dumps({"keys": jwks}))
        self.process = subprocess.Popen(
            [self.node, "server.mjs"], cwd=OIDC_DIR,
            env={**os.environ, "PORT": str(self.port), "KEYS_FILE": str(keys_file)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"oidc-provider exited with {self.process.returncode}")
            try:
                self.jwks_hits()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("oidc-provider did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def _get(self, path: str, data: bytes | None = None) -> Any:
        import base64
        import urllib.request

        credentials = base64.b64encode(":".join(OIDC_CLIENT).encode()).decode()
        request = urllib.request.Request(self.issuer + path, data=data,
                                         headers={"Authorization": f"Basic {credentials}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def token(self, scope: str = "read:notes") -> str:
        """A client-credentials access token (a JWT for ``https://api.example``)."""
        from urllib.parse import urlencode

        form = urlencode({"grant_type": "client_credentials", "scope": scope,
                          "resource": "https://api.example"}).encode()
        token: str = self._get("/token", form)["access_token"]
        return token

    def jwks_hits(self) -> int:
        """How many times this process served its JWKS."""
        hits: int = self._get("/test/jwks-hits")["hits"]
        return hits


@pytest.fixture
def oidc_provider(tmp_path: Any) -> Iterator[OidcProvider]:
    """A real OpenID Provider (not started: call ``start(*keys)``). Needs Node.js and
    ``npm ci --prefix tests/oidc`` (``make test`` runs it); under CI=true these tests must run."""
    node = shutil.which("node")
    installed = os.path.isdir(os.path.join(OIDC_DIR, "node_modules", "oidc-provider"))
    if node is None or not installed:
        message = ("Node.js and tests/oidc/node_modules are needed for the OpenID Provider tests "
                   "(make test runs npm ci --prefix tests/oidc)")
        if IN_CI:
            pytest.fail(f"{message} - under CI=true they must run.")
        pytest.skip(message)
    provider = OidcProvider(node, tmp_path)
    yield provider
    provider.stop()
