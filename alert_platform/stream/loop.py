"""The consume loop of a stream worker: micro-batches from a consumer group, commit when done.

A micro-batch is the first record that arrives (``poll``) and whatever else arrives within
``linger_s`` after it, up to ``max_batch`` records. The processor finishes every effect of a
batch (records produced and flushed, alerts posted and in the ledger) before it returns; only
then are the batch's offsets committed, synchronously. So a worker that dies anywhere leaves
its uncommitted records to the next owner of the partition (another worker after the
rebalance, itself after a restart, or a catch-up run), which finds what was already done in
the ledger: nothing is lost, nothing posted twice.

A batch whose processor raises is not committed: the loop rewinds its partitions to the
batch's first offsets and tries again after a back-off (1 s, doubling, at most 30 s), so a
broken dependency (broker, Slack, ledger) stalls the stream without a crash loop, and the tail
sensor's catch-up takes over once the lag exceeds its bound. ``stop`` (SIGTERM, Ctrl-C, a
terminated Dagster run) ends the loop after the batch in hand: it is finished and committed,
and the consumer leaves its group at once so the partitions move without a session timeout.
A processor that can cut its batch short on ``stop`` (delivery: a paced batch may need
minutes at Slack's pace) leaves the batch uncommitted instead; the next owner repeats it and
the ledger turns what was already posted into no-ops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from alert_platform.kafka.offsets import OffsetRange
from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.runner import cyclic_gc_paused

LOG = logging.getLogger("alert_platform.stream")
_new_record = tuple.__new__  # SourceRecord is a NamedTuple: built without __new__'s checks

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0


class BatchProcessor(Protocol):
    """What a stream does with a micro-batch: every effect finished when it returns."""

    def process(self, records: Sequence[SourceRecord]) -> int:
        """Handle ``records`` (in offset order per partition); how many outputs (alerts
        produced, alerts posted) it made. Raise to have the batch retried."""
        ...


@dataclass(frozen=True)
class LoopOptions:
    """How micro-batches are cut and how often health is reported."""

    max_batch: int = 500
    linger_s: float = 0.005
    poll_s: float = 0.2
    health_interval_s: float = 60.0


@dataclass
class PartitionState:
    """What the worker knows of one assigned partition."""

    committed: int | None = None  # next offset to read, as committed by this worker
    last_timestamp_ms: int | None = None  # of the last record processed
    end_seen: int | None = None  # the offset after the last record fetched


@dataclass
class StreamHealth:
    """A worker's figures since its previous report (rates) and now (positions)."""

    stream: str
    group: str
    member: str
    interval_s: float
    records: int
    outputs: int
    batches: int
    failures: int
    partitions: dict[int, PartitionState]
    last_event_ms: int | None
    last_error: str = ""

    @property
    def events_per_s(self) -> float:
        return self.records / self.interval_s if self.interval_s > 0 else 0.0

    @property
    def outputs_per_min(self) -> float:
        return 60 * self.outputs / self.interval_s if self.interval_s > 0 else 0.0

    def lag(self) -> dict[int, int]:
        """Records fetched but not yet committed, per assigned partition (the local broker's
        high watermark is inexact, so lag is taken from what was fetched and committed)."""
        out: dict[int, int] = {}
        for partition, state in self.partitions.items():
            if state.end_seen is not None and state.committed is not None:
                out[partition] = max(0, state.end_seen - state.committed)
            else:
                out[partition] = 0
        return out


@dataclass
class LoopStats:
    """Totals of one loop's life."""

    records: int = 0
    outputs: int = 0
    batches: int = 0
    failures: int = 0
    commits: int = 0
    ranges: list[OffsetRange] = field(default_factory=list)  # committed, for tests (bounded)


HealthCallback = Callable[[StreamHealth], None]


def batch_ranges(records: Sequence[SourceRecord]) -> list[OffsetRange]:
    """The ``[first, last + 1)`` range per partition of a micro-batch."""
    spans: dict[tuple[str, int], list[int]] = {}
    for record in records:
        span = spans.get((record.topic, record.partition))
        if span is None:
            spans[(record.topic, record.partition)] = [record.offset, record.offset]
        else:
            span[1] = record.offset
    return sorted(OffsetRange(t, p, lo, hi + 1) for (t, p), (lo, hi) in spans.items())


class StreamLoop:
    """Consume ``topic`` in ``consumer``'s group and hand micro-batches to ``processor``.

    ``consumer`` must have ``enable.auto.commit`` off (the loop commits); it is subscribed here
    and closed by :meth:`run`.
    """

    def __init__(
        self,
        stream: str,
        group: str,
        consumer: Consumer,
        processor: BatchProcessor,
        options: LoopOptions = LoopOptions(),
        *,
        on_health: HealthCallback | None = None,
        member: str = "",
        on_start: Callable[[dict[int, int]], None] | None = None,
    ) -> None:
        """``on_start(partition -> offset)``: called with the starts committed for partitions
        the group never committed (the worker records them for the catch-up)."""
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.processor = processor
        self.options = options
        self.on_health = on_health
        self.member = member
        self.on_start = on_start
        self.partitions: dict[int, PartitionState] = {}
        self.stats = LoopStats()
        self._window = LoopStats()
        self._window_started = time.monotonic()
        self._last_event_ms: int | None = None
        self._last_error = ""
        self._assigned = threading.Event()
        self._stop = threading.Event()  # run's

    # -- rebalance callbacks (called inside poll/consume, between batches) --------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.partitions.setdefault(tp.partition, PartitionState())
        self._commit_start(consumer, partitions)
        LOG.info("%s: assigned %s", self.stream, sorted(tp.partition for tp in partitions))
        self._assigned.set()

    def _commit_start(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """A partition the group never committed starts at its end (``auto.offset.reset``):
        commit that start at once, so the tail sensor's catch-up knows from the first moment
        that the stream covers everything from there (records before it are the catch-up's).
        The local broker's end is inexact (low): a few records may be read twice, harmless."""
        try:
            committed = consumer.committed(partitions, timeout=10)
            fresh = [tp for tp in committed if tp.offset < 0]
            starts = []
            for tp in fresh:
                _low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
                starts.append(TopicPartition(tp.topic, tp.partition, max(0, int(high))))
            if starts:
                consumer.commit(offsets=starts, asynchronous=False)
                by_partition = {tp.partition: tp.offset for tp in starts}
                for tp in partitions:  # start exactly where the commit says
                    if tp.partition in by_partition:
                        tp.offset = by_partition[tp.partition]
                LOG.info("%s: new partitions %s start at %s (committed)", self.stream,
                         sorted(by_partition), by_partition)  # fmt: skip
                if self.on_start is not None:
                    self.on_start(by_partition)
        except Exception as exc:  # the reset policy applies; the catch-up covers the rest
            LOG.warning("%s: could not commit the start of new partitions: %s", self.stream, exc)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.partitions.pop(tp.partition, None)
        LOG.info("%s: revoked %s", self.stream, sorted(tp.partition for tp in partitions))

    def wait_assigned(self, timeout: float) -> bool:
        """Whether the group gave this worker partitions within ``timeout`` (tests, benchmarks)."""
        return self._assigned.wait(timeout)

    # -- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> LoopStats:
        """Process until ``stop`` is set, then finish the batch in hand, commit, leave. A
        processor with a ``bind_stop(event)`` method gets ``stop`` (to cut a long batch short:
        what it leaves is not committed)."""
        self._stop = stop
        bind_stop = getattr(self.processor, "bind_stop", None)
        if bind_stop is not None:
            bind_stop(stop)
        self.consumer.subscribe(
            [self.stream], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )  # fmt: skip
        backoff = 0.0
        try:
            while not stop.is_set():
                batch = self._next_batch()
                if batch:
                    if self._handle(batch):
                        backoff = 0.0
                    else:
                        backoff = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, backoff * 2))
                        stop.wait(backoff)
                self._maybe_report()
        finally:
            self._report()
            try:
                self.consumer.close()  # leaves the group: its partitions move at once
            except Exception as exc:  # pragma: no cover - best effort on the way out
                LOG.warning("%s: closing the consumer failed: %s", self.stream, exc)
        return self.stats

    def _next_batch(self) -> list[SourceRecord]:
        first = self.consumer.poll(self.options.poll_s)
        if first is None:
            return []
        messages = [first]
        if self.options.max_batch > 1:
            deadline = time.monotonic() + self.options.linger_s
            while len(messages) < self.options.max_batch:
                left = deadline - time.monotonic()
                more = self.consumer.consume(
                    self.options.max_batch - len(messages), timeout=max(0.0, left)
                )
                messages.extend(more)
                if not more or left <= 0:
                    break
        records: list[SourceRecord] = []
        append = records.append
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.fatal():
                    raise KafkaException(error)
                LOG.warning("%s: consume: %s", self.stream, error)
                continue
            headers = message.headers()
            append(
                _new_record(
                    SourceRecord,
                    (message.topic(), message.partition(), message.offset(),
                     message.timestamp()[1], message.key(), message.value(),
                     tuple(headers) if headers else ()),
                )
            )  # fmt: skip
        return records

    def _handle(self, records: list[SourceRecord]) -> bool:
        """Process and commit one batch; ``False`` when it failed (rewound for a retry)."""
        ranges = batch_ranges(records)
        for rng in ranges:  # fetched: counts as lag until committed
            state = self.partitions.setdefault(rng.partition, PartitionState())
            state.end_seen = max(state.end_seen or 0, rng.end)
        try:
            with cyclic_gc_paused():  # as in a batch run: the batch allocates, keeps no cycles
                outputs = self.processor.process(records)
        except Exception as exc:
            if self._stop.is_set():  # cut short by the drain: the next owner repeats it
                LOG.info("%s: draining; batch %s left uncommitted: %s", self.stream,
                         ", ".join(map(str, ranges)), exc)  # fmt: skip
                return False
            self._fail(ranges, exc)
            return False
        offsets = [TopicPartition(r.topic, r.partition, r.end) for r in ranges]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Done but not committed (e.g. the partition moved in a rebalance): the next owner
            # repeats the batch and the ledger makes the repeat a no-op.
            LOG.warning("%s: commit of %s failed: %s", self.stream, ranges, exc)
        else:
            self.stats.commits += 1
        last_timestamps = {r.partition: r.timestamp_ms for r in records}  # the last one wins
        for rng in ranges:
            state = self.partitions.setdefault(rng.partition, PartitionState())
            state.committed = rng.end
            state.last_timestamp_ms = last_timestamps[rng.partition]
        last = max(last_timestamps.values())
        self._last_event_ms = max(self._last_event_ms or last, last)
        for totals in (self.stats, self._window):
            totals.records += len(records)
            totals.outputs += outputs
            totals.batches += 1
        if len(self.stats.ranges) < 10_000:
            self.stats.ranges.extend(ranges)
        return True

    def _fail(self, ranges: list[OffsetRange], exc: Exception) -> None:
        self.stats.failures += 1
        self._window.failures += 1
        self._last_error = f"{type(exc).__name__}: {exc}"[:500]
        LOG.error("%s: batch %s failed, retrying it: %s", self.stream,
                  ", ".join(map(str, ranges)), self._last_error)  # fmt: skip
        for rng in ranges:
            if rng.partition not in self.partitions:
                continue  # revoked meanwhile: its next owner starts at the committed offset
            try:
                self.consumer.seek(TopicPartition(rng.topic, rng.partition, rng.start))
            except KafkaException as seek_error:
                LOG.warning("%s: rewinding %s failed: %s", self.stream, rng, seek_error)

    def _maybe_report(self) -> None:
        if time.monotonic() - self._window_started >= self.options.health_interval_s:
            self._report()

    def _report(self) -> None:
        now = time.monotonic()
        health = StreamHealth(
            stream=self.stream,
            group=self.group,
            member=self.member,
            interval_s=now - self._window_started,
            records=self._window.records,
            outputs=self._window.outputs,
            batches=self._window.batches,
            failures=self._window.failures,
            partitions={p: PartitionState(**vars(s)) for p, s in self.partitions.items()},
            last_event_ms=self._last_event_ms,
            last_error=self._last_error,
        )
        self._window = LoopStats()
        self._window_started = now
        if self.on_health is not None:
            try:
                self.on_health(health)
            except Exception as exc:  # a report must never stop the stream
                LOG.warning("%s: health report failed: %s", self.stream, exc)
