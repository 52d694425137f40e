"""What every enrichment run read: offset ranges with their record-timestamp bounds.

Backfills use it to find a time window's offsets on brokers whose ``offsets_for_times`` cannot be
trusted (the local broker answers 0 for every timestamp), and ``explain`` uses it to name the run
that processed a source record. Offsets no run has recorded are always handed back for scanning,
so the index can narrow a backfill but never make it miss a record. Rows are pruned by
:mod:`alert_platform.retention` once recorded longer ago than the de-duplication window plus
the retention margin (:meth:`RunIndex.prune`); a pruned range is simply unrecorded again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from alert_platform.kafka.offsets import OffsetRange
from alert_platform.storage import make_engine

_METADATA = sa.MetaData()
PROCESSED_RANGES = sa.Table(
    "processed_ranges",
    _METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(128), nullable=False),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("start_offset", sa.BigInteger, nullable=False),
    sa.Column("end_offset", sa.BigInteger, nullable=False),
    sa.Column("min_timestamp_ms", sa.BigInteger),
    sa.Column("max_timestamp_ms", sa.BigInteger),
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("alerts", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_processed_ranges_topic_partition", "topic", "partition", "start_offset"),
)


@dataclass(frozen=True)
class ProcessedRange:
    """One recorded range: which run read it and the timestamps it held."""

    pipeline: str
    range: OffsetRange
    min_timestamp_ms: int | None
    max_timestamp_ms: int | None
    records: int
    alerts: int
    run_id: str


class RunIndex:
    """The ``processed_ranges`` table in the platform database (ledger URL)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        _METADATA.create_all(self.engine, checkfirst=True)

    def close(self) -> None:
        self.engine.dispose()

    def record(
        self,
        pipeline: str,
        rng: OffsetRange,
        *,
        min_timestamp_ms: int | None,
        max_timestamp_ms: int | None,
        records: int,
        alerts: int,
        run_id: str,
    ) -> None:
        """Remember that ``run_id`` processed ``rng`` for ``pipeline``."""
        with self.engine.begin() as conn:
            conn.execute(
                PROCESSED_RANGES.insert().values(
                    pipeline=pipeline,
                    topic=rng.topic,
                    partition=rng.partition,
                    start_offset=rng.start,
                    end_offset=rng.end,
                    min_timestamp_ms=min_timestamp_ms,
                    max_timestamp_ms=max_timestamp_ms,
                    records=records,
                    alerts=alerts,
                    run_id=run_id,
                    recorded_at=datetime.now(UTC),
                )
            )

    def record_many(self, rows: Sequence[ProcessedRange]) -> None:
        """:meth:`record` for several ranges in one transaction (a stream worker's batch)."""
        if not rows:
            return
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                PROCESSED_RANGES.insert(),
                [
                    {
                        "pipeline": row.pipeline,
                        "topic": row.range.topic,
                        "partition": row.range.partition,
                        "start_offset": row.range.start,
                        "end_offset": row.range.end,
                        "min_timestamp_ms": row.min_timestamp_ms,
                        "max_timestamp_ms": row.max_timestamp_ms,
                        "records": row.records,
                        "alerts": row.alerts,
                        "run_id": row.run_id,
                        "recorded_at": now,
                    }
                    for row in rows
                ],
            )

    def prune(self, before: datetime, *, batch_size: int = 1_000) -> int:
        """Delete at most ``batch_size`` rows recorded before ``before`` (the oldest first), in
        one short transaction; how many were deleted (fewer than ``batch_size``: no more)."""
        table = PROCESSED_RANGES.c
        with self.engine.begin() as conn:
            ids = list(
                conn.execute(
                    sa.select(table.id)
                    .where(table.recorded_at < before)
                    .order_by(table.id)
                    .limit(batch_size)
                ).scalars()
            )
            if not ids:
                return 0
            return int(conn.execute(PROCESSED_RANGES.delete().where(table.id.in_(ids))).rowcount)

    def ranges_of(self, topic: str, partition: int | None = None) -> list[ProcessedRange]:
        """Every recorded range of ``topic`` (optionally one partition), in offset order."""
        query = PROCESSED_RANGES.select().where(PROCESSED_RANGES.c.topic == topic)
        if partition is not None:
            query = query.where(PROCESSED_RANGES.c.partition == partition)
        query = query.order_by(PROCESSED_RANGES.c.partition, PROCESSED_RANGES.c.start_offset)
        with self.engine.connect() as conn:
            return [_row(row) for row in conn.execute(query).mappings()]

    def runs_for_offset(self, topic: str, partition: int, offset: int) -> list[ProcessedRange]:
        """The recorded ranges that contain ``topic:partition:offset``."""
        table = PROCESSED_RANGES.c
        query = PROCESSED_RANGES.select().where(
            table.topic == topic,
            table.partition == partition,
            table.start_offset <= offset,
            table.end_offset > offset,
        )
        with self.engine.connect() as conn:
            return [_row(row) for row in conn.execute(query.order_by(table.id)).mappings()]

    def ranges_for_window(
        self, topic: str, start_ms: int, end_ms: int, bounds: Mapping[int, tuple[int, int]]
    ) -> list[OffsetRange]:
        """Offset ranges that may hold records timestamped in ``[start_ms, end_ms)``.

        ``bounds`` is ``partition -> (low watermark, true end)``. Recorded ranges whose
        timestamps miss the window are skipped; everything unrecorded is returned.
        """
        wanted: list[OffsetRange] = []
        for partition, (low, end) in sorted(bounds.items()):
            covered = [
                r
                for r in self.ranges_of(topic, partition)
                if r.range.end > low and r.range.start < end
            ]
            spans = _candidate_spans(covered, low, end, start_ms, end_ms)
            wanted.extend(OffsetRange(topic, partition, s, e) for s, e in _merge(spans))
        return wanted


def _candidate_spans(
    covered: Iterable[ProcessedRange], low: int, end: int, start_ms: int, end_ms: int
) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    position = low
    for recorded in sorted(covered, key=lambda r: r.range.start):
        rng = recorded.range
        if rng.start > position:
            spans.append((position, rng.start))  # never recorded: must be scanned
        lo, hi = recorded.min_timestamp_ms, recorded.max_timestamp_ms
        in_window = lo is None or hi is None or (hi >= start_ms and lo < end_ms)
        if in_window and recorded.records:
            spans.append((max(rng.start, low), min(rng.end, end)))
        position = max(position, rng.end)
    if position < end:
        spans.append((position, end))
    return [(s, e) for s, e in spans if e > s]


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _row(row: Mapping[str, object]) -> ProcessedRange:
    return ProcessedRange(
        pipeline=str(row["pipeline"]),
        range=OffsetRange(
            str(row["topic"]),
            int(row["partition"]),  # type: ignore[call-overload]
            int(row["start_offset"]),  # type: ignore[call-overload]
            int(row["end_offset"]),  # type: ignore[call-overload]
        ),
        min_timestamp_ms=row["min_timestamp_ms"],  # type: ignore[arg-type]
        max_timestamp_ms=row["max_timestamp_ms"],  # type: ignore[arg-type]
        records=int(row["records"]),  # type: ignore[call-overload]
        alerts=int(row["alerts"]),  # type: ignore[call-overload]
        run_id=str(row["run_id"]),
    )
