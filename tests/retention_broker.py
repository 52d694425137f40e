"""A broker on which retention really deletes records: librdkafka's in-process mock cluster.

The local broker (Tansu) never deletes a record (DeleteRecords is unimplemented, retention is
not enforced), so the retention-gap tests run against the mock cluster, which keeps at most
5 MiB (or 100k batches) per partition and drops the oldest batches beyond that: the low
watermark then really moves, and reads below it really fail. It lives as long as the process
that created it (the test process); other clients connect to its address.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka import Consumer, Producer, TopicPartition

# One record of this size per batch (no compression): 60 of them exceed the 5 MiB per partition.
FILLER_BYTES = 100_000
# Retention drops the oldest batches until the partition holds 5 MiB again: a batch of 10
# records of this size (150 KB, more than a filler) is dropped alone, the batch after it kept.
OLD_RECORD_BYTES = 15_000


@contextmanager
def mock_cluster() -> Iterator[str]:
    """Start a one-broker mock cluster; yield its bootstrap address."""
    handle = Producer({"test.mock.num.brokers": 1, "bootstrap.servers": "", "log_level": 3})
    metadata = handle.list_topics(timeout=10)
    brokers = ",".join(f"{b.host}:{b.port}" for b in metadata.brokers.values())
    try:
        yield brokers
    finally:
        handle.flush(1)
        del handle


def low_watermark(bootstrap: str, topic: str, partition: int = 0) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "retention-probe"})
    try:
        low, _high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=10, cached=False
        )
        return int(low)
    finally:
        consumer.close()


def push_out(bootstrap: str, topic: str, below: int, partition: int = 0) -> int:
    """Append filler records (one uncompressed batch each) until retention has deleted every
    offset below ``below``; the number of filler records written."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 0, "compression.type": "none"}
    )
    filler = b"#" * FILLER_BYTES
    written = 0
    deadline = time.monotonic() + 60
    while low_watermark(bootstrap, topic, partition) < below:
        if time.monotonic() > deadline:
            raise RuntimeError(f"retention did not reach offset {below} of {topic}")
        producer.produce(topic, value=filler, partition=partition)
        assert producer.flush(10) == 0
        written += 1
    return written
