"""SQLAlchemy engines for the platform's own tables (delivery ledger, outbox, run index, ops
notices), the aware-UTC column type they share, and the in-process write lock of a SQLite file.

SQLite by default (a file under the data dir), PostgreSQL for a shared deployment. SQLite runs in
WAL mode and every transaction is ``BEGIN IMMEDIATE``, so check-then-write sequences from several
processes are serialised instead of failing on upgrade.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg2://...``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_size=10, max_overflow=40, pool_pre_ping=True)
    database = parsed.database
    if database in (None, "", ":memory:"):
        engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            pool_size=10,
            max_overflow=40,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )

    file_backed = database not in (None, "", ":memory:")
    if file_backed:
        _ensure_wal(str(database))

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" below issue BEGIN (pysqlite's own would be DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if file_backed:
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _ensure_wal(database: str) -> None:
    """Put the SQLite file ``database`` in WAL mode (a no-op when it is already).

    WAL is a property of the file, so one switch per engine is enough. It is made here, behind
    the file's in-process lock, rather than by every new pooled connection: threads that open a
    fresh file at once would otherwise switch it concurrently, and a connection that wants the
    exclusive lock for the switch while another holds a write lock in rollback-journal mode
    gets ``database is locked`` at once (SQLite's deadlock rule), not after the busy timeout.
    Another process may be switching the same file: that is retried until the busy timeout.
    """
    key = os.path.realpath(os.path.expanduser(database))
    lock = sqlite_write_lock(f"sqlite:///{key}")
    assert lock is not None
    with lock:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                with closing(sqlite3.connect(key, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)) as conn:
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"{key}: journal mode stayed {mode}")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


# One lock per SQLite database file, shared by every ledger and outbox of
# this process on that file.
_SQLITE_LOCKS: dict[str, threading.Lock] = {}
_SQLITE_LOCKS_GUARD = threading.Lock()


def sqlite_write_lock(url: str) -> threading.Lock | None:
    """The in-process lock of a SQLite file database (``None`` for in-memory ones)."""
    database = make_url(url).database
    if database in (None, "", ":memory:"):
        return None
    key = os.path.realpath(os.path.expanduser(database))
    with _SQLITE_LOCKS_GUARD:
        return _SQLITE_LOCKS.setdefault(key, threading.Lock())


@contextmanager
def locked_begin(engine: Engine, lock: threading.Lock | None) -> Iterator[Connection]:
    """A transaction of ``engine``, behind ``lock`` when there is one (SQLite files): the
    threads of one process then queue on the lock instead of sleeping in SQLite's busy
    handler."""
    if lock is None:
        with engine.begin() as conn:
            yield conn
        return
    with lock, engine.begin() as conn:
        yield conn


class StateTables:
    """Tables of our own state in the ledger's database (SQLite or PostgreSQL), created at
    first use: once per process, database and ``metadata`` (a sensor opens them every tick),
    under a PostgreSQL advisory lock named ``lock_name`` so that concurrent creators queue.
    Writes go through :meth:`_begin` (behind the SQLite file's in-process lock)."""

    _created: set[tuple[str, int]] = set()

    def __init__(self, url: str, metadata: sa.MetaData, lock_name: str) -> None:
        self.engine = make_engine(url)
        self._lock = sqlite_write_lock(url)
        if (url, id(metadata)) in StateTables._created:
            return
        with self._begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": lock_name}
                )
            metadata.create_all(conn, checkfirst=True)
        StateTables._created.add((url, id(metadata)))

    def _begin(self) -> AbstractContextManager[Connection]:
        return locked_begin(self.engine, self._lock)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class UTCDateTime(sa.types.TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite stores naive UTC text, sorted correctly)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use an aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
