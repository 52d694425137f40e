"""The ``slack-responses`` outbox: every delivery outcome reaches the topic at least once.

A table in the ledger database (SQLAlchemy Core; SQLite or PostgreSQL, like
:mod:`alert_platform.delivery.ledger`), one row per outcome record::

    id (autoincrement), response_id, key (the record's Kafka key: the alert id),
    value (the JSON record), created_at (UTC), sent_at (UTC, NULL until produced and flushed)

The delivery runner (:mod:`alert_platform.delivery.runner`) adds each record (:meth:`Outbox.add`,
committed before it returns) when the deliverer reports it, which the deliverer does before the
ledger write that makes the outcome final; it produces the record, and once the producer's flush
succeeded marks the run's rows sent (:meth:`Outbox.mark_sent`, in batches). A run that died in
between leaves its rows unsent: the next run re-produces those older than a grace (the delivery
lease: their run is gone) first (:meth:`Outbox.pending`). A record may so reach the topic twice;
both copies carry the same ``response_id`` and a reader drops the repeat.

:meth:`Outbox.prune` deletes rows older than a cut-off in batches (the state retention job).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from alert_platform.storage import UTCDateTime, locked_begin, make_engine, sqlite_write_lock
from alert_platform.wire import encode_slack_response

LOG = logging.getLogger("alert_platform.delivery.outbox")

DEFAULT_TABLE = "slack_responses_outbox"
KEY_MAX = 512
_CHUNK = 500  # ids per UPDATE ... WHERE id IN (...)


@dataclass(frozen=True)
class OutboxRow:
    """One unsent record: its row id, Kafka key and JSON value."""

    id: int
    response_id: str
    key: str
    value: str
    created_at: datetime


class Outbox:
    """The outbox table at ``url`` (the ledger's database); creates the table when missing.
    Thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        table_name: str = DEFAULT_TABLE,
        create: bool = True,
    ) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        if schema and self.dialect != "postgresql":
            raise ValueError("an outbox schema is only supported on PostgreSQL")
        metadata = sa.MetaData(schema=schema)
        self.table = sa.Table(
            table_name,
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("response_id", sa.String(64), nullable=False),
            sa.Column("key", sa.String(KEY_MAX), nullable=False),
            sa.Column("value", sa.Text, nullable=False),
            sa.Column("created_at", UTCDateTime, nullable=False),
            sa.Column("sent_at", UTCDateTime),
            sa.Index(f"ix_{table_name}_unsent", "sent_at", "created_at"),
            sa.Index(f"ix_{table_name}_created", "created_at"),
        )
        self._schema = schema
        self._write_lock: threading.Lock | None = (
            sqlite_write_lock(url) if self.dialect == "sqlite" else None
        )
        self._insert = self.table.insert()
        if create:
            self.create_tables()

    def __repr__(self) -> str:
        try:
            shown = make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            shown = "<unparseable url>"
        return f"Outbox({shown!r}, table={self.table.fullname!r})"

    def create_tables(self) -> None:
        """Create the schema (PostgreSQL) and table when missing; safe to race."""
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtext('alert_platform.outbox.ddl'))")
                )
                if self._schema:
                    conn.execute(sa.schema.CreateSchema(self._schema, if_not_exists=True))
            self.table.metadata.create_all(conn, checkfirst=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _begin(self) -> AbstractContextManager[Connection]:
        """A transaction; on SQLite behind this process's lock of the file (as the ledger's)."""
        return locked_begin(self.engine, self._write_lock)

    def add(self, record: dict[str, Any], *, key: str | None = None) -> int:
        """Store one ``slack-responses`` record (committed when this returns); its row id.
        ``key``: the Kafka key (default the record's ``alert_id``)."""
        value = encode_slack_response(record).decode()  # the bytes a first send produces
        row = {
            "response_id": str(record.get("response_id") or ""),
            "key": (key if key is not None else str(record.get("alert_id", "")))[:KEY_MAX],
            "value": value,
            "created_at": datetime.now(UTC),
        }
        with self._begin() as conn:
            result = conn.execute(self._insert, row)
            return int(result.inserted_primary_key[0])

    def pending(self, older_than: datetime, *, limit: int = 10_000) -> list[OutboxRow]:
        """Unsent rows created before ``older_than``, oldest first (at most ``limit``)."""
        t = self.table
        query = (
            sa.select(t.c.id, t.c.response_id, t.c.key, t.c.value, t.c.created_at)
            .where(t.c.sent_at.is_(None), t.c.created_at < older_than)
            .order_by(t.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [OutboxRow(*row) for row in conn.execute(query)]

    def mark_sent(self, ids: Sequence[int]) -> int:
        """Mark rows produced and flushed; how many changed (one transaction, 500 ids a
        statement)."""
        if not ids:
            return 0
        t = self.table
        now = datetime.now(UTC)
        changed = 0
        unique = sorted(set(ids))
        with self._begin() as conn:
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                result = conn.execute(
                    t.update().where(t.c.id.in_(chunk), t.c.sent_at.is_(None)).values(sent_at=now)
                )
                changed += result.rowcount or 0
        return changed

    def count(self, *, unsent: bool = False) -> int:
        """Rows in the outbox (``unsent``: only those not marked sent)."""
        t = self.table
        query = sa.select(sa.func.count()).select_from(t)
        if unsent:
            query = query.where(t.c.sent_at.is_(None))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def prune(self, before: datetime, batch_size: int = 1000) -> int:
        """Delete rows created before ``before``, ``batch_size`` per transaction (deliveries
        are never blocked for long); how many were deleted. Unsent rows that old are dropped
        too (logged): their outcome is older than any retention a reader keeps."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        t = self.table
        deleted = unsent = 0
        while True:
            with self._begin() as conn:
                rows = conn.execute(
                    sa.select(t.c.id, t.c.sent_at)
                    .where(t.c.created_at < before)
                    .order_by(t.c.id)
                    .limit(batch_size)
                ).all()
                ids = [row[0] for row in rows]
                unsent += sum(1 for row in rows if row[1] is None)
                if ids:
                    conn.execute(t.delete().where(t.c.id.in_(ids)))
            deleted += len(ids)
            if len(ids) < batch_size:
                break
        if unsent:
            LOG.warning("pruned %d outbox record(s) that were never marked sent", unsent)
        return deleted
