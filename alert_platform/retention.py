"""Retention of the platform's own state: ledger, run-index, outbox and handled-range rows
past their use.

A ledger row matters while an event within the de-duplication window of it can still arrive;
the run index narrows backfills, which scan unrecorded offsets anyway. Rows whose event time
(ledger) or recorded time (run index, outbox) is older than ``dedup_window_hours +
state_retention_margin_hours`` are deleted by :func:`prune_state` (the hourly
``state_retention_job``, assets/maintenance.py), in batches of ``batch_size`` rows, each its own
short transaction, so deliveries wait at most one batch. A ``sending`` row is never pruned (a
run may be posting it, or its nonce is needed to recover an uncertain post).

Each prune is written down in ``state_prunes`` (one row per table: the cutoff and when), so
``explain`` can say that an alert without a ledger row may have been pruned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from alert_platform.delivery.handled_ranges import HandledRanges
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.written_alerts import WrittenAlerts
from alert_platform.run_index import PROCESSED_RANGES, RunIndex
from alert_platform.settings import Settings
from alert_platform.storage import UTCDateTime, make_engine

DEFAULT_BATCH_SIZE = 1_000
SENDING = "sending"
RUN_INDEX = PROCESSED_RANGES.name
OUTBOX = "outbox"

_METADATA = sa.MetaData()
STATE_PRUNES = sa.Table(
    "state_prunes",
    _METADATA,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("pruned_before", UTCDateTime, nullable=False),
    sa.Column("pruned_at", UTCDateTime, nullable=False),
    sa.Column("rows_last", sa.BigInteger, nullable=False),
    sa.Column("rows_total", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True)
class PruneMark:
    """The last prune of one table: rows timed before ``pruned_before`` are gone."""

    name: str
    pruned_before: datetime
    pruned_at: datetime
    rows_last: int
    rows_total: int


class PruneLog:
    """The ``state_prunes`` table in the ledger database."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('state_prunes.ddl'))"))
            _METADATA.create_all(conn, checkfirst=True)

    def close(self) -> None:
        self.engine.dispose()

    def record(self, name: str, before: datetime, at: datetime, rows: int) -> None:
        """Write down that ``name`` was pruned of rows before ``before`` at ``at``."""
        t = STATE_PRUNES
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                    {"k": "state_prunes:" + name},
                )
            old = conn.execute(sa.select(t).where(t.c.name == name)).mappings().first()
            if old is None:
                conn.execute(t.insert().values(name=name, pruned_before=before, pruned_at=at,
                                               rows_last=rows, rows_total=rows))  # fmt: skip
                return
            conn.execute(
                t.update()
                .where(t.c.name == name)
                .values(
                    pruned_before=max(before, old["pruned_before"]),
                    pruned_at=at,
                    rows_last=rows,
                    rows_total=t.c.rows_total + rows,
                )
            )

    def last(self, name: str) -> PruneMark | None:
        """The last prune of ``name`` (``None``: never pruned)."""
        t = STATE_PRUNES
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.name == name)).mappings().first()
        if row is None:
            return None
        return PruneMark(
            name=name,
            pruned_before=row["pruned_before"],
            pruned_at=row["pruned_at"],
            rows_last=int(row["rows_last"]),
            rows_total=int(row["rows_total"]),
        )


@dataclass
class PruneReport:
    """What one :func:`prune_state` deleted (``outbox``: ``None`` when there is no outbox)."""

    before: datetime
    ledger: int = 0
    run_index: int = 0
    outbox: int | None = None
    handled_ranges: int = 0
    batches: int = 0
    longest_batch_s: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["before"] = self.before.isoformat()
        return out


def retention_cutoff(settings: Settings, now: datetime | None = None) -> datetime:
    """Rows timed before this are past use: now - (dedup window + retention margin)."""
    now = now or datetime.now(UTC)
    keep = timedelta(hours=settings.dedup_window_hours + settings.state_retention_margin_hours)
    return now - keep


class _Batches:
    """Counts batches and times the longest one (how long a delivery could have waited)."""

    def __init__(self) -> None:
        self.count = 0
        self.longest_s = 0.0

    def run(self, fn: Callable[[], int]) -> int:
        started = time.monotonic()
        deleted = fn()
        self.count += 1
        self.longest_s = max(self.longest_s, time.monotonic() - started)
        return deleted


def prune_ledger(
    ledger: DeliveryLedger,
    before: datetime,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pause_s: float = 0.0,
    batches: _Batches | None = None,
) -> int:
    """Delete ledger rows with an event time before ``before`` that are not ``sending``, at
    most ``batch_size`` per transaction; how many were deleted. Walks the primary key once."""
    t = ledger.table
    batches = batches or _Batches()
    last_id = 0
    total = 0
    while True:

        def one_batch() -> int:
            nonlocal last_id
            with ledger.transaction() as conn:
                ids = list(
                    conn.execute(
                        sa.select(t.c.id)
                        .where(t.c.id > last_id, t.c.event_time < before, t.c.state != SENDING)
                        .order_by(t.c.id)
                        .limit(batch_size)
                    ).scalars()
                )
                if not ids:
                    return -1
                last_id = ids[-1]
                result = conn.execute(
                    t.delete().where(t.c.id.in_(ids), t.c.state != SENDING)
                )  # (re-checked: a row claimed again in between stays)
                return int(result.rowcount)

        deleted = batches.run(one_batch)
        if deleted < 0:
            return total
        total += deleted
        if pause_s:
            time.sleep(pause_s)


def prune_run_index(
    index: RunIndex,
    before: datetime,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    batches: _Batches | None = None,
) -> int:
    """Delete run-index rows recorded before ``before``, in batches; how many."""
    batches = batches or _Batches()
    total = 0
    while True:
        deleted = batches.run(lambda: index.prune(before, batch_size=batch_size))
        total += deleted
        if deleted < batch_size:
            return total


def _prune_outbox(url: str, before: datetime, batch_size: int) -> int | None:
    """C's responses outbox (alert_platform.delivery.outbox), when this version has one."""
    try:
        from alert_platform.delivery.outbox import Outbox
    except ImportError:
        return None
    outbox = Outbox(url)
    if not hasattr(outbox, "prune"):
        return None
    try:
        return int(outbox.prune(before=before, batch_size=batch_size))
    finally:
        close = getattr(outbox, "close", None)
        if callable(close):
            close()


def _prune_handled_ranges(url: str, before: datetime, batch_size: int) -> int:
    """The delivery sensor's handled ranges (and written alerts) recorded before ``before`` (a
    pruned one only gets a catch-up run again, which the ledger turns into duplicates)."""
    with HandledRanges(url) as handled, WrittenAlerts(url) as written:
        written.prune(before, batch_size=batch_size)
        return handled.prune(before, batch_size=batch_size)


def prune_state(
    settings: Settings,
    *,
    now: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ledger: DeliveryLedger | None = None,
) -> PruneReport:
    """Prune ledger, run-index, outbox and handled-range rows past ``retention_cutoff`` and
    write it down."""
    started = time.monotonic()
    url = settings.effective_ledger_url
    before = retention_cutoff(settings, now)
    report = PruneReport(before=before)
    batches = _Batches()
    own_ledger = ledger is None
    ledger = ledger or DeliveryLedger(url, lease=timedelta(seconds=settings.delivery_lease_s))
    index = RunIndex(url)
    log = PruneLog(url)
    try:
        report.ledger = prune_ledger(ledger, before, batch_size=batch_size, batches=batches)
        log.record(ledger.table.fullname, before, datetime.now(UTC), report.ledger)
        report.run_index = prune_run_index(index, before, batch_size=batch_size, batches=batches)
        log.record(RUN_INDEX, before, datetime.now(UTC), report.run_index)
        report.outbox = _prune_outbox(url, before, batch_size)
        if report.outbox is None:
            report.notes.append("no responses outbox in this version: nothing to prune there")
        else:
            log.record(OUTBOX, before, datetime.now(UTC), report.outbox)
        report.handled_ranges = _prune_handled_ranges(url, before, batch_size)
    finally:
        log.close()
        index.close()
        if own_ledger:
            ledger.close()
    report.batches = batches.count
    report.longest_batch_s = round(batches.longest_s, 4)
    report.seconds = round(time.monotonic() - started, 3)
    return report
