"""Text and JSON forms of explanations, for the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from alert_platform.explain.models import (
    UNAVAILABLE,
    AlertExplanation,
    EventExplanation,
    LedgerEntry,
    compact,
    iso,
)


def to_json(result: AlertExplanation | list[EventExplanation]) -> str:
    """Machine-readable form of an explanation (datetimes as RFC 3339)."""
    if isinstance(result, list):
        payload: Any = {"events": [event.to_dict() for event in result]}
    else:
        payload = result.to_dict()
    return json.dumps(payload, indent=2, default=str, ensure_ascii=False)


def render_alert(result: AlertExplanation) -> str:
    """Human-readable explanation of an alert id."""
    lines = [f"Alert {result.alert_id}", ""]
    lines.append(f"Delivery ledger: {len(result.ledger)} row(s)")
    lines.extend(_ledger_lines(result.ledger))
    for note in result.notes:
        lines.append(f"  note: {note}")
    for event in result.events:
        lines.append("")
        lines.extend(_event_lines(event, with_ledger=False))
    return "\n".join(lines)


def render_events(events: list[EventExplanation]) -> str:
    """Human-readable explanation of a source event (one block per pipeline)."""
    blocks = ["\n".join(_event_lines(event, with_ledger=True)) for event in events]
    return "\n\n".join(blocks)


def _ledger_lines(entries: list[LedgerEntry]) -> Iterator[str]:
    for entry in entries:
        relation = f"  [{entry.relation}]" if entry.relation else ""
        yield f"  - {entry.state}{relation}"
        yield (
            f"      channel {entry.channel or '-'}  ts {entry.ts or '-'}  attempts {entry.attempts}"
        )
        yield f"      event time {iso(entry.event_time)}  source {entry.source or '-'}"
        yield (
            f"      claimed {iso(entry.claimed_at)}  delivered {iso(entry.delivered_at)}"
            f"  by run {entry.owner or '-'}"
        )
        if entry.error:
            yield f"      error: {entry.error}"


def _event_lines(event: EventExplanation, *, with_ledger: bool) -> Iterator[str]:
    yield f"Source event {event.position} (pipeline {event.pipeline})"
    if event.timestamp is not None:
        yield f"  timestamp {iso(event.timestamp)}  key {event.key!r}"
    if event.value is not None:
        yield f"  value {_clip(compact(event.value), 600)}"
    yield f"  outcome: {event.outcome.upper()}: {event.reason}"
    if event.alert_id:
        yield f"  alert id {event.alert_id}  event time {event.event_time or '-'}"
    if event.outcome != UNAVAILABLE and (event.joins or event.tables):
        yield f"  joins ({event.tables_note}):"
        for step in event.joins:
            found = f"found {_clip(compact(step.row), 300)}" if step.matched else "NO ROW"
            yield f"    {step.name} ({step.kind}) {step.table}[{step.key!r}] -> {found}"
        for name, table in event.tables.items():
            yield f"    table {name}: {table['rows']} rows at offsets {table['offsets']}"
    if event.enrichment_runs:
        yield "  enrichment runs that read it (run index):"
        for run in event.enrichment_runs:
            yield (
                f"    run {run.run_id}  range {run.range}  {run.records} record(s),"
                f" {run.alerts} alert(s)"
            )
    elif event.outcome != UNAVAILABLE:
        yield "  enrichment runs: none recorded (no live run read it; backfills are not indexed)"
    for note in event.notes:
        yield f"  note: {note}"
    if event.alert_id:
        yield f"  delivery: {event.delivery}"
        if with_ledger and event.ledger:
            yield f"  ledger rows of {event.alert_id}:"
            yield from ("  " + line for line in _ledger_lines(event.ledger))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
