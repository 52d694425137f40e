"""The delivery ledger's table, and the upgrade of a table written by an earlier version.

One row per claimed ``(dedup_key, event_time)`` (unique); ``alert_id`` (the readable id, what
``explain`` looks rows up by) is an indexed column. ``state`` is one of :data:`STATES`.

Upgrading (:func:`upgrade`, run by the ledger at start, safe to race): a table of an earlier
version keyed rows on ``(alert_id, event_time)``, had no ``dedup_key`` column and a CHECK
constraint without ``'stale'``.

* PostgreSQL: ``ADD COLUMN dedup_key`` (backfilled with ``alert_id``, then ``NOT NULL``), the
  CHECK constraint replaced, the old unique constraint replaced by one on
  ``(dedup_key, event_time)``, the ``alert_id`` index added: all in the caller's transaction.
* SQLite cannot alter a constraint: the table is rebuilt (new table, rows copied with
  ``dedup_key = alert_id``, old table dropped, new one renamed) in one transaction.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alert_platform.delivery.messages import ALERT_ID_MAX

SENDING = "sending"
DELIVERED = "delivered"
FAILED_PERMANENT = "failed_permanent"
STALE = "stale"
STATES = (SENDING, DELIVERED, FAILED_PERMANENT, STALE)
STATE_CHECK = "state IN ({})".format(", ".join(f"'{s}'" for s in STATES))


def build_table(
    metadata: sa.MetaData, name: str, utc_type: Any, *, constraint_base: str | None = None
) -> sa.Table:
    """The ledger table ``name``; constraint names derive from ``constraint_base`` (default
    ``name``; a rebuild creates the table under a temporary name with the final names)."""
    base = constraint_base or name
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.String(ALERT_ID_MAX), nullable=False),
        sa.Column("dedup_key", sa.String(ALERT_ID_MAX), nullable=False),
        sa.Column("event_time", utc_type, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(255)),
        sa.Column("ts", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("source", sa.String(512)),
        sa.Column("nonce", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(128)),
        sa.Column("claimed_at", utc_type, nullable=False),
        sa.Column("heartbeat_at", utc_type, nullable=False),
        sa.Column("delivered_at", utc_type),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("dedup_key", "event_time", name=f"uq_{base}_dedup_event"),
        sa.CheckConstraint(STATE_CHECK, name=f"ck_{base}_state"),
    )


def add_alert_id_index(table: sa.Table) -> sa.Index:
    """Attach the index ``explain``'s lookups by readable alert id use."""
    return sa.Index(f"ix_{table.name}_alert_id", table.c.alert_id)


def _create_indexes(conn: Connection, table: sa.Table) -> None:
    for index in table.indexes:
        index.create(conn, checkfirst=True)


def upgrade(conn: Connection, table: sa.Table, utc_type: Any) -> list[str]:
    """Bring an existing ledger table to the current schema; what was changed (none: [])."""
    if conn.dialect.name == "sqlite":
        return _upgrade_sqlite(conn, table, utc_type)
    return _upgrade_postgres(conn, table)


def _upgrade_postgres(conn: Connection, table: sa.Table) -> list[str]:
    inspector = sa.inspect(conn)
    name, schema = table.name, table.schema
    quoted = conn.dialect.identifier_preparer.format_table(table)
    done: list[str] = []
    columns = {c["name"] for c in inspector.get_columns(name, schema=schema)}
    if "dedup_key" not in columns:
        conn.execute(sa.text(f"ALTER TABLE {quoted} ADD COLUMN dedup_key VARCHAR({ALERT_ID_MAX})"))
        conn.execute(sa.text(f"UPDATE {quoted} SET dedup_key = alert_id WHERE dedup_key IS NULL"))
        conn.execute(sa.text(f"ALTER TABLE {quoted} ALTER COLUMN dedup_key SET NOT NULL"))
        done.append("added dedup_key (= alert_id)")
    alter = f"ALTER TABLE {quoted} "
    checks = {c["name"]: c["sqltext"] for c in inspector.get_check_constraints(name, schema)}
    check_name = f"ck_{name}_state"
    if STALE not in checks.get(check_name, ""):
        conn.execute(sa.text(alter + f'DROP CONSTRAINT IF EXISTS "{check_name}"'))
        conn.execute(sa.text(alter + f'ADD CONSTRAINT "{check_name}" CHECK ({STATE_CHECK})'))
        done.append("state check allows 'stale'")
    uniques = {u["name"] for u in inspector.get_unique_constraints(name, schema=schema)}
    old_unique = f"uq_{name}_alert_event"
    new_unique = f"uq_{name}_dedup_event"
    if new_unique not in uniques:
        unique = f'ADD CONSTRAINT "{new_unique}" UNIQUE (dedup_key, event_time)'
        conn.execute(sa.text(alter + unique))
        done.append("unique on (dedup_key, event_time)")
    if old_unique in uniques:
        conn.execute(sa.text(alter + f'DROP CONSTRAINT "{old_unique}"'))
        done.append("dropped unique on (alert_id, event_time)")
    _create_indexes(conn, table)
    return done


def _upgrade_sqlite(conn: Connection, table: sa.Table, utc_type: Any) -> list[str]:
    name = table.name
    sql = conn.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :n"), {"n": name}
    ).scalar()
    if sql is None:
        return []
    columns = [row[1] for row in conn.exec_driver_sql(f'PRAGMA table_info("{name}")')]
    if "dedup_key" in columns and f"'{STALE}'" in sql and f"uq_{name}_dedup_event" in sql:
        _create_indexes(conn, table)
        return []
    temp = f"{name}__upgrade"
    conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{temp}"')
    new = build_table(sa.MetaData(), temp, utc_type, constraint_base=name)
    new.create(conn)
    wanted = [c.name for c in new.columns]
    copied = [c for c in wanted if c in columns]
    select = [f'"{c}"' for c in copied]
    if "dedup_key" not in columns:
        copied.append("dedup_key")
        select.append('"alert_id"')
    else:
        select[copied.index("dedup_key")] = 'COALESCE("dedup_key", "alert_id")'
    conn.exec_driver_sql(
        f'INSERT INTO "{temp}" ({", ".join(f"{chr(34)}{c}{chr(34)}" for c in copied)}) '
        f'SELECT {", ".join(select)} FROM "{name}"'
    )
    conn.exec_driver_sql(f'DROP TABLE "{name}"')
    conn.exec_driver_sql(f'ALTER TABLE "{temp}" RENAME TO "{name}"')
    _create_indexes(conn, table)
    return [f"rebuilt the table ({', '.join(copied)}; dedup_key = alert_id where missing)"]
