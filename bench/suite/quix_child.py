"""Contender: the enrichment as a Quix Streams application (runs in its own environment).

    <quix venv>/bin/python -m bench.suite.quix_child JOB.json

An ``Application`` with a ``StreamingDataFrame``: JSON deserializer, filter, the two joins as
dict lookups (tables loaded into plain dicts before the clock starts), render, ``to_topic``
with the JSON serializer. Quix Streams has no bounded input, so the application stops itself
once it has seen the job's number of input records (deserialization failures included, counted
by ``on_consumer_error``); ``Application.run`` then commits its last checkpoint, which flushes
the producer, and returns. Prints one JSON line with the timings.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
from quixstreams import Application, message_context

from bench.suite import idiomatic


def main(job_path: str) -> None:
    with open(job_path, "rb") as handle:
        job = orjson.loads(handle.read())
    tables = idiomatic.load_tables(job["tables_path"])
    expected_inputs: int = job["inputs"]
    state: dict[str, Any] = {"seen": 0, "first": None, "errors": 0}

    app = Application(
        broker_address=job["bootstrap"],
        consumer_group="bench-quixstreams",
        auto_offset_reset="earliest",
        consumer_extra_config=job["consumer_config"],
        producer_extra_config=job["producer_config"],
        state_dir=job["state_dir"],
        loglevel="WARNING",
        on_consumer_error=lambda exc, message, logger: _skip(state, app, expected_inputs),
    )
    source = app.topic(job["input_topic"], key_deserializer="str", value_deserializer="json")
    sink = app.topic(job["output_topic"], key_serializer="str", value_serializer="json")

    def seen(_value: Any) -> None:
        _count(state, app, expected_inputs)

    def joined(event: dict[str, Any]) -> dict[str, Any] | None:
        fields = idiomatic.extract(event)
        return None if fields is None else idiomatic.join(fields, tables)

    def render(enriched: dict[str, Any], _key: Any, timestamp: int, _headers: Any) -> dict:
        ctx = message_context()
        return idiomatic.render(enriched, ctx.topic, ctx.partition, ctx.offset, timestamp)

    sdf = app.dataframe(source)
    sdf = sdf.update(seen)
    sdf = sdf.filter(idiomatic.is_provisioning_failure)
    sdf = sdf.apply(joined)
    sdf = sdf.filter(lambda enriched: enriched is not None)
    sdf = sdf.apply(render, metadata=True)
    sdf.to_topic(sink, key=lambda message: message["alert_id"])

    started = time.perf_counter()
    app.run()
    ended = time.perf_counter()
    first = state["first"] if state["first"] is not None else ended
    result = {
        "seconds": ended - first,
        "startup_s": first - started,
        "total_s": ended - started,
        "inputs": state["seen"],
        "deserialization_errors": state["errors"],
    }
    print(orjson.dumps(result).decode(), flush=True)


def _count(state: dict[str, Any], app: Application, expected: int) -> None:
    if state["first"] is None:
        state["first"] = time.perf_counter()
    state["seen"] += 1
    if state["seen"] >= expected:
        app.stop()  # finishes this message, then commits (and so flushes) and returns


def _skip(state: dict[str, Any], app: Application, expected: int) -> bool:
    state["errors"] += 1
    _count(state, app, expected)
    return True  # suppress: not a JSON event, nothing to alert on


if __name__ == "__main__":
    main(sys.argv[1])
