"""Re-derive the alerts of a time window: find its source offsets, enrich, produce again.

Delivery de-duplicates on (alert id, event time), so re-producing alerts that were already
posted is harmless: a backfill only ever fills gaps. A window's offsets come from the broker's
``offsets_for_times`` where it answers correctly, otherwise from the run index (what every
enrichment run recorded) plus every offset the index does not cover.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, TopicPartition

from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import OffsetRange, low_watermarks, probe_end_offsets
from alert_platform.pipelines.runner import EnrichmentReport, run_enrichment
from alert_platform.pipelines.spec import PipelineSpec
from alert_platform.run_index import RunIndex
from alert_platform.settings import Settings

_FAR_FUTURE_MS = 10 * 365 * 86_400_000
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


def offsets_for_times_is_reliable(
    consumer: Consumer, topic: str, partitions: Sequence[int]
) -> bool:
    """Whether the broker answers a timestamp after every record with "end" (-1), as Kafka does.

    The local Tansu broker answers 0 for any timestamp; such a broker is not trusted.
    """
    if not partitions:
        return False
    future = int(time.time() * 1000) + _FAR_FUTURE_MS
    answer = consumer.offsets_for_times(
        [TopicPartition(topic, p, future) for p in partitions], timeout=10
    )
    return all(tp.error is None and tp.offset == -1 for tp in answer)


def locate_window(
    settings: Settings, topic: str, start_ms: int, end_ms: int, index: RunIndex
) -> tuple[list[OffsetRange], str]:
    """Offset ranges that may hold records of ``topic`` timestamped in ``[start_ms, end_ms)``,
    and how they were found (``offsets_for_times`` or ``run_index``)."""
    consumer = make_consumer(settings)
    try:
        ends = probe_end_offsets(consumer, topic)
        lows = low_watermarks(consumer, topic, list(ends))
        partitions = sorted(ends)
        if offsets_for_times_is_reliable(consumer, topic, partitions):
            return _by_timestamps(consumer, topic, start_ms, end_ms, ends), "offsets_for_times"
    finally:
        consumer.close()
    bounds = {p: (lows.get(p, 0), ends[p]) for p in partitions}
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
