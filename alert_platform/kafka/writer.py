"""Produce many records, flush once, and fail loudly if any of them was not delivered.

:class:`BatchProducer` wraps a confluent-kafka ``Producer``: :meth:`~BatchProducer.produce` is
the fast path (a full local queue is drained by polling, never surfaced as ``BufferError``),
:meth:`~BatchProducer.flush` waits for every delivery report and raises :class:`ProduceError`
listing the failures. Successful delivery reports are folded into the lowest and highest offset
written per ``(topic, partition)``, so a run can tell which offsets of an output topic it wrote.

A *fatal* client error (e.g. ``UNKNOWN_PRODUCER_ID`` after the idempotent producer's broker
restarted without its data while records were in flight) ends a producer for good.
confluent-kafka raises it once from ``poll``/``flush`` (not through ``error_cb``; sometimes as a
``SystemError`` that lost it) and refuses every later ``produce`` with ``_FATAL``. So ``flush``
waits in short slices and raises :class:`ProduceError` (``fatal`` set) as soon as one shows, and
``produce`` raises it at once from then on: make a new producer. Non-fatal client errors (broker
down) are retried by librdkafka until the flush timeout; :meth:`BatchProducer.from_settings` logs
each kind once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from alert_platform.kafka.clients import make_producer
from alert_platform.kafka.offsets import BROKER_HINT, OffsetRange
from alert_platform.settings import Settings

LOG = logging.getLogger("alert_platform.kafka.writer")

Headers = Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]

# How many failures a ProduceError spells out (all are counted).
MAX_FAILURES_KEPT = 50
DEFAULT_FLUSH_TIMEOUT_S = 60.0
# How long produce() keeps polling for room in a full local queue before giving up.
DEFAULT_QUEUE_TIMEOUT_S = 60.0
# Serve delivery reports every this many produce() calls (keeps the queue from filling up).
_POLL_EVERY = 1000
# flush() waits in librdkafka flush calls of at most this long, so a fatal error ends it quickly.
_FLUSH_SLICE_S = 0.5
# librdkafka refuses a topic name this long (_INVALID_ARG) before queueing anything, but checks
# for a fatal error (_FATAL) first: produce() to it tells a dead client from a live one.
_PROBE_TOPIC = "x" * 513
_REASON_LOST = KafkaError(
    KafkaError._FATAL,
    "confluent-kafka lost the reason while running delivery callbacks",
    fatal=True,
)


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
    """Some records were not delivered; ``failures`` lists (up to 50 of) them. ``fatal``: the
    fatal client error that ended the producer (make a new one), if that was the cause."""

    def __init__(
        self,
        message: str,
        failures: Sequence[DeliveryFailure] = (),
        failed: int = 0,
        undelivered: int = 0,
        *,
        fatal: KafkaError | None = None,
    ) -> None:
        listed = "; ".join(str(f) for f in failures[:5])
        more = f" (+{failed - 5} more)" if failed > 5 else ""
        super().__init__(f"{message}{': ' + listed + more if listed else ''}")
        self.failures = tuple(failures)
        self.failed = failed
        self.undelivered = undelivered
        self.fatal = fatal


def _fatal_error(
    fatal: KafkaError,
    produced: int,
    failed: int,
    undelivered: int,
    failures: Sequence[DeliveryFailure],
) -> ProduceError:
    """The :class:`ProduceError` for a producer that ``fatal`` ended."""
    reason = f"{fatal.name()}: {fatal.str()}"
    if fatal.code() == KafkaError._FATAL:  # the reason is lost: name the broker's error, if any
        broker = next((f for f in failures if f.code > 0), None)
        if broker is not None:
            reason += f"; delivery reports name {KafkaError(broker.code).name()}: {broker.error}"
    message = (
        f"the Kafka producer hit a fatal error and cannot deliver any more records "
        f"({reason}); of {produced} records produced since the last flush, "
        f"{failed} failed delivery and {undelivered} are undelivered. A new producer is needed "
        f"(a rerun makes one); {BROKER_HINT} (a broker that restarted without its data ends an "
        "idempotent producer)"
    )
    return ProduceError(message, failures, failed, undelivered, fatal=fatal)


def _fatal_in(exc: BaseException) -> KafkaError | None:
    """The fatal error a ``KafkaException`` in ``exc``'s cause/context chain carries, or None.

    confluent-kafka raises a fatal error from ``poll``/``flush``; a delivery callback it runs in
    the same call may then fail with a ``SystemError`` caused by it. ``produce`` on a producer
    that is already fatal raises ``_FATAL`` (without the reason).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, KafkaException) and current.args:
            error = current.args[0]
            if isinstance(error, KafkaError) and (
                error.fatal() or error.code() == KafkaError._FATAL
            ):
                return error
        current = current.__cause__ or current.__context__
    return None


def _drop_tracebacks(exc: BaseException) -> None:
    """Drop the tracebacks of ``exc`` and the exceptions it chains.

    confluent-kafka 2.16 leaks a reference to the exception it raises after a fatal error; its
    traceback would keep the frames, and so the dead producer (and its threads), alive.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


def _probe_fatal(producer: Producer) -> KafkaError | None:
    """``_FATAL`` if ``producer`` hit a fatal error, else None; queues nothing either way.

    For when ``poll``/``flush`` raised without saying why (a ``SystemError`` "returned NULL
    without setting an exception": a delivery callback ran over the pending fatal exception).
    """
    try:
        producer.produce(_PROBE_TOPIC, b"")
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError._FATAL:
            return error
    except Exception:
        pass
    return None


class ClientErrors:
    """A producer's ``error_cb``: logs each kind (code) of non-fatal client error once at
    WARNING (librdkafka retries those itself) and keeps the ``fatal`` error, if any."""

    __slots__ = ("_logged", "fatal")

    def __init__(self) -> None:
        self.fatal: KafkaError | None = None
        self._logged: set[int] = set()

    def __call__(self, error: KafkaError) -> None:
        if error.fatal():  # confluent-kafka raises these from poll/flush instead; just in case
            if self.fatal is None:
                self.fatal = error
            return
        code = error.code()
        if code not in self._logged:
            self._logged.add(code)
            LOG.warning(
                "Kafka producer: %s (%s); librdkafka keeps retrying until the flush timeout; %s",
                error.str(),
                error.name(),
                BROKER_HINT,
            )


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
    """Many ``produce`` calls, one ``flush`` that raises if any delivery failed.

    Prefer :meth:`from_settings`, which also wires in the ``error_cb`` that logs client errors;
    a fatal error is caught either way.
    """

    __slots__ = (
        "_delivered",
        "_errors",
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
        self,
        producer: Producer,
        *,
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
        errors: ClientErrors | None = None,
    ) -> None:
        """``errors``: the :class:`ClientErrors` ``producer`` was made with as ``error_cb``."""
        self._producer = producer
        self._errors = errors if errors is not None else ClientErrors()
        self._queue_timeout_s = queue_timeout_s
        self._produced = 0
        self._delivered = 0
        self._failed = 0
        self._failures: list[DeliveryFailure] = []
        self._written: dict[tuple[str, int], list[int]] = {}
        self.total_delivered = 0
        self._report = self._on_delivery  # bound once, not per produce()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
        **extra: str | int | bool,
    ) -> BatchProducer:
        """A BatchProducer over ``make_producer(settings, **extra)`` whose ``error_cb`` is a
        :class:`ClientErrors` (non-fatal client errors logged once per kind)."""
        errors = ClientErrors()
        producer = make_producer(settings, error_cb=errors, **extra)
        return cls(producer, queue_timeout_s=queue_timeout_s, errors=errors)

    @property
    def producer(self) -> Producer:
        return self._producer

    @property
    def fatal_error(self) -> KafkaError | None:
        """The fatal client error that ended this producer (make a new one), or None."""
        return self._errors.fatal

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
        if error.code() == KafkaError._FATAL and self._errors.fatal is None:
            self._errors.fatal = error
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
        if self._errors.fatal is not None:
            raise self._fatal_produce_error()
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
        except KafkaException as exc:
            self._raise_if_fatal(exc)
            raise
        self._produced += 1
        if self._produced % _POLL_EVERY == 0:
            self._poll(0)

    def produce_many(
        self, topic: str, messages: Iterable[tuple[bytes | str | None, bytes | str | None]]
    ) -> None:
        """:meth:`produce` every ``(key, value)`` of ``messages`` to ``topic`` (the hot path:
        no per-record keyword arguments or method calls)."""
        if self._errors.fatal is not None:
            raise self._fatal_produce_error()
        produce, poll, report = self._producer.produce, self._poll, self._report
        produced = self._produced
        try:
            for key, value in messages:
                try:
                    # positional: topic, value, key, partition (-1: the partitioner's), callback
                    produce(topic, value, key, -1, report)
                except BufferError:
                    self._produced = produced
                    self._produce_when_room(topic, key, value, {"on_delivery": report})
                except KafkaException as exc:
                    self._produced = produced
                    self._raise_if_fatal(exc)
                    raise
                produced += 1
                if not produced % _POLL_EVERY:
                    self._produced = produced  # counted right if poll raises
                    poll(0)
        finally:
            self._produced = produced

    def _poll(self, timeout: float) -> None:
        """Serve delivery reports; :class:`ProduceError` once the client hit a fatal error."""
        try:
            self._producer.poll(timeout)
        except Exception as exc:
            self._raise_if_fatal(exc)
            raise
        if self._errors.fatal is not None:
            raise self._fatal_produce_error()

    def _note_fatal(self, exc: BaseException) -> bool:
        """Whether ``exc`` (raised by the client) means a fatal client error; remembers it."""
        fatal = _fatal_in(exc)
        if fatal is None and _probe_fatal(self._producer) is not None:
            fatal = _REASON_LOST
        if fatal is None:
            return False
        if self._errors.fatal is None:  # keep the first one: it names the reason
            self._errors.fatal = fatal
        _drop_tracebacks(exc)
        return True

    def _raise_if_fatal(self, exc: BaseException) -> None:
        """Raise :class:`ProduceError` from ``exc`` if it means a fatal client error."""
        if self._note_fatal(exc):
            raise self._fatal_produce_error() from exc

    def _fatal_produce_error(self) -> ProduceError:
        fatal = self._errors.fatal
        assert fatal is not None
        return _fatal_error(fatal, self._produced, self._failed, self.pending, self._failures)

    def _produce_when_room(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes | str | None,
        kwargs: dict[str, object],
    ) -> None:
        deadline = time.monotonic() + self._queue_timeout_s
        while True:
            self._poll(0.05)  # serve delivery reports: frees queue space
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return
            except KafkaException as exc:
                self._raise_if_fatal(exc)
                raise
            except BufferError:
                if time.monotonic() > deadline:
                    raise ProduceError(
                        f"the local produce queue stayed full for {self._queue_timeout_s:g}s "
                        f"({self.pending} records awaiting delivery to {topic}): "
                        "is the broker reachable?"
                    ) from None

    def flush(self, timeout: float = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
        """Wait for every delivery report; raise :class:`ProduceError` if any record failed,
        is still undelivered after ``timeout`` seconds, or the client hit a fatal error (raised
        within ~0.5 s of it, ``fatal`` set). Either way the next batch starts from zero."""
        remaining = self._await_delivery(time.monotonic() + timeout)
        fatal = self._errors.fatal
        report = FlushReport(
            self._produced,
            self._delivered,
            {tp: (span[0], span[1]) for tp, span in self._written.items()},
        )
        failures, failed, pending = self._failures, self._failed, self.pending
        self.total_delivered += self._delivered
        self._produced = self._delivered = self._failed = 0
        self._failures = []
        self._written = {}
        if fatal is not None:
            raise _fatal_error(fatal, report.produced, failed, pending, failures)
        if failed or remaining:
            parts = []
            if failed:
                parts.append(f"{failed} of {report.produced} records failed delivery")
            if remaining:
                parts.append(f"{remaining} still undelivered after {timeout:g}s ({BROKER_HINT})")
            raise ProduceError(" and ".join(parts), failures, failed, remaining)
        return report

    def _await_delivery(self, deadline: float) -> int:
        """``producer.flush`` in slices until nothing is queued, ``deadline`` passes or the client
        hit a fatal error; returns how many records are still queued."""
        flush = self._producer.flush
        while True:
            try:
                remaining = flush(min(_FLUSH_SLICE_S, max(0.0, deadline - time.monotonic())))
            except Exception as exc:
                if not self._note_fatal(exc):
                    raise
                # librdkafka fails every queued record at once: collect their delivery reports.
                remaining = self.pending
                with contextlib.suppress(Exception):
                    remaining = flush(_FLUSH_SLICE_S)
                return remaining
            if not remaining or self._errors.fatal is not None or time.monotonic() >= deadline:
                return remaining
