"""SQLite through the standard library: one connection per request, closed at teardown."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import sys
import time
from typing import Any

from flask import Flask, current_app, g
from werkzeug.security import generate_password_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username      TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    roles         TEXT NOT NULL,
    created_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS notes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    owner      TEXT NOT NULL REFERENCES users(username),
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_owner ON notes(owner);
"""


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 10000")
    return db


def get_db() -> sqlite3.Connection:
    if "db" not in g:
        g.db = connect(current_app.config["EXAMPLE_DATABASE"])
    return g.db  # type: ignore[no-any-return]


def close_db(_: BaseException | None = None) -> None:
    db = g.pop("db", None)
    if db is not None:
        db.close()


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=current_app.config["EXAMPLE_PASSWORD_METHOD"])


def create_user(db: sqlite3.Connection, username: str, email: str, password: str,
                roles: list[str]) -> None:
    db.execute(
        "INSERT INTO users (username, email, password_hash, roles, created_at) VALUES (?, ?, ?, ?, ?)",
        (username, email, hash_password(password), json.dumps(sorted(roles)), time.time()),
    )


def ensure_provider_user(db: sqlite3.Connection, username: str) -> None:
    """A local account for a user of the identity provider (created on first sight, with no
    password: they sign in at the provider)."""
    db.execute(
        "INSERT OR IGNORE INTO users (username, email, password_hash, roles, created_at) "
        "VALUES (?, '', '!', '[]', ?)", (username, time.time()),
    )


def find_user(db: sqlite3.Connection, username: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
    if row is None:
        return None
    user = dict(row)
    user["roles"] = json.loads(user["roles"])
    return user


def _private(app: Flask, path: str) -> None:
    """Create the database readable and writable by its owner only (0600) before SQLite does
    (it would make it 0644): SQLite gives the ``-wal`` and ``-shm`` files the same mode. The
    file holds password hashes; one that other accounts can already read is made private."""
    if path == ":memory:" or path.startswith("file:") or os.name != "posix":
        return
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        if os.path.exists(name) and os.stat(name).st_mode & 0o077:
            os.chmod(name, 0o600)
            app.logger.warning("example_app: %s was readable by other accounts; made private "
                               "(600).", name)


def _prepare(db: sqlite3.Connection) -> None:
    """WAL and the tables. Several workers starting on a new file race for the locks these
    take (SQLite may answer "locked" at once to a journal-mode change), so retry briefly."""
    deadline = time.monotonic() + 10
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def init_app(app: Flask) -> None:
    """Create the tables, seed an admin on first start, and close connections after requests."""
    app.teardown_appcontext(close_db)
    _private(app, app.config["EXAMPLE_DATABASE"])
    with app.app_context():
        db = connect(app.config["EXAMPLE_DATABASE"])
        try:
            _prepare(db)
            has_users = db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None
            if not has_users:
                password = app.config.get("EXAMPLE_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
                try:
                    create_user(db, "admin", "admin@example.com", password, ["admin", "user"])
                    db.commit()
                except sqlite3.IntegrityError:  # another worker seeded it first
                    return
                if not app.config.get("EXAMPLE_ADMIN_PASSWORD"):
                    print(
                        "\n  example_app: created the account  admin / " + password + "\n"
                        "  (local use only: change it, or create your own admin, before any "
                        "real deployment)\n",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            db.close()
