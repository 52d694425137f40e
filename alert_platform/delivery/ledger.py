"""The delivery ledger: which alert was posted to Slack, in flight, or refused for good.

One implementation over SQLAlchemy Core, for SQLite (default, ``sqlite:///path``: WAL,
``busy_timeout``) and PostgreSQL (``postgresql+psycopg2://...``). The table is created when
missing. One row per claimed ``(alert_id, event_time)``:

``alert_id, event_time (UTC), state ('sending' | 'delivered' | 'failed_permanent'), channel,
ts, attempts, source (topic:partition:offset), nonce, owner, claimed_at, heartbeat_at,
delivered_at, error``.

:meth:`DeliveryLedger.claim` decides atomically, for the rows of the same ``alert_id`` whose
``event_time`` lies within ``window`` of the message's (the exactly-once rule of
docs/architecture.md):

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
* nothing -> ``NEW``: a ``sending`` row is inserted with a fresh ``nonce``.

Atomicity across processes: SQLite transactions are ``BEGIN IMMEDIATE`` (one writer at a
time, others wait up to ``busy_timeout``); PostgreSQL takes
``pg_advisory_xact_lock(hashtext(table || alert_id))`` before reading. A unique constraint on
``(alert_id, event_time)`` backs both.

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
import os
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from alert_platform.delivery.messages import ALERT_ID_MAX, OutboundMessage
from alert_platform.settings import ConfigError
from alert_platform.storage import make_engine

SENDING = "sending"
DELIVERED = "delivered"
FAILED_PERMANENT = "failed_permanent"
STATES = (SENDING, DELIVERED, FAILED_PERMANENT)

ALREADY_DELIVERED = "already_delivered"
SUPPRESSED_REPEAT = "suppressed_repeat"

DEFAULT_TABLE = "delivery_ledger"
# A live owner refreshes its heartbeat at least every lease/3 (see the deliverer); a 'sending'
# row older than this is taken to belong to a crashed run. No heartbeat happens during one Slack
# call, so the lease must stay well above the client timeout (10 s). The environment variable
# overrides it (read at import; fault tests shorten it so a killed run's claims go stale sooner).
LEASE_ENV = "ALERT_PLATFORM_DELIVERY_LEASE_S"


def _default_lease(default_s: float = 60.0) -> timedelta:
    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return timedelta(seconds=default_s)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 15:  # also rejects nan
        raise ConfigError(f"{LEASE_ENV} must be a number of seconds >= 15, got {raw!r}")
    return timedelta(seconds=seconds)


DEFAULT_LEASE = _default_lease()
# Alert ids per ``IN (...)`` list of a bulk read (SQLite allows 32,766 parameters since 3.32).
_IN_CHUNK = 500

# One lock per SQLite database file, shared by every ledger of this process on that file.
_SQLITE_LOCKS: dict[str, threading.Lock] = {}
_SQLITE_LOCKS_GUARD = threading.Lock()


def _sqlite_write_lock(url: str) -> threading.Lock | None:
    """The in-process lock of a SQLite file database (``None`` for in-memory ones)."""
    database = make_url(url).database
    if database in (None, "", ":memory:"):
        return None
    key = os.path.realpath(os.path.expanduser(database))
    with _SQLITE_LOCKS_GUARD:
        return _SQLITE_LOCKS.setdefault(key, threading.Lock())


class ClaimKind(enum.Enum):
    NEW = "new"
    UNCERTAIN = "uncertain"
    DUPLICATE = "duplicate"
    IN_FLIGHT = "in_flight"


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


@dataclass(frozen=True)
class Claim:
    """The ledger's decision for one message (see the module docstring).

    ``row`` is the row the decision is about: the inserted/taken-over ``sending`` row for
    ``NEW``/``UNCERTAIN``, the delivered row for ``DUPLICATE``, the other worker's row for
    ``IN_FLIGHT``. ``owner`` is who holds the claim (fences heartbeats and releases).
    """

    kind: ClaimKind
    alert_id: str
    event_time: datetime
    owner: str
    row: LedgerRow
    reason: str | None = None
    retry_at: datetime | None = None
    retry_of_failure: bool = False

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


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _redact_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


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
        metadata = sa.MetaData(schema=schema)
        self.table = sa.Table(
            table_name,
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("alert_id", sa.String(ALERT_ID_MAX), nullable=False),
            sa.Column("event_time", UTCDateTime, nullable=False),
            sa.Column("state", sa.String(32), nullable=False),
            sa.Column("channel", sa.String(255)),
            sa.Column("ts", sa.String(64)),
            sa.Column("attempts", sa.Integer, nullable=False, default=0),
            sa.Column("source", sa.String(512)),
            sa.Column("nonce", sa.String(64), nullable=False, unique=True),
            sa.Column("owner", sa.String(128)),
            sa.Column("claimed_at", UTCDateTime, nullable=False),
            sa.Column("heartbeat_at", UTCDateTime, nullable=False),
            sa.Column("delivered_at", UTCDateTime),
            sa.Column("error", sa.Text),
            sa.UniqueConstraint("alert_id", "event_time", name=f"uq_{table_name}_alert_event"),
            sa.CheckConstraint(
                "state IN ('sending', 'delivered', 'failed_permanent')",
                name=f"ck_{table_name}_state",
            ),
        )
        self._lock_prefix = f"{schema or ''}.{table_name}:"
        self._write_lock = _sqlite_write_lock(url) if self.dialect == "sqlite" else None
        self._prepare_statements()
        if create:
            self.create_tables()

    def __repr__(self) -> str:
        return f"DeliveryLedger({_redact_url(self.url)!r}, table={self.table.fullname!r})"

    # -- engine ----------------------------------------------------------------------------

    def create_tables(self) -> None:
        """Create the schema (PostgreSQL) and table when missing; safe to race."""
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtext('alert_platform.ledger.ddl'))")
                )
                if self.schema:
                    conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
            self.table.metadata.create_all(conn, checkfirst=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> DeliveryLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A transaction; on SQLite behind this process's lock of the file (module docstring)."""
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_lock, self.engine.begin() as conn:
            yield conn

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
    def _using(self, conn: Connection | None) -> Iterator[Connection]:
        """``conn`` (the caller's transaction), else a transaction of our own."""
        if conn is not None:
            yield conn
            return
        with self._begin() as own:
            yield own

    @contextmanager
    def _locked(self, alert_id: str, conn: Connection | None = None) -> Iterator[Connection]:
        """A transaction holding the per-alert lock (SQLite: the database write lock)."""
        with self._using(conn) as locked:
            if self.dialect == "postgresql":
                locked.execute(self._q_advisory, {"p_key": self._lock_prefix + alert_id})
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
                t.c.alert_id == b("p_alert_id", sa.String),
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
            state=FAILED_PERMANENT, owner=None, error=b("p_error", sa.Text)
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
        self, conn: Connection, alert_id: str, event_time: datetime, window: timedelta
    ) -> list[LedgerRow]:
        result = conn.execute(
            self._q_window,
            {"p_alert_id": alert_id, "p_lo": event_time - window, "p_hi": event_time + window},
        )
        return [self._row(m) for m in result.mappings()]

    def is_delivered(self, message: OutboundMessage, window: timedelta | float) -> bool:
        """Whether a claim for ``message`` would be a ``DUPLICATE`` (read-only, no lock)."""
        event_time = message.event_time.astimezone(UTC)
        with self._begin() as conn:
            rows = self._within_window(conn, message.alert_id, event_time, _as_window(window))
        return any(row.state == DELIVERED for row in rows)

    def duplicates(
        self, messages: Sequence[OutboundMessage], window: timedelta | float
    ) -> list[Claim | None]:
        """For each message, the ``DUPLICATE`` claim :meth:`claim` would answer now (same row,
        same ``reason``), or ``None`` when it would answer anything else. One read per
        ``_IN_CHUNK`` alert ids, no row written: a ``delivered`` row is final, so the answer
        cannot change before the caller acts on it."""
        window = _as_window(window)
        t = self.table
        ids = sorted({message.alert_id for message in messages})
        delivered: dict[str, list[LedgerRow]] = defaultdict(list)
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            with self._begin() as conn:
                result = conn.execute(
                    sa.select(t).where(t.c.state == DELIVERED, t.c.alert_id.in_(chunk))
                )
                for mapping in result.mappings():
                    row = self._row(mapping)
                    delivered[row.alert_id].append(row)
        out: list[Claim | None] = []
        for message in messages:
            event_time = message.event_time.astimezone(UTC)
            rows = [
                r
                for r in delivered.get(message.alert_id, ())
                if event_time - window <= r.event_time <= event_time + window
            ]
            if not rows:
                out.append(None)
                continue
            row = min(rows, key=lambda r: (abs(r.event_time - event_time), r.event_time))
            reason = ALREADY_DELIVERED if row.event_time == event_time else SUPPRESSED_REPEAT
            out.append(
                Claim(ClaimKind.DUPLICATE, message.alert_id, event_time, self.owner, row,
                      reason=reason)
            )  # fmt: skip
        return out

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
        with self._locked(message.alert_id, conn) as locked:
            now = _utcnow()
            rows = self._within_window(locked, message.alert_id, event_time, window)

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

            failed = [r for r in rows if r.state == FAILED_PERMANENT and r.event_time == event_time]
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
                return decided(ClaimKind.NEW, renewed, retry_of_failure=True)
            inserted = locked.execute(
                self._q_insert,
                {"alert_id": message.alert_id, "event_time": event_time, "attempts": 0, **values},
            )
            row_id = inserted.inserted_primary_key[0]
            row = LedgerRow(
                id=row_id, alert_id=message.alert_id, event_time=event_time, attempts=0,
                error=None, **values,
            )  # fmt: skip
            return decided(ClaimKind.NEW, row)

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
        (a row that was a retry of a permanent failure goes back to 'failed_permanent'), so the
        alert is ``NEW`` for the next run. ``False`` when the claim was not ours any more."""
        params: dict[str, Any] = {"p_id": claim.row_id, "p_claim_owner": claim.owner}
        with self._using(conn) as c:
            if claim.retry_of_failure:
                params["p_error"] = claim.row.error
                return c.execute(self._q_release_failed, params).rowcount == 1
            return c.execute(self._q_release, params).rowcount == 1
