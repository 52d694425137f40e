"""The delivery ledger's values: rows, claims and the de-duplication window.

See :mod:`alert_platform.delivery.ledger` for what a claim decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from alert_platform.delivery.messages import OutboundMessage

ALREADY_DELIVERED = "already_delivered"
SUPPRESSED_REPEAT = "suppressed_repeat"
# The ends of the datetime range: a window around year 1 or 9999 is clamped to them.
MIN_TIME = datetime.min.replace(tzinfo=UTC)
MAX_TIME = datetime.max.replace(tzinfo=UTC)


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


def as_window(window: timedelta | float) -> timedelta:
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


def legacy_rows(
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


def duplicate_of(
    message: OutboundMessage, rows: list[LedgerRow] | None, window: timedelta, owner: str
) -> Claim | None:
    """The ``DUPLICATE`` claim ``rows`` (delivered rows of the message's key) make for
    ``message``, or ``None``."""
    if not rows:
        return None
    event_time = message.event_time.astimezone(UTC)
    lo, hi = window_bounds(event_time, window)
    rows = [r for r in rows if lo <= r.event_time <= hi]
    if not rows:
        return None
    row = min(rows, key=lambda r: (abs(r.event_time - event_time), r.event_time))
    reason = ALREADY_DELIVERED if row.event_time == event_time else SUPPRESSED_REPEAT
    return Claim(ClaimKind.DUPLICATE, message.alert_id, event_time, owner, row, reason=reason)
