"""BatchProducer against a real Tansu broker that is SIGKILLed and restarted empty.

What librdkafka 2.16 does there (measured): records that were *in flight* when the broker died
are retried on the new broker, which answers UNKNOWN_PRODUCER_ID; as they are retries,
librdkafka cannot rule out duplicates and makes the idempotent producer fatal. confluent-kafka
raises that from ``flush``/``poll`` (not through ``error_cb``; when it runs Python delivery
callbacks in the same call, sometimes as a ``SystemError`` caused by it, or one that lost it),
and every queued record fails (UNKNOWN_PRODUCER_ID or ``_PURGE_QUEUE``).
Records that had *not* been sent yet never cause a fatal error: librdkafka bumps the producer
epoch and retries UNKNOWN_PRODUCER_ID over and over (Tansu never knows the producer id) until
``message.timeout.ms``; only the flush timeout ends that.

The broker is stopped (SIGSTOP) before the doomed records are produced, so they are surely in
flight, unanswered, when it is killed: without that the kill races the broker's replies.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from alert_platform.kafka.writer import BatchProducer, ProduceError
from alert_platform.local.ports import port_is_free
from alert_platform.local.stack import LocalStack, free_port_settings
from alert_platform.settings import Settings
from tests.faults.harness import wait_for

pytestmark = pytest.mark.integration

TOPIC = "producer-fatal"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Settings, LocalStack]]:
    """A broker of this test's own (it gets killed)."""
    settings = free_port_settings(tmp_path)
    stack = LocalStack(settings, die_with_parent=True)
    stack.up(["kafka"])
    try:
        yield settings, stack
    finally:
        gc.collect()  # destroy the test's Kafka clients first (no reconnect noise on stderr)
        stack.down(["kafka"])


def kill_and_restart_empty(settings: Settings, stack: LocalStack, pid: int) -> None:
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: port_is_free(settings.kafka_port), 10, "the broker port", interval=0.05)
    stack.up(["kafka"])  # memory storage: no topics, no records, no producer ids


def records(prefix: bytes, count: int) -> list[tuple[bytes, bytes]]:
    return [(b"%s-%d" % (prefix, i), b"v" * 100) for i in range(count)]


def producer_with_history(settings: Settings, stack: LocalStack) -> tuple[BatchProducer, int]:
    """A BatchProducer that has delivered 500 records (its producer id is known to the
    broker), and the broker's pid."""
    producer = BatchProducer.from_settings(settings)
    producer.produce_many(TOPIC, records(b"before", 500))
    assert producer.flush(10).delivered == 500
    pid = stack.process("kafka").pid
    assert pid is not None
    return producer, pid


def test_flush_fails_fast_when_the_broker_restarts_empty_with_records_in_flight(
    broker: tuple[Settings, LocalStack],
) -> None:
    settings, stack = broker
    producer, pid = producer_with_history(settings, stack)
    os.killpg(pid, signal.SIGSTOP)  # frozen: requests are sent, never answered
    producer.produce_many(TOPIC, records(b"doomed", 1000))
    time.sleep(0.5)  # linger.ms is 10: the records go out to the frozen broker
    kill_and_restart_empty(settings, stack, pid)

    started = time.monotonic()
    with pytest.raises(ProduceError) as caught:
        producer.flush()  # the default 60 s timeout
    elapsed = time.monotonic() - started

    error = caught.value
    assert elapsed < 15, f"flush took {elapsed:.1f}s"
    assert error.fatal is not None and error.fatal.fatal()
    # _FATAL when confluent-kafka lost the reason; the message then names the delivery error.
    assert error.fatal.code() in (KafkaError.UNKNOWN_PRODUCER_ID, KafkaError._FATAL)
    assert producer.fatal_error is error.fatal
    assert error.failed + error.undelivered == 1000
    assert {f.code for f in error.failures} <= {
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError._PURGE_QUEUE,
    }
    message = str(error)
    assert "fatal error" in message and "cannot deliver any more records" in message
    assert "UNKNOWN_PRODUCER_ID" in message and "KAFKA_BOOTSTRAP_SERVERS" in message

    # The producer is done for: produce refuses at once, nothing is queued.
    started = time.monotonic()
    with pytest.raises(ProduceError) as again:
        producer.produce_many(TOPIC, records(b"after", 10))
    assert time.monotonic() - started < 0.5 and again.value.fatal is error.fatal
    assert producer.pending == 0 and len(producer.producer) == 0

    # A new producer delivers to the new broker.
    fresh = BatchProducer.from_settings(settings)
    fresh.produce_many(TOPIC, records(b"fresh", 10))
    assert fresh.flush(10).delivered == 10


def test_records_not_yet_sent_are_retried_until_the_flush_timeout(
    broker: tuple[Settings, LocalStack],
) -> None:
    settings, stack = broker
    producer, pid = producer_with_history(settings, stack)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: port_is_free(settings.kafka_port), 10, "the broker port", interval=0.05)
    producer.produce_many(TOPIC, records(b"queued", 200))  # the broker is gone: not sent
    stack.up(["kafka"])

    started = time.monotonic()
    with pytest.raises(ProduceError) as caught:
        producer.flush(3)
    elapsed = time.monotonic() - started

    # Not fatal: librdkafka keeps retrying (UNKNOWN_PRODUCER_ID, epoch bumps) and nothing
    # arrives; the flush timeout bounds it, as for any unreachable broker.
    error = caught.value
    assert 3 <= elapsed < 6
    assert error.fatal is None and producer.fatal_error is None
    assert (error.failed, error.undelivered) == (0, 200)
    assert "200 still undelivered after 3s" in str(error)
    # Queued records hold their delivery callback (and so the client) alive: let them go.
    producer.producer.purge()
    producer.producer.flush(1)
