"""The SQLite key store: a file, private to its owner, in WAL mode (the default store)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ApiGuardConfigError, ServiceUnavailable
from .base import ApiKey, ApiKeyStore, _timestamp

log = logging.getLogger("flask_apiguard")

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
