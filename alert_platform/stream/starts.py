"""Where each stream group started reading a partition, in the ledger database.

A worker that is assigned a partition its group never committed starts at the partition's
end and commits that start at once (:mod:`alert_platform.stream.loop`); it records the start
here too. From then on the group resumes from its own commits, so it has processed every
offset in ``[start, committed)``: the tail sensors' catch-up (:mod:`.handover`) trusts the
group from the recorded start, not only from the first commit a sensor happened to see (a
sensor looking seconds after the start would otherwise hand the first records to a catch-up
run). One row per group, topic and partition: the latest start (a group whose commits
vanished starts over, and its new start replaces the old one); the topic id keeps a
recreated topic's offsets apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import sqlalchemy as sa

from alert_platform.storage import StateTables, UTCDateTime

_METADATA = sa.MetaData()
STREAM_STARTS = sa.Table(
    "stream_starts",
    _METADATA,
    sa.Column("consumer_group", sa.String(255), primary_key=True),
    sa.Column("topic", sa.String(255), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("topic_id", sa.String(64), nullable=False),
    sa.Column("start_offset", sa.BigInteger, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
)


class StreamStarts(StateTables):
    """The ``stream_starts`` table (SQLite or PostgreSQL, the ledger URL)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, _METADATA, "stream_starts")

    def record(self, group: str, topic: str, starts: Mapping[int, int], topic_id: str = "") -> None:
        """``group`` starts reading ``topic`` at ``starts`` (partition -> offset)."""
        if not starts:
            return
        t = STREAM_STARTS.c
        now = datetime.now(UTC)
        with self._begin() as conn:
            for partition, offset in sorted(starts.items()):
                where = (
                    (t.consumer_group == group) & (t.topic == topic) & (t.partition == partition)
                )
                conn.execute(STREAM_STARTS.delete().where(where))
                conn.execute(
                    STREAM_STARTS.insert().values(
                        consumer_group=group, topic=topic, partition=partition,
                        topic_id=topic_id, start_offset=int(offset), recorded_at=now,
                    )
                )  # fmt: skip

    def starts(self, group: str, topic: str, topic_id: str = "") -> dict[int, int]:
        """The recorded starts of ``group`` on ``topic`` (of the incarnation ``topic_id``; rows
        recorded without an id count for any)."""
        t = STREAM_STARTS.c
        query = sa.select(t.partition, t.start_offset, t.topic_id).where(
            t.consumer_group == group, t.topic == topic
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {
            int(partition): int(offset)
            for partition, offset, tid in rows
            if not topic_id or not tid or tid == topic_id
        }
