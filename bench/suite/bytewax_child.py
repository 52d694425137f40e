"""Contender: the enrichment as a Bytewax dataflow.

    .venv/bin/python -m bench.suite.bytewax_child JOB.json

``KafkaSource`` -> ``filter_map`` (decode) -> ``filter`` (provisioning failures) ->
``filter_map`` (the two joins as dict lookups, tables loaded before the clock starts) -> ``map``
(render, encode) -> ``KafkaSink``, run by ``bytewax.run.cli_main`` with one worker. The source is
Bytewax's own Kafka source, bounded at the job's known end offsets (the broker's high watermark
is inexact, so partition EOF cannot end the input): each partition stops once it has read up to
its end, the dataflow completes, and the sink flushes on close. The sink's producer gets its
producer id before the clock starts (as the raw contender's). Prints one JSON line.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
from bytewax import operators as op
from bytewax.connectors.kafka import (
    KafkaSink,
    KafkaSinkMessage,
    KafkaSource,
    KafkaSourceMessage,
)
from bytewax.dataflow import Dataflow
from bytewax.inputs import StatefulSourcePartition
from bytewax.run import cli_main

from bench.suite import idiomatic


class _BoundedPartition(StatefulSourcePartition):
    """A Kafka source partition that ends at a known offset."""

    def __init__(self, inner: StatefulSourcePartition, end: int) -> None:
        self._inner = inner
        self._end = end

    def next_batch(self) -> list[Any]:
        offset = self._inner.snapshot()  # next offset; OFFSET_BEGINNING (-2) before the first
        if self._end <= 0 or (offset is not None and offset >= self._end):
            raise StopIteration
        return [m for m in self._inner.next_batch() if m.offset < self._end]

    def next_awake(self):
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class BoundedKafkaSource(KafkaSource):
    """``KafkaSource`` reading each partition from its beginning up to ``ends[partition]``."""

    def __init__(self, ends: dict[int, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ends = ends

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _BoundedPartition:
        inner = super().build_part(step_id, for_part, resume_state)
        partition = int(for_part.split("-", 1)[0])
        return _BoundedPartition(inner, self._ends[partition])


class WarmKafkaSink(KafkaSink):
    """``KafkaSink`` whose producer has its producer id before the dataflow starts reading."""

    def __init__(self, *args: Any, warmup_topic: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._warmup_topic = warmup_topic

    def build(self, step_id: str, worker_index: int, worker_count: int):
        partition = super().build(step_id, worker_index, worker_count)
        partition._producer.produce(self._warmup_topic, b"warm-up")
        partition._producer.flush(30)
        return partition


def main(job_path: str) -> None:
    with open(job_path, "rb") as handle:
        job = orjson.loads(handle.read())
    tables = idiomatic.load_tables(job["tables_path"])
    ends = {int(p): end for p, end in job["ends"].items()}
    state: dict[str, Any] = {"seen": 0, "first": None}

    def decode(message: KafkaSourceMessage) -> tuple[KafkaSourceMessage, dict] | None:
        if state["first"] is None:
            state["first"] = time.perf_counter()
        state["seen"] += 1
        event = idiomatic.decode(message.value)
        return None if event is None else (message, event)

    def joined(item: tuple[KafkaSourceMessage, dict]) -> tuple[KafkaSourceMessage, dict] | None:
        message, event = item
        fields = idiomatic.extract(event)
        enriched = None if fields is None else idiomatic.join(fields, tables)
        return None if enriched is None else (message, enriched)

    def render(item: tuple[KafkaSourceMessage, dict]) -> KafkaSinkMessage:
        message, enriched = item
        _kind, timestamp_ms = message.timestamp
        value = idiomatic.render(
            enriched, message.topic, message.partition, message.offset, timestamp_ms
        )
        return KafkaSinkMessage(value["alert_id"].encode(), orjson.dumps(value))

    flow = Dataflow("connector_failure_alerts")
    source = BoundedKafkaSource(
        ends,
        brokers=[job["bootstrap"]],
        topics=[job["input_topic"]],
        tail=True,
        add_config=job["consumer_config"],
    )
    records = op.input("notifications", flow, source)
    events = op.filter_map("decode", records, decode)
    failures = op.filter("provisioning_failures", events, lambda i: _provisioning(i[1]))
    enriched = op.filter_map("join", failures, joined)
    messages = op.map("render", enriched, render)
    op.output(
        "slack_messages",
        messages,
        WarmKafkaSink(
            [job["bootstrap"]],
            job["output_topic"],
            add_config=job["producer_config"],
            warmup_topic=job["warmup_topic"],
        ),
    )

    started = time.perf_counter()
    cli_main(flow, workers_per_process=1)
    ended = time.perf_counter()
    first = state["first"] if state["first"] is not None else ended
    result = {
        "seconds": ended - first,
        "startup_s": first - started,
        "total_s": ended - started,
        "inputs": state["seen"],
    }
    print(orjson.dumps(result).decode(), flush=True)


def _provisioning(event: dict) -> bool:
    return idiomatic.is_provisioning_failure(event)


if __name__ == "__main__":
    main(sys.argv[1])
