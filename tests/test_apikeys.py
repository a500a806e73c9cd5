"""API keys: creation, the ``ApiKey`` record, verify/revoke/list/get, expiry, the three stores
(memory, SQLite, Redis) and the ``@require_api_key`` views and identity."""

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

from .conftest import HttpsClient, PrivateRedis, base_config, bearer, problem, token_for

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


# -- creating keys ------------------------------------------------------------------------------

def test_create_returns_the_plaintext_once_and_a_record(make_app: Any) -> None:
    app = key_app(make_app)
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


def test_api_key_never_exposes_the_secret_or_its_hash(make_app: Any) -> None:
    app = key_app(make_app)
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


def test_create_refuses_bad_arguments(make_app: Any) -> None:
    app = key_app(make_app)
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

def test_verify_get_list_and_revoke(make_app: Any) -> None:
    app = key_app(make_app)
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


def test_verify_refuses_wrong_secrets_and_garbage(make_app: Any) -> None:
    app = key_app(make_app)
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


# -- expiry -------------------------------------------------------------------------------------

def test_expires_in_seconds_and_timedelta(make_app: Any) -> None:
    app = key_app(make_app)
    _, hourly = create(app, expires_in=3600)
    assert hourly.expires_at is not None
    assert abs((hourly.expires_at - hourly.created_at).total_seconds() - 3600) < 1
    _, daily = create(app, expires_in=timedelta(days=1))
    assert daily.expires_at is not None
    assert abs((daily.expires_at - daily.created_at) - timedelta(days=1)) < timedelta(seconds=1)


def test_expired_key_is_refused(make_app: Any) -> None:
    app = key_app(make_app)
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


def test_require_api_key_with_scopes(make_app: Any) -> None:
    app = key_app(make_app)
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


def test_api_key_identity_with_an_owner(make_app: Any) -> None:
    app = key_app(make_app)
    plaintext, key = create(app, scopes=["a", "b"], roles=["ops"], owner="team-ops")
    body = call(app, plaintext).get_json()
    assert body == {"authenticated": True, "subject": "team-ops", "roles": ["ops"],
                    "scopes": ["a", "b"], "claims": {}, "method": "api_key",
                    "key_id": key.key_id}


def test_api_key_identity_without_an_owner(make_app: Any) -> None:
    app = key_app(make_app)
    plaintext, key = create(app)
    body = call(app, plaintext).get_json()
    assert body["subject"] == f"apikey:{key.key_id}"
    assert body["method"] == "api_key"
    assert body["roles"] == [] and body["scopes"] == []
