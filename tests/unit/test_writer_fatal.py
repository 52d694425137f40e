"""BatchProducer and fatal client errors, driven by a fake standing in for confluent_kafka.Producer.

The fake behaves as confluent-kafka 2.16 was seen to against a broker that restarted empty
(tests/integration/test_producer_fatal.py checks the real thing): ``flush``/``poll`` raise the
fatal error once as a ``KafkaException``, later calls fail every queued record with the broker's
error, and ``produce`` raises ``_FATAL`` from then on. confluent-kafka may also lose the fatal
exception while it runs Python delivery callbacks and raise a bare ``SystemError`` instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from confluent_kafka import KafkaError, KafkaException

from alert_platform.kafka.writer import BatchProducer, ClientErrors, ProduceError, _probe_fatal

FATAL = KafkaError(
    KafkaError.UNKNOWN_PRODUCER_ID,
    "ProduceRequest for t [0] with 3 message(s) failed due to unknown producer id: "
    "unable to retry without risking duplication/reordering",
    fatal=True,
)
TRANSPORT = KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9/1: Connect failed: Connection refused")
ALL_DOWN = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")


class FakeMessage:
    def __init__(self, topic: str, key: bytes | None, partition: int, offset: int) -> None:
        self._topic, self._key, self._partition, self._offset = topic, key, partition, offset

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes | None:
        return self._key

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


Callback = Callable[[KafkaError | None, FakeMessage], None]


@dataclass
class FakeProducer:
    """Queues records; each ``flush``/``poll`` call runs the next step of ``script``.

    Steps: ``"wait"`` (deliver nothing; ``flush`` sleeps its timeout), ``"deliver"`` (deliver
    everything queued), ``"fatal"`` (raise ``fatal_exc`` once; later calls fail every queued
    record with UNKNOWN_PRODUCER_ID and ``produce`` raises ``_FATAL``), ``"fatal-quiet"`` (as
    ``"fatal"``, but no delivery report ever arrives), ``"fatal-lost"`` (as ``"fatal"``, but
    raise a bare SystemError), ``"crash"`` (a bare SystemError, not fatal), or an error_cb error
    to report. When the script runs out, the last step repeats.
    """

    script: list[object] = field(default_factory=lambda: ["deliver"])
    error_cb: Callable[[KafkaError], None] | None = None
    capacity: int = 1_000_000
    fatal_exc: BaseException = field(default_factory=lambda: KafkaException(FATAL))
    queue: list[tuple[str, bytes | None, Callback]] = field(default_factory=list)
    flush_timeouts: list[float] = field(default_factory=list)
    polls: int = 0
    dead: bool = False
    quiet: bool = False
    offset: int = 0

    def produce(
        self,
        topic: str,
        value: object = None,
        key: bytes | None = None,
        *args: object,
        **kw: object,
    ) -> None:
        if self.dead:
            raise KafkaException(KafkaError(KafkaError._FATAL, "Unable to produce message"))
        if len(topic) > 512:
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "Unable to produce message"))
        if len(self.queue) >= self.capacity:
            raise BufferError("Local: Queue full")
        callback = args[1] if len(args) > 1 else kw["on_delivery"]
        self.queue.append((topic, key, callback))  # type: ignore[arg-type]

    def _step(self) -> object:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def _serve(self, step: object, timeout: float, *, flushing: bool) -> None:
        if self.dead:
            if not self.quiet:  # librdkafka fails every queued record after the fatal error
                queued, self.queue = self.queue, []
                for topic, key, callback in queued:
                    error = KafkaError(KafkaError.UNKNOWN_PRODUCER_ID)
                    callback(error, FakeMessage(topic, key, 0, -1))
            return
        if isinstance(step, KafkaError):
            assert self.error_cb is not None
            self.error_cb(step)
        elif step in ("fatal", "fatal-quiet"):
            self.dead, self.quiet = True, step == "fatal-quiet"
            raise self.fatal_exc
        elif step in ("fatal-lost", "crash"):
            self.dead = step == "fatal-lost"
            raise SystemError("<built-in method flush> returned NULL without setting an exception")
        elif step == "deliver":
            queued, self.queue = self.queue, []
            for topic, key, callback in queued:
                callback(None, FakeMessage(topic, key, 0, self.offset))
                self.offset += 1
            return
        if flushing:
            time.sleep(timeout)

    def poll(self, timeout: float = -1) -> int:
        self.polls += 1
        self._serve(self._step(), timeout, flushing=False)
        return 0

    def flush(self, timeout: float = -1) -> int:
        self.flush_timeouts.append(timeout)
        self._serve(self._step(), timeout, flushing=True)
        return len(self.queue)

    def __len__(self) -> int:
        return len(self.queue)


def batch(fake: FakeProducer, **options: object) -> BatchProducer:
    return BatchProducer(fake, **options)  # type: ignore[arg-type]


def produce_three(producer: BatchProducer) -> None:
    producer.produce_many("t", [(b"k0", b"v"), (b"k1", b"v")])
    producer.produce("t", b"k2", b"v", headers=[("h", b"1")])


def timed_flush(producer: BatchProducer, timeout: float = 60.0) -> tuple[ProduceError, float]:
    started = time.monotonic()
    with pytest.raises(ProduceError) as caught:
        producer.flush(timeout)
    return caught.value, time.monotonic() - started


# -- flush ------------------------------------------------------------------------------------


def test_fatal_error_ends_the_flush_at_once_with_reason_and_counts() -> None:
    fake = FakeProducer(script=["wait", "fatal"])
    producer = batch(fake)
    produce_three(producer)
    error, elapsed = timed_flush(producer)
    assert elapsed < 2.0  # one 0.5 s slice, not the 60 s timeout
    assert fake.flush_timeouts and all(t <= 0.5 for t in fake.flush_timeouts)
    assert error.fatal is FATAL and producer.fatal_error is FATAL
    # The records the fatal error failed are reported, with the broker's reason.
    assert (error.failed, error.undelivered) == (3, 0)
    assert {f.key for f in error.failures} == {b"k0", b"k1", b"k2"}
    assert {f.code for f in error.failures} == {KafkaError.UNKNOWN_PRODUCER_ID}
    message = str(error)
    assert "fatal error" in message and "cannot deliver any more records" in message
    assert "UNKNOWN_PRODUCER_ID" in message and "unable to retry" in message
    assert "3 failed delivery and 0 are undelivered" in message
    assert "KAFKA_BOOTSTRAP_SERVERS" in message
    assert producer.pending == 0  # the next batch starts from zero


def test_records_without_a_report_count_as_undelivered() -> None:
    fake = FakeProducer(script=["fatal-quiet"])
    producer = batch(fake)
    produce_three(producer)
    error, elapsed = timed_flush(producer)
    assert elapsed < 1.5
    assert (error.failed, error.undelivered, error.fatal) == (0, 3, FATAL)
    assert "0 failed delivery and 3 are undelivered" in str(error)


def test_fatal_error_behind_a_delivery_callback_crash_is_recognised() -> None:
    # confluent-kafka runs delivery callbacks with the fatal exception still set: the callback
    # then fails with a SystemError caused by it.
    crash = SystemError("<built-in method topic> returned a result with an exception set")
    crash.__cause__ = KafkaException(FATAL)
    fake = FakeProducer(script=["fatal"], fatal_exc=crash)
    producer = batch(fake)
    produce_three(producer)
    error, elapsed = timed_flush(producer)
    assert elapsed < 1.5 and error.fatal is FATAL and error.failed == 3


def test_fatal_error_whose_exception_got_lost_is_recognised() -> None:
    fake = FakeProducer(script=["wait", "fatal-lost"])
    producer = batch(fake)
    produce_three(producer)
    error, elapsed = timed_flush(producer)
    assert elapsed < 2.0
    assert error.fatal is not None and error.fatal.code() == KafkaError._FATAL
    assert (error.failed, error.undelivered) == (3, 0)
    # The reason is gone, but the delivery reports name the broker's error.
    message = str(error)
    assert "delivery reports name UNKNOWN_PRODUCER_ID" in message
    assert "KAFKA_BOOTSTRAP_SERVERS" in message


def test_other_client_exceptions_propagate_unchanged() -> None:
    fake = FakeProducer(script=["crash", "deliver"])
    producer = batch(fake)
    produce_three(producer)
    with pytest.raises(SystemError):
        producer.flush()
    assert producer.fatal_error is None
    assert len(fake.queue) == 3  # the probe queued nothing
    assert producer.flush().delivered == 3


def test_the_fatal_probe_queues_nothing_on_a_live_producer() -> None:
    from confluent_kafka import Producer

    live = Producer({"test.mock.num.brokers": 1, "bootstrap.servers": "", "log_level": 0})
    assert _probe_fatal(live) is None
    assert len(live) == 0


def test_fatal_error_from_error_cb_also_ends_the_flush() -> None:
    errors = ClientErrors()
    fake = FakeProducer(script=["wait", FATAL, "wait"], error_cb=errors)
    producer = batch(fake, errors=errors)
    produce_three(producer)
    error, elapsed = timed_flush(producer)
    assert elapsed < 2.0 and error.fatal is FATAL and error.undelivered == 3


def test_non_fatal_errors_do_not_end_the_flush(caplog: pytest.LogCaptureFixture) -> None:
    errors = ClientErrors()
    script: list[object] = [ALL_DOWN, TRANSPORT, "wait", TRANSPORT, ALL_DOWN, "deliver"]
    fake = FakeProducer(script=script, error_cb=errors)
    producer = batch(fake, errors=errors)
    produce_three(producer)
    with caplog.at_level(logging.WARNING, logger="alert_platform.kafka.writer"):
        report = producer.flush(10)
    assert report.produced == report.delivered == 3
    assert producer.fatal_error is None
    # Each kind of error logged once, naming the setting to check.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("_TRANSPORT" in w and "Connection refused" in w for w in warnings)
    assert any("_ALL_BROKERS_DOWN" in w for w in warnings)
    assert all("KAFKA_BOOTSTRAP_SERVERS" in w for w in warnings)


def test_non_fatal_outage_still_waits_for_the_whole_timeout() -> None:
    fake = FakeProducer(script=["wait"])
    producer = batch(fake)
    produce_three(producer)
    error, elapsed = timed_flush(producer, timeout=1.2)
    assert 1.2 <= elapsed < 2.0
    assert error.fatal is None and (error.failed, error.undelivered) == (0, 3)
    assert "3 still undelivered after 1.2s" in str(error)
    assert sum(fake.flush_timeouts) == pytest.approx(1.2, abs=0.05)


# -- produce ----------------------------------------------------------------------------------


def test_produce_after_a_fatal_error_raises_at_once() -> None:
    fake = FakeProducer(script=["fatal"])
    producer = batch(fake)
    produce_three(producer)
    with pytest.raises(ProduceError):
        producer.flush()
    attempts: list[Callable[[], None]] = [
        lambda: producer.produce("t", b"k", b"v"),
        lambda: producer.produce("t", b"k", b"v", headers=[("h", b"1")]),
        lambda: producer.produce_many("t", [(b"k", b"v")] * 5),
    ]
    for attempt in attempts:
        started = time.monotonic()
        with pytest.raises(ProduceError) as caught:
            attempt()
        assert time.monotonic() - started < 0.1
        assert caught.value.fatal is FATAL and "UNKNOWN_PRODUCER_ID" in str(caught.value)
    assert fake.queue == [] and producer.pending == 0  # nothing was queued


def test_produce_refused_as_fatal_by_the_client_raises_produce_error() -> None:
    # The fatal error was raised to someone else (e.g. a poll outside BatchProducer): the
    # client only answers _FATAL now.
    fake = FakeProducer(dead=True)
    producer = batch(fake)
    with pytest.raises(ProduceError) as caught:
        producer.produce_many("t", [(b"k", b"v")])
    assert caught.value.fatal is not None and caught.value.fatal.code() == KafkaError._FATAL
    assert isinstance(caught.value.__cause__, KafkaException)
    with pytest.raises(ProduceError):  # and from then on without asking the client
        producer.produce("t", b"k", b"v", partition=0)


def test_fatal_error_raised_by_the_hot_loop_poll_counts_what_was_produced() -> None:
    fake = FakeProducer(script=["fatal-quiet"])
    producer = batch(fake)
    with pytest.raises(ProduceError) as caught:
        producer.produce_many("t", ((b"k%d" % i, b"v") for i in range(5000)))
    assert fake.polls == 1  # the first poll, after 1000 records
    assert caught.value.fatal is FATAL and caught.value.undelivered == 1000
    assert producer.pending == 1000


def test_a_full_queue_does_not_wait_out_the_queue_timeout_after_a_fatal_error() -> None:
    fake = FakeProducer(script=["wait", "wait", "fatal"], capacity=2)
    producer = batch(fake, queue_timeout_s=60)
    started = time.monotonic()
    with pytest.raises(ProduceError) as caught:
        producer.produce_many("t", [(b"k%d" % i, b"v") for i in range(10)])
    assert time.monotonic() - started < 1.0
    assert caught.value.fatal is FATAL


def test_healthy_batches_are_unchanged() -> None:
    fake = FakeProducer(script=["deliver"])
    producer = batch(fake)
    producer.produce_many("t", ((b"k%d" % i, b"v") for i in range(2500)))
    producer.produce("t", b"x", b"y", headers=[("h", b"1")])
    report = producer.flush(5)
    assert report.produced == report.delivered == 2501
    assert report.written == {("t", 0): (0, 2500)}
    assert len(fake.flush_timeouts) == 1 and producer.fatal_error is None
