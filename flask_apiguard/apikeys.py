"""API keys: created once and shown once, stored only as a hash, looked up by id.

A key reads ``<prefix>_<key_id>_<secret>``: ``key_id`` is 16 hex characters (the lookup key,
safe to log), ``secret`` 64 hex characters (256 bits from the OS random source). Only the
SHA-256 of the secret is stored; a fast hash is enough because the secret is random, not a
password. Verification always hashes the presented secret and compares it, in constant time,
with a stored digest, or with a dummy one when the key id is unknown, so an unknown id and a
wrong secret cost the same and get the same answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .errors import ApiGuardConfigError, ServiceUnavailable
from .identity import Identity

log = logging.getLogger("flask_apiguard")
_DUMMY_DIGEST = hashlib.sha256(b"flask-apiguard: no such key").hexdigest()
_KEY_ID_BYTES = 8
_SECRET_BYTES = 32
_MAX_PRESENTED = 200


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What is known about a key; never its secret nor the secret's hash."""

    key_id: str
    name: str
    scopes: frozenset[str]
    roles: frozenset[str]
    owner: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked: bool

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= datetime.now(UTC)

    @property
    def is_active(self) -> bool:
        return not self.revoked and not self.is_expired

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for APIs listing a caller's keys)."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "roles": sorted(self.roles),
            "owner": self.owner,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked": self.revoked,
        }


def identity_of(key: ApiKey) -> Identity:
    return Identity(
        subject=key.owner or f"apikey:{key.key_id}",
        roles=key.roles,
        scopes=key.scopes,
        method="api_key",
        key_id=key.key_id,
    )


def _timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _plain(text: str) -> bool:
    """No control, format (bidi) or separator characters: safe to print in a terminal."""
    return not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def _names(values: Iterable[str], what: str) -> frozenset[str]:
    if isinstance(values, str):
        values = [values]
    items = frozenset(values)
    for item in items:
        if not isinstance(item, str) or not item or len(item) > 200 or not _plain(item):
            raise ValueError(
                f"api_keys.create: {what} must be non-empty strings of at most 200 printable "
                "characters."
            )
    return items


class ApiKeyStore:
    """The operations; subclasses only persist records (``key``, ``digest``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._pattern = re.compile(
            rf"{re.escape(prefix)}_([0-9a-f]{{{_KEY_ID_BYTES * 2}}})_([0-9a-f]{{{_SECRET_BYTES * 2}}})"
        )

    # -- public API ---------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        scopes: Iterable[str] = (),
        roles: Iterable[str] = (),
        owner: str | None = None,
        expires_in: int | float | timedelta | None = None,
    ) -> tuple[str, ApiKey]:
        """Create a key; return ``(plaintext, ApiKey)``. The plaintext is never stored: show it once."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200 or not _plain(name):
            raise ValueError(
                "api_keys.create: name must be a non-empty string of at most 200 printable characters."
            )
        if owner is not None and (not isinstance(owner, str) or not owner or len(owner) > 200
                                  or not _plain(owner)):
            raise ValueError("api_keys.create: owner must be a printable, non-empty string or None.")
        if isinstance(expires_in, timedelta):
            expires_in = expires_in.total_seconds()
        if expires_in is not None and (isinstance(expires_in, bool) or expires_in <= 0):
            raise ValueError("api_keys.create: expires_in must be a positive number of seconds.")
        now = time.time()
        key = ApiKey(
            key_id=secrets.token_hex(_KEY_ID_BYTES),
            name=name,
            scopes=_names(scopes, "scopes"),
            roles=_names(roles, "roles"),
            owner=owner,
            created_at=datetime.fromtimestamp(now, UTC),
            expires_at=_timestamp(now + expires_in) if expires_in is not None else None,
            revoked=False,
        )
        secret = secrets.token_hex(_SECRET_BYTES)
        self._insert(key, hashlib.sha256(secret.encode()).hexdigest())
        return f"{self.prefix}_{key.key_id}_{secret}", key

    def verify(self, plaintext: str) -> ApiKey | None:
        """The key if ``plaintext`` is a valid, unexpired, unrevoked key; otherwise None."""
        match = self._pattern.fullmatch(plaintext) if len(plaintext) <= _MAX_PRESENTED else None
        key_id, secret = match.groups() if match else ("", plaintext[:_MAX_PRESENTED])
        digest = hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()
        # The same work whether the key id exists or not: one lookup of a digest, one
        # constant-time comparison; the key's record is read only once the secret matched.
        stored = self._digest(key_id) if match else None
        if not hmac.compare_digest(digest, stored or _DUMMY_DIGEST) or stored is None:
            return None
        record = self._fetch(key_id)
        if record is None:
            return None
        key = record[0]
        return key if key.is_active else None

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; True if it existed and was not revoked yet."""
        record = self._fetch(key_id) if isinstance(key_id, str) else None
        if record is None or record[0].revoked:
            return False
        self._set_revoked(key_id)
        return True

    def get(self, key_id: str) -> ApiKey | None:
        record = self._fetch(key_id) if isinstance(key_id, str) else None
        return record[0] if record is not None else None

    def list(self, owner: str | None = None) -> list[ApiKey]:
        """Every key (or only ``owner``'s), oldest first, revoked and expired ones included."""
        keys = [k for k in self._all(owner) if owner is None or k.owner == owner]
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    # -- persistence --------------------------------------------------------------------------
    def _insert(self, key: ApiKey, digest: str) -> None:
        raise NotImplementedError

    def _fetch(self, key_id: str) -> tuple[ApiKey, str] | None:
        raise NotImplementedError

    def _digest(self, key_id: str) -> str | None:
        record = self._fetch(key_id)
        return record[1] if record is not None else None

    def _set_revoked(self, key_id: str) -> None:
        raise NotImplementedError

    def _all(self, owner: str | None = None) -> Iterable[ApiKey]:
        """Every key, or (where the store can select) only ``owner``'s."""
        raise NotImplementedError


class MemoryKeyStore(ApiKeyStore):
    """Keys in this process only (tests, demos); lost on restart."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self._records: dict[str, tuple[ApiKey, str]] = {}
        self._lock = threading.Lock()

    def _insert(self, key: ApiKey, digest: str) -> None:
        with self._lock:
            self._records[key.key_id] = (key, digest)

    def _fetch(self, key_id: str) -> tuple[ApiKey, str] | None:
        return self._records.get(key_id)

    def _digest(self, key_id: str) -> str | None:
        record = self._records.get(key_id)
        return record[1] if record is not None else None

    def _set_revoked(self, key_id: str) -> None:
        with self._lock:
            key, digest = self._records[key_id]
            self._records[key_id] = (replace(key, revoked=True), digest)

    def _all(self, owner: str | None = None) -> Iterable[ApiKey]:
        return [key for key, _ in list(self._records.values())]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS apiguard_api_keys (
    key_id     TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    digest     TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    roles      TEXT NOT NULL,
    owner      TEXT,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS apiguard_api_keys_owner ON apiguard_api_keys (owner)
"""


#: What SQLite writes next to a database; it gives them the database file's permissions.
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _owner_only(path: str) -> None:
    """Create the SQLite file ``path`` readable and writable by its owner only (0600), before
    SQLite creates it with 0644: its ``-wal``, ``-shm`` and ``-journal`` files follow, since
    SQLite copies the database's permissions. A file (or side file) that already grants others
    access is tightened to 0600, with a warning; one this process may not change is left as it
    is, with a warning. POSIX only."""
    if os.name != "posix":
        return
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    except OSError:
        return  # sqlite3.connect reports it, with the store's own message
    tightened, stuck = [], []
    for name in (path, *(path + suffix for suffix in _SQLITE_SIDE_FILES)):
        try:
            mode = os.stat(name).st_mode & 0o777
        except OSError:
            continue  # absent (the usual case for -journal), or SQLite will say what is wrong
        if not mode & 0o077:
            continue
        try:
            os.chmod(name, 0o600)
        except OSError:
            stuck.append(f"{name} ({mode:o})")
        else:
            tightened.append(f"{name} ({mode:o})")
    if tightened:
        log.warning("flask-apiguard: the API key store was open to other users; now readable and "
                    "writable by its owner only (600): %s.", ", ".join(tightened))
    if stuck:
        log.warning("flask-apiguard: the API key store is open to other users and this process "
                    "may not change it: %s. Make it private: chmod 600.", ", ".join(stuck))


class SqliteKeyStore(ApiKeyStore):
    """Keys in a SQLite file: one connection per thread and process, WAL journal, busy timeout.
    The file and its side files are private to their owner (see :func:`_owner_only`)."""

    def __init__(self, prefix: str, path: str) -> None:
        super().__init__(prefix)
        self.path = path
        self._local = threading.local()
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ApiGuardConfigError(
                f"APIGUARD_API_KEY_STORE: cannot create the folder of {path!r} ({exc.strerror})."
            ) from None
        _owner_only(path)
        # Several workers starting on a new file race for the locks WAL and CREATE take
        # (SQLite may answer "locked" at once to a journal-mode change): retry briefly.
        deadline = time.monotonic() + 10
        while True:
            try:
                db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(_SCHEMA)
                finally:
                    db.close()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise ApiGuardConfigError(
                        f"APIGUARD_API_KEY_STORE: cannot open the SQLite store {path!r} "
                        f"({exc})."
                    ) from None
                time.sleep(0.05)
            except sqlite3.Error as exc:
                raise ApiGuardConfigError(
                    f"APIGUARD_API_KEY_STORE: cannot open the SQLite store {path!r} ({exc})."
                ) from None

    def _connect(self) -> sqlite3.Connection:
        pid = os.getpid()
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != pid:
            try:
                db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
                db.execute("PRAGMA busy_timeout=10000")
            except sqlite3.Error:
                raise ServiceUnavailable("The API key store is unavailable.") from None
            self._local.db, self._local.pid = db, pid
        return db

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._connect().execute(sql, args).fetchall()
        except sqlite3.Error:
            raise ServiceUnavailable("The API key store is unavailable.") from None

    @staticmethod
    def _row(row: tuple[Any, ...]) -> tuple[ApiKey, str]:
        key_id, name, digest, scopes, roles, owner, created, expires, revoked = row
        key = ApiKey(key_id, name, frozenset(json.loads(scopes)), frozenset(json.loads(roles)),
                     owner, datetime.fromtimestamp(created, UTC), _timestamp(expires), bool(revoked))
        return key, digest

    def _insert(self, key: ApiKey, digest: str) -> None:
        self._run(
            "INSERT INTO apiguard_api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (key.key_id, key.name, digest, json.dumps(sorted(key.scopes)),
             json.dumps(sorted(key.roles)), key.owner, key.created_at.timestamp(),
             key.expires_at.timestamp() if key.expires_at else None),
        )

    def _fetch(self, key_id: str) -> tuple[ApiKey, str] | None:
        rows = self._run("SELECT * FROM apiguard_api_keys WHERE key_id = ?", (key_id,))
        return self._row(rows[0]) if rows else None

    def _digest(self, key_id: str) -> str | None:
        rows = self._run("SELECT digest FROM apiguard_api_keys WHERE key_id = ?", (key_id,))
        return str(rows[0][0]) if rows else None

    def _set_revoked(self, key_id: str) -> None:
        self._run("UPDATE apiguard_api_keys SET revoked = 1 WHERE key_id = ?", (key_id,))

    def _all(self, owner: str | None = None) -> Iterable[ApiKey]:
        if owner is not None:
            rows = self._run("SELECT * FROM apiguard_api_keys WHERE owner = ?", (owner,))
        else:
            rows = self._run("SELECT * FROM apiguard_api_keys")
        return [self._row(r)[0] for r in rows]


class RedisKeyStore(ApiKeyStore):
    """Keys in Redis hashes ``apiguard:apikey:<key_id>``, listed through a set
    (``apiguard:apikeys``); both under ``<key_space>:`` when the storage options name a
    ``key_prefix``, like every other key the guard writes."""

    def __init__(self, prefix: str, uri: str, options: dict[str, Any],
                 key_space: str | None = None) -> None:
        super().__init__(prefix)
        self._names = f"{key_space}:apiguard:apikey" if key_space else "apiguard:apikey"
        self.INDEX = self._names + "s"
        try:
            import redis
        except ImportError:
            raise ApiGuardConfigError(
                'APIGUARD_API_KEY_STORE: a redis:// store needs the redis package: '
                'pip install "flask-apiguard[redis]".'
            ) from None
        self._errors = (redis.RedisError, OSError)
        if uri.startswith("redis+unix://"):  # the storage URI spelling; redis-py says unix://
            uri = "unix://" + uri[len("redis+unix://"):]
        self.client = redis.Redis.from_url(uri, decode_responses=True, **options)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._errors:
            raise ServiceUnavailable("The API key store is unavailable.") from None

    def _key(self, key_id: str) -> str:
        return f"{self._names}:{key_id}"

    def _insert(self, key: ApiKey, digest: str) -> None:
        mapping: dict[Any, Any] = {
            "name": key.name, "digest": digest, "scopes": json.dumps(sorted(key.scopes)),
            "roles": json.dumps(sorted(key.roles)), "owner": key.owner or "",
            "created_at": repr(key.created_at.timestamp()),
            "expires_at": repr(key.expires_at.timestamp()) if key.expires_at else "",
            "revoked": "0",
        }
        pipe = self.client.pipeline()
        pipe.hset(self._key(key.key_id), mapping=mapping)
        pipe.sadd(self.INDEX, key.key_id)
        if key.owner is not None:
            pipe.sadd(self._owner_index(key.owner), key.key_id)
        self._call(pipe.execute)

    def _decode(self, key_id: str, data: dict[str, str]) -> tuple[ApiKey, str]:
        key = ApiKey(
            key_id, data["name"], frozenset(json.loads(data["scopes"])),
            frozenset(json.loads(data["roles"])), data["owner"] or None,
            datetime.fromtimestamp(float(data["created_at"]), UTC),
            _timestamp(float(data["expires_at"])) if data["expires_at"] else None,
            data["revoked"] == "1",
        )
        return key, data["digest"]

    def _fetch(self, key_id: str) -> tuple[ApiKey, str] | None:
        data = self._call(self.client.hgetall, self._key(key_id))
        return self._decode(key_id, data) if data else None

    def _digest(self, key_id: str) -> str | None:
        digest = self._call(self.client.hget, self._key(key_id), "digest")
        return str(digest) if digest else None

    def _set_revoked(self, key_id: str) -> None:
        self._call(self.client.hset, self._key(key_id), "revoked", "1")

    def _owner_index(self, owner: str) -> str:
        return f"{self.INDEX}:owner:{hashlib.sha256(owner.encode()).hexdigest()}"

    def _all(self, owner: str | None = None) -> Iterable[ApiKey]:
        index = self.INDEX if owner is None else self._owner_index(owner)
        ids = sorted(self._call(self.client.smembers, index))
        pipe = self.client.pipeline()
        for key_id in ids:
            pipe.hgetall(self._key(key_id))
        rows = self._call(pipe.execute) if ids else []
        return [self._decode(k, d)[0] for k, d in zip(ids, rows, strict=True) if d]


def open_store(uri: str, prefix: str, instance_path: str, redis_options: dict[str, Any],
               key_space: str | None = None) -> ApiKeyStore:
    """The store named by ``APIGUARD_API_KEY_STORE``; a Redis store writes under ``key_space``
    (the storage options' ``key_prefix``) when given."""
    if uri == "memory://":
        return MemoryKeyStore(prefix)
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not os.path.isabs(path):
            path = os.path.join(instance_path, path)
        return SqliteKeyStore(prefix, path)
    return RedisKeyStore(prefix, uri, redis_options, key_space)
