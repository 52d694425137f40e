"""Re-derive the alerts of a time window: find its source offsets, enrich, produce again.

Delivery de-duplicates on (alert id, event time), so re-producing alerts that were already
posted is harmless: a backfill only ever fills gaps. A window's offsets come from the broker's
``offsets_for_times`` where it answers correctly, otherwise from the run index (what every
enrichment run recorded) plus every offset the index does not cover.

A backfill is the one path that posts alerts older than the maximum alert age (live delivery
marks them ``stale``): its delivery passes ``allow_stale=True`` and its summary counts them
(:func:`count_stale_posted`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from alert_platform.kafka.clients import make_admin, make_consumer
from alert_platform.kafka.offsets import (
    OffsetRange,
    offsets_for_times_is_reliable,
    probe_watermarks,
)
from alert_platform.pipelines.runner import EnrichmentReport, run_enrichment
from alert_platform.pipelines.spec import PipelineSpec
from alert_platform.run_index import RunIndex
from alert_platform.settings import Settings

# Hourly partition keys of the alert assets (UTC), as `sensors.topic_tail` files live runs.
PARTITION_KEY_FORMAT = "%Y-%m-%d-%H:00"
_HOUR = timedelta(hours=1)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime; without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or date-time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def hour_partition_keys(start: datetime, end: datetime) -> list[str]:
    """The hourly partition keys (UTC) whose hours overlap ``[start, end)``, in order."""
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    keys = []
    while hour < end:
        keys.append(hour.strftime(PARTITION_KEY_FORMAT))
        hour += _HOUR
    return keys


def partition_key_start(key: str) -> datetime:
    """The UTC start of an hourly partition key."""
    return datetime.strptime(key, PARTITION_KEY_FORMAT).replace(tzinfo=UTC)


def locate_window(
    settings: Settings, topic: str, start_ms: int, end_ms: int, index: RunIndex
) -> tuple[list[OffsetRange], str]:
    """Offset ranges that may hold records of ``topic`` timestamped in ``[start_ms, end_ms)``,
    and how they were found (``offsets_for_times`` or ``run_index``)."""
    consumer = make_consumer(settings)
    admin = make_admin(settings)
    try:
        bounds = probe_watermarks(consumer, topic, admin=admin)  # (low, true end)
        ends = {p: end for p, (_low, end) in bounds.items()}
        if offsets_for_times_is_reliable(consumer, topic, sorted(ends)):
            return _by_timestamps(consumer, topic, start_ms, end_ms, ends), "offsets_for_times"
    finally:
        consumer.close()
    return index.ranges_for_window(topic, start_ms, end_ms, bounds), "run_index"


def _by_timestamps(
    consumer: Consumer, topic: str, start_ms: int, end_ms: int, ends: dict[int, int]
) -> list[OffsetRange]:
    def lookup(ts: int) -> dict[int, int]:
        answer = consumer.offsets_for_times(
            [TopicPartition(topic, p, ts) for p in ends], timeout=10
        )
        return {tp.partition: (ends[tp.partition] if tp.offset < 0 else tp.offset) for tp in answer}

    firsts, afters = lookup(start_ms), lookup(end_ms)
    return [
        OffsetRange(topic, p, firsts[p], afters[p]) for p in sorted(ends) if afters[p] > firsts[p]
    ]


def backfill_pipeline(
    settings: Settings,
    spec: PipelineSpec,
    start: datetime,
    end: datetime,
    *,
    run_id: str = "",
    index: RunIndex | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[EnrichmentReport, list[OffsetRange], str]:
    """Re-derive ``spec``'s alerts for source records timestamped in ``[start, end)``.

    ``timings`` (optional) receives ``locate_s`` (finding the window's offsets) and
    ``enrich_s`` (tables, read, enrich, produce and flush).
    """
    own_index = index is None
    index = index or RunIndex(settings.effective_ledger_url)
    try:
        start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        began = time.monotonic()
        ranges, method = locate_window(settings, spec.source_topic, start_ms, end_ms, index)
        located = time.monotonic()
        report = run_enrichment(
            settings, spec, ranges, window_ms=(start_ms, end_ms), run_id=run_id, index=index
        )
        if timings is not None:
            timings["locate_s"] = located - began
            timings["enrich_s"] = time.monotonic() - located
        return report, ranges, method
    finally:
        if own_index:
            index.close()


_POSTED = frozenset({"delivered", "recovered_uncertain"})


def count_stale_posted(
    settings: Settings, ranges: Sequence[OffsetRange], delivery: Any, now: datetime | None = None
) -> int:
    """How many alerts ``delivery`` (a ``DeliveryReport`` of ``ranges`` of ``slack-messages``)
    posted that live delivery would have refused as older than ``settings.max_alert_age_hours``.
    """
    results = getattr(delivery, "results", None) or []
    posted = {r.alert_id for r in results if r.status in _POSTED}
    if not posted:
        return 0
    from alert_platform.delivery.messages import parse_records
    from alert_platform.delivery.runner import read_messages

    cutoff = (now or datetime.now(UTC)) - timedelta(hours=settings.max_alert_age_hours)
    parsed = parse_records(read_messages(settings, ranges))
    old = {m.alert_id for m in parsed.messages if m.event_time < cutoff and m.alert_id in posted}
    return sum(1 for r in results if r.status in _POSTED and r.alert_id in old)
