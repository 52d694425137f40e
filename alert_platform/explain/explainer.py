"""Explain an alert or a source event: its lineage from Kafka record to Slack message.

``alert-platform explain ALERT_ID`` starts from the delivery ledger (every row of the alert:
state, channel, ts, attempts, the source position, who delivered it); ``explain --event
TOPIC:PARTITION:OFFSET`` starts from a source record. Either way each source record is read
again at its exact position and **re-evaluated** by the engine with its pipeline spec
(:mod:`alert_platform.explain.evaluation`): parse, filter, validate, each join with its key and
the row found (or not), the route, and the engine's verdict: an alert, filtered out (and why),
no row for an inner join (``unmatched``), routed to the fallback channel, or dead-lettered (with
the reason and stage).

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

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from confluent_kafka import Consumer

from alert_platform import topics
from alert_platform.delivery.ledger import DELIVERED, DeliveryLedger, LedgerRow
from alert_platform.explain.evaluation import evaluate
from alert_platform.explain.models import (
    ALERT,
    TABLES_NOTE,
    UNAVAILABLE,
    AlertExplanation,
    EventExplanation,
    ExplainError,
    LedgerEntry,
    RunRef,
    iso,
    parse_position,
)
from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import OffsetError, OffsetRange, probe_watermarks
from alert_platform.kafka.reader import RangeReadError, read_range
from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.registry import PIPELINES, pipelines_for_topic
from alert_platform.pipelines.runner import load_join_tables
from alert_platform.pipelines.spec import PipelineSpec, RenderOptions
from alert_platform.retention import RUN_INDEX, PruneLog, PruneMark
from alert_platform.run_index import RunIndex
from alert_platform.settings import Settings
from alert_platform.tables.topic_loader import LoadedTable
from alert_platform.wire import BadRecord, decode_slack_message, parse_rfc3339_utc

DEFAULT_SCAN_LIMIT = 100_000  # slack-messages records per partition searched for an alert id
_READ_TIMEOUT_S = 15.0
_VALUE_MAX = 4_000  # characters of a non-JSON value kept in an explanation


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
                        found.append((record.position, _message_value(record.value)))
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
            explanation.tables_note = f"{TABLES_NOTE}; loaded {iso(loaded_at)}"
        return evaluate(spec, record, lookups, options, explanation)

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
        cutoff, at = iso(mark.pruned_before), iso(mark.pruned_at)
        times = [_moment(v.get("event_time")) for v in values if isinstance(v, Mapping)]
        older = [t for t in times if t is not None and t < mark.pruned_before]
        if older:
            return [
                f"pruned: the event time {iso(min(older))} of {alert_id} is before {cutoff}; "
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
        cutoff, at = iso(mark.pruned_before), iso(mark.pruned_at)
        return [
            f"pruned: run-index rows recorded before {cutoff} were pruned at {at}, so the "
            "enrichment runs that read this record may no longer be listed"
        ]


# -- delivery --------------------------------------------------------------------------------------


def _relation(row: LedgerRow, position: str, event_time: str | None) -> str:
    if row.source == position:
        return "this event"
    if event_time is not None:
        moment = _moment(event_time)
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
                f"delivered to {entry.channel} (ts {entry.ts}) at {iso(entry.delivered_at)}"
                f" by run {entry.owner or '?'} after {entry.attempts} attempt(s)"
            )
        if entry.state == "failed_permanent":
            return f"failed permanently: {entry.error} (dead-lettered to slack-messages-dlq)"
        return f"being delivered (claimed by run {entry.owner or '?'} at {iso(entry.claimed_at)})"
    delivered = [e for e in others if e.state == DELIVERED]
    if delivered:
        entry = delivered[0]
        return (
            f"alert {alert_id} was delivered for another event (source {entry.source}, event "
            f"time {iso(entry.event_time)}); an event within the de-duplication window of it "
            "is suppressed as a repeat"
        )
    if outcome == ALERT:
        return "no ledger row: not delivered (yet)"
    return "no ledger row for this alert id"


# -- small helpers -------------------------------------------------------------------------------


def _moment(value: Any) -> datetime | None:
    """An RFC 3339 text as an aware UTC datetime (``None``: not one, by the one rule of
    :mod:`alert_platform.wire.timestamps`: an offset is required)."""
    try:
        return parse_rfc3339_utc(value)
    except BadRecord:
        return None


def _message_value(raw: bytes | None) -> dict[str, Any]:
    """A ``slack-messages`` value as a dict (:class:`~alert_platform.wire.SlackMessage`); a
    foreign record that does not fit the contract as far as it is a JSON object, else ``{}``."""
    try:
        value = msgspec.to_builtins(decode_slack_message(raw or b"null"))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        try:
            value = json.loads(raw or b"null")
        except (ValueError, RecursionError):
            value = None
    return value if isinstance(value, dict) else {}


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
