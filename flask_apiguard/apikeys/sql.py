"""The SQL key store: keys in a table of the app's own database, through SQLAlchemy Core.

``APIGUARD_API_KEY_STORE`` names it with any SQLAlchemy URL other than ``sqlite:///`` (which
stays the built-in SQLite file store): ``postgresql+psycopg://…``, ``mysql+pymysql://…`` and
so on. The table (``apiguard_api_keys``, or the URL's ``apiguard_table`` query parameter) is
created when missing, with an index on ``owner``; several workers creating it at once retry
until one of them has.

A request costs one statement, one round trip: ``verify`` is one ``SELECT`` by primary key
that reads the digest and the record together (the record is decoded only once the secret
matched). Every statement runs in autocommit (no ``BEGIN``/``COMMIT``), and a connection goes
back to the pool without a ``ROLLBACK`` (``skip_autocommit_rollback``, where the dialect can
tell it is in autocommit: the PostgreSQL, MySQL/MariaDB and SQLite drivers). The pool does not
ping on checkout (``pool_pre_ping`` would be a second round trip on every request): instead a
statement that fails because its connection dropped (a restarted database) invalidates the
pool and runs once more on a fresh connection. Any other database error is 503
``service_unavailable``, as with the Redis store. Connecting times out after
:data:`CONNECT_TIMEOUT` seconds, as does waiting for a pooled connection; on PostgreSQL
unacknowledged writes (``tcp_user_timeout``) and on MySQL/MariaDB reads and writes after
:data:`IO_TIMEOUT`, unless the URL's query sets the driver's own option.

The URL's password never reaches a log line or an error message (:func:`safe_url`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from ..errors import ApiGuardConfigError, ServiceUnavailable
from .base import ApiKey, ApiKeyStore, _timestamp

log = logging.getLogger("flask_apiguard")
T = TypeVar("T")

#: The table's name when the URL does not say (``?apiguard_table=name``).
DEFAULT_TABLE = "apiguard_api_keys"
#: The URL query parameter naming the table; taken off the URL before the driver sees it.
TABLE_PARAMETER = "apiguard_table"
#: Seconds to wait for a connection to the database (and for a free one in the pool).
CONNECT_TIMEOUT = 3
#: Seconds a MySQL/MariaDB read or write may take.
IO_TIMEOUT = 5
#: Letters, digits and ``_``; short enough for ``<table>_owner`` to fit PostgreSQL's 63.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,56}")
#: ``dialect://`` or ``dialect+driver://``, as SQLAlchemy spells them.
_SQL_URL = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\+[A-Za-z0-9_]+)?://.+")
#: The pip extra that installs a dialect's usual driver.
_EXTRAS = {"postgresql": ("postgresql", "postgresql+psycopg://user@host/db"),
           "mysql": ("mysql", "mysql+pymysql://user@host/db"),
           "mariadb": ("mysql", "mysql+pymysql://user@host/db")}
_UNAVAILABLE = "The API key store is unavailable."


def is_sql_url(uri: str) -> bool:
    """Whether ``uri`` has the shape of a SQLAlchemy URL (``dialect[+driver]://…``)."""
    return _SQL_URL.fullmatch(uri) is not None


def safe_url(uri: str) -> str:
    """``uri`` fit for a log line or an error: no user, no password, no query string."""
    scheme, _, rest = uri.partition("://")
    location = rest.rpartition("@")[2]  # a password may hold "?" or "#": strip it first
    return f"{scheme}://{location.split('?', 1)[0].split('#', 1)[0]}"


def _fail(message: str) -> ApiGuardConfigError:
    return ApiGuardConfigError(f"APIGUARD_API_KEY_STORE: {message}")


def _libpq_version(driver: str) -> int:
    """The libpq version psycopg (3) or psycopg2 is built with; 0 when unknown."""
    try:
        if driver == "psycopg":
            import psycopg

            return int(psycopg.pq.version())
        if driver == "psycopg2":
            import psycopg2.extensions  # type: ignore[import-untyped, unused-ignore]

            return int(psycopg2.extensions.libpq_version())
    except (ImportError, AttributeError):
        pass
    return 0


def _connect_defaults(dialect: str, driver: str, query: Iterable[str]) -> dict[str, Any]:
    """Timeouts for the drivers that take them, unless the URL's query sets its own."""
    if dialect == "postgresql":  # libpq's options; tcp_user_timeout (ms) since libpq 12
        defaults: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
        if _libpq_version(driver) >= 120000:
            defaults["tcp_user_timeout"] = IO_TIMEOUT * 1000
    elif dialect in ("mysql", "mariadb"):  # pymysql, mysqlclient, mariadb connector
        defaults = {"connect_timeout": CONNECT_TIMEOUT, "read_timeout": IO_TIMEOUT,
                    "write_timeout": IO_TIMEOUT}
    else:
        defaults = {}
    given = set(query)
    return {k: v for k, v in defaults.items() if k not in given}


class SqlKeyStore(ApiKeyStore):
    """Keys in a table of any database SQLAlchemy reaches. See the module docstring.

    :param uri: a SQLAlchemy URL; its ``apiguard_table`` query parameter names the table.
    :param table: the table's name, overriding the URL's (default ``apiguard_api_keys``).
    """

    def __init__(self, prefix: str, uri: str, *, table: str | None = None) -> None:
        super().__init__(prefix)
        try:
            import sqlalchemy as sa
        except ImportError:
            raise _fail(f"{safe_url(uri)!r} needs SQLAlchemy: pip install "
                        '"flask-apiguard[sql]" (or [postgresql], [mysql] with a driver).') from None
        self._sa = sa
        self.url_for_logs = safe_url(uri)
        try:
            url = sa.engine.make_url(uri)
        except (sa.exc.ArgumentError, ValueError):
            raise _fail(f"{self.url_for_logs!r} is not a database URL SQLAlchemy can read "
                        "(dialect+driver://user:password@host:port/database).") from None
        name = table or url.query.get(TABLE_PARAMETER) or DEFAULT_TABLE
        if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
            raise _fail(f"the table name {name!r} must be 1 to 57 letters, digits or "
                        "underscores, not starting with a digit.")
        url = url.difference_update_query([TABLE_PARAMETER])
        self.engine = self._engine(sa, url)
        metadata = sa.MetaData()
        self.table = sa.Table(
            name, metadata,
            sa.Column("key_id", sa.String(32), primary_key=True),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("digest", sa.String(64), nullable=False),
            sa.Column("scopes", sa.Text, nullable=False),
            sa.Column("roles", sa.Text, nullable=False),
            sa.Column("owner", sa.String(200), nullable=True),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("expires_at", sa.Double, nullable=True),
            sa.Column("revoked", sa.Boolean, nullable=False, default=False),
            sa.Index(f"{name}_owner", "owner"),
            mysql_charset="utf8mb4",
        )
        self._metadata = metadata
        self._ready = False
        self._prepare()
        # No connection opened here may be shared with forked workers (gunicorn --preload):
        # the pool starts empty, and a child forgets the parent's pool without closing it.
        self.engine.dispose()
        engine = weakref.ref(self.engine)
        os.register_at_fork(after_in_child=lambda: _forget_pool(engine))

    def _engine(self, sa: Any, url: Any) -> Any:
        try:
            dialect = url.get_dialect()  # the class
        except sa.exc.NoSuchModuleError:
            raise _fail(f"unsupported store {self.url_for_logs!r}: SQLAlchemy knows no dialect "
                        f"{url.drivername!r}. Use sqlite:///relative/path, "
                        "sqlite:////absolute/path, memory://, redis://host:port/db or a "
                        "SQLAlchemy URL such as postgresql+psycopg://host/db.") from None
        options: dict[str, Any] = {
            "isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None,
            "pool_recycle": 1800,
            "connect_args": _connect_defaults(dialect.name, dialect.driver, url.query),
        }
        if dialect.name != "sqlite":  # SQLite's pools take no timeout
            options["pool_timeout"] = CONNECT_TIMEOUT
        # A connection closing calls the driver's rollback(), a ROLLBACK round trip on some
        # (pymysql) even in autocommit; dialects that can tell autocommit skip it.
        if dialect.detect_autocommit_setting is not _default_detect(sa):
            options["skip_autocommit_rollback"] = True
        try:
            return sa.create_engine(url, **options)
        except ImportError as exc:
            extra, spelling = _EXTRAS.get(dialect.name, ("sql", ""))
            hint = f' pip install "flask-apiguard[{extra}]"'
            if spelling:
                hint += f" and spell the URL {spelling}"
            raise _fail(f"the driver of {url.drivername!r} is not installed "
                        f"({exc.name or 'import failed'}):{hint}.") from None

    # -- setting up ---------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Create the table and its index when missing. Workers starting together race for
        the CREATE: the losers' errors are retried (``checkfirst`` then finds the table). A
        database that cannot be reached is logged and the table is made on first use."""
        sa = self._sa
        deadline = time.monotonic() + 5
        while True:
            try:
                with self.engine.connect():
                    pass
            except sa.exc.SQLAlchemyError as exc:
                log.warning("flask-apiguard: the API key store %s cannot be reached (%s); "
                            "requests presenting a key get 503 until it can.",
                            self.url_for_logs, type(exc).__name__)
                return
            try:
                self._metadata.create_all(self.engine, checkfirst=True)
            except sa.exc.DBAPIError as exc:
                if time.monotonic() > deadline:
                    raise _fail(f"cannot create the table {self.table.name!r} in "
                                f"{self.url_for_logs!r} ({type(exc.orig).__name__}). Check "
                                "that the user may create tables there.") from None
                time.sleep(0.05)
                continue
            self._ready = True
            return

    def close(self) -> None:
        """Close the pool's connections (a new one opens on next use)."""
        self.engine.dispose()

    # -- running statements -------------------------------------------------------------------
    def _run(self, work: Callable[[Any], T]) -> T:
        """``work(connection)``; once more on a fresh connection when the first one had
        dropped; 503 for any other failure."""
        sa = self._sa
        for attempt in (1, 2):
            try:
                if not self._ready:
                    self._metadata.create_all(self.engine, checkfirst=True)
                    self._ready = True
                with self.engine.connect() as connection:
                    return work(connection)
            except sa.exc.DBAPIError as exc:
                if attempt == 1 and exc.connection_invalidated:
                    continue
                raise ServiceUnavailable(_UNAVAILABLE) from None
            except sa.exc.SQLAlchemyError:
                raise ServiceUnavailable(_UNAVAILABLE) from None
        raise ServiceUnavailable(_UNAVAILABLE)  # not reached: the second attempt returns or raises

    def _decode(self, row: Any) -> ApiKey:
        return ApiKey(row.key_id, row.name, frozenset(_json(row.scopes)),
                      frozenset(_json(row.roles)), row.owner,
                      datetime.fromtimestamp(row.created_at, UTC), _timestamp(row.expires_at),
                      bool(row.revoked))

    def _select_one(self, key_id: str) -> Any:
        query = self.table.select().where(self.table.c.key_id == key_id)
        return self._run(lambda c: c.execute(query).first())

    # -- persistence --------------------------------------------------------------------------
    def _insert(self, key: ApiKey, digest: str) -> None:
        values = {"key_id": key.key_id, "name": key.name, "digest": digest,
                  "scopes": json.dumps(sorted(key.scopes)), "roles": json.dumps(sorted(key.roles)),
                  "owner": key.owner, "created_at": key.created_at.timestamp(),
                  "expires_at": key.expires_at.timestamp() if key.expires_at else None,
                  "revoked": False}
        self._run(lambda c: c.execute(self.table.insert().values(**values)))

    def _lookup(self, key_id: str) -> tuple[str, Callable[[], ApiKey | None]] | None:
        row = self._select_one(key_id)  # the one round trip of a request
        if row is None:
            return None
        return str(row.digest), lambda: self._decode(row)

    def _fetch(self, key_id: str) -> tuple[ApiKey, str] | None:
        row = self._select_one(key_id)
        return (self._decode(row), str(row.digest)) if row is not None else None

    def _set_revoked(self, key_id: str) -> None:
        statement = self.table.update().where(self.table.c.key_id == key_id).values(revoked=True)
        self._run(lambda c: c.execute(statement))

    def _all(self, owner: str | None = None) -> Iterable[ApiKey]:
        query = self.table.select()
        if owner is not None:
            query = query.where(self.table.c.owner == owner)
        rows = self._run(lambda c: c.execute(query).all())
        return [self._decode(row) for row in rows]


def _forget_pool(engine: weakref.ref[Any]) -> None:
    alive = engine()
    if alive is not None:
        alive.dispose(close=False)


def _default_detect(sa: Any) -> Any:
    return sa.engine.default.DefaultDialect.detect_autocommit_setting


def _json(text: str) -> list[str]:
    value: list[str] = json.loads(text)
    return value
