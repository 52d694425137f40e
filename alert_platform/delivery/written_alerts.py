"""Which alerts an enrichment run wrote to which ``slack-messages`` ranges, in the ledger database.

An enrichment run that does not deliver its alerts itself (inline delivery off) and wrote at most
a few thousand of them, with no other producer's record in between (its ranges hold exactly as
many offsets as it wrote records), records the ranges with each alert's identity (alert id,
de-duplication key, event time). The delivery tail sensor can then tell from the ledger alone,
without reading a record, that a range holds only alerts already delivered (re-derived alerts of
a re-run, or alerts a backfill delivered through its own records): it needs no run. Pruned with
the platform's other state (:mod:`alert_platform.retention`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from alert_platform.delivery.handled_ranges import covered
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.messages import OutboundMessage
from alert_platform.kafka.offsets import OffsetRange
from alert_platform.storage import StateTables, UTCDateTime

_METADATA = sa.MetaData()
WRITTEN_SETS = sa.Table(
    "written_alert_sets",
    _METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
)
WRITTEN_RANGES = sa.Table(
    "written_alert_ranges",
    _METADATA,
    sa.Column("set_id", sa.Integer, nullable=False, index=True),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("topic_id", sa.String(64), nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("start_offset", sa.BigInteger, nullable=False),
    sa.Column("end_offset", sa.BigInteger, nullable=False),
    sa.Index("ix_written_alert_ranges_where", "topic", "partition", "end_offset"),
)
WRITTEN_ALERTS = sa.Table(
    "written_alerts",
    _METADATA,
    sa.Column("set_id", sa.Integer, nullable=False, index=True),
    sa.Column("alert_id", sa.String(512), nullable=False),
    sa.Column("dedup_key", sa.String(512), nullable=False),
    sa.Column("event_time", UTCDateTime, nullable=False),
)


class WrittenAlerts(StateTables):
    """The three ``written_alert*`` tables (SQLite or PostgreSQL, the ledger URL)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, _METADATA, "written_alerts")

    def record(
        self,
        ranges: Sequence[OffsetRange],
        messages: Sequence[OutboundMessage],
        *,
        topic_id: str = "",
        run_id: str = "",
    ) -> None:
        """Write down that ``ranges`` hold exactly ``messages`` (one transaction)."""
        with self._begin() as conn:
            result = conn.execute(
                WRITTEN_SETS.insert().values(run_id=run_id[:64], recorded_at=datetime.now(UTC))
            )
            set_id = result.inserted_primary_key[0]
            conn.execute(
                WRITTEN_RANGES.insert(),
                [
                    {"set_id": set_id, "topic": r.topic, "topic_id": topic_id,
                     "partition": r.partition, "start_offset": r.start, "end_offset": r.end}
                    for r in ranges
                ],
            )  # fmt: skip
            if messages:
                conn.execute(
                    WRITTEN_ALERTS.insert(),
                    [
                        {"set_id": set_id, "alert_id": m.alert_id, "dedup_key": m.dedup_key,
                         "event_time": m.event_time}
                        for m in messages
                    ],
                )  # fmt: skip

    def delivered(
        self,
        ranges: Sequence[OffsetRange],
        ledger: DeliveryLedger,
        window: timedelta,
        *,
        topic_id: str = "",
    ) -> set[OffsetRange]:
        """The ``ranges`` covered by recorded sets every alert of which the ledger holds as
        delivered (a set whose answer cannot be had covers nothing)."""
        r, a = WRITTEN_RANGES.c, WRITTEN_ALERTS.c
        found: dict[OffsetRange, list[tuple[int, int, int]]] = {}
        alerts: dict[int, list[OutboundMessage]] = {}
        # Read first, then ask the ledger: no transaction of ours is open while it reads.
        with self.engine.connect() as conn:
            for rng in ranges:
                found[rng] = [
                    (int(set_id), int(start), int(end))
                    for set_id, start, end in conn.execute(
                        sa.select(r.set_id, r.start_offset, r.end_offset).where(
                            r.topic == rng.topic,
                            r.partition == rng.partition,
                            r.topic_id == topic_id,
                            r.end_offset > rng.start,
                            r.start_offset < rng.end,
                        )
                    )
                ]
            for set_id in {set_id for rows in found.values() for set_id, _s, _e in rows}:
                query = sa.select(a.alert_id, a.dedup_key, a.event_time).where(a.set_id == set_id)
                alerts[set_id] = [
                    OutboundMessage(alert_id, "", "", when, dedup_key=key)
                    for alert_id, key, when in conn.execute(query)
                ]
        done = {
            set_id: all(claim is not None for claim in ledger.duplicates(messages, window))
            for set_id, messages in alerts.items()
        }
        return {
            rng
            for rng, rows in found.items()
            if covered(rng, [(start, end) for set_id, start, end in rows if done[set_id]])
        }

    def prune(self, before: datetime, *, batch_size: int = 1_000) -> int:
        """Delete the sets recorded before ``before`` (ranges and alerts with them), at most
        ``batch_size`` sets per transaction; how many sets were deleted."""
        s = WRITTEN_SETS.c
        total = 0
        while True:
            with self._begin() as conn:
                query = sa.select(s.id).where(s.recorded_at < before)
                ids = list(conn.execute(query.order_by(s.id).limit(batch_size)).scalars())
                if ids:
                    conn.execute(WRITTEN_ALERTS.delete().where(WRITTEN_ALERTS.c.set_id.in_(ids)))
                    conn.execute(WRITTEN_RANGES.delete().where(WRITTEN_RANGES.c.set_id.in_(ids)))
                    total += int(conn.execute(WRITTEN_SETS.delete().where(s.id.in_(ids))).rowcount)
            if len(ids) < batch_size:
                return total
