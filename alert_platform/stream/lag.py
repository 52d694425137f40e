"""How far a stream's consumer group is behind, measured from outside the workers.

The group's committed offsets (``kafka.groups.committed_offsets``) against the
partitions' true ends (``probe_watermarks``: the local broker's high watermark is the base
offset of the last batch + 1, so it alone would hide an unread last batch), plus the
timestamp of the first uncommitted record of each partition that has one (one small read at
the committed offset): the lag in seconds is the age of the oldest record the group has not
committed. A partition the group never committed to is
not judged: a new group starts at the end (``auto.offset.reset=latest``), what came before is
the tail sensors' catch-up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from alert_platform.kafka.clients import make_admin, make_consumer
from alert_platform.kafka.groups import committed_offsets
from alert_platform.kafka.offsets import list_partitions, probe_watermarks
from alert_platform.settings import Settings
from alert_platform.stream.health import Verdict, lag_verdict

# How long the read of the first uncommitted records may take (one fetch, or EOF).
READ_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class PartitionLag:
    """One partition: the group's next offset, the true end, the first uncommitted record
    (offset, timestamp) if there is one."""

    partition: int
    committed: int | None  # None: the group never committed to this partition
    end: int
    first_uncommitted: tuple[int, int] | None = None  # (offset, timestamp_ms)

    @property
    def records(self) -> int | None:
        """Records the group has not committed (``None``: not judged)."""
        return None if self.committed is None else max(0, self.end - self.committed)


@dataclass(frozen=True)
class GroupLag:
    """A consumer group's lag on one topic, measured at ``measured_at`` (epoch seconds)."""

    group: str
    topic: str
    partitions: Mapping[int, PartitionLag]
    measured_at: float

    @property
    def records(self) -> int:
        """Uncommitted records over the judged partitions."""
        return sum(p.records or 0 for p in self.partitions.values())

    @property
    def lag_s(self) -> float | None:
        """Age of the oldest uncommitted record (``None``: none found)."""
        oldest = [p.first_uncommitted[1] for p in self.partitions.values() if p.first_uncommitted]
        if not oldest:
            return None
        return max(0.0, self.measured_at - min(oldest) / 1000)

    @property
    def never_committed(self) -> list[int]:
        """Partitions holding records the group never committed to (not judged)."""
        return sorted(
            p for p, lag in self.partitions.items() if lag.committed is None and lag.end > 0
        )

    def by_partition(self) -> dict[str, int | None]:
        """Uncommitted records per partition (JSON keys), ``None`` where not judged."""
        return {str(p): lag.records for p, lag in sorted(self.partitions.items())}


def first_records(
    settings: Settings, topic: str, starts: Mapping[int, int], *, timeout: float = READ_TIMEOUT_S
) -> dict[int, tuple[int, int]]:
    """``(offset, timestamp_ms)`` of the first record at or after ``starts[p]`` per partition;
    a partition without one within ``timeout`` is absent (ask only below the partition's end)."""
    if not starts:
        return {}
    consumer = make_consumer(settings)
    found: dict[int, tuple[int, int]] = {}
    pending = set(starts)
    try:
        consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.05):
                partition = message.partition()
                if partition not in pending:
                    continue
                if message.error() is None and message.offset() >= starts[partition]:
                    found[partition] = (message.offset(), message.timestamp()[1])
                    pending.discard(partition)
    finally:
        consumer.close()
    return found


def group_lag(
    settings: Settings,
    group: str,
    topic: str,
    *,
    admin: AdminClient | None = None,
    read_timeout: float = READ_TIMEOUT_S,
    now: float | None = None,
) -> GroupLag:
    """Measure ``group``'s lag on ``topic`` (raises ``OffsetError`` or ``GroupOffsetsError`` on
    broker trouble)."""
    admin = admin if admin is not None else make_admin(settings)
    consumer = make_consumer(settings)
    try:
        partitions = list_partitions(consumer, topic)
        committed = committed_offsets(admin, group, topic, partitions)
        marks = probe_watermarks(consumer, topic, partitions, admin=admin)
    finally:
        consumer.close()
    # Below the low watermark retention deleted the records: the oldest left is at ``low``.
    starts = {p: max(c, marks[p][0]) for p, c in committed.items() if c < marks[p][1]}
    first = first_records(settings, topic, starts, timeout=read_timeout)
    measured = time.time() if now is None else now
    return GroupLag(
        group,
        topic,
        {
            p: PartitionLag(p, committed.get(p), marks[p][1], first.get(p))
            for p in sorted(partitions)
        },
        measured,
    )


def lag_check(lag: GroupLag, bound_s: float) -> Verdict:
    """The ``stream_lag`` verdict: the oldest uncommitted record is at most ``bound_s`` old."""
    verdict = lag_verdict(lag.lag_s, bound_s)
    notes = [f"{lag.records} uncommitted record(s) in group {lag.group}"]
    if lag.never_committed:
        notes.append(f"partition(s) {lag.never_committed} never committed (not judged)")
    return Verdict(verdict.passed, f"{verdict.description}; {'; '.join(notes)}")


__all__ = [
    "GroupLag",
    "PartitionLag",
    "first_records",
    "group_lag",
    "lag_check",
]
