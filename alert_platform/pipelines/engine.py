"""The batch engine: run one :class:`PipelineSpec` over a batch of source records.

Pure and Kafka-free: records in, encoded alerts and dead letters out. Nothing here knows what
a pipeline is about; see :mod:`alert_platform.pipelines.spec` for the stages.

Every record ends in exactly one bucket, so
``read == filtered_out + unmatched + dead_lettered + alerts``; ``routed_to_fallback`` counts
the alerts (a subset) that went to the fallback channel.

A record that breaks a spec function with an unexpected exception of any kind (an
``Exception``: ``RecursionError``, ``MemoryError``, ``OverflowError``, ``UnicodeError``, an
exception whose message itself cannot be built, ...) is dead-lettered too (reason
``"unexpected <Type>: <message>"``, at most :data:`REASON_MAX` characters, stage of the failing
step), so one odd record can never wedge a partition; the batch always completes, and
:func:`encode_dead_letter` never raises.

Event-time sanity: with bounds in :class:`~alert_platform.pipelines.spec.RenderOptions`
(``from_settings`` sets them), an event time before ``now - event_time_max_past`` or after
``now + event_time_max_future`` is dead-lettered at stage ``validate`` with a reason naming the
bound and its variable. Bounds are compared at second precision (an event up to one second
past a bound still passes) and are relative to ``now``, also for backfills: a backfill reaches
back ``ALERT_EVENT_TIME_MAX_PAST_HOURS`` (default 720 h, 30 days), no further.

Each alert's value carries ``dedup_key`` (shared contract 1,
:func:`~alert_platform.pipelines.spec.compile_dedup_key`) beside the readable ``alert_id``.
A destination the route's ``check`` refuses, one that is not a string or is longer than
:data:`DESTINATION_MAX`, sends the alert to the fallback channel with
``intended_for["reason"]``; ``intended_for`` values are cut to
:data:`~alert_platform.slack.blocks.VALUE_MAX` characters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.spec import (
    BadRecord,
    Context,
    Lookup,
    PipelineSpec,
    RenderOptions,
    compile_dedup_key,
    compile_template,
)
from alert_platform.slack.blocks import VALUE_MAX
from alert_platform.wire import (
    ALERT_ID_MAX,
    REASON_MAX,
    AlertDeadLetterHeaders,
    alerts_dlq_headers,
    encode_slack_message_at,
    format_rfc3339,
    kind_of,
    parse_rfc3339,
)

STAGE_PARSE = "parse"
STAGE_FILTER = "filter"
STAGE_VALIDATE = "validate"
STAGE_JOIN = "join"
STAGE_RENDER = "render"

# Longest dead-letter reason (and header text) we write: wire.REASON_MAX (imported above).
# Longest destination (channel name or id, user id) accepted from a route.
DESTINATION_MAX = 255
PAST_VARIABLE = "ALERT_EVENT_TIME_MAX_PAST_HOURS"
FUTURE_VARIABLE = "ALERT_EVENT_TIME_MAX_FUTURE_MINUTES"


class Alert(NamedTuple):
    """One rendered alert, ready to produce to ``slack-messages``."""

    alert_id: str
    key: bytes  # alert id, UTF-8
    value: bytes  # the slack-messages value (alert_platform.wire.SlackMessage)
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


def _unexpected(exc: BaseException) -> str:
    """``"unexpected <Type>: <message>"``, bounded; never raises (even when ``str(exc)`` does)."""
    try:
        message = str(exc)
    except Exception:
        message = "(the message cannot be shown)"
    reason = f"unexpected {type(exc).__name__}: {message}"
    return reason if len(reason) <= REASON_MAX else reason[: REASON_MAX - 1] + "…"


def _reason(exc: BadRecord) -> str:
    reason = getattr(exc, "reason", None)
    if type(reason) is not str:
        return _unexpected(exc)
    return reason if len(reason) <= REASON_MAX else reason[: REASON_MAX - 1] + "…"


class _TimeBounds:
    """The batch's event-time window: string bounds for canonical ``...Z`` times (compared as
    text, at second precision) and a precise check for anything else."""

    def __init__(self, now: datetime, past: timedelta | None, future: timedelta | None) -> None:
        self.past, self.future = past, future
        self.earliest = now - past if past is not None else datetime.min.replace(tzinfo=UTC)
        self.latest = now + future if future is not None else datetime.max.replace(tzinfo=UTC)
        # "YYYY-MM-DDTHH:MM:SS": any canonical time of that second or later compares >= low;
        # "~" sorts after "Z" and ".": any time of the latest second compares <= high
        self.low = format_rfc3339(self.earliest)[:19]
        self.high = format_rfc3339(self.latest)[:19] + "~"

    def check(self, stamp: Any) -> None:
        """Raise a :class:`BadRecord` naming the bound ``stamp`` lies beyond (slow path)."""
        if type(stamp) is not str:
            raise BadRecord(f"event time is {kind_of(stamp)}, expected an RFC 3339 string")
        moment = parse_rfc3339(stamp, "event time")
        shown = stamp[:64]
        if self.past is not None and moment < self.earliest:
            hours = self.past.total_seconds() / 3600
            raise BadRecord(
                f"event time {shown} is more than {hours:g} h in the past ({PAST_VARIABLE})"
            )
        if self.future is not None and moment > self.latest:
            minutes = self.future.total_seconds() / 60
            raise BadRecord(
                f"event time {shown} is more than {minutes:g} min in the future ({FUTURE_VARIABLE})"
            )


def _bounded(value: Any) -> Any:
    """An ``intended_for`` value cut to :data:`VALUE_MAX` characters (JSON scalars kept)."""
    if type(value) is str:
        return value if len(value) <= VALUE_MAX else value[: VALUE_MAX - 1] + "…"
    if (
        value is None
        or type(value) in (bool, float)
        or (type(value) is int and -(2**63) <= value < 2**64)
    ):
        return value
    try:
        text = str(value)
    except Exception:
        text = f"({type(value).__name__})"
    return _bounded(text)


def _destination_problem(channel: Any) -> str | None:
    if type(channel) is not str:
        return f"destination is {kind_of(channel)}, expected a string"
    if len(channel) > DESTINATION_MAX:
        return f"destination is {len(channel)} characters long, more than {DESTINATION_MAX}"
    return None


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
    bad records never do). ``now`` stamps ``created_at`` (one value per batch; default: now)
    and anchors the event-time bounds of ``options``.
    Dead-letter stages: ``parse``, ``filter``, ``validate``, ``join``, ``render``.
    """
    options = options or RenderOptions()
    missing = [join.table for join in spec.joins if join.table not in tables]
    if missing:
        raise KeyError(f"pipeline {spec.name!r} needs lookup tables {missing}")
    now = now or datetime.now(UTC)
    created_at = format_rfc3339(now)
    past, future = options.event_time_max_past, options.event_time_max_future
    bounds = None if past is None and future is None else _TimeBounds(now, past, future)
    check_time = bounds is not None
    low, high = (bounds.low, bounds.high) if bounds is not None else ("", "")
    time_problem = bounds.check if bounds is not None else None

    name = spec.name
    parse, keep, validate = spec.parse, spec.keep, spec.validate
    render = spec.make_renderer(options)
    alert_id_of = compile_template(spec.alert_id)
    dedup_key_of = compile_dedup_key(spec.alert_id, name)
    event_time_field = spec.event_time_field
    joins = tuple(
        (join.key, _getter(tables[join.table]), join.kind == "inner", join.as_)
        for join in spec.joins
    )
    route_channel = spec.route.channel
    route_check = spec.route.check
    intended = tuple(spec.route.intended_for.items())
    fallback_channel = options.fallback_channel
    encode = encode_slack_message_at  # the slack-messages contract, one dict literal + orjson
    new_alert = tuple.__new__  # Alert(...) without the NamedTuple's Python-level __new__

    alerts: list[Alert] = []
    dead: list[DeadLetter] = []
    add_alert, add_dead = alerts.append, dead.append
    filtered = unmatched = fallback = 0

    for record in records:
        try:
            event = parse(record)
        except BadRecord as exc:
            add_dead(DeadLetter(record, _reason(exc), STAGE_PARSE, name))
            continue
        except Exception as exc:
            add_dead(DeadLetter(record, _unexpected(exc), STAGE_PARSE, name))
            continue
        try:
            dropped = not keep(event)
        except Exception as exc:
            add_dead(DeadLetter(record, _unexpected(exc), STAGE_FILTER, name))
            continue
        if dropped:
            filtered += 1
            continue

        try:
            fields = validate(record, event)
            if check_time:
                stamp = fields[event_time_field]
                # canonical "...Z" times within the bounds: two string comparisons
                if type(stamp) is not str or not low <= stamp <= high or stamp[-1:] != "Z":
                    time_problem(stamp)  # type: ignore[misc]  # raises when out of bounds
            context = Context(record, fields)
        except BadRecord as exc:
            add_dead(DeadLetter(record, _reason(exc), STAGE_VALIDATE, name))
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
            channel = route_channel(context)
            why = None
            if channel:
                if route_check is not None and type(channel) is str:
                    why = route_check(channel)
                if why is None and (type(channel) is not str or len(channel) > DESTINATION_MAX):
                    why = _destination_problem(channel)
            if not channel or why is not None:
                context.intended_for = {k: _bounded(of(context)) for k, of in intended}
                if why is not None:
                    context.intended_for["reason"] = why
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
            encoded = encode(
                alert_id, dedup_key_of(fields, alert_id), name, channel, text, blocks,
                topic, partition, offset, timestamp_ms, created_at, event_time,
                context.intended_for,
            )  # fmt: skip
            key = alert_id.encode()
        except BadRecord as exc:
            add_dead(DeadLetter(record, _reason(exc), STAGE_RENDER, name))
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
    """The ``alerts-dlq`` message: original key and value bytes, the why and where as headers
    (:class:`~alert_platform.wire.AlertDeadLetterHeaders`).

    Never raises: header texts are bounded and encoded with replacement, odd fields shown by
    their kind."""
    record = dead_letter.record
    headers = AlertDeadLetterHeaders(
        error=dead_letter.reason,
        error_stage=dead_letter.stage,
        pipeline=dead_letter.pipeline,
        source_topic=getattr(record, "topic", None),
        source_partition=getattr(record, "partition", None),
        source_offset=getattr(record, "offset", None),
        source_timestamp=getattr(record, "timestamp_ms", None),
    )
    return DeadLetterMessage(
        _raw(getattr(record, "key", None)),
        _raw(getattr(record, "value", None)),
        alerts_dlq_headers(headers),
    )


def _raw(value: Any) -> bytes | None:
    if value is None or type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return None
