"""The ``slack-messages`` offset ranges a delivery finished, in the ledger database.

A delivery run (inline in an enrichment run, or the catch-up ``slack_deliveries``) that read a
range and finished every record of it (posted, duplicate, suppressed, dead-lettered, stale) and
flushed the outcomes records the range here. The delivery tail sensor asks this table, not
Kafka, whether a range it is about to hand out still needs a run: a range counts as handled when
the union of the recorded ranges of the same topic partition (and topic id, so a recreated
topic's offsets are never mistaken for the old ones) covers it. Rows are pruned with the rest of
the platform's state (:mod:`alert_platform.retention`); a pruned range merely gets a catch-up run
again, which the ledger turns into duplicates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from alert_platform.kafka.offsets import OffsetRange
from alert_platform.storage import StateTables, UTCDateTime

_METADATA = sa.MetaData()
HANDLED_RANGES = sa.Table(
    "handled_ranges",
    _METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("topic_id", sa.String(64), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("start_offset", sa.BigInteger, nullable=False),
    sa.Column("end_offset", sa.BigInteger, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Index("ix_handled_ranges_where", "topic", "partition", "end_offset"),
)


def covered(wanted: OffsetRange, spans: Iterable[tuple[int, int]]) -> bool:
    """Whether the union of ``[start, end)`` ``spans`` covers every offset of ``wanted``."""
    reached = wanted.start
    for start, end in sorted(spans):
        if start > reached:
            break
        reached = max(reached, end)
        if reached >= wanted.end:
            return True
    return reached >= wanted.end


class HandledRanges(StateTables):
    """The ``handled_ranges`` table (SQLite or PostgreSQL, the ledger URL)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, _METADATA, "handled_ranges")

    def record(
        self, ranges: Sequence[OffsetRange], *, topic_id: str = "", run_id: str = ""
    ) -> None:
        """Write down that every record of ``ranges`` was finished (by ``run_id``)."""
        rows = [
            {
                "topic": r.topic,
                "topic_id": topic_id,
                "partition": r.partition,
                "start_offset": r.start,
                "end_offset": r.end,
                "run_id": run_id[:64],
                "recorded_at": datetime.now(UTC),
            }
            for r in ranges
            if not r.empty
        ]
        if not rows:
            return
        with self._begin() as conn:
            conn.execute(HANDLED_RANGES.insert(), rows)

    def handled(self, ranges: Sequence[OffsetRange], *, topic_id: str = "") -> set[OffsetRange]:
        """The ``ranges`` covered by recorded ranges of the same topic id (one query per
        topic partition asked about)."""
        wanted: dict[tuple[str, int], list[OffsetRange]] = defaultdict(list)
        for rng in ranges:
            wanted[(rng.topic, rng.partition)].append(rng)
        t = HANDLED_RANGES.c
        out: set[OffsetRange] = set()
        with self.engine.connect() as conn:
            for (topic, partition), asked in wanted.items():
                low = min(r.start for r in asked)
                high = max(r.end for r in asked)
                spans = [
                    (int(start), int(end))
                    for start, end in conn.execute(
                        sa.select(t.start_offset, t.end_offset).where(
                            t.topic == topic,
                            t.partition == partition,
                            t.topic_id == topic_id,
                            t.end_offset > low,
                            t.start_offset < high,
                        )
                    )
                ]
                out.update(r for r in asked if r.empty or covered(r, spans))
        return out

    def prune(self, before: datetime, *, batch_size: int = 1_000) -> int:
        """Delete rows recorded before ``before``, in transactions of at most ``batch_size``
        rows; how many were deleted."""
        t = HANDLED_RANGES.c
        total = 0
        while True:
            with self._begin() as conn:
                ids = list(
                    conn.execute(
                        sa.select(t.id)
                        .where(t.recorded_at < before)
                        .order_by(t.id)
                        .limit(batch_size)
                    ).scalars()
                )
                if ids:
                    deleted = conn.execute(HANDLED_RANGES.delete().where(t.id.in_(ids)))
                    total += int(deleted.rowcount)
            if len(ids) < batch_size:
                return total
