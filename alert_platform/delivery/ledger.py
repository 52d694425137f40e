"""The delivery ledger: which alert was posted to Slack, in flight, or refused for good.

One implementation over SQLAlchemy Core, for SQLite (default, ``sqlite:///path``: WAL,
``busy_timeout``) and PostgreSQL (``postgresql+psycopg2://...``). The table is created when
missing, and a table of an earlier version is upgraded (:mod:`.ledger_schema`). One row per
claimed ``(dedup_key, event_time)``:

``alert_id, dedup_key, event_time (UTC), state ('sending' | 'delivered' | 'failed_permanent' |
'stale'), channel, ts, attempts, source (topic:partition:offset), nonce, owner, claimed_at,
heartbeat_at, delivered_at, error``.

``dedup_key`` is the collision-free identity (``{pipeline}:{hash of the id fields}``, else the
alert id); ``alert_id`` is the readable id people and ``explain`` look rows up by.

:meth:`DeliveryLedger.claim` decides atomically, for the rows of the same ``dedup_key`` whose
``event_time`` lies within ``window`` of the message's (the exactly-once rule of
docs/architecture.md; the window's ends are clamped to the datetime range, so an event time of
year 1 or 9999 is as valid as any):

* a ``delivered`` row -> ``DUPLICATE`` (``reason`` ``already_delivered`` for the very same
  event, ``suppressed_repeat`` for another event of the alert): do not post;
* a ``sending`` row whose owner heart-beat within ``lease`` -> ``IN_FLIGHT``: another worker
  (or this one) is posting it right now; wait until ``retry_at`` and claim again;
* a ``sending`` row with an older heartbeat -> ``UNCERTAIN``: an earlier attempt died between
  the Slack call and the ledger write; the claim takes the row over (same ``nonce``) and the
  caller must look for the nonce in Slack before posting again;
* a ``failed_permanent`` row for the very same event -> ``NEW`` again (``retry_of_failure``):
  a permanent failure posted nothing, and re-running a range is how an operator retries after
  fixing the cause (inviting the bot, un-archiving the channel). Failed rows never suppress;
* a ``stale`` row (:meth:`DeliveryLedger.mark_stale`: live delivery refused an alert older
  than the maximum age) for the very same event -> ``NEW`` too: only an explicit backfill
  claims a stale alert, and posting it turns the row ``delivered``. Stale rows never suppress;
* nothing -> ``NEW``: a ``sending`` row is inserted with a fresh ``nonce``.

Atomicity across processes: SQLite transactions are ``BEGIN IMMEDIATE`` (one writer at a
time, others wait up to ``busy_timeout``); PostgreSQL takes
``pg_advisory_xact_lock(hashtext(table || dedup_key))`` before reading. A unique constraint on
``(dedup_key, event_time)`` backs both. Several calls in one :meth:`DeliveryLedger.transaction`
each run under :meth:`DeliveryLedger.savepoint` in the deliverer, so one failing statement
rolls back its own call only.

Within one process, the transactions of every ledger on the same SQLite file also take one
in-process lock first: the delivery lanes' threads then queue on it in turn instead of all
racing for the database lock, whose busy handler makes a loser *sleep* (1 ms, 2 ms, 5 ms, ...
up to 100 ms) even when the winner is done after a fraction of a millisecond. Other processes
still meet at the database lock (``busy_timeout``); nothing about what a transaction decides
changes.

SQLite durability: the engine runs ``journal_mode=WAL`` with ``synchronous=NORMAL``
(:mod:`alert_platform.storage`): a commit is in the WAL file (written, not fsync'ed) before it
returns, so it survives the *process* being killed at any point (SIGKILL, OOM, a crash), which
is what the claim / lease / uncertain-recovery protocol relies on. What it does not survive is
the *machine* losing power (or the OS crashing) within the last checkpoint interval: then the
last commits may be rolled back, and an alert posted just before could be posted again by the
next run. A deployment that must survive power loss without any duplicate uses PostgreSQL (or
``synchronous=FULL``, at about one fsync per ledger write).

:meth:`DeliveryLedger.duplicates` answers the ``DUPLICATE`` decision for a whole batch in one
read: a ``delivered`` row is final (nothing turns it back into another state), so a message it
suppresses needs neither a claim transaction nor a channel lookup.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from alert_platform.delivery.ledger_model import (
    ALREADY_DELIVERED,
    MAX_TIME,
    MIN_TIME,
    SUPPRESSED_REPEAT,
    Claim,
    ClaimKind,
    LedgerRow,
    as_window,
    window_bounds,
)
from alert_platform.delivery.ledger_queries import LedgerQueries
from alert_platform.delivery.ledger_schema import (
    DELIVERED,
    FAILED_PERMANENT,
    SENDING,
    STALE,
    STATES,
    add_alert_id_index,
    build_table,
    upgrade,
)
from alert_platform.delivery.ledger_statements import build_statements
from alert_platform.delivery.messages import OutboundMessage
from alert_platform.storage import UTCDateTime, locked_begin, make_engine, sqlite_write_lock

__all__ = [
    "ALREADY_DELIVERED",
    "DELIVERED",
    "FAILED_PERMANENT",
    "MAX_TIME",
    "MIN_TIME",
    "SENDING",
    "STALE",
    "STATES",
    "SUPPRESSED_REPEAT",
    "Claim",
    "ClaimKind",
    "DeliveryLedger",
    "LedgerRow",
    "UTCDateTime",
    "window_bounds",
]
LOG = logging.getLogger("alert_platform.delivery.ledger")


DEFAULT_TABLE = "delivery_ledger"
# A live owner refreshes its heartbeat at least every lease/3 (see the deliverer); a 'sending'
# row older than this is taken to belong to a crashed run. No heartbeat happens during one Slack
# call, so the lease must stay well above the call deadline: callers pass
# ``timedelta(seconds=settings.delivery_lease_s)`` (Settings validates it against
# ``slack_call_timeout_s``); this default matches the setting's.
DEFAULT_LEASE = timedelta(seconds=60)
# States of a row that a claim of the very same event renews (they never suppress).
_RENEWABLE = (FAILED_PERMANENT, STALE)


def _utc_session(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SET TIME ZONE 'UTC'")
    cursor.close()
    dbapi_connection.commit()


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _redact_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


class DeliveryLedger(LedgerQueries):
    """The delivery ledger at ``url`` (SQLAlchemy URL); creates its table when missing.

    ``schema`` (PostgreSQL only) and ``table_name`` place the table; ``owner`` names this
    ledger's claims (default: a fresh id per instance, i.e. per run). Thread-safe.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        table_name: str = DEFAULT_TABLE,
        owner: str | None = None,
        lease: timedelta = DEFAULT_LEASE,
        create: bool = True,
    ) -> None:
        self.url = url
        self.owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.lease = lease
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(
                f"unsupported ledger database {self.dialect!r}: use sqlite or postgresql"
            )
        if schema and self.dialect != "postgresql":
            raise ValueError("a ledger schema is only supported on PostgreSQL")
        self.schema = schema
        if self.dialect == "postgresql":
            # Rows read back in UTC whatever the server's zone (year 1 / 9999 stay in range).
            sa.event.listen(self.engine, "connect", _utc_session)
        metadata = sa.MetaData(schema=schema)
        self.table = build_table(metadata, table_name, UTCDateTime)
        add_alert_id_index(self.table)
        self._lock_prefix = f"{schema or ''}.{table_name}:"
        self._write_lock = sqlite_write_lock(url) if self.dialect == "sqlite" else None
        self._prepare_statements()
        if create:
            self.create_tables()

    def __repr__(self) -> str:
        return f"DeliveryLedger({_redact_url(self.url)!r}, table={self.table.fullname!r})"

    # -- engine ----------------------------------------------------------------------------

    def create_tables(self) -> None:
        """Create the schema (PostgreSQL) and table when missing, upgrade a table of an earlier
        version (:mod:`.ledger_schema`); safe to race."""
        with self._begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtext('alert_platform.ledger.ddl'))")
                )
                if self.schema:
                    conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
            self.table.metadata.create_all(conn, checkfirst=True)
            changes = upgrade(conn, self.table, UTCDateTime)
        if changes:
            LOG.warning("upgraded the delivery ledger table %s: %s", self.table.fullname,
                        "; ".join(changes))  # fmt: skip

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> DeliveryLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _begin(self) -> AbstractContextManager[Connection]:
        """A transaction; on SQLite behind this process's lock of the file (module docstring)."""
        return locked_begin(self.engine, self._write_lock)

    @property
    def single_writer(self) -> bool:
        """SQLite: one writer at a time, so a caller with many writes groups them into few
        transactions (:meth:`transaction`); PostgreSQL runs concurrent writers."""
        return self.dialect == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction for several ledger calls (pass it as their ``conn``): they take
        effect together at its commit, or not at all."""
        with self._begin() as conn:
            yield conn

    @contextmanager
    def savepoint(self, conn: Connection | None) -> Iterator[Connection | None]:
        """Inside the caller's :meth:`transaction` (``conn``): a SAVEPOINT, so that a failing
        call rolls back alone and the transaction goes on; without ``conn``, nothing (each
        call has its own transaction)."""
        if conn is None:
            yield None
            return
        with conn.begin_nested():
            yield conn

    @contextmanager
    def _using(self, conn: Connection | None) -> Iterator[Connection]:
        """``conn`` (the caller's transaction), else a transaction of our own."""
        if conn is not None:
            yield conn
            return
        with self._begin() as own:
            yield own

    @contextmanager
    def _locked(self, dedup_key: str, conn: Connection | None = None) -> Iterator[Connection]:
        """A transaction holding the per-alert lock (SQLite: the database write lock)."""
        with self._using(conn) as locked:
            if self.dialect == "postgresql":
                locked.execute(self._q.advisory, {"p_key": self._lock_prefix + dedup_key})
            yield locked

    def _prepare_statements(self) -> None:
        """The hot statements, built once (:mod:`.ledger_statements`)."""
        self._q = build_statements(self.table)

    # -- the claim -------------------------------------------------------------------------

    def claim(
        self,
        message: OutboundMessage,
        window: timedelta | float,
        *,
        owner: str | None = None,
        lease: timedelta | None = None,
        conn: Connection | None = None,
    ) -> Claim:
        """Decide atomically whether ``message`` may be posted (see the module docstring).

        ``window`` is a timedelta or hours; ``owner`` defaults to this ledger's owner; ``lease``
        (default: the ledger's) is how stale a ``sending`` heartbeat must be to be taken over.
        ``conn``: decide inside the caller's :meth:`transaction` (the claim holds once it
        commits); default: a transaction of its own.
        """
        window = as_window(window)
        owner = owner or self.owner
        lease = self.lease if lease is None else lease
        event_time = message.event_time.astimezone(UTC)
        with self._locked(message.dedup_key, conn) as locked:
            now = _utcnow()
            rows = self._within_window(locked, message.dedup_key, event_time, window)

            def closest(candidates: list[LedgerRow]) -> LedgerRow:
                return min(candidates, key=lambda r: abs(r.event_time - event_time))

            def decided(kind: ClaimKind, row: LedgerRow, **extra: Any) -> Claim:
                return Claim(kind, message.alert_id, event_time, owner, row, **extra)

            delivered = [r for r in rows if r.state == DELIVERED]
            if delivered:
                row = closest(delivered)
                same = row.event_time == event_time
                return decided(
                    ClaimKind.DUPLICATE,
                    row,
                    reason=ALREADY_DELIVERED if same else SUPPRESSED_REPEAT,
                )

            sending = [r for r in rows if r.state == SENDING]
            if sending:
                row = closest(sending)
                if now - row.heartbeat_at < lease:
                    return decided(ClaimKind.IN_FLIGHT, row, retry_at=row.heartbeat_at + lease)
                source = message.source_ref or row.source
                locked.execute(
                    self._q.take_over,
                    {"p_id": row.id, "p_owner": owner, "p_now": now, "p_source": source},
                )
                taken = replace(row, owner=owner, heartbeat_at=now, source=source)
                return decided(ClaimKind.UNCERTAIN, taken)

            failed = [r for r in rows if r.state in _RENEWABLE and r.event_time == event_time]
            values = {
                "state": SENDING,
                "channel": message.channel_id,
                "ts": None,
                "source": message.source_ref or None,
                "nonce": uuid.uuid4().hex,
                "owner": owner,
                "claimed_at": now,
                "heartbeat_at": now,
                "delivered_at": None,
            }
            if failed:
                row = failed[0]
                locked.execute(
                    self._q.renew,
                    {
                        "p_id": row.id,
                        "p_channel": values["channel"],
                        "p_source": values["source"],
                        "p_nonce": values["nonce"],
                        "p_owner": owner,
                        "p_now": now,
                    },
                )
                renewed = replace(row, **values)
                return decided(ClaimKind.NEW, renewed, retry_of_failure=True, prior_state=row.state)
            identity = {
                "alert_id": message.alert_id,
                "dedup_key": message.dedup_key,
                "event_time": event_time,
                "attempts": 0,
            }
            inserted = locked.execute(self._q.insert, {**identity, **values})
            row_id = inserted.inserted_primary_key[0]
            row = LedgerRow(id=row_id, error=None, **identity, **values)
            return decided(ClaimKind.NEW, row)

    def mark_stale(
        self, message: OutboundMessage, reason: str = STALE, *, conn: Connection | None = None
    ) -> bool:
        """Record that live delivery refused ``message`` as too old: a ``stale`` row for its
        very event, unless one exists (a ``failed_permanent`` one becomes ``stale``; a
        ``sending`` or ``delivered`` one is left alone). ``True`` when the row is ``stale``
        now. Stale rows never suppress; an explicit backfill claims them (``NEW``)."""
        t = self.table
        event_time = message.event_time.astimezone(UTC)
        with self._locked(message.dedup_key, conn) as locked:
            existing = locked.execute(
                sa.select(t.c.id, t.c.state).where(
                    t.c.dedup_key == message.dedup_key, t.c.event_time == event_time
                )
            ).first()
            if existing is not None:
                if existing.state == FAILED_PERMANENT:
                    locked.execute(
                        t.update().where(t.c.id == existing.id).values(state=STALE, error=reason)
                    )
                    return True
                return existing.state == STALE
            now = _utcnow()
            locked.execute(
                self._q.insert,
                {
                    "alert_id": message.alert_id,
                    "dedup_key": message.dedup_key,
                    "event_time": event_time,
                    "state": STALE,
                    "channel": message.channel_id,
                    "ts": None,
                    "attempts": 0,
                    "source": message.source_ref or None,
                    "nonce": uuid.uuid4().hex,
                    "owner": None,
                    "claimed_at": now,
                    "heartbeat_at": now,
                    "delivered_at": None,
                    "error": reason[:2000],
                },
            )
            return True

    # -- after the claim -------------------------------------------------------------------

    def touch(
        self, claim: Claim, *, attempts: int | None = None, conn: Connection | None = None
    ) -> bool:
        """Refresh the claim's heartbeat (and attempt count); ``False`` when it is no longer
        ours (taken over after going stale, released, or finished): do not post then."""
        params = {
            "p_id": claim.row_id,
            "p_claim_owner": claim.owner,
            "p_now": _utcnow(),
            "p_attempts": attempts,
        }
        with self._using(conn) as c:
            return c.execute(self._q.touch, params).rowcount == 1

    def mark_delivered(
        self,
        claim: Claim,
        channel: str | None,
        ts: str | None,
        *,
        attempts: int | None = None,
        conn: Connection | None = None,
    ) -> bool:
        """Record the post (``channel`` id and message ``ts``). Not fenced by owner: a post
        that happened is always recorded. ``False`` when the row was not 'sending' any more."""
        params = {
            "p_id": claim.row_id,
            "p_channel": channel,
            "p_ts": ts,
            "p_now": _utcnow(),
            "p_attempts": attempts,
        }
        with self._using(conn) as c:
            return c.execute(self._q.delivered, params).rowcount == 1

    def mark_failed(
        self,
        claim: Claim,
        error: str,
        *,
        attempts: int | None = None,
        conn: Connection | None = None,
    ) -> bool:
        """Record a permanent failure (nothing was posted). A later claim of the very same
        event gets ``NEW`` again (``retry_of_failure``); failed rows never suppress."""
        params = {
            "p_id": claim.row_id,
            "p_claim_owner": claim.owner,
            "p_error": error[:2000],
            "p_attempts": attempts,
        }
        with self._using(conn) as c:
            return c.execute(self._q.failed, params).rowcount == 1

    def release(self, claim: Claim, *, conn: Connection | None = None) -> bool:
        """Give a claim back after a failure that certainly posted nothing: the row goes away
        (a row that was a retry of a permanent failure or of a stale alert goes back to
        'failed_permanent' / 'stale'), so the alert is ``NEW`` for the next run. ``False`` when
        the claim was not ours any more."""
        params: dict[str, Any] = {"p_id": claim.row_id, "p_claim_owner": claim.owner}
        with self._using(conn) as c:
            if claim.retry_of_failure:
                params["p_error"] = claim.row.error
                params["p_state"] = claim.prior_state or FAILED_PERMANENT
                return c.execute(self._q.release_failed, params).rowcount == 1
            return c.execute(self._q.release, params).rowcount == 1
