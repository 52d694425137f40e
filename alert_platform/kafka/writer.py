"""Produce many records, flush once, and fail loudly if any of them was not delivered.

:class:`BatchProducer` wraps a confluent-kafka ``Producer``: :meth:`~BatchProducer.produce` is
the fast path (a full local queue is drained by polling, never surfaced as ``BufferError``),
:meth:`~BatchProducer.flush` waits for every delivery report and raises :class:`ProduceError`
listing the failures. Successful delivery reports are folded into the lowest and highest offset
written per ``(topic, partition)``, so a run can tell which offsets of an output topic it wrote.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from alert_platform.kafka.offsets import BROKER_HINT, OffsetRange

Headers = Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]

# How many failures a ProduceError spells out (all are counted).
MAX_FAILURES_KEPT = 50
DEFAULT_FLUSH_TIMEOUT_S = 60.0
# How long produce() keeps polling for room in a full local queue before giving up.
DEFAULT_QUEUE_TIMEOUT_S = 60.0
# Serve delivery reports every this many produce() calls (keeps the queue from filling up).
_POLL_EVERY = 1000


@dataclass(frozen=True)
class DeliveryFailure:
    """One record the broker did not take."""

    topic: str
    partition: int  # -1: not assigned yet (e.g. no broker was ever reached)
    key: bytes | None
    error: str
    code: int

    def __str__(self) -> str:
        key = self.key.decode("utf-8", "replace") if self.key is not None else None
        where = self.topic if self.partition < 0 else f"{self.topic}[{self.partition}]"
        return f"{where} key={key!r}: {self.error}"


class ProduceError(RuntimeError):
    """Some records were not delivered; ``failures`` lists (up to 50 of) them."""

    def __init__(
        self,
        message: str,
        failures: Sequence[DeliveryFailure] = (),
        failed: int = 0,
        undelivered: int = 0,
    ) -> None:
        listed = "; ".join(str(f) for f in failures[:5])
        more = f" (+{failed - 5} more)" if failed > 5 else ""
        super().__init__(f"{message}{': ' + listed + more if listed else ''}")
        self.failures = tuple(failures)
        self.failed = failed
        self.undelivered = undelivered


@dataclass(frozen=True)
class FlushReport:
    """What one batch (everything produced since the previous flush) delivered."""

    produced: int
    delivered: int
    # (topic, partition) -> (lowest, highest) offset written by this batch
    written: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def written_ranges(self) -> list[OffsetRange]:
        """The smallest offset range per partition covering every record this batch wrote.

        Other producers' records may interleave inside a range.
        """
        return sorted(
            OffsetRange(topic, partition, low, high + 1)
            for (topic, partition), (low, high) in self.written.items()
        )


class BatchProducer:
    """Many ``produce`` calls, one ``flush`` that raises if any delivery failed."""

    __slots__ = (
        "_delivered",
        "_failed",
        "_failures",
        "_produced",
        "_producer",
        "_queue_timeout_s",
        "_report",
        "_written",
        "total_delivered",
    )

    def __init__(
        self, producer: Producer, *, queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    ) -> None:
        self._producer = producer
        self._queue_timeout_s = queue_timeout_s
        self._produced = 0
        self._delivered = 0
        self._failed = 0
        self._failures: list[DeliveryFailure] = []
        self._written: dict[tuple[str, int], list[int]] = {}
        self.total_delivered = 0
        self._report = self._on_delivery  # bound once, not per produce()

    @property
    def producer(self) -> Producer:
        return self._producer

    @property
    def pending(self) -> int:
        """Records produced since the last flush whose delivery report has not arrived."""
        return self._produced - self._delivered - self._failed

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self._delivered += 1
            where = (message.topic(), message.partition())
            offset = message.offset()
            span = self._written.get(where)
            if span is None:
                self._written[where] = [offset, offset]
            elif offset > span[1]:  # the usual case: reports arrive in offset order
                span[1] = offset
            elif offset < span[0]:
                span[0] = offset
            return
        self._failed += 1
        if len(self._failures) < MAX_FAILURES_KEPT:
            self._failures.append(
                DeliveryFailure(
                    message.topic() or "?",
                    -1 if message.partition() is None else message.partition(),
                    message.key(),
                    error.str(),
                    error.code(),
                )
            )

    def produce(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes | str | None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue one record (non-blocking unless the local queue is full)."""
        if not headers and partition is None and timestamp_ms is None:
            self.produce_many(topic, ((key, value),))
            return
        kwargs: dict[str, object] = {"on_delivery": self._report}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        try:
            self._producer.produce(topic, value, key, **kwargs)
        except BufferError:
            self._produce_when_room(topic, key, value, kwargs)
        self._produced += 1
        if self._produced % _POLL_EVERY == 0:
            self._producer.poll(0)

    def produce_many(
        self, topic: str, messages: Iterable[tuple[bytes | str | None, bytes | str | None]]
    ) -> None:
        """:meth:`produce` every ``(key, value)`` of ``messages`` to ``topic`` (the hot path:
        no per-record keyword arguments or method calls)."""
        produce, poll, report = self._producer.produce, self._producer.poll, self._report
        produced = self._produced
        try:
            for key, value in messages:
                try:
                    # positional: topic, value, key, partition (-1: the partitioner's), callback
                    produce(topic, value, key, -1, report)
                except BufferError:
                    self._produced = produced
                    self._produce_when_room(topic, key, value, {"on_delivery": report})
                produced += 1
                if not produced % _POLL_EVERY:
                    poll(0)
        finally:
            self._produced = produced

    def _produce_when_room(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes | str | None,
        kwargs: dict[str, object],
    ) -> None:
        deadline = time.monotonic() + self._queue_timeout_s
        while True:
            self._producer.poll(0.05)  # serve delivery reports: frees queue space
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise ProduceError(
                        f"the local produce queue stayed full for {self._queue_timeout_s:g}s "
                        f"({self.pending} records awaiting delivery to {topic}): "
                        "is the broker reachable?"
                    ) from None

    def flush(self, timeout: float = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait for every delivery report; raise :class:`ProduceError` if any record failed
        or is still undelivered after ``timeout`` seconds. Either way the next batch starts
        from zero."""
        remaining = self._producer.flush(timeout)
        report = FlushReport(
            self._produced,
            self._delivered,
            {tp: (span[0], span[1]) for tp, span in self._written.items()},
        )
        failures, failed = self._failures, self._failed
        self.total_delivered += self._delivered
        self._produced = self._delivered = self._failed = 0
        self._failures = []
        self._written = {}
        if failed or remaining:
            parts = []
            if failed:
                parts.append(f"{failed} of {report.produced} records failed delivery")
            if remaining:
                parts.append(f"{remaining} still undelivered after {timeout:g}s ({BROKER_HINT})")
            raise ProduceError(" and ".join(parts), failures, failed, remaining)
        return report
