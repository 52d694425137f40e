"""The batch engine: run one :class:`PipelineSpec` over a batch of source records.

Pure and Kafka-free: records in, encoded alerts and dead letters out. Nothing here knows what
a pipeline is about; see :mod:`alert_platform.pipelines.spec` for the stages.

Every record ends in exactly one bucket, so
``read == filtered_out + unmatched + dead_lettered + alerts``; ``routed_to_fallback`` counts
the alerts (a subset) that went to the fallback channel.

A record that breaks a spec function with an unexpected exception is dead-lettered too
(reason ``"unexpected <Type>: <message>"``, stage of the failing step), so one odd record can
never wedge a partition; the batch always completes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from alert_platform.delivery.messages import ALERT_ID_MAX
from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.spec import (
    BadRecord,
    Context,
    Lookup,
    PipelineSpec,
    RenderOptions,
    compile_template,
    format_rfc3339,
)

STAGE_PARSE = "parse"
STAGE_FILTER = "filter"
STAGE_VALIDATE = "validate"
STAGE_JOIN = "join"
STAGE_RENDER = "render"


class Alert(NamedTuple):
    """One rendered alert, ready to produce to ``slack-messages``."""

    alert_id: str
    key: bytes  # alert id, UTF-8
    value: bytes  # orjson-encoded message (see docs/architecture.md "Wire formats")
    source: SourceRecord
    channel_id: str
    event_time: str


class DeadLetter(NamedTuple):
    """A source record the pipeline could not process, with why and where."""

    record: SourceRecord
    reason: str
    stage: str
    pipeline: str


class DeadLetterMessage(NamedTuple):
    """A dead letter as produced to ``alerts-dlq``: the original key and value bytes."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class BatchCounts:
    read: int = 0
    filtered_out: int = 0
    unmatched: int = 0
    routed_to_fallback: int = 0
    dead_lettered: int = 0
    alerts: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __add__(self, other: BatchCounts) -> BatchCounts:
        return BatchCounts(**{k: v + getattr(other, k) for k, v in asdict(self).items()})


@dataclass
class BatchResult:
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: BatchCounts = field(default_factory=BatchCounts)


def _getter(lookup: Lookup) -> Callable[[str], Mapping[str, Any] | None]:
    """``lookup.get``, or the plain function a lookup offers for hot loops (``getter()``,
    e.g. :meth:`~alert_platform.tables.lookup.LookupTable.getter`)."""
    getter = getattr(lookup, "getter", None)
    return getter() if callable(getter) else lookup.get


def _unexpected(exc: Exception) -> str:
    return f"unexpected {type(exc).__name__}: {exc}"


def enrich_batch(
    spec: PipelineSpec,
    records: Sequence[SourceRecord],
    tables: Mapping[str, Lookup],
    options: RenderOptions | None = None,
    *,
    now: datetime | None = None,
) -> BatchResult:
    """Filter, join and render ``records`` with ``spec``; never raises for a bad record.

    ``tables`` maps each join's table name to its lookup (a missing table raises ``KeyError``;
    a bad render option raises from ``spec.make_renderer``: configuration errors fail the batch,
    bad records never do). ``now`` stamps ``created_at`` (one value per batch; default: now).
    Dead-letter stages: ``parse``, ``filter``, ``validate``, ``join``, ``render``.
    """
    options = options or RenderOptions()
    missing = [join.table for join in spec.joins if join.table not in tables]
    if missing:
        raise KeyError(f"pipeline {spec.name!r} needs lookup tables {missing}")
    created_at = format_rfc3339(now or datetime.now(UTC))

    name = spec.name
    parse, keep, validate = spec.parse, spec.keep, spec.validate
    render = spec.make_renderer(options)
    alert_id_of = compile_template(spec.alert_id)
    event_time_field = spec.event_time_field
    joins = tuple(
        (join.key, _getter(tables[join.table]), join.kind == "inner", join.as_)
        for join in spec.joins
    )
    route_channel = spec.route.channel
    intended = tuple(spec.route.intended_for.items())
    fallback_channel = options.fallback_channel
    dumps = orjson.dumps
    new_alert = tuple.__new__  # Alert(...) without the NamedTuple's Python-level __new__

    alerts: list[Alert] = []
    dead: list[DeadLetter] = []
    add_alert, add_dead = alerts.append, dead.append
    filtered = unmatched = fallback = 0

    for record in records:
        try:
            event = parse(record)
        except BadRecord as exc:
            add_dead(DeadLetter(record, exc.reason, STAGE_PARSE, name))
            continue
        except Exception as exc:
            add_dead(DeadLetter(record, _unexpected(exc), STAGE_PARSE, name))
            continue
        try:
            kept = keep(event)
        except Exception as exc:
            add_dead(DeadLetter(record, _unexpected(exc), STAGE_FILTER, name))
            continue
        if not kept:
            filtered += 1
            continue

        try:
            context = Context(record, validate(record, event))
        except BadRecord as exc:
            add_dead(DeadLetter(record, exc.reason, STAGE_VALIDATE, name))
            continue
        except Exception as exc:
            add_dead(DeadLetter(record, _unexpected(exc), STAGE_VALIDATE, name))
            continue

        try:
            rows = context.rows
            matched = True
            for key_of, get, inner, as_ in joins:
                key = key_of(context)
                row = None if key is None else get(key)
                if row is None and inner:
                    matched = False
                    break
                rows[as_] = row
        except Exception as exc:
            add_dead(DeadLetter(record, _unexpected(exc), STAGE_JOIN, name))
            continue
        if not matched:
            unmatched += 1
            continue

        try:
            fields = context.fields
            channel = route_channel(context)
            if not channel:
                context.intended_for = {k: of(context) for k, of in intended}
                channel = fallback_channel
            context.channel_id = channel
            alert_id = alert_id_of(fields)
            if len(alert_id) > ALERT_ID_MAX:  # the ledger could not claim it: never deliverable
                raise BadRecord(
                    f"alert id is {len(alert_id)} characters long, more than the delivery "
                    f"ledger's {ALERT_ID_MAX}"
                )
            event_time = fields[event_time_field]
            text, blocks = render(context)
            topic, partition, offset, timestamp_ms = record[:4]
            value: dict[str, Any] = {
                "alert_id": alert_id,
                "pipeline": name,
                "channel_id": channel,
                "text": text,
                "blocks": blocks,
                "source": {
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "timestamp": timestamp_ms,
                },
                "created_at": created_at,
                "event_time": event_time,
            }
            if context.intended_for is not None:
                value["intended_for"] = context.intended_for
            encoded = dumps(value)
            key = alert_id.encode()
        except BadRecord as exc:
            add_dead(DeadLetter(record, exc.reason, STAGE_RENDER, name))
            continue
        except Exception as exc:
            add_dead(DeadLetter(record, _unexpected(exc), STAGE_RENDER, name))
            continue
        if context.intended_for is not None:
            fallback += 1
        add_alert(new_alert(Alert, (alert_id, key, encoded, record, channel, event_time)))

    counts = BatchCounts(
        read=len(records),
        filtered_out=filtered,
        unmatched=unmatched,
        routed_to_fallback=fallback,
        dead_lettered=len(dead),
        alerts=len(alerts),
    )
    return BatchResult(alerts, dead, counts)


def encode_dead_letter(dead_letter: DeadLetter) -> DeadLetterMessage:
    """The ``alerts-dlq`` message: original key and value bytes, the why and where as headers."""
    record = dead_letter.record
    headers = [
        ("error", dead_letter.reason.encode("utf-8", "replace")),
        ("error_stage", dead_letter.stage.encode()),
        ("pipeline", dead_letter.pipeline.encode()),
        ("source_topic", record.topic.encode()),
        ("source_partition", str(record.partition).encode()),
        ("source_offset", str(record.offset).encode()),
        ("source_timestamp", str(record.timestamp_ms).encode()),
    ]
    return DeadLetterMessage(record.key, record.value, headers)
