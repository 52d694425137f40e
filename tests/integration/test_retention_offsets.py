"""Retention gaps and offsets by time against real brokers: a range whose start retention
deleted reads what is left and reports the gap (``read_range(..., on_gap=...)``), on
librdkafka's mock cluster, which really deletes (the local broker never does); and the first
offset at or after a timestamp on the local broker, which answers ``offsets_for_times`` with 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from alert_platform.kafka.clients import make_consumer, make_producer
from alert_platform.kafka.offsets import OffsetRange, probe_end_offsets, probe_watermarks
from alert_platform.kafka.reader import RangeNotAvailable, read_range
from alert_platform.settings import Settings
from tests.integration.test_offset_ranges import (
    MakeTopic,
    _RetentionConsumer,
    offsets_of,
    produce_batch,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def consumer(kafka_settings: Settings) -> Iterator[Consumer]:
    consumer = make_consumer(kafka_settings)
    yield consumer
    consumer.close()


@pytest.fixture
def batch_producer(kafka_settings: Settings) -> Producer:
    # Everything produced before flush() goes out as one batch per partition.
    return make_producer(kafka_settings, **{"linger.ms": 1000, "batch.num.messages": 100_000})


@pytest.fixture
def three_batches(make_topic: MakeTopic, batch_producer: Producer) -> str:
    """A one-partition topic holding offsets 0..249 in batches [0,100) [100,200) [200,250)."""
    topic = make_topic(partitions=1)
    produce_batch(batch_producer, topic, range(100))
    produce_batch(batch_producer, topic, range(100, 200))
    produce_batch(batch_producer, topic, range(200, 250))
    return topic


def test_on_gap_reads_what_is_left_of_a_range_below_the_low_watermark(
    three_batches: str, consumer: Consumer
) -> None:
    retained = _RetentionConsumer(consumer, low=50)
    gaps: list[OffsetRange] = []
    rng = OffsetRange(three_batches, 0, 10, 60)
    batches = list(read_range(retained, rng, on_gap=gaps.append))  # type: ignore[arg-type]
    assert offsets_of(batches) == list(range(50, 60))
    assert gaps == [OffsetRange(three_batches, 0, 10, 50)]
    # A range deleted whole yields nothing and reports all of it.
    gaps.clear()
    gone = OffsetRange(three_batches, 0, 0, 40)
    assert list(read_range(retained, gone, on_gap=gaps.append)) == []  # type: ignore[arg-type]
    assert gaps == [gone]


def test_real_retention_on_the_mock_cluster_moves_the_low_watermark() -> None:
    """Records really deleted by retention: the plain read refuses, ``on_gap`` reads the rest."""
    from tests.retention_broker import OLD_RECORD_BYTES, low_watermark, mock_cluster, push_out

    with mock_cluster() as bootstrap:
        settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": bootstrap})
        producer = make_producer(settings, **{"compression.type": "none"})
        # offsets 0..9 in one batch larger than a filler, so that retention drops it alone
        for _ in range(10):
            producer.produce("retained", value=b"x" * OLD_RECORD_BYTES, partition=0)
        assert producer.flush(10) == 0
        produce_batch(producer, "retained", range(10, 20))  # offsets 10..19
        fillers = push_out(bootstrap, "retained", below=10)
        low = low_watermark(bootstrap, "retained")
        assert low == 10 and fillers > 40  # the 5 MiB cap, in 100 KB records
        consumer = make_consumer(settings)
        try:
            end = probe_end_offsets(consumer, "retained")[0]
            assert end == 20 + fillers
            rng = OffsetRange("retained", 0, 0, end)
            with pytest.raises(RangeNotAvailable, match=r"0\.\.9 were deleted"):
                list(read_range(consumer, rng))
            gaps: list[OffsetRange] = []
            read = offsets_of(list(read_range(consumer, rng, on_gap=gaps.append)))
        finally:
            consumer.close()
        assert gaps == [OffsetRange("retained", 0, 0, 10)]
        assert read == list(range(10, end))


def test_first_offsets_at_finds_the_look_back_start_on_the_local_broker(
    make_topic: MakeTopic, batch_producer: Producer, consumer: Consumer
) -> None:
    from alert_platform.kafka.offsets import first_offsets_at, offsets_for_times_is_reliable

    topic = make_topic(partitions=2)
    base = int(time.time() * 1000) - 3_600_000
    # partition 0: offsets 0..299 stamped one second apart, in three batches
    for chunk in (range(0, 100), range(100, 200), range(200, 300)):
        for i in chunk:
            batch_producer.produce(topic, value=b"v", partition=0, timestamp=base + i * 1000)
        assert batch_producer.flush(10) == 0
    marks = probe_watermarks(consumer, topic)
    assert marks == {0: (0, 300), 1: (0, 0)}
    assert not offsets_for_times_is_reliable(consumer, topic, [0])  # Tansu answers 0
    for target, expected in ((150, 150), (0, 0), (99, 99), (100, 100), (299, 299)):
        starts, method = first_offsets_at(consumer, topic, marks, base + target * 1000 - 500)
        assert method == "binary_search"
        assert starts == {0: expected, 1: 0}, target
    after, _ = first_offsets_at(consumer, topic, marks, base + 10_000_000)
    assert after == {0: 300, 1: 0}
    # Cheap enough for a sensor tick: ~9 single-record reads.
    started = time.perf_counter()
    first_offsets_at(consumer, topic, marks, base + 150_000)
    assert time.perf_counter() - started < 10.0


def test_records_deleted_between_the_watermark_check_and_the_fetch_are_a_gap_too() -> None:
    """The low watermark said the start was there, the fetch found it gone (offset reset)."""
    from tests.retention_broker import OLD_RECORD_BYTES, mock_cluster, push_out

    with mock_cluster() as bootstrap:
        settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": bootstrap})
        producer = make_producer(settings, **{"compression.type": "none"})
        for _ in range(10):
            producer.produce("raced", value=b"x" * OLD_RECORD_BYTES, partition=0)
        assert producer.flush(10) == 0
        produce_batch(producer, "raced", range(10, 20))
        push_out(bootstrap, "raced", below=10)
        consumer = make_consumer(settings)
        try:
            end = probe_end_offsets(consumer, "raced")[0]
            stale = _StaleFirstLowConsumer(consumer)
            gaps: list[OffsetRange] = []
            rng = OffsetRange("raced", 0, 0, end)
            read = offsets_of(list(read_range(stale, rng, on_gap=gaps.append)))  # type: ignore[arg-type]
        finally:
            consumer.close()
        assert stale.answers == [0, 10]
        assert gaps == [OffsetRange("raced", 0, 0, 10)]
        assert read == list(range(10, end))


class _StaleFirstLowConsumer:
    """A real consumer whose first low-watermark answer is from before retention ran (0)."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.answers: list[int] = []

    def get_watermark_offsets(self, tp: TopicPartition, *args: object, **kwargs: object):
        low, high = self._consumer.get_watermark_offsets(tp, *args, **kwargs)
        low = 0 if not self.answers else low
        self.answers.append(low)
        return low, high

    def __getattr__(self, name: str) -> object:
        return getattr(self._consumer, name)
