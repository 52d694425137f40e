"""Explain an alert or a source event: its lineage from Kafka record to Slack message.

``alert-platform explain ALERT_ID`` starts from the delivery ledger (every row of the alert:
state, channel, ts, attempts, the source position, who delivered it); ``explain --event
TOPIC:PARTITION:OFFSET`` starts from a source record. Either way each source record is read
again at its exact position and **re-evaluated** by its pipeline spec: parse, filter, validate,
each join with its key and the row found (or not), the route, and the engine's own verdict
(:func:`~alert_platform.pipelines.engine.enrich_batch` on that single record): an alert,
filtered out (and why), no row for an inner join (``unmatched``), routed to the fallback
channel, or dead-lettered (with the reason and stage).

The lookup tables are loaded as of **now** (snapshot caught up to the end of their topics), not
as they were when the record was first processed: a join that misses now may have matched then,
and the other way round. Every explanation says so and shows the table offsets it used.

The enrichment runs that read the record come from the run index
(:meth:`~alert_platform.run_index.RunIndex.runs_for_offset`; live runs only: backfills are not
indexed), the delivering run from the ledger row's ``owner`` (the Dagster run id of the delivery
run). Rows pruned by retention (:mod:`alert_platform.retention`) are noted: an alert without a
ledger row, or a record no indexed run read, is told what was pruned up to when (``notes``).
Nothing here imports Dagster.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer

from alert_platform import topics
from alert_platform.delivery.ledger import DELIVERED, DeliveryLedger, LedgerRow
from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import OffsetError, OffsetRange, probe_watermarks
from alert_platform.kafka.reader import RangeReadError, read_range
from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.engine import enrich_batch
from alert_platform.pipelines.registry import PIPELINES, pipelines_for_topic
from alert_platform.pipelines.runner import load_join_tables
from alert_platform.pipelines.spec import Context, PipelineSpec, RenderOptions
from alert_platform.retention import RUN_INDEX, PruneLog, PruneMark
from alert_platform.run_index import RunIndex
from alert_platform.settings import Settings
from alert_platform.tables.topic_loader import LoadedTable

TABLES_NOTE = "lookup tables are as of now, not as of the original run"
# Outcomes of an event, as the engine counts them (plus ``unavailable``: no record to judge).
ALERT = "alert"
FILTERED_OUT = "filtered_out"
UNMATCHED = "unmatched"
DEAD_LETTERED = "dead_lettered"
UNAVAILABLE = "unavailable"

DEFAULT_SCAN_LIMIT = 100_000  # slack-messages records per partition searched for an alert id
_READ_TIMEOUT_S = 15.0
_VALUE_MAX = 4_000  # characters of a non-JSON value kept in an explanation


class ExplainError(ValueError):
    """The question cannot be asked as put (bad position, unknown pipeline)."""


# -- results -----------------------------------------------------------------------------------


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
        return _plain(self)


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
        return _plain(self)


# -- positions ---------------------------------------------------------------------------------


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


# -- the explainer -----------------------------------------------------------------------------


class Explainer:
    """Answers explain questions against one deployment; holds a consumer, the ledger, the run
    index and the lookup tables (loaded once per pipeline, on first need). Use as a context
    manager, or call :meth:`close`."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: DeliveryLedger | None = None,
        index: RunIndex | None = None,
    ) -> None:
        self.settings = settings
        self._own_ledger = ledger is None
        self._own_index = index is None
        self.ledger = ledger or DeliveryLedger(
            settings.effective_ledger_url, lease=timedelta(seconds=settings.delivery_lease_s)
        )
        self.index = index or RunIndex(settings.effective_ledger_url)
        self.prunes = PruneLog(self.ledger.url)
        self._consumer: Consumer | None = None
        self._tables: dict[str, dict[str, LoadedTable]] = {}
        self._tables_loaded_at: dict[str, datetime] = {}

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._own_ledger:
            self.ledger.close()
        if self._own_index:
            self.index.close()
        self.prunes.close()

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = make_consumer(self.settings)
        return self._consumer

    # -- questions ---------------------------------------------------------------------------

    def explain_alert(
        self, alert_id: str, *, scan_limit: int = DEFAULT_SCAN_LIMIT
    ) -> AlertExplanation:
        """The alert's ledger rows and, for each source event they name, its explanation.

        Without a ledger row the alert was never delivered (nor is it being delivered): then
        the last ``scan_limit`` records of each ``slack-messages`` partition are searched for
        it, to find whether it was produced at all and from which source event.
        """
        rows = self.ledger.lookup(alert_id)
        result = AlertExplanation(alert_id, [LedgerEntry.of(row) for row in rows])
        sources = list(dict.fromkeys(row.source for row in rows if row.source))
        pipelines: dict[str, str] = {}
        if not rows:
            pruned = self.prune_mark(self.ledger.table.fullname) is not None
            result.notes.append(
                "no delivery-ledger row: the alert was never posted, nor is a run posting it"
                + (" (unless its row was pruned by retention: see below)" if pruned else "")
            )
            found = self.find_messages(alert_id, scan_limit)
            result.messages = [position for position, _value in found]
            if found:
                result.notes.append(
                    f"produced to {topics.SLACK_MESSAGES} at {', '.join(result.messages)} "
                    "but not delivered (yet): the delivery sensor has not handed it to a run, "
                    "or its delivery run failed before claiming it"
                )
            else:
                result.notes.append(
                    f"not found in the last {scan_limit} records of each {topics.SLACK_MESSAGES}"
                    " partition either: check the alert id, or explain the source event with"
                    " --event"
                )
            for _position, value in found:
                source = value.get("source") or {}
                if {"topic", "partition", "offset"} <= set(source):
                    ref = f"{source['topic']}:{source['partition']}:{source['offset']}"
                    sources.append(ref)
                    if isinstance(value.get("pipeline"), str):
                        pipelines[ref] = value["pipeline"]
            sources = list(dict.fromkeys(sources))
            result.notes.extend(self._ledger_pruned(alert_id, [value for _p, value in found]))
        for source in sources:
            try:
                topic, partition, offset = parse_position(source)
            except ExplainError:
                result.notes.append(f"ledger source {source!r} is not a topic:partition:offset")
                continue
            result.events.extend(
                self.explain_event(topic, partition, offset, pipeline=pipelines.get(source))
            )
        return result

    def explain_event(
        self, topic: str, partition: int, offset: int, *, pipeline: str | None = None
    ) -> list[EventExplanation]:
        """What each pipeline reading ``topic`` (or only ``pipeline``) makes of the record."""
        if pipeline is not None:
            if pipeline not in PIPELINES:
                raise ExplainError(f"unknown pipeline {pipeline!r}; known: {sorted(PIPELINES)}")
            specs = [PIPELINES[pipeline]]
        else:
            specs = pipelines_for_topic(topic)
        if not specs:
            known = sorted({spec.source_topic for spec in PIPELINES.values()})
            raise ExplainError(f"no pipeline reads topic {topic!r}; source topics: {known}")
        position = f"{topic}:{partition}:{offset}"
        record, problem = self.read_record(topic, partition, offset)
        explanations = []
        for spec in specs:
            if record is None:
                explanation = EventExplanation(position, spec.name, UNAVAILABLE, problem)
            else:
                explanation = self._evaluate(spec, record)
            explanation.enrichment_runs = [
                RunRef(r.run_id, r.pipeline, str(r.range), r.records, r.alerts)
                for r in self.index.runs_for_offset(topic, partition, offset)
                if r.pipeline == spec.name
            ]
            if not explanation.enrichment_runs:
                explanation.notes.extend(self._index_pruned(explanation.timestamp))
            self._attach_delivery(explanation)
            explanations.append(explanation)
        return explanations

    # -- reading -----------------------------------------------------------------------------

    def read_record(
        self, topic: str, partition: int, offset: int
    ) -> tuple[SourceRecord | None, str]:
        """The record at the position, or ``None`` and why it cannot be read."""
        try:
            bounds = probe_watermarks(self.consumer, topic, timeout=_READ_TIMEOUT_S)
        except OffsetError as exc:
            return None, str(exc)
        if partition not in bounds:
            return None, f"{topic} has no partition {partition} (partitions: {sorted(bounds)})"
        low, end = bounds[partition]
        if offset >= end:
            return None, f"offset {offset} is past the end of {topic}[{partition}] (end {end})"
        if offset < low:
            return None, (
                f"offset {offset} of {topic}[{partition}] was deleted by retention "
                f"(first offset still stored: {low})"
            )
        try:
            for batch in read_range(
                self.consumer, OffsetRange(topic, partition, offset, offset + 1), 1, _READ_TIMEOUT_S
            ):
                for record in batch:
                    if record.offset == offset:
                        return record, ""
        except RangeReadError as exc:
            return None, str(exc)
        return None, f"no record at {topic}:{partition}:{offset} (compacted away, or a marker)"

    def find_messages(self, alert_id: str, scan_limit: int) -> list[tuple[str, dict[str, Any]]]:
        """``(position, decoded value)`` of ``slack-messages`` records keyed ``alert_id``, among
        the last ``scan_limit`` records of each partition."""
        key = alert_id.encode()
        try:
            bounds = probe_watermarks(self.consumer, topics.SLACK_MESSAGES, timeout=_READ_TIMEOUT_S)
        except OffsetError:
            return []
        found = []
        for partition, (low, end) in sorted(bounds.items()):
            start = max(low, end - scan_limit)
            if start >= end:
                continue
            rng = OffsetRange(topics.SLACK_MESSAGES, partition, start, end)
            for batch in read_range(self.consumer, rng, timeout_s=_READ_TIMEOUT_S):
                for record in batch:
                    if record.key == key:
                        try:
                            value = json.loads(record.value or b"null")
                        except ValueError:
                            value = None
                        found.append((record.position, value if isinstance(value, dict) else {}))
        return found

    def tables_for(self, spec: PipelineSpec) -> dict[str, LoadedTable]:
        """The spec's join tables as of now (loaded once per explainer)."""
        if spec.name not in self._tables:
            self._tables[spec.name] = load_join_tables(self.settings, spec, self.consumer)
            self._tables_loaded_at[spec.name] = datetime.now(UTC)
        return self._tables[spec.name]

    # -- evaluation --------------------------------------------------------------------------

    def _evaluate(self, spec: PipelineSpec, record: SourceRecord) -> EventExplanation:
        loaded = self.tables_for(spec)
        lookups = {name: table.table for name, table in loaded.items()}
        options = RenderOptions.from_settings(self.settings)
        explanation = EventExplanation(
            record.position,
            spec.name,
            UNAVAILABLE,
            "",
            timestamp=datetime.fromtimestamp(record.timestamp_ms / 1000, UTC),
            key=_text(record.key),
            value=_decode_value(record.value),
            tables={
                name: {"rows": len(table.table), "offsets": dict(table.offsets)}
                for name, table in loaded.items()
            },
        )
        loaded_at = self._tables_loaded_at.get(spec.name)
        if loaded_at is not None:
            explanation.tables_note = f"{TABLES_NOTE}; loaded {_iso(loaded_at)}"
        # The engine's verdict on this one record is authoritative ...
        verdict = enrich_batch(spec, [record], lookups, options)
        # ... the step-by-step trace adds the detail (join keys, rows, why filtered).
        trace = _trace(spec, record, lookups, options)
        explanation.fields = trace.fields
        explanation.joins = trace.joins
        explanation.alert_id = trace.alert_id
        explanation.event_time = trace.event_time
        if verdict.alerts:
            alert = verdict.alerts[0]
            explanation.outcome = ALERT
            explanation.alert_id = alert.alert_id
            explanation.event_time = alert.event_time
            explanation.channel = alert.channel_id
            value = json.loads(alert.value)
            intended = value.get("intended_for")
            if intended is not None:
                explanation.routed_to_fallback = True
                explanation.intended_for = intended
                missed = [j for j in trace.joins if not j.matched]
                why = "; ".join(_miss_text(j) for j in missed) or "the route gave no channel"
                explanation.reason = (
                    f"alert routed to the fallback channel {alert.channel_id} ({why}); "
                    f"meant for {_compact(intended)}"
                )
            else:
                explanation.reason = f"alert to {alert.channel_id}"
        elif verdict.dead_letters:
            dead = verdict.dead_letters[0]
            explanation.outcome = DEAD_LETTERED
            explanation.stage = dead.stage
            explanation.reason = f"dead-lettered to {topics.ALERTS_DLQ} at stage {dead.stage}: "
            explanation.reason += dead.reason
        elif verdict.counts.filtered_out:
            explanation.outcome = FILTERED_OUT
            explanation.reason = "filtered out: " + filter_reason(spec, record, trace.event)
        elif verdict.counts.unmatched:
            explanation.outcome = UNMATCHED
            missed = next((j for j in trace.joins if not j.matched and j.kind == "inner"), None)
            explanation.reason = "no alert: " + (
                _miss_text(missed) if missed else "an inner join found no row"
            )
        else:  # pragma: no cover - every record ends in exactly one bucket
            explanation.reason = f"no verdict from the engine: {verdict.counts.as_dict()}"
        return explanation

    def _attach_delivery(self, explanation: EventExplanation) -> None:
        alert_id = explanation.alert_id
        if not alert_id:
            return
        rows = self.ledger.lookup(alert_id)
        entries = [
            LedgerEntry.of(row, _relation(row, explanation.position, explanation.event_time))
            for row in rows
        ]
        explanation.ledger = entries
        explanation.delivery = delivery_summary(alert_id, entries, explanation.outcome)
        if not any(entry.relation == "this event" for entry in entries):
            values = [{"event_time": explanation.event_time}] if explanation.event_time else []
            explanation.notes.extend(self._ledger_pruned(alert_id, values))

    # -- retention -------------------------------------------------------------------------

    def prune_mark(self, name: str) -> PruneMark | None:
        """The last prune of table ``name`` (the ledger's, or ``processed_ranges``)."""
        try:
            return self.prunes.last(name)
        except Exception:  # an explanation stands without it
            return None

    def _ledger_pruned(self, alert_id: str, values: list[dict[str, Any]]) -> list[str]:
        """Notes on ledger retention for an alert (event) that has no ledger row."""
        mark = self.prune_mark(self.ledger.table.fullname)
        if mark is None:
            return []
        cutoff, at = _iso(mark.pruned_before), _iso(mark.pruned_at)
        times = [_moment(v.get("event_time")) for v in values if isinstance(v, Mapping)]
        older = [t for t in times if t is not None and t < mark.pruned_before]
        if older:
            return [
                f"pruned: the event time {_iso(min(older))} of {alert_id} is before {cutoff}; "
                f"ledger rows with event times before {cutoff} were pruned at {at}, so a row "
                "it had (delivered or not) is gone"
            ]
        return [
            f"ledger rows with event times before {cutoff} were pruned at {at} (retention): "
            "if this alert's event is older, its row may have been pruned"
        ]

    def _index_pruned(self, timestamp: datetime | None) -> list[str]:
        """Notes on run-index retention for a record no recorded run read."""
        mark = self.prune_mark(RUN_INDEX)
        if mark is None or (timestamp is not None and timestamp >= mark.pruned_before):
            return []
        cutoff, at = _iso(mark.pruned_before), _iso(mark.pruned_at)
        return [
            f"pruned: run-index rows recorded before {cutoff} were pruned at {at}, so the "
            "enrichment runs that read this record may no longer be listed"
        ]


# -- tracing one record through a spec -----------------------------------------------------------


@dataclass
class _Trace:
    event: Any = None
    fields: dict[str, Any] | None = None
    joins: list[JoinStep] = field(default_factory=list)
    alert_id: str | None = None
    event_time: str | None = None


def _trace(
    spec: PipelineSpec, record: SourceRecord, lookups: Mapping[str, Any], options: RenderOptions
) -> _Trace:
    """The spec's stages on one record, keeping what each produced; stops at the first stage
    that ends the record's journey (the verdict says which and why)."""
    trace = _Trace()
    try:
        trace.event = spec.parse(record)
        if not spec.keep(trace.event):
            return trace
        fields = spec.validate(record, trace.event)
    except Exception:  # BadRecord or worse: the verdict reports it
        return trace
    trace.fields = dict(fields)
    try:
        trace.alert_id = spec.alert_id_of(fields)
        event_time = fields.get(spec.event_time_field)
        trace.event_time = event_time if isinstance(event_time, str) else None
    except Exception:
        pass
    context = Context(record, fields)
    for join in spec.joins:
        try:
            key = join.key(context)
            row = None if key is None else lookups[join.table].get(key)
        except Exception:
            break
        trace.joins.append(
            JoinStep(join.as_, join.table, join.kind, key, row is not None, _row(row))
        )
        if row is None and join.kind == "inner":
            break
        context.rows[join.as_] = row
    return trace


def _miss_text(step: JoinStep) -> str:
    if step.key is None:
        return f"join {step.name!r} ({step.kind}) has no key to look up in {step.table}"
    return f"no {step.table} row for key {step.key!r} (join {step.name!r}, {step.kind})"


# -- why the filter dropped an event -------------------------------------------------------------


def _connector_failure_filter(record: SourceRecord, event: Any) -> str:
    document, labels = event if isinstance(event, tuple) and len(event) == 2 else ({}, {})
    if not document:  # parse's shortcut: the text cannot spell 'Provisioning'; look closer
        labels = _connector_labels(record.value)
        if labels is None:
            return "the event has no data.labels and never mentions 'Provisioning'"
    if "connector_old_status" not in labels:
        return "labels.connector_old_status is missing; only 'Provisioning' failures alert"
    return (
        f"labels.connector_old_status is {labels['connector_old_status']!r}, "
        "not 'Provisioning' (only connectors that failed while provisioning alert)"
    )


def _connector_labels(value: bytes | None) -> dict[str, Any] | None:
    try:
        data = json.loads(value or b"null").get("data")
        if isinstance(data, str):
            data = json.loads(data)
        labels = data.get("labels")
    except (ValueError, AttributeError):
        return None
    return labels if isinstance(labels, dict) else None


def _onboarding_filter(record: SourceRecord, event: Any) -> str:
    kind = event.get("type") if isinstance(event, Mapping) else None
    return f"type is {kind!r}, not 'onboarding.started'"


# Pipeline name -> why its ``keep`` rejected a parsed event, given the record and what ``parse``
# returned (for explanations only). Pipelines without an entry are explained by their ``keep``
# docstring.
FILTER_REASONS: dict[str, Callable[[SourceRecord, Any], str]] = {
    "connector_failure": _connector_failure_filter,
    "onboarding": _onboarding_filter,
}


def filter_reason(spec: PipelineSpec, record: SourceRecord, event: Any) -> str:
    """Why ``spec``'s filter dropped ``event``, as precisely as the pipeline can say."""
    explain = FILTER_REASONS.get(spec.name)
    if explain is not None:
        try:
            return explain(record, event)
        except Exception:
            pass
    doc = (spec.keep.__doc__ or "").strip().splitlines()
    return f"the {spec.name} filter rejected the event" + (f" ({doc[0]})" if doc else "")


# -- delivery --------------------------------------------------------------------------------------


def _relation(row: LedgerRow, position: str, event_time: str | None) -> str:
    if row.source == position:
        return "this event"
    if event_time is not None:
        try:
            moment = datetime.fromisoformat(event_time.replace("Z", "+00:00"))
        except ValueError:
            moment = None
        if moment is not None and moment == row.event_time:
            return "this event"
    return "another event of this alert"


def delivery_summary(alert_id: str, entries: list[LedgerEntry], outcome: str) -> str:
    """One line on what the ledger says about the alert of the event explained."""
    mine = [e for e in entries if e.relation == "this event"]
    others = [e for e in entries if e.relation != "this event"]
    if mine:
        entry = mine[0]
        if entry.state == DELIVERED:
            return (
                f"delivered to {entry.channel} (ts {entry.ts}) at {_iso(entry.delivered_at)}"
                f" by run {entry.owner or '?'} after {entry.attempts} attempt(s)"
            )
        if entry.state == "failed_permanent":
            return f"failed permanently: {entry.error} (dead-lettered to slack-messages-dlq)"
        return f"being delivered (claimed by run {entry.owner or '?'} at {_iso(entry.claimed_at)})"
    delivered = [e for e in others if e.state == DELIVERED]
    if delivered:
        entry = delivered[0]
        return (
            f"alert {alert_id} was delivered for another event (source {entry.source}, event "
            f"time {_iso(entry.event_time)}); an event within the de-duplication window of it "
            "is suppressed as a repeat"
        )
    if outcome == ALERT:
        return "no ledger row: not delivered (yet)"
    return "no ledger row for this alert id"


# -- output --------------------------------------------------------------------------------------


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
        yield f"      event time {_iso(entry.event_time)}  source {entry.source or '-'}"
        yield (
            f"      claimed {_iso(entry.claimed_at)}  delivered {_iso(entry.delivered_at)}"
            f"  by run {entry.owner or '-'}"
        )
        if entry.error:
            yield f"      error: {entry.error}"


def _event_lines(event: EventExplanation, *, with_ledger: bool) -> Iterator[str]:
    yield f"Source event {event.position} (pipeline {event.pipeline})"
    if event.timestamp is not None:
        yield f"  timestamp {_iso(event.timestamp)}  key {event.key!r}"
    if event.value is not None:
        yield f"  value {_clip(_compact(event.value), 600)}"
    yield f"  outcome: {event.outcome.upper()}: {event.reason}"
    if event.alert_id:
        yield f"  alert id {event.alert_id}  event time {event.event_time or '-'}"
    if event.outcome != UNAVAILABLE and (event.joins or event.tables):
        yield f"  joins ({event.tables_note}):"
        for step in event.joins:
            found = f"found {_clip(_compact(step.row), 300)}" if step.matched else "NO ROW"
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


# -- small helpers -------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _iso(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _moment(value: Any) -> datetime | None:
    """An RFC 3339 text as an aware datetime (``None``: not one)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "replace")


def _decode_value(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace")
        return text if len(text) <= _VALUE_MAX else text[:_VALUE_MAX] + "..."


def _row(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if row is None else dict(row)


def _compact(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
