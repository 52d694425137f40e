"""What an explanation holds: outcomes, the explanation dataclasses, and their plain forms."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from alert_platform.delivery.ledger import LedgerRow

TABLES_NOTE = "lookup tables are as of now, not as of the original run"
# Outcomes of an event, as the engine counts them (plus ``unavailable``: no record to judge).
ALERT = "alert"
FILTERED_OUT = "filtered_out"
UNMATCHED = "unmatched"
DEAD_LETTERED = "dead_lettered"
UNAVAILABLE = "unavailable"


class ExplainError(ValueError):
    """The question cannot be asked as put (bad position, unknown pipeline)."""


@dataclass
class JoinStep:
    """One join as re-evaluated: the key looked up and the row found (``None``: no row)."""

    name: str
    table: str
    kind: str
    key: str | None
    matched: bool
    row: dict[str, Any] | None = None


@dataclass
class LedgerEntry:
    """A delivery-ledger row, with how it relates to the event being explained."""

    state: str
    alert_id: str
    event_time: datetime
    channel: str | None
    ts: str | None
    attempts: int
    source: str | None
    owner: str | None  # the run holding / that held the claim: the delivery run's id
    claimed_at: datetime
    delivered_at: datetime | None
    error: str | None
    relation: str = ""  # "this event" | "another event of this alert" ("" without an event)

    @classmethod
    def of(cls, row: LedgerRow, relation: str = "") -> LedgerEntry:
        return cls(
            state=row.state,
            alert_id=row.alert_id,
            event_time=row.event_time,
            channel=row.channel,
            ts=row.ts,
            attempts=row.attempts,
            source=row.source,
            owner=row.owner,
            claimed_at=row.claimed_at,
            delivered_at=row.delivered_at,
            error=row.error,
            relation=relation,
        )


@dataclass
class RunRef:
    """An enrichment run that read the record (from the run index)."""

    run_id: str
    pipeline: str
    range: str
    records: int
    alerts: int


@dataclass
class EventExplanation:
    """What ``pipeline`` makes of the record at ``position``, and what became of its alert."""

    position: str
    pipeline: str
    outcome: str  # alert | filtered_out | unmatched | dead_lettered | unavailable
    reason: str
    stage: str | None = None  # dead letters: parse | filter | validate | join | render
    timestamp: datetime | None = None  # the record's Kafka timestamp
    key: str | None = None
    value: Any = None  # decoded JSON (or text) of the record value
    fields: dict[str, Any] | None = None  # what validate returned
    joins: list[JoinStep] = field(default_factory=list)
    alert_id: str | None = None
    event_time: str | None = None
    channel: str | None = None
    routed_to_fallback: bool = False
    intended_for: dict[str, Any] | None = None
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> rows, offsets
    tables_note: str = TABLES_NOTE
    enrichment_runs: list[RunRef] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    delivery: str = ""  # one line: what the ledger says about this event's alert
    notes: list[str] = field(default_factory=list)  # e.g. rows pruned by retention

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


@dataclass
class AlertExplanation:
    """An alert id: its ledger rows and an explanation of each source event they name."""

    alert_id: str
    ledger: list[LedgerEntry]
    events: list[EventExplanation] = field(default_factory=list)
    # slack-messages positions holding the alert (searched only when the ledger has no row)
    messages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


def parse_position(text: str) -> tuple[str, int, int]:
    """``TOPIC:PARTITION:OFFSET`` -> ``(topic, partition, offset)`` (topic names have no ':')."""
    parts = text.strip().rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise ExplainError(f"expected TOPIC:PARTITION:OFFSET, got {text!r}")
    topic, partition, offset = parts
    try:
        p, o = int(partition), int(offset)
    except ValueError:
        raise ExplainError(f"partition and offset must be integers in {text!r}") from None
    if p < 0 or o < 0:
        raise ExplainError(f"partition and offset must be >= 0 in {text!r}")
    return topic, p, o


# -- plain forms ---------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """Dataclasses, mappings and sequences as JSON-ready values (datetimes as RFC 3339)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def iso(moment: datetime | None) -> str:
    """A moment as RFC 3339 UTC with milliseconds (``-`` for ``None``)."""
    if moment is None:
        return "-"
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def compact(value: Any) -> str:
    """One-line JSON of ``value``."""
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
