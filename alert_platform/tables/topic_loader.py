"""Bring a lookup table up to date with its topic: snapshot first, then the records after it.

The lookup topics are configured ``cleanup.policy=compact`` but the local broker never
compacts (and a real one compacts lazily), so every version of a key may still be there: the
records are applied in offset order, a later version replaces an earlier one, and a null value
(tombstone) deletes the key. A record that cannot become a row (no key, value not a JSON
object, ...) is skipped, counted and reported with its position; it never stops the load.

Offsets here are *next offsets to read* per partition: a snapshot saved with ``{0: 120}`` holds
everything of partition 0 below offset 120. The end of each partition is probed
(:func:`~alert_platform.kafka.offsets.probe_end_offsets`), never taken from the high watermark.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from alert_platform.kafka.admin import topic_id
from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import OffsetRange, probe_watermarks
from alert_platform.kafka.reader import DEFAULT_BATCH_SIZE, DEFAULT_TIMEOUT_S, read_range
from alert_platform.kafka.records import SourceRecord
from alert_platform.settings import Settings
from alert_platform.tables.lookup import LookupTable
from alert_platform.tables.snapshot import SnapshotError, load_snapshot_with_info, save_snapshot
from alert_platform.tables.specs import TableSpec

ValueParser = Callable[[bytes], Mapping[str, Any]]
KeyNormaliser = Callable[[str], str]

# How many malformed records are listed (all are counted).
MAX_MALFORMED_KEPT = 1000


class OffsetsAhead(RuntimeError):
    """The stored offsets lie past the end of the topic: the topic was recreated (or the
    local broker restarted) since the snapshot, so the snapshot describes data that is gone."""


@dataclass
class CatchUpStats:
    """What a catch-up read and did."""

    records: int = 0  # records read
    upserts: int = 0
    deletes: int = 0  # tombstones applied (including for keys that were absent)
    malformed_count: int = 0
    # (position "topic:partition:offset", reason), the first MAX_MALFORMED_KEPT
    malformed: list[tuple[str, str]] = field(default_factory=list)
    ranges: list[OffsetRange] = field(default_factory=list)  # what was read
    notes: list[str] = field(default_factory=list)  # anything worth logging
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        """Whether any record was read (the offsets moved)."""
        return self.records > 0

    def add_malformed(self, position: str, reason: str) -> None:
        self.malformed_count += 1
        if len(self.malformed) < MAX_MALFORMED_KEPT:
            self.malformed.append((position, reason))


@dataclass(frozen=True)
class LoadedTable:
    """A table brought up to date, the offsets it reflects, and how it got there."""

    table: LookupTable
    offsets: dict[int, int]
    stats: CatchUpStats
    snapshot_path: Path | None = None
    # the snapshot was unusable or ahead of the topic: the table was rebuilt from the topic
    rebuilt: bool = False
    # the offsets the snapshot held ({} without one)
    snapshot_offsets: dict[int, int] = field(default_factory=dict)
    snapshot_saved: bool = False
    # id of the topic as loaded now, and as the snapshot recorded it ("": not known)
    topic_id: str = ""
    snapshot_topic_id: str = ""


def catch_up(
    table: LookupTable,
    topic: str,
    offsets: Mapping[int, int],
    consumer: Consumer,
    value_parser: ValueParser,
    key_normaliser: KeyNormaliser | None = None,
    *,
    key_field: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> tuple[dict[int, int], CatchUpStats]:
    """Apply the records of ``topic`` from ``offsets`` (next offset per partition; absent
    partitions from their beginning) to the probed end of every partition, in place.

    ``value_parser(value) -> row`` raises for a malformed value; ``key_normaliser`` is applied
    to the decoded record key (the table applies its own normaliser too); ``key_field``, when
    given, is filled from the record key in rows that lack it. Returns the new offsets (every
    partition of the topic) and the stats. Raises :class:`OffsetsAhead` when an offset lies
    past its partition's end, ``RangeReadError`` when the broker fails.
    """
    started = time.monotonic()
    stats = CatchUpStats()
    probed = probe_watermarks(consumer, topic)
    lows = {partition: low for partition, (low, _end) in probed.items()}
    ends = {partition: end for partition, (_low, end) in probed.items()}
    ahead = {p: o for p, o in offsets.items() if o > ends.get(p, 0)}
    if ahead:
        raise OffsetsAhead(
            f"{topic}: stored offsets {ahead} lie past the partition ends "
            f"{ {p: ends.get(p, 0) for p in ahead} }: the topic was recreated since"
        )
    new_offsets = dict(offsets)
    for partition in sorted(ends):
        start = offsets.get(partition, lows[partition])
        if start < lows[partition]:
            stats.notes.append(
                f"{topic}[{partition}]: offsets {start}..{lows[partition] - 1} were deleted "
                "before they were read; continuing from the low watermark"
            )
            start = lows[partition]
        rng = OffsetRange(topic, partition, start, ends[partition])
        if not rng.empty:
            stats.ranges.append(rng)
            for batch in read_range(consumer, rng, batch_size, timeout_s):
                _apply(table, batch, value_parser, key_normaliser, key_field, stats)
        new_offsets[partition] = ends[partition]
    stats.seconds = time.monotonic() - started
    return new_offsets, stats


def _apply(
    table: LookupTable,
    records: list[SourceRecord],
    value_parser: ValueParser,
    key_normaliser: KeyNormaliser | None,
    key_field: str | None,
    stats: CatchUpStats,
) -> None:
    upsert, delete = table.upsert, table.delete
    upserts = deletes = 0
    for record in records:
        raw_key = record.key
        if not raw_key:
            stats.add_malformed(record.position, "record has no key")
            continue
        try:
            key = text_key = raw_key.decode()
        except UnicodeDecodeError as exc:
            stats.add_malformed(record.position, f"key is not valid UTF-8: {exc}")
            continue
        if key_normaliser is not None:
            key = key_normaliser(text_key)
        value = record.value
        if value is None:
            delete(key)
            deletes += 1
            continue
        try:
            row = value_parser(value)
        except Exception as exc:  # a parser's way of saying "malformed": never stop the load
            stats.add_malformed(record.position, str(exc) or type(exc).__name__)
            continue
        if key_field is not None and row.get(key_field) is None:
            row = {**row, key_field: text_key}
        upsert(key, row)
        upserts += 1
    stats.records += len(records)
    stats.upserts += upserts
    stats.deletes += deletes


def apply_records(
    table: LookupTable, records: list[SourceRecord], spec: TableSpec, stats: CatchUpStats
) -> None:
    """Apply ``records`` of ``spec``'s topic (in offset order) to ``table`` in place: upserts,
    tombstones, malformed records counted in ``stats`` (a stream worker following a table)."""
    _apply(table, records, spec.parse_value, spec.normalise_key, spec.key_field, stats)


def load_table(
    settings: Settings,
    table_spec: TableSpec,
    snapshot_dir: str | Path | None = None,
    *,
    consumer: Consumer | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> LoadedTable:
    """The table as of now: its snapshot (if any and usable) caught up with its topic.

    ``snapshot_dir`` defaults to ``settings.snapshot_dir``. An unusable snapshot (corrupt,
    other columns) or one of another incarnation of the topic (the topic was recreated since:
    its id differs, or the snapshot's offsets lie past the topic's ends) is ignored and the
    table rebuilt from the topic; the stats' notes say so.
    """
    path = table_spec.snapshot_path(
        Path(snapshot_dir) if snapshot_dir is not None else settings.snapshot_dir
    )
    notes: list[str] = []
    rebuilt = False
    current_id = topic_id(settings, table_spec.topic)
    snapshot_id = ""
    try:
        table, info = load_snapshot_with_info(path, table_spec)
        offsets = dict(info.offsets) if info is not None else {}
        snapshot_id = info.topic_id if info is not None else ""
    except SnapshotError as exc:
        notes.append(f"ignoring snapshot {path}: {exc}; rebuilding from {table_spec.topic}")
        table, offsets, rebuilt = table_spec.new_table(), {}, True
    snapshot_offsets = dict(offsets)
    if current_id and snapshot_id and current_id != snapshot_id and not rebuilt:
        notes.append(
            f"ignoring snapshot {path}: it was taken from {table_spec.topic} with topic id "
            f"{snapshot_id}, the topic now has id {current_id} (recreated since); rebuilding "
            "from the topic"
        )
        table, offsets, rebuilt = table_spec.new_table(), {}, True
    own_consumer = consumer is None
    if consumer is None:
        consumer = make_consumer(settings)
    try:
        try:
            offsets, stats = _catch_up_spec(
                table, offsets, consumer, table_spec, batch_size, timeout_s
            )
        except OffsetsAhead as exc:
            notes.append(f"ignoring snapshot {path}: {exc}; rebuilding from the topic")
            table, rebuilt = table_spec.new_table(), True
            offsets, stats = _catch_up_spec(table, {}, consumer, table_spec, batch_size, timeout_s)
    finally:
        if own_consumer:
            consumer.close()
    stats.notes[:0] = notes
    return LoadedTable(
        table,
        offsets,
        stats,
        path,
        rebuilt,
        snapshot_offsets,
        topic_id=current_id or snapshot_id,
        snapshot_topic_id=snapshot_id,
    )


def _catch_up_spec(
    table: LookupTable,
    offsets: Mapping[int, int],
    consumer: Consumer,
    spec: TableSpec,
    batch_size: int,
    timeout_s: float,
) -> tuple[dict[int, int], CatchUpStats]:
    return catch_up(
        table,
        spec.topic,
        offsets,
        consumer,
        spec.parse_value,
        spec.normalise_key,
        key_field=spec.key_field,
        batch_size=batch_size,
        timeout_s=timeout_s,
    )


def refresh_snapshot(
    settings: Settings,
    table_spec: TableSpec,
    snapshot_dir: str | Path | None = None,
    *,
    consumer: Consumer | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> LoadedTable:
    """:func:`load_table`, then save the snapshot when it changed (records read, offsets moved,
    snapshot rebuilt or missing)."""
    loaded = load_table(
        settings,
        table_spec,
        snapshot_dir,
        consumer=consumer,
        batch_size=batch_size,
        timeout_s=timeout_s,
    )
    path = loaded.snapshot_path
    assert path is not None
    if (
        loaded.stats.changed
        or loaded.rebuilt
        or loaded.offsets != loaded.snapshot_offsets
        or loaded.topic_id != loaded.snapshot_topic_id
        or not path.exists()
    ):
        save_snapshot(
            loaded.table,
            loaded.offsets,
            path,
            topic=table_spec.topic,
            normalise_key=table_spec.normalise_key,
            topic_id=loaded.topic_id,
        )
        return replace(loaded, snapshot_saved=True)
    return loaded
