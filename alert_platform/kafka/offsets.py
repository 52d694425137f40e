"""Offset ranges and the *true* end of a partition.

Everything downstream of a sensor works on explicit half-open ranges ``[start, end)`` of one
partition (see docs/architecture.md, "Offsets, not consumer groups").

The end of a partition is probed, not trusted from the high watermark: the local broker (Tansu)
reports the base offset of the partition's last *batch* + 1 as its high watermark (100 records
produced in one batch -> ``hi = 1``), see docs/local-broker.md. :func:`probe_end_offsets` asks
for the watermarks (one ListOffsets request per partition), then reads the last batch (assign at
``max(low, hi - 1)``) and returns ``max(hi, last offset seen + 1, EOF offset)``. A partition is
finished as soon as the records read reach the fetch response's high watermark (or a
partition-EOF event arrives, with ``enable.partition.eof=true``), so on a real broker this is one
small fetch that agrees with ``hi``, and on Tansu one fetch of the last batch. The probe never
answers less than ``hi`` (transaction markers or compaction may leave the last offsets without
a readable record) and never more than an offset it has seen a record (or EOF) for.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

# How long one consume() call may block while probing: short, so that a finished probe
# returns at once (consume() only returns early when it has its full count of messages).
_PROBE_POLL_S = 0.002
# A partition that yields neither a record nor EOF for this long (e.g. its last offset is a
# transaction marker on a real broker and partition EOF events are off) keeps ``hi``.
DEFAULT_PROBE_IDLE_S = 1.0


# Appended to errors, so that a failed run or sensor tick names the setting (or command) to fix.
BROKER_HINT = "is the Kafka broker at KAFKA_BOOTSTRAP_SERVERS up and reachable?"
TOPIC_HINT = "create the platform topics with `alert-platform topics create`"


class OffsetError(RuntimeError):
    """Offsets of a topic could not be determined (missing topic, broker error, timeout)."""


class TopicNotFound(OffsetError):
    """The topic does not exist on the broker."""


@dataclass(frozen=True, order=True)
class OffsetRange:
    """Offsets ``start`` (inclusive) to ``end`` (exclusive) of one topic partition."""

    topic: str
    partition: int
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.partition < 0 or self.start < 0 or self.end < self.start:
            raise ValueError(f"invalid offset range {self}: need 0 <= start <= end, partition >= 0")

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.start}-{self.end}"

    @property
    def size(self) -> int:
        """How many offsets the range spans (records, on a topic without gaps)."""
        return self.end - self.start

    @property
    def empty(self) -> bool:
        return self.end == self.start

    def __contains__(self, offset: object) -> bool:
        return isinstance(offset, int) and self.start <= offset < self.end

    def as_dict(self) -> dict[str, str | int]:
        """JSON-friendly form (run config, cursors)."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "start": self.start,
            "end": self.end,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> OffsetRange:
        """Inverse of :meth:`as_dict`; raises ``ValueError`` on a malformed mapping."""
        try:
            return cls(
                str(raw["topic"]),
                int(raw["partition"]),  # type: ignore[call-overload]
                int(raw["start"]),  # type: ignore[call-overload]
                int(raw["end"]),  # type: ignore[call-overload]
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an offset range: {raw!r} ({exc})") from None

    def split(self, max_records: int) -> list[OffsetRange]:
        """Consecutive sub-ranges of at most ``max_records`` offsets covering this range.

        An empty range splits into ``[]``.
        """
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        return [
            OffsetRange(self.topic, self.partition, start, min(self.end, start + max_records))
            for start in range(self.start, self.end, max_records)
        ]


def list_partitions(consumer: Consumer, topic: str, *, timeout: float = 10.0) -> list[int]:
    """The topic's partition ids (sorted); :class:`TopicNotFound` when it does not exist."""
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
    except Exception as exc:  # KafkaException: broker unreachable within timeout
        raise OffsetError(f"cannot list partitions of {topic!r}: {exc}; {BROKER_HINT}") from exc
    described = metadata.topics.get(topic)
    if described is None:
        raise TopicNotFound(f"topic {topic!r} does not exist; {TOPIC_HINT}")
    if described.error is not None:
        if described.error.code() in (
            KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError._UNKNOWN_TOPIC,
        ):
            raise TopicNotFound(f"topic {topic!r} does not exist; {TOPIC_HINT}")
        raise OffsetError(f"metadata of {topic!r} failed: {described.error}")
    if not described.partitions:
        raise TopicNotFound(f"topic {topic!r} has no partitions")
    return sorted(described.partitions)


def watermarks(
    consumer: Consumer,
    topic: str,
    partitions: Iterable[int] | None = None,
    *,
    timeout: float = 10.0,
    admin: AdminClient | None = None,
) -> dict[int, tuple[int, int]]:
    """``(low, high)`` watermarks per partition, straight from the broker (ListOffsets).

    With ``admin``, two ``AdminClient.list_offsets`` calls (earliest, latest) cover every
    partition; else one request per partition through ``consumer``. On the local broker
    ``high`` is *not* the end of the partition: use :func:`probe_end_offsets` for that.
    """
    if partitions is None:
        partitions = list_partitions(consumer, topic, timeout=timeout)
    if admin is not None:
        return list_watermarks(admin, topic, partitions, timeout=timeout)
    out: dict[int, tuple[int, int]] = {}
    for partition in partitions:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout, cached=False
            )
        except Exception as exc:  # KafkaException
            raise OffsetError(
                f"watermarks of {topic}[{partition}] failed: {exc}; {BROKER_HINT}"
            ) from exc
        out[partition] = (int(low), int(high))
    return out


def list_watermarks(
    admin: AdminClient, topic: str, partitions: Iterable[int], *, timeout: float = 10.0
) -> dict[int, tuple[int, int]]:
    """``(low, high)`` per partition from two ``list_offsets`` calls (all partitions each)."""
    wanted = sorted(set(partitions))
    if not wanted:
        return {}
    answers: list[dict[int, int]] = []
    for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):
        request = {TopicPartition(topic, p): spec for p in wanted}
        try:
            futures = admin.list_offsets(request, request_timeout=timeout)
            answers.append({tp.partition: int(f.result().offset) for tp, f in futures.items()})
        except Exception as exc:  # KafkaException from the call or a future
            raise OffsetError(f"watermarks of {topic} failed: {exc}; {BROKER_HINT}") from exc
    low, high = answers
    return {p: (low[p], high[p]) for p in wanted}


def low_watermarks(
    consumer: Consumer,
    topic: str,
    partitions: Iterable[int] | None = None,
    *,
    timeout: float = 10.0,
) -> dict[int, int]:
    """The first offset still stored per partition (offsets below it were deleted)."""
    return {
        p: low
        for p, (low, _high) in watermarks(consumer, topic, partitions, timeout=timeout).items()
    }


def probe_end_offsets(
    consumer: Consumer,
    topic: str,
    partitions: Sequence[int] | None = None,
    *,
    timeout: float = 10.0,
    idle_s: float = DEFAULT_PROBE_IDLE_S,
) -> dict[int, int]:
    """The true end (last offset + 1, the next offset to be written) of each partition.

    ``partitions`` defaults to all of the topic's. Replaces the consumer's assignment and leaves
    it unassigned. Cost: one ListOffsets per partition plus one fetch of each non-empty
    partition's last batch (all partitions fetched together). ``timeout`` bounds the whole probe
    (:class:`OffsetError` on expiry, ``TopicNotFound`` when the topic does not exist);
    ``idle_s`` is how long a partition that returns nothing at all may keep the probe waiting
    before its high watermark is taken as its end (real broker, last offset a transaction
    marker, no partition EOF events).
    """
    probed = probe_watermarks(consumer, topic, partitions, timeout=timeout, idle_s=idle_s)
    return {partition: end for partition, (_low, end) in probed.items()}


def probe_watermarks(
    consumer: Consumer,
    topic: str,
    partitions: Sequence[int] | None = None,
    *,
    timeout: float = 10.0,
    idle_s: float = DEFAULT_PROBE_IDLE_S,
    admin: AdminClient | None = None,
) -> dict[int, tuple[int, int]]:
    """``(low watermark, true end)`` per partition: :func:`probe_end_offsets` plus the low
    watermarks it reads anyway (through ``admin``'s ``list_offsets`` when given).

    Prefer it to ``probe_end_offsets`` + :func:`low_watermarks`: a ListOffsets request sent
    right after the probe waits behind the probe's last (long-poll) fetch on the same broker
    connection, i.e. up to ``fetch.wait.max.ms``.
    """
    deadline = time.monotonic() + timeout
    marks = watermarks(consumer, topic, partitions, timeout=timeout, admin=admin)
    lows = {partition: low for partition, (low, _high) in marks.items()}
    ends = {partition: max(high, 0) for partition, (_low, high) in marks.items()}
    to_read = [
        TopicPartition(topic, partition, max(low, high - 1))
        for partition, (low, high) in marks.items()
        if high > low
    ]
    if to_read:
        consumer.assign(to_read)
        try:
            _read_last_batches(consumer, topic, ends, to_read, deadline, timeout, idle_s)
        finally:
            consumer.unassign()
    return {partition: (lows[partition], ends[partition]) for partition in marks}


def _read_last_batches(
    consumer: Consumer,
    topic: str,
    ends: dict[int, int],
    assigned: list[TopicPartition],
    deadline: float,
    timeout: float,
    idle_s: float,
) -> None:
    """Raise ``ends`` (high watermarks) to the offset after the last record of each partition."""
    pending = {tp.partition for tp in assigned}
    # The high watermark of the first fetch response that carried records, per partition: the
    # records read must reach it. (Later responses may report more, if producers are busy; the
    # probe does not chase them.)
    targets: dict[int, int] = {}
    started = time.monotonic()
    while pending:
        now = time.monotonic()
        if now > deadline:
            raise OffsetError(
                f"probing the end of {topic} partitions {sorted(pending)} took more than "
                f"{timeout}s (last known ends {ends})"
            )
        if now - started > idle_s:
            # Partitions that returned nothing at all keep their high watermark.
            pending &= set(targets)
            if not pending:
                return
        for message in consumer.consume(10_000, _PROBE_POLL_S):
            error = message.error()
            partition = message.partition()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if message.offset() > ends[partition]:
                        ends[partition] = message.offset()
                    pending.discard(partition)
                    continue
                if message.topic() == topic and not error.retriable():
                    raise OffsetError(f"probing {topic}[{partition}] failed: {error}")
                continue  # transient (broker connection): the deadline bounds it
            end = message.offset() + 1
            if end > ends[partition]:
                ends[partition] = end
            if partition not in targets:
                # The fetch response that carried this record updated the cached watermark.
                _low, fetched_high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
                targets[partition] = fetched_high
        for partition in list(pending):
            if partition in targets and ends[partition] >= targets[partition]:
                pending.discard(partition)


# -- offsets by time ------------------------------------------------------------------------------

_FAR_FUTURE_MS = 10 * 365 * 86_400_000


def offsets_for_times_is_reliable(
    consumer: Consumer, topic: str, partitions: Sequence[int]
) -> bool:
    """Whether the broker answers a timestamp after every record with "end" (-1), as Kafka does.

    The local Tansu broker answers 0 for any timestamp (and librdkafka's mock cluster -1 for
    any); such a broker is not trusted.
    """
    if not partitions:
        return False
    future = int(time.time() * 1000) + _FAR_FUTURE_MS
    answer = consumer.offsets_for_times(
        [TopicPartition(topic, p, future) for p in partitions], timeout=10
    )
    return all(tp.error is None and tp.offset == -1 for tp in answer)


def first_offsets_at(
    consumer: Consumer,
    topic: str,
    bounds: Mapping[int, tuple[int, int]],
    timestamp_ms: int,
    *,
    timeout: float = 10.0,
) -> tuple[dict[int, int], str]:
    """Per partition, the first offset in ``[low, end)`` (``bounds``) whose record timestamp is
    ``>= timestamp_ms`` (``end`` when none is), and how it was found.

    ``offsets_for_times`` where the broker answers it correctly; elsewhere (the local broker)
    a binary search that reads one record per step, which assumes timestamps that do not
    decrease along the partition (producer create times of one writer; a late record at most
    moves the start by the records around it). Replaces the consumer's assignment.
    """
    partitions = sorted(p for p, (low, end) in bounds.items() if end > low)
    out = {p: end for p, (_low, end) in bounds.items()}
    if not partitions:
        return out, "empty"
    if offsets_for_times_is_reliable(consumer, topic, partitions):
        answer = consumer.offsets_for_times(
            [TopicPartition(topic, p, timestamp_ms) for p in partitions], timeout=timeout
        )
        for tp in answer:
            low, end = bounds[tp.partition]
            out[tp.partition] = end if tp.offset < 0 else max(low, min(end, tp.offset))
        return out, "offsets_for_times"
    for partition in partitions:
        low, end = bounds[partition]
        lo, hi = low, end  # invariant: the answer lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            found = _timestamp_at(consumer, topic, partition, mid, end, timeout)
            if found is None:  # nothing readable at or after mid
                hi = mid
                continue
            offset, ts = found
            if ts >= timestamp_ms:
                hi = mid
            else:
                lo = offset + 1
        out[partition] = lo
    return out, "binary_search"


def _timestamp_at(
    consumer: Consumer, topic: str, partition: int, offset: int, end: int, timeout: float
) -> tuple[int, int] | None:
    """``(offset, timestamp)`` of the first record at or after ``offset`` (below ``end``)."""
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for message in consumer.consume(1, 0.1):
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        return None
                    continue
                if message.offset() >= end:
                    return None
                if message.offset() >= offset:
                    return message.offset(), message.timestamp()[1]
    finally:
        consumer.unassign()
    raise OffsetError(f"no record of {topic}[{partition}] at offset {offset} within {timeout}s")
