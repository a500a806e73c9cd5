"""API keys: creation, the ``ApiKey`` record, verify/revoke/list/get, expiry, the stores
(memory, SQLite, Redis, and SQL through SQLAlchemy on SQLite, PostgreSQL and MariaDB) and the
``@require_api_key`` views and identity.

The behaviour tests take ``store_uri`` and run on every store but Redis (whose tests need a
key prefix or a server of their own, below). PostgreSQL and MariaDB are the shared servers of
``POSTGRESQL_URL`` and ``MYSQL_URL`` (skipped when unreachable, required under ``CI=true``);
each test writes to a table of its own (``conftest.sql_table``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import sqlite3
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_apiguard import ApiGuard, ApiGuardConfigError, ApiKey, current_identity, require_api_key
from flask_apiguard.apikeys import MemoryKeyStore

from .conftest import (
    HttpsClient,
    PrivateRedis,
    SqlTable,
    base_config,
    bearer,
    problem,
    token_for,
)

KEY_SHAPE = re.compile(r"agk_([0-9a-f]{16})_([0-9a-f]{64})")


def identity_json() -> dict[str, Any]:
    return {
        "authenticated": current_identity.is_authenticated,
        "subject": current_identity.subject,
        "roles": sorted(current_identity.roles),
        "scopes": sorted(current_identity.scopes),
        "claims": dict(current_identity.claims),
        "method": current_identity.method,
        "key_id": current_identity.key_id,
    }


def add_views(app: Flask) -> None:
    @app.get("/whoami")
    def whoami() -> Any:
        return identity_json()

    @app.get("/key-only")
    @require_api_key
    def key_only() -> Any:
        return identity_json()

    @app.post("/orders")
    @require_api_key(scopes=["orders:write"])
    def write_orders() -> Any:
        return {"written": True}


def key_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    app = make_app(init=False, **config)
    add_views(app)
    ApiGuard(app)
    return app


def create(app: Flask, name: str = "ci", **kwargs: Any) -> tuple[str, ApiKey]:
    with app.app_context():
        plaintext, key = ApiGuard().api_keys.create(name, **kwargs)
        return plaintext, key


def store(app: Flask) -> Any:
    return app.extensions["apiguard"].api_keys


def call(app: Flask, plaintext: str, path: str = "/whoami", header: str = "X-API-Key",
         method: str = "get") -> Any:
    return getattr(app.test_client(), method)(path, headers={header: plaintext})


def secret_of(plaintext: str) -> str:
    return plaintext.rsplit("_", 1)[1]


def assert_invalid_key(response: Any) -> None:
    assert response.status_code == 401
    assert problem(response)["error"] == "invalid_api_key"
    assert "WWW-Authenticate" in response.headers


#: The stores the behaviour tests run on: ``sql-sqlite`` is the SQL store on a SQLite file
#: (through SQLAlchemy, runs everywhere), ``postgresql`` and ``mysql`` the shared servers.
BACKENDS = ["memory", "sqlite", "sql-sqlite", "postgresql", "mysql"]
SQL_BACKENDS = ["sql-sqlite", "postgresql", "mysql"]


def backend_uri(backend: str, tmp_path: Path, sql_table: Callable[[str], SqlTable]) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return "sqlite:///keys.sqlite3"
    if backend == "sql-sqlite":
        return f"sqlite+pysqlite:///{tmp_path / 'sa-keys.sqlite3'}"
    return sql_table(backend).url


@pytest.fixture(params=BACKENDS)
def store_uri(request: pytest.FixtureRequest, tmp_path: Path,
              sql_table: Callable[[str], SqlTable]) -> str:
    """``APIGUARD_API_KEY_STORE`` for each store the behaviour tests run on."""
    return backend_uri(request.param, tmp_path, sql_table)


@pytest.fixture(params=SQL_BACKENDS)
def sql_uri(request: pytest.FixtureRequest, tmp_path: Path,
            sql_table: Callable[[str], SqlTable]) -> str:
    """``APIGUARD_API_KEY_STORE`` naming the SQL store, on each database it is tested on."""
    return backend_uri(request.param, tmp_path, sql_table)


# -- creating keys ------------------------------------------------------------------------------

def test_create_returns_the_plaintext_once_and_a_record(make_app: Any, store_uri: str) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    before = datetime.now(UTC)
    plaintext, key = create(app, "billing sync", scopes=["orders:read", "orders:write"],
                            roles=["service"], owner="team-billing")
    after = datetime.now(UTC)
    match = KEY_SHAPE.fullmatch(plaintext)
    assert match is not None, plaintext
    assert match.group(1) == key.key_id
    assert len(bytes.fromhex(match.group(2))) * 8 >= 256
    assert isinstance(key, ApiKey)
    assert key.name == "billing sync"
    assert key.scopes == frozenset({"orders:read", "orders:write"})
    assert isinstance(key.scopes, frozenset) and isinstance(key.roles, frozenset)
    assert key.roles == frozenset({"service"})
    assert key.owner == "team-billing"
    assert key.created_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= key.created_at <= after + timedelta(seconds=1)
    assert key.expires_at is None
    assert key.revoked is False


def test_every_key_is_different(make_app: Any) -> None:
    app = key_app(make_app)
    made = [create(app) for _ in range(20)]
    assert len({p for p, _ in made}) == 20
    assert len({k.key_id for _, k in made}) == 20
    assert len({secret_of(p) for p, _ in made}) == 20


def test_api_key_never_exposes_the_secret_or_its_hash(make_app: Any, store_uri: str) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    plaintext, key = create(app, scopes=["a"], owner="o")
    secret = secret_of(plaintext)
    digests = {hashlib.sha256(secret.encode()).hexdigest(),
               hashlib.sha256(plaintext.encode()).hexdigest()}
    fields = {f.name for f in dataclasses.fields(key)}
    assert fields == {"key_id", "name", "scopes", "roles", "owner", "created_at", "expires_at",
                      "revoked"}
    views = [repr(key), str(key), json.dumps(key.to_dict()), repr(dataclasses.asdict(key)),
             repr(getattr(key, "__dict__", {}))]
    views += [repr(getattr(key, name)) for name in dir(key)
              if not name.startswith("__") and not callable(getattr(key, name))]
    for view in views:
        assert secret not in view
        for digest in digests:
            assert digest not in view
    for name in ("secret", "digest", "hash", "key_hash", "plaintext"):
        assert not hasattr(key, name)
    assert set(key.to_dict()) >= {"key_id", "name", "scopes", "roles", "owner", "created_at",
                                  "expires_at", "revoked"}
    for stored in store(app).list():
        assert secret not in repr(stored)


def test_create_refuses_bad_arguments(make_app: Any, store_uri: str) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    for kwargs in ({"expires_in": 0}, {"expires_in": -5}, {"expires_in": timedelta(0)},
                   {"expires_in": True}, {"scopes": [""]}, {"roles": [1]}):
        with pytest.raises(ValueError):
            create(app, **kwargs)
    with pytest.raises(ValueError):
        create(app, "")


@pytest.mark.parametrize("name", ["evil\x1b]0;pwned\x07", "rtl\u202emoc.evil", "a\nb"])
def test_key_names_must_be_printable(name: str) -> None:
    # Control and bidi characters in a key's name or owner went as they were to terminals and logs.
    with pytest.raises(ValueError, match="printable"):
        MemoryKeyStore("agk").create(name)
    with pytest.raises(ValueError, match="printable"):
        MemoryKeyStore("agk").create("ok", owner=name)


# -- verify, get, list, revoke ------------------------------------------------------------------

def test_verify_get_list_and_revoke(make_app: Any, store_uri: str) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    first, first_key = create(app, "first", owner="alice")
    second, second_key = create(app, "second", owner="bob")
    keys = store(app)
    assert keys.verify(first) == first_key
    assert keys.verify(second).key_id == second_key.key_id
    assert keys.get(first_key.key_id) == first_key
    assert keys.get("0" * 16) is None
    assert {k.key_id for k in keys.list()} == {first_key.key_id, second_key.key_id}
    assert keys.revoke(first_key.key_id) is True
    assert keys.revoke(first_key.key_id) is False
    assert keys.revoke("0" * 16) is False
    assert keys.verify(first) is None
    assert keys.get(first_key.key_id).revoked is True
    assert keys.verify(second) is not None
    listed = {k.key_id: k for k in keys.list()}
    assert listed[first_key.key_id].revoked is True  # revoked keys stay listed
    assert_invalid_key(call(app, first))
    assert call(app, second).status_code == 200


def test_verify_refuses_wrong_secrets_and_garbage(make_app: Any, store_uri: str) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    plaintext, key = create(app)
    keys = store(app)
    secret = secret_of(plaintext)
    wrong = secret[:-1] + ("0" if secret[-1] != "0" else "1")
    for candidate in (f"agk_{key.key_id}_{wrong}", f"agk_{key.key_id}_{secret.upper()}",
                      f"agk_{key.key_id}_{secret}0", f"xyz_{key.key_id}_{secret}",
                      f"agk_{key.key_id}", secret, "", "agk__", plaintext + " ", " " + plaintext):
        assert keys.verify(candidate) is None, candidate
    assert keys.verify(plaintext) is not None


def test_a_wrong_secret_never_reads_the_key_record() -> None:
    # verify() read the key's record before comparing digests: a wrong secret cost a store read.
    keys = MemoryKeyStore("agk")
    plaintext, key = keys.create("k")
    read: list[str] = []
    original = keys._fetch
    keys._fetch = lambda key_id: read.append(key_id) or original(key_id)  # type: ignore[method-assign]
    assert keys.verify(plaintext[:-1] + ("0" if plaintext[-1] != "0" else "1")) is None
    assert read == []
    assert keys.verify(plaintext) == key and read == [key.key_id]


def test_list_by_owner_is_exact(make_app: Any, store_uri: str) -> None:
    # MySQL compares strings without case and trailing spaces: the owner is checked exactly.
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    _, alice = create(app, "a1", owner="alice")
    _, alice_2 = create(app, "a2", owner="alice")
    create(app, "A", owner="Alice")
    create(app, "spaced", owner="alice ")
    create(app, "nobody")
    keys = store(app)
    assert [k.key_id for k in keys.list(owner="alice")] == sorted(
        [alice.key_id, alice_2.key_id], key=lambda i: (keys.get(i).created_at, i))
    assert [k.name for k in keys.list(owner="Alice")] == ["A"]
    assert keys.list(owner="bob") == []
    assert len(keys.list()) == 5


# -- expiry -------------------------------------------------------------------------------------

def test_expires_in_seconds_and_timedelta(make_app: Any, store_uri: str) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    _, hourly = create(app, expires_in=3600)
    assert hourly.expires_at is not None
    assert abs((hourly.expires_at - hourly.created_at).total_seconds() - 3600) < 1
    _, daily = create(app, expires_in=timedelta(days=1))
    assert daily.expires_at is not None
    assert abs((daily.expires_at - daily.created_at) - timedelta(days=1)) < timedelta(seconds=1)


def test_expired_key_is_refused(make_app: Any, store_uri: str) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    plaintext, key = create(app, expires_in=0.5)
    assert call(app, plaintext).status_code == 200
    time.sleep(0.7)
    assert store(app).verify(plaintext) is None
    assert_invalid_key(call(app, plaintext))
    assert key.key_id in {k.key_id for k in store(app).list()}


# -- prefix and header --------------------------------------------------------------------------

def test_custom_prefix_and_header(make_app: Any) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_PREFIX="acme", APIGUARD_API_KEY_HEADER="X-Acme-Key")
    plaintext, key = create(app)
    assert re.fullmatch(rf"acme_{key.key_id}_[0-9a-f]{{64}}", plaintext)
    response = call(app, plaintext, header="X-Acme-Key")
    assert response.status_code == 200
    assert response.get_json()["key_id"] == key.key_id
    # the default header is not read any more
    response = call(app, plaintext, header="X-API-Key")
    assert response.status_code == 401
    assert problem(response)["error"] == "unauthorized"
    # nor is the default prefix accepted
    assert_invalid_key(call(app, "agk" + plaintext[4:], header="X-Acme-Key"))


def test_header_name_is_case_insensitive(make_app: Any) -> None:
    app = key_app(make_app)
    plaintext, _ = create(app)
    assert call(app, plaintext, header="x-api-key").status_code == 200
    assert call(app, plaintext, header="X-Api-Key").status_code == 200


@pytest.mark.parametrize("prefix", ["AGK", "a", "with_underscore", "x" * 17, ""])
def test_bad_prefix_is_refused_at_start_up(make_app: Any, prefix: str) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_API_KEY_PREFIX"):
        make_app(APIGUARD_API_KEY_PREFIX=prefix)


# -- the stores ---------------------------------------------------------------------------------

def test_memory_store(make_app: Any) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE="memory://")
    plaintext, key = create(app)
    assert call(app, plaintext).get_json()["key_id"] == key.key_id
    # another app has its own memory
    other = key_app(make_app, APIGUARD_API_KEY_STORE="memory://")
    assert_invalid_key(call(other, plaintext))


def sqlite_text(path: Path) -> str:
    """Every row of every table of a SQLite file, as text."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = [repr(row) for table in tables for row in db.execute(f'SELECT * FROM "{table}"')]
    db.close()
    return "\n".join(rows)


def raw_bytes(path: Path) -> bytes:
    data = b""
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-journal")):
        if candidate.exists():
            data += candidate.read_bytes()
    return data


def test_sqlite_store_relative_path_is_in_the_instance_folder(make_app: Any,
                                                              tmp_path: Path) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE="sqlite:///keys/apiguard.sqlite3")
    path = tmp_path / "instance" / "keys" / "apiguard.sqlite3"
    plaintext, key = create(app, "stored", scopes=["s"], owner="o")
    assert path.exists()
    assert call(app, plaintext).get_json()["key_id"] == key.key_id
    secret = secret_of(plaintext)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    text = sqlite_text(path)
    assert key.key_id in text
    assert digest in text
    assert secret not in text
    assert secret.encode() not in raw_bytes(path)
    assert plaintext.encode() not in raw_bytes(path)


def test_sqlite_store_absolute_path_survives_a_restart(make_app: Any, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "keys.db"
    uri = f"sqlite:///{path}"
    assert uri.startswith("sqlite:////")
    app = key_app(make_app, APIGUARD_API_KEY_STORE=uri)
    plaintext, key = create(app, owner="ops")
    assert path.exists()
    assert not (tmp_path / "instance" / "elsewhere").exists()
    restarted = key_app(make_app, APIGUARD_API_KEY_STORE=uri)
    body = call(restarted, plaintext).get_json()
    assert body["key_id"] == key.key_id
    assert body["subject"] == "ops"
    assert store(restarted).get(key.key_id) == key
    with restarted.app_context():
        ApiGuard().api_keys.revoke(key.key_id)
    assert_invalid_key(call(app, plaintext))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Any:
    old = os.umask(0o022)  # the usual umask, under which SQLite would create 0644 files
    yield
    os.umask(old)


# The SQLite key store was created 0644, with its -wal and -shm: every local account could
# read the key ids, owners and digests, and change them when the umask allowed it.
@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_sqlite_store_and_its_side_files_are_private(make_app: Any, tmp_path: Path,
                                                     umask_022: Any) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE="sqlite:///keys/apiguard.sqlite3")
    plaintext, _ = create(app)
    assert call(app, plaintext).status_code == 200
    files = {p.name: mode_of(p) for p in (tmp_path / "instance" / "keys").iterdir()}
    assert {"apiguard.sqlite3", "apiguard.sqlite3-wal", "apiguard.sqlite3-shm"} <= set(files)
    assert set(files.values()) == {0o600}, files


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_sqlite_store_open_to_others_is_made_private_with_a_warning(
    make_app: Any, tmp_path: Path, umask_022: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")  # a store another version created, still open: -wal, -shm
    path.chmod(0o664)
    Path(f"{path}-wal").chmod(0o644)
    caplog.set_level(logging.WARNING, logger="flask_apiguard")
    app = key_app(make_app, APIGUARD_API_KEY_STORE=f"sqlite:///{path}")
    db.close()
    plaintext, _ = create(app)
    assert call(app, plaintext).status_code == 200
    assert mode_of(path) == 0o600 and mode_of(Path(f"{path}-wal")) == 0o600
    [warning] = [r.getMessage() for r in caplog.records if r.name == "flask_apiguard"]
    assert "open to other users" in warning
    assert f"{path} (664), {path}-wal (644), {path}-shm (644)" in warning
    caplog.clear()
    key_app(make_app, APIGUARD_API_KEY_STORE=f"sqlite:///{path}")
    assert not [r for r in caplog.records if r.name == "flask_apiguard"]


def test_sqlite_store_with_concurrent_threads(make_app: Any) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE="sqlite:///threads.sqlite3",
                  APIGUARD_RATELIMIT_DEFAULT=None)

    def work(n: int) -> list[str]:
        problems = []
        client = app.test_client()
        for i in range(8):
            plaintext, key = create(app, f"t{n}-{i}", owner=f"owner{n}")
            response = client.get("/whoami", headers={"X-API-Key": plaintext})
            if response.status_code != 200 or response.get_json()["key_id"] != key.key_id:
                problems.append(f"{n}/{i}: {response.status_code}")
            if store(app).verify(plaintext) != key:
                problems.append(f"{n}/{i}: verify")
        return problems

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(8)))
    assert [p for r in results for p in r] == []
    assert len(store(app).list()) == 64


def verify_in_child(uri: str, instance: str, plaintexts: list[str]) -> list[tuple[int, Any]]:
    """Run in a spawned process: a fresh app on the same store verifies the parent's keys."""
    app = Flask("child", instance_path=instance)
    app.test_client_class = HttpsClient
    app.config.update(base_config(APIGUARD_API_KEY_STORE=uri, APIGUARD_RATELIMIT_DEFAULT=None))
    add_views(app)
    ApiGuard(app)
    client = app.test_client()
    results: list[tuple[int, Any]] = []
    for plaintext in plaintexts:
        response = client.get("/whoami", headers={"X-API-Key": plaintext})
        body = response.get_json() if response.is_json else json.loads(response.data)
        results.append((response.status_code, body.get("key_id") or body.get("error")))
    return results


@pytest.mark.slow
def test_sqlite_store_shared_with_other_processes(make_app: Any, tmp_path: Path) -> None:
    uri = "sqlite:///shared.sqlite3"
    app = key_app(make_app, APIGUARD_API_KEY_STORE=uri)
    made = [create(app, f"k{n}") for n in range(3)]
    with app.app_context():
        ApiGuard().api_keys.revoke(made[2][1].key_id)
    plaintexts = [p for p, _ in made] + [made[0][0][:-1] + "x"]
    expected = [(200, made[0][1].key_id), (200, made[1][1].key_id),
                (401, "invalid_api_key"), (401, "invalid_api_key")]
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        pending = [pool.apply_async(verify_in_child, (uri, str(tmp_path / "instance"), plaintexts))
                   for _ in range(2)]
        results = [p.get(timeout=120) for p in pending]
    assert results == [expected, expected]


def create_in_child(path: str) -> str:
    """Run in a spawned process: open the SQLite key store at ``path`` and create a key."""
    from flask_apiguard.apikeys import SqliteKeyStore

    try:
        SqliteKeyStore("agk", path).create("k")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_sqlite_store_survives_workers_starting_together(tmp_path: Any) -> None:
    # Workers setting up a new SQLite key store together lost the race on its lock.
    path = str(tmp_path / "keys.sqlite3")
    context = multiprocessing.get_context("spawn")
    with context.Pool(6) as pool:
        outcomes = pool.map(create_in_child, [path] * 6)
    assert outcomes == ["ok"] * 6


# Without a key_prefix the redis:// key store writes fixed key names (apiguard:apikey:<id>,
# the apiguard:apikeys index), so on a shared server another run's keys would be listed here:
# these tests use a redis-server of their own.

@pytest.mark.redis
def test_redis_store_writes_under_the_storage_key_prefix(
        make_app: Any, redis_url: str, storage_options: dict[str, Any]) -> None:
    # The key store ignored key_prefix: two apps sharing a Redis listed each other's keys.
    import redis

    prefix = storage_options["key_prefix"]
    app = key_app(make_app, APIGUARD_API_KEY_STORE=redis_url,
                  APIGUARD_STORAGE_OPTIONS=storage_options)
    other = key_app(make_app, APIGUARD_API_KEY_STORE=redis_url,
                    APIGUARD_STORAGE_OPTIONS={"key_prefix": prefix + "-other"})
    plaintext, key = create(app, "prefixed", owner="svc")
    create(other, "elsewhere")
    client = redis.Redis.from_url(redis_url)
    written = {k.decode() for k in client.scan_iter(match=f"*{prefix}:apiguard:apikey*")}
    assert written and all(name.startswith(f"{prefix}:apiguard:apikey") for name in written)
    assert [k.key_id for k in store(app).list()] == [key.key_id]
    assert call(app, plaintext).status_code == 200

@pytest.mark.redis
def test_redis_store_is_shared_between_apps(make_app: Any, private_redis: PrivateRedis) -> None:
    app_a = key_app(make_app, APIGUARD_API_KEY_STORE=private_redis.url)
    app_b = key_app(make_app, APIGUARD_API_KEY_STORE=private_redis.url)
    plaintext, key = create(app_a, "shared", scopes=["orders:write"], owner="svc")
    body = call(app_b, plaintext).get_json()
    assert body["key_id"] == key.key_id
    assert body["subject"] == "svc"
    assert body["scopes"] == ["orders:write"]
    assert store(app_b).get(key.key_id) == key
    assert [k.key_id for k in store(app_b).list()] == [key.key_id]
    with app_b.app_context():
        assert ApiGuard().api_keys.revoke(key.key_id) is True
    assert_invalid_key(call(app_a, plaintext))
    assert store(app_a).get(key.key_id).revoked is True


@pytest.mark.redis
def test_redis_store_never_holds_the_secret(make_app: Any, private_redis: PrivateRedis) -> None:
    import redis

    app = key_app(make_app, APIGUARD_API_KEY_STORE=private_redis.url)
    plaintext, _ = create(app)
    client = redis.Redis.from_url(private_redis.url)
    try:
        dump = b"".join(
            repr(client.hgetall(name) if client.type(name) == b"hash" else client.dump(name))
            .encode() for name in client.keys("*")
        )
    finally:
        client.close()
    digest = hashlib.sha256(secret_of(plaintext).encode()).hexdigest()
    assert digest.encode() in dump
    assert secret_of(plaintext).encode() not in dump


# -- views and identity -------------------------------------------------------------------------

def test_require_api_key_view(make_app: Any) -> None:
    app = key_app(make_app)
    plaintext, _ = create(app)
    assert call(app, plaintext, "/key-only").status_code == 200
    response = app.test_client().get("/key-only")
    assert response.status_code == 401
    assert problem(response)["error"] == "unauthorized"


def test_require_api_key_with_scopes(make_app: Any, store_uri: str) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    writer, _ = create(app, scopes=["orders:write", "orders:read"])
    reader, _ = create(app, scopes=["orders:read"])
    assert call(app, writer, "/orders", method="post").get_json() == {"written": True}
    response = call(app, reader, "/orders", method="post")
    assert response.status_code == 403
    assert problem(response)["error"] == "forbidden"
    # a JWT carrying the scope is not an API key
    token = token_for(app, scopes=["orders:write"])
    response = app.test_client().post("/orders", headers=bearer(token))
    assert response.status_code == 401
    assert problem(response)["error"] == "unauthorized"


def test_api_key_identity_with_an_owner(make_app: Any, store_uri: str) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    plaintext, key = create(app, scopes=["a", "b"], roles=["ops"], owner="team-ops")
    body = call(app, plaintext).get_json()
    assert body == {"authenticated": True, "subject": "team-ops", "roles": ["ops"],
                    "scopes": ["a", "b"], "claims": {}, "method": "api_key",
                    "key_id": key.key_id}


def test_api_key_identity_without_an_owner(make_app: Any, store_uri: str) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    plaintext, key = create(app)
    body = call(app, plaintext).get_json()
    assert body["subject"] == f"apikey:{key.key_id}"
    assert body["method"] == "api_key"
    assert body["roles"] == [] and body["scopes"] == []


# -- the SQL store (SQLAlchemy Core) ------------------------------------------------------------

class Statements:
    """What a store's engine sends: the statements, and the round trips SQLAlchemy could add
    around them: a new connection, the pool's ping, COMMIT and the driver's rollback()
    (counted where pymysql and psycopg send it, so a skipped rollback is not counted)."""

    def __init__(self, engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        import psycopg
        import pymysql
        import sqlalchemy

        self.sql: list[str] = []
        self.other: list[str] = []
        sqlalchemy.event.listen(engine, "before_cursor_execute",
                                lambda conn, cursor, statement, *a: self.sql.append(statement))
        sqlalchemy.event.listen(engine, "connect", lambda *a: self.other.append("connect"))
        dialect = engine.dialect
        for name in ("do_ping", "do_commit"):  # do_begin sends nothing: a DBAPI has no begin()
            original = getattr(dialect, name)
            monkeypatch.setattr(dialect, name, lambda c, name=name, original=original:
                                self.other.append(name) or original(c))
        for driver in (pymysql.connections.Connection, psycopg.Connection):
            rollback = driver.rollback
            monkeypatch.setattr(driver, "rollback", lambda c, rollback=rollback:
                                self.other.append("rollback") or rollback(c))

    def clear(self) -> None:
        self.sql.clear()
        self.other.clear()


def questions(connection: Any) -> int:
    """MySQL's count of the statements this session has received (the query itself included)."""
    import sqlalchemy

    row = connection.execute(sqlalchemy.text("SHOW SESSION STATUS LIKE 'Questions'")).one()
    return int(row[1])


def test_sql_store_verify_is_one_select_by_primary_key(
        make_app: Any, sql_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    app = key_app(make_app, APIGUARD_API_KEY_STORE=sql_uri, APIGUARD_RATELIMIT_DEFAULT=None)
    plaintext, key = create(app, owner="svc")
    keys = store(app)
    call(app, plaintext)  # the pool holds a connection from here on
    sent = Statements(keys.engine, monkeypatch)
    secret = secret_of(plaintext)
    wrong = f"agk_{key.key_id}_{secret[:-1]}{'0' if secret[-1] != '0' else '1'}"
    unknown = f"agk_{'0' * 16}_{secret}"
    for presented, status in ((plaintext, 200), (wrong, 401), (unknown, 401)):
        sent.clear()
        assert call(app, presented).status_code == status
        # one statement, one round trip: no BEGIN/COMMIT/ROLLBACK, no ping, no new connection
        assert len(sent.sql) == 1, sent.sql
        assert sent.sql[0].lstrip().upper().startswith("SELECT")
        assert "key_id =" in sent.sql[0].replace("\n", " ")
        assert sent.other == [], sent.other
    sent.clear()
    assert keys.verify("agk_not-a-key") is None
    assert sent.sql == [] and sent.other == []
    if keys.engine.dialect.name == "mysql":  # the server's own count: one statement per verify
        with keys.engine.connect() as connection:
            before = questions(connection)
        assert keys.verify(plaintext) == key and keys.verify(wrong) is None
        with keys.engine.connect() as connection:
            assert questions(connection) - before == 3  # two SELECTs, then this SHOW


def test_sql_store_creates_its_table_and_owner_index(sql_uri: str) -> None:
    import sqlalchemy

    from flask_apiguard.apikeys import SqlKeyStore

    keys = SqlKeyStore("agk", sql_uri)
    assert keys.engine.pool.checkedin() == 0  # nothing a forked worker could share
    inspector = sqlalchemy.inspect(keys.engine)
    assert inspector.has_table(keys.table.name)
    indexes = inspector.get_indexes(keys.table.name)
    assert [i["column_names"] for i in indexes] == [["owner"]]
    assert inspector.get_pk_constraint(keys.table.name)["constrained_columns"] == ["key_id"]
    plaintext, key = keys.create("k", owner="o")
    again = SqlKeyStore("agk", sql_uri)  # the table exists: kept as it is
    assert again.verify(plaintext) == key


def test_sql_store_default_table_and_table_parameter(tmp_path: Path) -> None:
    from flask_apiguard.apikeys import SqlKeyStore

    url = f"sqlite+pysqlite:///{tmp_path / 'app.sqlite3'}"
    default = SqlKeyStore("agk", url)
    named = SqlKeyStore("agk", url + "?apiguard_table=service_keys")
    assert default.table.name == "apiguard_api_keys" and named.table.name == "service_keys"
    plaintext, _ = default.create("k")
    assert named.verify(plaintext) is None and named.list() == []
    assert SqlKeyStore("agk", url, table="service_keys").table.name == "service_keys"
    for store_ in (default, named):
        store_.close()


def test_sql_store_survives_workers_creating_the_table_together(sql_uri: str) -> None:
    # Workers starting together on an empty database race for CREATE TABLE / CREATE INDEX.
    import threading

    from flask_apiguard.apikeys import SqlKeyStore

    start = threading.Barrier(6)

    def open_and_create(n: int) -> str:
        start.wait()
        try:
            SqlKeyStore("agk", sql_uri).create(f"k{n}")
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok"

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(open_and_create, range(6))) == ["ok"] * 6
    assert len(SqlKeyStore("agk", sql_uri).list()) == 6


def test_sql_store_never_holds_the_secret(make_app: Any, sql_uri: str) -> None:
    import sqlalchemy

    app = key_app(make_app, APIGUARD_API_KEY_STORE=sql_uri)
    plaintext, key = create(app, scopes=["s"], owner="o")
    keys = store(app)
    with keys.engine.connect() as connection:
        rows = [repr(tuple(r)) for r in connection.execute(sqlalchemy.select(keys.table))]
    dump = "\n".join(rows)
    assert key.key_id in dump
    assert hashlib.sha256(secret_of(plaintext).encode()).hexdigest() in dump
    assert secret_of(plaintext) not in dump


def kill_connections(backend: str, keys: Any) -> None:
    """Close the store's pooled connection from the server's side (a restarted database)."""
    import sqlalchemy

    with keys.engine.connect() as connection:
        if backend == "postgresql":
            own = connection.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
            kill = f"SELECT pg_terminate_backend({int(own)})"
        else:
            own = connection.execute(sqlalchemy.text("SELECT CONNECTION_ID()")).scalar()
            kill = f"KILL {int(own)}"
    killer = sqlalchemy.create_engine(keys.engine.url, poolclass=sqlalchemy.pool.NullPool)
    with killer.connect() as connection:
        connection.execute(sqlalchemy.text(kill))
    killer.dispose()
    time.sleep(0.2)


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_sql_store_recovers_when_the_connection_dropped(
        make_app: Any, backend: str, sql_table: Callable[[str], SqlTable]) -> None:
    # A pooled connection the database closed (restart, failover, idle timeout) answered 500.
    app = key_app(make_app, APIGUARD_API_KEY_STORE=sql_table(backend).url,
                  APIGUARD_RATELIMIT_DEFAULT=None)
    import sqlalchemy

    plaintext, key = create(app)
    assert call(app, plaintext).status_code == 200
    dropped: list[bool] = []
    sqlalchemy.event.listen(store(app).engine, "invalidate",
                            lambda *a: dropped.append(True))
    for attempt in range(1, 3):
        kill_connections(backend, store(app))
        response = call(app, plaintext)
        assert response.status_code == 200, response.data
        assert response.get_json()["key_id"] == key.key_id
        assert len(dropped) == attempt  # the dead connection was found, and the lookup rerun


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mysql+pymysql"])
def test_sql_store_down_answers_503_quickly_and_never_shows_the_password(
        make_app: Any, scheme: str, dead_port: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flask_apiguard")
    uri = f"{scheme}://keys:pw-Secret-9@127.0.0.1:{dead_port}/test?apiguard_table=k"
    app = key_app(make_app, APIGUARD_API_KEY_STORE=uri)  # starts: the table is made on first use
    assert any("cannot be reached" in r.getMessage() for r in caplog.records)
    started = time.monotonic()
    response = call(app, "agk_" + "1" * 16 + "_" + "2" * 64)
    assert response.status_code == 503
    assert problem(response)["error"] == "service_unavailable"
    assert time.monotonic() - started < 5
    with pytest.raises(Exception, match="unavailable"):
        store(app).list()
    assert "pw-Secret-9" not in caplog.text and b"pw-Secret-9" not in response.data
    store(app).close()


@pytest.mark.parametrize(("uri", "message"), [
    ("nosuchdb://u:pw-Secret-9@h/db", "SQLAlchemy knows no dialect 'nosuchdb'"),
    ("postgres://u:pw-Secret-9@h/db", "unsupported store"),
    ("postgresql+nosuchdriver://u:pw-Secret-9@h/db", "SQLAlchemy knows no dialect"),
    ("postgresql+pg8000://u:pw-Secret-9@h/db", 'pip install "flask-apiguard[postgresql]"'),
    ("mysql+mysqldb://u:pw-Secret-9@h/db", 'pip install "flask-apiguard[mysql]"'),
    ("postgresql+psycopg://u:pw-Secret-9@h/db?apiguard_table=bad-name", "table name"),
])
def test_sql_store_config_errors_name_the_key(make_app: Any, uri: str, message: str) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_API_KEY_STORE") as info:
        make_app(APIGUARD_API_KEY_STORE=uri)
    assert message in str(info.value)
    assert "pw-Secret-9" not in str(info.value)


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_sql_store_connections_time_out_unless_the_url_says_otherwise(
        backend: str, sql_table: Callable[[str], SqlTable]) -> None:
    from flask_apiguard.apikeys import SqlKeyStore

    def driver_connection(uri: str) -> Any:
        keys = SqlKeyStore("agk", uri)
        with keys.engine.connect() as connection:
            return connection.connection.dbapi_connection

    url = sql_table(backend).url
    if backend == "postgresql":
        assert "connect_timeout=3" in driver_connection(url).info.dsn
        assert "connect_timeout=7" in driver_connection(url + "&connect_timeout=7").info.dsn
    else:
        given = driver_connection(url)
        assert (given.connect_timeout, given._read_timeout, given._write_timeout) == (3, 5, 5)
        given = driver_connection(url + "&read_timeout=9")
        assert (given.connect_timeout, given._read_timeout) == (3, 9)


def test_get_and_revoke_take_only_a_key_id_as_written(make_app: Any, store_uri: str) -> None:
    # On MariaDB, get(KEY_ID.upper()) and revoke(key_id + " ") reached the real row (collation).
    app = key_app(make_app, APIGUARD_API_KEY_STORE=store_uri)
    _, key = create(app)
    with app.app_context():
        keys = ApiGuard().api_keys
        for variant in (key.key_id.upper(), key.key_id + " ", " " + key.key_id, key.key_id[:-1]):
            assert keys.get(variant) is None
            assert keys.revoke(variant) is False
        assert keys.get(key.key_id) == key
