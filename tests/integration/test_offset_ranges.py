"""Offset ranges against the real local broker: probing the true end, exact range reads,
failures that must be loud (not hangs), and the batch producer's delivery accounting.

The local broker's high watermark is the base offset of the last batch + 1
(docs/local-broker.md), so every test produces in explicit batches to exercise exactly that.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from alert_platform.kafka.clients import make_admin, make_consumer, make_producer
from alert_platform.kafka.offsets import (
    OffsetError,
    OffsetRange,
    TopicNotFound,
    list_watermarks,
    low_watermarks,
    probe_end_offsets,
    probe_watermarks,
    watermarks,
)
from alert_platform.kafka.reader import (
    RangeIncomplete,
    RangeNotAvailable,
    read_range,
    read_ranges,
)
from alert_platform.kafka.records import SourceRecord
from alert_platform.kafka.writer import BatchProducer, ProduceError
from alert_platform.settings import Settings

pytestmark = pytest.mark.integration

MakeTopic = Callable[..., str]

_QUIET = logging.getLogger("test_offset_ranges.quiet")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@pytest.fixture
def consumer(kafka_settings: Settings) -> Iterator[Consumer]:
    consumer = make_consumer(kafka_settings)
    yield consumer
    consumer.close()


@pytest.fixture
def batch_producer(kafka_settings: Settings) -> Producer:
    # Everything produced before flush() goes out as one batch per partition.
    return make_producer(kafka_settings, **{"linger.ms": 1000, "batch.num.messages": 100_000})


def produce_batch(
    producer: Producer, topic: str, offsets: range, partition: int = 0, **extra: object
) -> None:
    """One record per offset in ``offsets`` (key ``k<offset>``, value ``v<offset>``), one flush."""
    for i in offsets:
        producer.produce(topic, key=b"k%d" % i, value=b"v%d" % i, partition=partition, **extra)
    assert producer.flush(10) == 0


def offsets_of(batches: list[list[SourceRecord]]) -> list[int]:
    return [record.offset for batch in batches for record in batch]


# -- OffsetRange --------------------------------------------------------------------------------


def test_offset_range_basics() -> None:
    rng = OffsetRange("t", 2, 10, 25)
    assert rng.size == 15 and not rng.empty and str(rng) == "t:2:10-25"
    assert 10 in rng and 24 in rng and 25 not in rng and 9 not in rng
    assert OffsetRange.from_dict(rng.as_dict()) == rng
    assert rng.as_dict() == {"topic": "t", "partition": 2, "start": 10, "end": 25}
    assert [(r.start, r.end) for r in rng.split(6)] == [(10, 16), (16, 22), (22, 25)]
    assert rng.split(100) == [rng]
    assert OffsetRange("t", 0, 5, 5).split(3) == []
    with pytest.raises(ValueError):
        OffsetRange("t", 0, 5, 4)
    with pytest.raises(ValueError):
        OffsetRange("t", 0, -1, 4)
    with pytest.raises(ValueError):
        OffsetRange.from_dict({"topic": "t", "partition": 0})
    with pytest.raises(ValueError):
        rng.split(0)


# -- probe_end_offsets --------------------------------------------------------------------------


def test_probe_finds_true_end_after_one_batch(
    make_topic: MakeTopic, batch_producer: Producer, consumer: Consumer
) -> None:
    topic = make_topic(partitions=1)
    produce_batch(batch_producer, topic, range(100))
    # What the broker reports: the base offset of the last batch + 1, not 100.
    _low, high = watermarks(consumer, topic)[0]
    assert high < 100, "the broker's watermark became exact: revisit docs/local-broker.md"
    assert probe_end_offsets(consumer, topic) == {0: 100}


def test_probe_after_several_batches_and_partitions(
    make_topic: MakeTopic, batch_producer: Producer, consumer: Consumer
) -> None:
    topic = make_topic(partitions=4)
    produce_batch(batch_producer, topic, range(100), partition=0)
    produce_batch(batch_producer, topic, range(100, 150), partition=0)
    produce_batch(batch_producer, topic, range(150, 151), partition=0)  # a one-record batch
    produce_batch(batch_producer, topic, range(5000), partition=1)
    produce_batch(batch_producer, topic, range(1), partition=2)
    # partition 3 stays empty
    assert watermarks(consumer, topic)[0] == (0, 151)  # exact only thanks to the 1-record batch
    ends = probe_end_offsets(consumer, topic)
    assert ends == {0: 151, 1: 5000, 2: 1, 3: 0}
    assert probe_end_offsets(consumer, topic, [1, 3]) == {1: 5000, 3: 0}
    assert low_watermarks(consumer, topic) == {0: 0, 1: 0, 2: 0, 3: 0}
    assert probe_watermarks(consumer, topic) == {0: (0, 151), 1: (0, 5000), 2: (0, 1), 3: (0, 0)}
    # The consumer is left unassigned and can probe again (more data since).
    produce_batch(batch_producer, topic, range(151, 400), partition=0)
    assert probe_end_offsets(consumer, topic)[0] == 400


def test_admin_list_offsets_agrees_with_per_partition_requests(
    make_topic: MakeTopic, batch_producer: Producer, consumer: Consumer, kafka_settings: Settings
) -> None:
    topic = make_topic(partitions=3)
    produce_batch(batch_producer, topic, range(40), partition=0)
    produce_batch(batch_producer, topic, range(40, 41), partition=0)
    produce_batch(batch_producer, topic, range(7), partition=1)
    admin = make_admin(kafka_settings)
    per_partition = watermarks(consumer, topic)
    assert list_watermarks(admin, topic, [0, 1, 2]) == per_partition
    assert watermarks(consumer, topic, admin=admin) == per_partition
    assert per_partition[2] == (0, 0) and per_partition[0] == (0, 41)
    assert probe_watermarks(consumer, topic, admin=admin) == {0: (0, 41), 1: (0, 7), 2: (0, 0)}
    with pytest.raises(OffsetError, match="watermarks of"):
        list_watermarks(admin, f"{topic}-missing", [0], timeout=3)


def test_probe_empty_topic_and_missing_topic(
    make_topic: MakeTopic, consumer: Consumer, unique_topic: str
) -> None:
    topic = make_topic(partitions=2)
    assert probe_end_offsets(consumer, topic) == {0: 0, 1: 0}
    with pytest.raises(TopicNotFound):
        probe_end_offsets(consumer, unique_topic)


def test_probe_agrees_with_partition_eof_consumer(
    kafka_settings: Settings, make_topic: MakeTopic, batch_producer: Producer
) -> None:
    topic = make_topic(partitions=2)
    produce_batch(batch_producer, topic, range(300), partition=0)
    produce_batch(batch_producer, topic, range(300, 320), partition=0)
    eof_consumer = make_consumer(kafka_settings, **{"enable.partition.eof": True})
    try:
        assert probe_end_offsets(eof_consumer, topic) == {0: 320, 1: 0}
    finally:
        eof_consumer.close()


def test_probe_while_producers_write(
    kafka_settings: Settings, make_topic: MakeTopic, consumer: Consumer
) -> None:
    """Under live production the probe neither fails nor chases: it returns an end that every
    offset below is readable at, and at least what was written before it started."""
    topic = make_topic(partitions=1)
    producer = make_producer(kafka_settings, **{"linger.ms": 5})
    stop = threading.Event()
    written = [0]

    def write() -> None:
        while not stop.is_set():
            for _ in range(200):
                producer.produce(topic, key=b"k", value=b"x" * 100)
            producer.flush(10)
            written[0] += 200

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        time.sleep(0.3)
        for _ in range(5):
            before = written[0]
            end = probe_end_offsets(consumer, topic, timeout=5)[0]
            assert end >= before
            records = [r for b in read_range(consumer, OffsetRange(topic, 0, 0, end)) for r in b]
            assert [r.offset for r in records] == list(range(end))
    finally:
        stop.set()
        writer.join(10)


def test_probe_is_cheap(
    kafka_settings: Settings, make_topic: MakeTopic, batch_producer: Producer
) -> None:
    """A sensor tick: fresh consumer, probe four partitions, close. Logged, loosely bounded."""
    topic = make_topic(partitions=4)
    for partition in range(3):
        produce_batch(batch_producer, topic, range(1000), partition=partition)
    costs = []
    for _ in range(10):
        consumer = make_consumer(kafka_settings)
        started = time.perf_counter()
        ends = probe_end_offsets(consumer, topic)
        costs.append(time.perf_counter() - started)
        consumer.close()
        assert ends == {0: 1000, 1: 1000, 2: 1000, 3: 0}
    median_ms = statistics.median(costs) * 1000
    print(f"probe of 4 partitions: median {median_ms:.1f} ms, max {max(costs) * 1000:.1f} ms")
    assert median_ms < 500  # ~10-25 ms measured; generous for a loaded CI machine


# -- read_range ---------------------------------------------------------------------------------


@pytest.fixture
def three_batches(make_topic: MakeTopic, batch_producer: Producer) -> str:
    """A one-partition topic holding offsets 0..249 in batches [0,100) [100,200) [200,250)."""
    topic = make_topic(partitions=1)
    produce_batch(batch_producer, topic, range(100))
    produce_batch(batch_producer, topic, range(100, 200))
    produce_batch(batch_producer, topic, range(200, 250))
    return topic


def test_read_range_reads_exactly_the_range(three_batches: str, consumer: Consumer) -> None:
    topic = three_batches
    end = probe_end_offsets(consumer, topic)[0]
    assert end == 250
    whole = list(read_range(consumer, OffsetRange(topic, 0, 0, end)))
    assert offsets_of(whole) == list(range(250))
    record = whole[0][7]
    assert (record.topic, record.partition, record.offset) == (topic, 0, 7)
    assert (record.key, record.value, record.headers) == (b"k7", b"v7", ())
    assert record.timestamp_ms > 0

    for start, stop in [(30, 170), (100, 200), (120, 130), (0, 1), (249, 250), (199, 201)]:
        got = list(read_range(consumer, OffsetRange(topic, 0, start, stop)))
        assert offsets_of(got) == list(range(start, stop)), (start, stop)
        assert [r.value for b in got for r in b] == [b"v%d" % i for i in range(start, stop)]

    assert list(read_range(consumer, OffsetRange(topic, 0, 40, 40))) == []


def test_read_range_is_deterministic_and_batched(three_batches: str, consumer: Consumer) -> None:
    rng = OffsetRange(three_batches, 0, 55, 222)
    first = list(read_range(consumer, rng))
    again = list(read_range(consumer, rng))
    small = list(read_range(consumer, rng, batch_size=7))
    assert [r for b in first for r in b] == [r for b in again for r in b]
    assert [r for b in small for r in b] == [r for b in first for r in b]
    assert all(1 <= len(b) <= 7 for b in small)
    assert len(small) == -(-rng.size // 7)


def test_read_range_stops_early_when_abandoned(three_batches: str, consumer: Consumer) -> None:
    reader = read_range(consumer, OffsetRange(three_batches, 0, 0, 250), batch_size=10)
    assert offsets_of([next(reader)]) == list(range(10))
    reader.close()  # unassigns; the consumer is reusable at once
    got = list(read_range(consumer, OffsetRange(three_batches, 0, 240, 250)))
    assert offsets_of(got) == list(range(240, 250))


def test_read_ranges_with_one_consumer(
    make_topic: MakeTopic, batch_producer: Producer, consumer: Consumer
) -> None:
    topic = make_topic(partitions=2)
    produce_batch(batch_producer, topic, range(60), partition=0)
    produce_batch(batch_producer, topic, range(40), partition=1)
    ends = probe_end_offsets(consumer, topic)
    ranges = [OffsetRange(topic, 1, 10, ends[1]), OffsetRange(topic, 0, 0, 20)]
    records = [r for b in read_ranges(consumer, ranges) for r in b]
    assert [(r.partition, r.offset) for r in records] == [(1, i) for i in range(10, 40)] + [
        (0, i) for i in range(20)
    ]


def test_read_range_keeps_nulls_headers_and_timestamps(
    make_topic: MakeTopic, kafka_settings: Settings, consumer: Consumer
) -> None:
    topic = make_topic(partitions=1)
    producer = make_producer(kafka_settings)
    producer.produce(topic, key=None, value=b"no key", timestamp=1_700_000_000_123)
    producer.produce(topic, key=b"gone", value=None)
    producer.produce(
        topic, key=b"h", value=b"x", headers=[("a", b"1"), ("a", b"2"), ("empty", None)]
    )
    assert producer.flush(10) == 0
    end = probe_end_offsets(consumer, topic)[0]
    [batch] = list(read_range(consumer, OffsetRange(topic, 0, 0, end)))
    assert [(r.key, r.value) for r in batch] == [(None, b"no key"), (b"gone", None), (b"h", b"x")]
    assert batch[0].timestamp_ms == 1_700_000_000_123
    assert batch[0].headers == () and batch[1].headers == ()
    assert batch[2].headers == (("a", b"1"), ("a", b"2"), ("empty", None))
    assert batch[2].position == f"{topic}:0:2"


class _RetentionConsumer:
    """A real consumer whose low watermark claims offsets below ``low`` were deleted.

    The local broker cannot delete records (DeleteRecords is unimplemented: it panics the
    connection), so retention is simulated at the one place the reader learns about it.
    """

    def __init__(self, consumer: Consumer, low: int) -> None:
        self._consumer = consumer
        self._low = low

    def get_watermark_offsets(self, tp: TopicPartition, *args: object, **kwargs: object):
        _low, high = self._consumer.get_watermark_offsets(tp, *args, **kwargs)
        return self._low, high

    def __getattr__(self, name: str) -> object:
        return getattr(self._consumer, name)


def test_range_below_low_watermark_is_a_clear_error(three_batches: str, consumer: Consumer) -> None:
    retained = _RetentionConsumer(consumer, low=50)
    rng = OffsetRange(three_batches, 0, 10, 60)
    with pytest.raises(RangeNotAvailable) as caught:
        list(read_range(retained, rng))  # type: ignore[arg-type]
    message = str(caught.value)
    assert f"{three_batches}[0] offsets 10..59" in message
    assert "low watermark 50" in message and "10..49 were deleted" in message
    assert caught.value.range == rng
    # The part still stored reads fine.
    ok = list(read_range(retained, OffsetRange(three_batches, 0, 50, 60)))  # type: ignore[arg-type]
    assert offsets_of(ok) == list(range(50, 60))


def test_missing_partition_or_topic_is_not_available(
    three_batches: str, consumer: Consumer, unique_topic: str
) -> None:
    with pytest.raises(RangeNotAvailable, match="missing"):
        list(read_range(consumer, OffsetRange(three_batches, 3, 0, 10)))
    with pytest.raises(RangeNotAvailable, match="missing"):
        list(read_range(consumer, OffsetRange(unique_topic, 0, 0, 10)))


def test_range_past_the_end_fails_instead_of_hanging(
    three_batches: str, consumer: Consumer
) -> None:
    # The broker answers a fetch past its end with silence: the reader must give up.
    started = time.monotonic()
    with pytest.raises(RangeIncomplete) as caught:
        list(read_range(consumer, OffsetRange(three_batches, 0, 240, 260), timeout_s=1.0))
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"{three_batches}[0] offsets 240..259" in message and "at offset 250" in message
    # The records it could read were yielded before the failure.
    seen: list[int] = []
    with pytest.raises(RangeIncomplete):
        for batch in read_range(consumer, OffsetRange(three_batches, 0, 240, 260), timeout_s=0.5):
            seen.extend(r.offset for r in batch)
    assert seen == list(range(240, 250))


def test_eof_consumer_reports_where_the_partition_ends(
    kafka_settings: Settings, three_batches: str
) -> None:
    eof_consumer = make_consumer(kafka_settings, **{"enable.partition.eof": True})
    try:
        assert offsets_of(
            list(read_range(eof_consumer, OffsetRange(three_batches, 0, 200, 250)))
        ) == list(range(200, 250))
        with pytest.raises(RangeIncomplete, match="ends at offset 250"):
            list(read_range(eof_consumer, OffsetRange(three_batches, 0, 245, 300), timeout_s=0.5))
    finally:
        eof_consumer.close()


# -- BatchProducer ------------------------------------------------------------------------------


def test_batch_producer_reports_written_offsets(
    kafka_settings: Settings, make_topic: MakeTopic, consumer: Consumer
) -> None:
    topic = make_topic(partitions=2)
    producer = BatchProducer(make_producer(kafka_settings))
    for i in range(300):
        producer.produce(topic, b"k%d" % i, b"v%d" % i, partition=i % 2)
    producer.produce(topic, "str-key", None, headers=[("h", b"1")], partition=0)
    report = producer.flush(10)
    assert report.produced == report.delivered == 301
    assert report.written == {(topic, 0): (0, 150), (topic, 1): (0, 149)}
    assert report.written_ranges() == [OffsetRange(topic, 0, 0, 151), OffsetRange(topic, 1, 0, 150)]
    # A second batch starts from zero and its offsets continue where the first ended.
    for i in range(10):
        producer.produce(topic, b"x", b"y", partition=1, timestamp_ms=1_700_000_000_000 + i)
    second = producer.flush(10)
    assert second.produced == 10 and second.written == {(topic, 1): (150, 159)}
    assert producer.total_delivered == 311
    ends = probe_end_offsets(consumer, topic)
    assert ends == {0: 151, 1: 160}
    [tail] = list(read_range(consumer, OffsetRange(topic, 0, 150, 151)))
    assert (tail[0].key, tail[0].value, tail[0].headers) == (b"str-key", None, (("h", b"1"),))


def test_batch_producer_survives_a_full_local_queue(
    kafka_settings: Settings, make_topic: MakeTopic
) -> None:
    topic = make_topic(partitions=1)
    tiny = make_producer(kafka_settings, **{"queue.buffering.max.messages": 50})
    producer = BatchProducer(tiny)
    for i in range(2000):  # would raise BufferError after 50 without the retry loop
        producer.produce(topic, None, b"%d" % i)
    report = producer.flush(30)
    assert report.delivered == 2000 and report.written == {(topic, 0): (0, 1999)}


def test_batch_producer_raises_on_failed_deliveries(kafka_settings: Settings) -> None:
    # Nothing listens on port 9 of localhost: every delivery times out.
    dead = Producer(
        {
            "bootstrap.servers": "127.0.0.1:9",
            "message.timeout.ms": 500,
            "logger": _QUIET,
        }
    )
    producer = BatchProducer(dead)
    for i in range(3):
        producer.produce("nowhere", b"k%d" % i, b"v")
    with pytest.raises(ProduceError) as caught:
        producer.flush(10)
    error = caught.value
    assert error.failed == 3 and error.undelivered == 0
    assert {f.key for f in error.failures} == {b"k0", b"k1", b"k2"}
    assert "3 of 3 records failed delivery" in str(error) and "nowhere" in str(error)
    assert producer.pending == 0  # the next batch starts clean
