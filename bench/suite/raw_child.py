"""Contender: the ceiling. Consume the input and produce the same bytes again, nothing else.

    .venv/bin/python -m bench.suite.raw_child JOB.json

A plain confluent-kafka consumer (assign, ``consume(10000)``; the platform's client settings)
reads every partition up to its known end offset, and a producer (the platform's producer
settings, warmed up first) writes each value unchanged with its key to the output topic; then
flush. Prints one JSON line with the timings.
"""

from __future__ import annotations

import sys
import time

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

BATCH = 10_000


def main(job_path: str) -> None:
    with open(job_path, "rb") as handle:
        job = orjson.loads(handle.read())
    topic, out = job["input_topic"], job["output_topic"]
    ends = {int(p): end for p, end in job["ends"].items()}
    producer = Producer(job["producer_config"])
    producer.produce(job["warmup_topic"], b"warm-up")  # the producer id, before the clock
    producer.flush(30)
    started = time.perf_counter()
    consumer = Consumer(job["consumer_config"])
    consumer.assign([TopicPartition(topic, p, 0) for p in sorted(ends)])
    next_offset = dict.fromkeys(ends, 0)
    unfinished = {p for p, end in ends.items() if end > 0}
    produce, poll = producer.produce, producer.poll
    first = None
    copied = 0
    try:
        while unfinished:
            messages = consumer.consume(BATCH, 0.1)
            if messages and first is None:
                first = time.perf_counter()
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(error)
                partition, offset = message.partition(), message.offset()
                if offset < next_offset[partition] or offset >= ends[partition]:
                    continue
                while True:
                    try:
                        produce(out, message.value(), message.key())
                        break
                    except BufferError:
                        poll(0.01)
                next_offset[partition] = offset + 1
                copied += 1
                if offset + 1 >= ends[partition]:
                    unfinished.discard(partition)
            poll(0)
        remaining = producer.flush(120)
    finally:
        consumer.close()
    ended = time.perf_counter()
    if remaining:
        raise RuntimeError(f"{remaining} messages not delivered")
    first = first if first is not None else ended
    result = {
        "seconds": ended - first,
        "startup_s": first - started,
        "total_s": ended - started,
        "inputs": copied,
    }
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
