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

import enum
import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

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
from alert_platform.delivery.messages import OutboundMessage
from alert_platform.storage import UTCDateTime, locked_begin, make_engine, sqlite_write_lock

__all__ = ["DELIVERED", "FAILED_PERMANENT", "SENDING", "STALE", "STATES", "DeliveryLedger"]
LOG = logging.getLogger("alert_platform.delivery.ledger")

ALREADY_DELIVERED = "already_delivered"
SUPPRESSED_REPEAT = "suppressed_repeat"

DEFAULT_TABLE = "delivery_ledger"
# A live owner refreshes its heartbeat at least every lease/3 (see the deliverer); a 'sending'
# row older than this is taken to belong to a crashed run. No heartbeat happens during one Slack
# call, so the lease must stay well above the call deadline: callers pass
# ``timedelta(seconds=settings.delivery_lease_s)`` (Settings validates it against
# ``slack_call_timeout_s``); this default matches the setting's.
DEFAULT_LEASE = timedelta(seconds=60)
# The ends of the datetime range: a window around year 1 or 9999 is clamped to them.
MIN_TIME = datetime.min.replace(tzinfo=UTC)
MAX_TIME = datetime.max.replace(tzinfo=UTC)
# States of a row that a claim of the very same event renews (they never suppress).
_RENEWABLE = (FAILED_PERMANENT, STALE)
# Keys per ``IN (...)`` list of a bulk read (SQLite allows 32,766 parameters since 3.32).
_IN_CHUNK = 500


def _utc_session(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SET TIME ZONE 'UTC'")
    cursor.close()
    dbapi_connection.commit()


class ClaimKind(enum.Enum):
    NEW = "new"
    UNCERTAIN = "uncertain"
    DUPLICATE = "duplicate"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True)
class LedgerRow:
    """One ledger row (what ``explain`` shows)."""

    id: int
    alert_id: str
    event_time: datetime
    state: str
    channel: str | None
    ts: str | None
    attempts: int
    source: str | None
    nonce: str
    owner: str | None
    claimed_at: datetime
    heartbeat_at: datetime
    delivered_at: datetime | None
    error: str | None
    dedup_key: str = ""


@dataclass(frozen=True)
class Claim:
    """The ledger's decision for one message (see the module docstring).

    ``row`` is the row the decision is about: the inserted/taken-over ``sending`` row for
    ``NEW``/``UNCERTAIN``, the delivered row for ``DUPLICATE``, the other worker's row for
    ``IN_FLIGHT``. ``owner`` is who holds the claim (fences heartbeats and releases).
    ``retry_of_failure``: the claim renewed a ``failed_permanent`` or ``stale`` row of the
    same event (``prior_state``; a release puts it back).
    """

    kind: ClaimKind
    alert_id: str
    event_time: datetime
    owner: str
    row: LedgerRow
    reason: str | None = None
    retry_at: datetime | None = None
    retry_of_failure: bool = False
    prior_state: str | None = None

    @property
    def row_id(self) -> int:
        return self.row.id

    @property
    def nonce(self) -> str:
        return self.row.nonce

    @property
    def claimed_at(self) -> datetime:
        return self.row.claimed_at

    @property
    def attempts(self) -> int:
        """Post attempts already recorded for this row (earlier runs included)."""
        return self.row.attempts


def _as_window(window: timedelta | float) -> timedelta:
    """A window as a timedelta; a bare number is hours (``settings.dedup_window_hours``)."""
    if isinstance(window, timedelta):
        return window
    return timedelta(hours=float(window))


def window_bounds(event_time: datetime, window: timedelta) -> tuple[datetime, datetime]:
    """``(event_time - window, event_time + window)``, clamped to the datetime range."""
    try:
        lo = event_time - window
    except OverflowError:
        lo = MIN_TIME
    try:
        hi = event_time + window
    except OverflowError:
        hi = MAX_TIME
    return lo, hi


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _redact_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


def _legacy_rows(
    message: OutboundMessage, delivered: dict[str, list[LedgerRow]]
) -> list[LedgerRow] | None:
    """Legacy rows (``dedup_key == alert_id``) of the very same event as ``message``: the
    readable id is ambiguous, so only an exact event-time match counts (a replay or backfill
    of an event delivered before the upgrade), never a repeat within the window."""
    if message.dedup_key == message.alert_id:
        return None
    event_time = message.event_time.astimezone(UTC)
    rows = [
        r
        for r in delivered.get(message.alert_id, ())
        if r.dedup_key == r.alert_id and r.event_time == event_time
    ]
    return rows or None


class DeliveryLedger:
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
                locked.execute(self._q_advisory, {"p_key": self._lock_prefix + dedup_key})
            yield locked

    def _prepare_statements(self) -> None:
        """The hot statements, built once (constructing a statement and its cache key costs
        more Python than running it on SQLite)."""
        t = self.table

        def b(name: str, type_: Any) -> Any:
            return sa.bindparam(name, type_=type_)

        def keep_attempts() -> Any:
            return sa.func.coalesce(b("p_attempts", sa.Integer), t.c.attempts)

        owned = t.update().where(
            t.c.id == b("p_id", sa.Integer),
            t.c.state == SENDING,
            t.c.owner == b("p_claim_owner", sa.String),
        )
        self._q_advisory = sa.text("SELECT pg_advisory_xact_lock(hashtext(:p_key))")
        self._q_window = (
            sa.select(t)
            .where(
                t.c.dedup_key == b("p_key", sa.String),
                t.c.event_time >= b("p_lo", UTCDateTime),
                t.c.event_time <= b("p_hi", UTCDateTime),
            )
            .order_by(t.c.event_time)
        )
        self._q_take_over = (
            t.update()
            .where(t.c.id == b("p_id", sa.Integer))
            .values(
                owner=b("p_owner", sa.String),
                heartbeat_at=b("p_now", UTCDateTime),
                source=b("p_source", sa.String),
            )
        )
        self._q_renew = (
            t.update()
            .where(t.c.id == b("p_id", sa.Integer))
            .values(
                state=SENDING,
                channel=b("p_channel", sa.String),
                ts=None,
                source=b("p_source", sa.String),
                nonce=b("p_nonce", sa.String),
                owner=b("p_owner", sa.String),
                claimed_at=b("p_now", UTCDateTime),
                heartbeat_at=b("p_now", UTCDateTime),
                delivered_at=None,
            )
        )
        self._q_insert = t.insert()
        self._q_touch = owned.values(heartbeat_at=b("p_now", UTCDateTime), attempts=keep_attempts())
        self._q_delivered = (
            t.update()
            .where(t.c.id == b("p_id", sa.Integer), t.c.state == SENDING)
            .values(
                state=DELIVERED,
                channel=b("p_channel", sa.String),
                ts=b("p_ts", sa.String),
                delivered_at=b("p_now", UTCDateTime),
                error=None,
                attempts=keep_attempts(),
            )
        )
        self._q_failed = owned.values(
            state=FAILED_PERMANENT, error=b("p_error", sa.Text), owner=None,
            attempts=keep_attempts(),
        )  # fmt: skip
        self._q_release_failed = owned.values(
            state=b("p_state", sa.String), owner=None, error=b("p_error", sa.Text)
        )
        self._q_release = t.delete().where(
            t.c.id == b("p_id", sa.Integer),
            t.c.state == SENDING,
            t.c.owner == b("p_claim_owner", sa.String),
        )

    # -- rows ------------------------------------------------------------------------------

    @staticmethod
    def _row(mapping: Any) -> LedgerRow:
        return LedgerRow(**{name: mapping[name] for name in LedgerRow.__dataclass_fields__})

    def lookup(self, alert_id: str) -> list[LedgerRow]:
        """Every row of ``alert_id``, newest event first (for ``explain``)."""
        t = self.table
        with self._begin() as conn:
            result = conn.execute(
                sa.select(t).where(t.c.alert_id == alert_id).order_by(t.c.event_time.desc())
            )
            return [self._row(m) for m in result.mappings()]

    def count_by_state(self) -> dict[str, int]:
        t = self.table
        with self._begin() as conn:
            result = conn.execute(sa.select(t.c.state, sa.func.count()).group_by(t.c.state))
            return {state: int(n) for state, n in result}

    # -- the claim -------------------------------------------------------------------------

    def _within_window(
        self, conn: Connection, dedup_key: str, event_time: datetime, window: timedelta
    ) -> list[LedgerRow]:
        lo, hi = window_bounds(event_time, window)
        result = conn.execute(self._q_window, {"p_key": dedup_key, "p_lo": lo, "p_hi": hi})
        return [self._row(m) for m in result.mappings()]

    def is_delivered(self, message: OutboundMessage, window: timedelta | float) -> bool:
        """Whether a claim for ``message`` would be a ``DUPLICATE`` (read-only, no lock)."""
        event_time = message.event_time.astimezone(UTC)
        with self._begin() as conn:
            rows = self._within_window(conn, message.dedup_key, event_time, _as_window(window))
        return any(row.state == DELIVERED for row in rows)

    def duplicates(
        self, messages: Sequence[OutboundMessage], window: timedelta | float
    ) -> list[Claim | None]:
        """For each message, the ``DUPLICATE`` claim :meth:`claim` would answer now (same row,
        same ``reason``), or ``None`` when it would answer anything else. One read per
        ``_IN_CHUNK`` de-duplication keys, no row written: a ``delivered`` row is final, so the
        answer cannot change before the caller acts on it. A message whose answer cannot be
        computed gets ``None`` (its claim decides, or fails for it alone)."""
        window = _as_window(window)
        t = self.table
        # Rows written before dedup keys existed carry dedup_key = alert_id ("legacy" rows):
        # they are read too, so an event delivered before the upgrade is not posted again.
        legacy = {m.alert_id for m in messages if m.dedup_key != m.alert_id}
        keys = sorted({message.dedup_key for message in messages} | legacy)
        delivered: dict[str, list[LedgerRow]] = defaultdict(list)
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start : start + _IN_CHUNK]
            with self._begin() as conn:
                result = conn.execute(
                    sa.select(t).where(t.c.state == DELIVERED, t.c.dedup_key.in_(chunk))
                )
                for mapping in result.mappings():
                    row = self._row(mapping)
                    delivered[row.dedup_key].append(row)
        out: list[Claim | None] = []
        for message in messages:
            try:
                rows = delivered.get(message.dedup_key) or _legacy_rows(message, delivered)
                out.append(self._duplicate_of(message, rows, window))
            except Exception as exc:  # e.g. an event time no arithmetic can handle
                LOG.warning("alert %s: no duplicate check (%s: %s)", message.alert_id,
                            type(exc).__name__, exc)  # fmt: skip
                out.append(None)
        return out

    def _duplicate_of(
        self, message: OutboundMessage, rows: list[LedgerRow] | None, window: timedelta
    ) -> Claim | None:
        if not rows:
            return None
        event_time = message.event_time.astimezone(UTC)
        lo, hi = window_bounds(event_time, window)
        rows = [r for r in rows if lo <= r.event_time <= hi]
        if not rows:
            return None
        row = min(rows, key=lambda r: (abs(r.event_time - event_time), r.event_time))
        reason = ALREADY_DELIVERED if row.event_time == event_time else SUPPRESSED_REPEAT
        return Claim(ClaimKind.DUPLICATE, message.alert_id, event_time, self.owner, row,
                     reason=reason)  # fmt: skip

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
        window = _as_window(window)
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
                    self._q_take_over,
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
                    self._q_renew,
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
            inserted = locked.execute(self._q_insert, {**identity, **values})
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
                self._q_insert,
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
            return c.execute(self._q_touch, params).rowcount == 1

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
            return c.execute(self._q_delivered, params).rowcount == 1

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
            return c.execute(self._q_failed, params).rowcount == 1

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
                return c.execute(self._q_release_failed, params).rowcount == 1
            return c.execute(self._q_release, params).rowcount == 1
