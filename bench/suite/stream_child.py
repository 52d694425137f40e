"""A child process of the stream throughput benchmark: one stream worker, or the batch run.

    .venv/bin/python -m bench.suite.stream_child JOB.json

The environment (``bench.suite.common.platform_env``) points the platform at the bench broker
and a data dir holding the lookup-table snapshots. Protocol on stdin/stdout: the child sets up
(imports, the worker's tables loaded), prints ``ready``, waits for a line, then works:

* ``"mode": "stream"``: ``build_worker(settings, topic)`` in a thread (the benchmark's group
  timings: session 2 s, heartbeat 0.5 s) until a second line arrives, then drains. Clock: from
  the start of the first micro-batch's processing to the end of the last one's (the group join
  before the first record is not counted), with the partitions it processed.
* ``"mode": "batch"``: ``run_enrichment`` over the job's ranges (its ``processing_s``: first
  input record to last output flushed; the table load is reported apart).

The last stdout line is a JSON result.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

GROUP_TIMINGS = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}


class TimedProcessor:
    """Wraps a worker's processor: when its batches ran, how many records, which partitions."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.records = 0
        self.partitions: set[int] = set()

    def process(self, records: Sequence[Any]) -> int:
        started = time.time()
        if self.first_start is None:
            self.first_start = started
        outputs = self.inner.process(records)
        self.last_end = time.time()
        self.records += len(records)
        self.partitions.update(r.partition for r in records)
        return outputs


def stream_run(job: dict[str, Any]) -> dict[str, Any]:
    from alert_platform.settings import Settings
    from alert_platform.stream.worker import build_worker

    settings = Settings.from_env()
    worker = build_worker(settings, job["topic"], **GROUP_TIMINGS)
    timed = TimedProcessor(worker.loop.processor)
    worker.loop.processor = timed
    print("ready", flush=True)
    sys.stdin.readline()
    stop = threading.Event()
    stats: list[Any] = []
    errors: list[str] = []

    def run() -> None:
        try:
            stats.append(worker.run(stop))
        except BaseException as exc:  # reported to the parent
            errors.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, name="bench-stream", daemon=True)
    started = time.time()
    thread.start()
    assigned = worker.loop.wait_assigned(60)
    assigned_at = time.time()
    sys.stdin.readline()
    stop.set()
    thread.join(30)
    loop = stats[0] if stats else None
    return {
        "started_wall": started,
        "assigned": assigned,
        "join_s": assigned_at - started,
        "first_start": timed.first_start,
        "last_end": timed.last_end,
        "records": timed.records,
        "partitions": sorted(timed.partitions),
        "outputs": loop.outputs if loop else None,
        "batches": loop.batches if loop else None,
        "failures": loop.failures if loop else None,
        "errors": errors,
        "drained": not thread.is_alive(),
    }


def batch_run(job: dict[str, Any]) -> dict[str, Any]:
    from alert_platform.kafka.offsets import OffsetRange
    from alert_platform.pipelines.connector_failure import CONNECTOR_FAILURE
    from alert_platform.pipelines.runner import run_enrichment
    from alert_platform.settings import Settings

    settings = Settings.from_env()
    ranges = [OffsetRange(job["topic"], int(p), 0, end) for p, end in job["ends"].items()]
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    report = run_enrichment(settings, CONNECTOR_FAILURE, ranges)
    return {
        "whole_s": time.perf_counter() - started,
        "processing_s": report.processing_s,
        "tables_s": report.tables_s,
        "records": report.counts.read,
        "outputs": report.counts.alerts,
    }


def main(job_path: str) -> None:
    with open(job_path, "rb") as handle:
        job = orjson.loads(handle.read())
    result = stream_run(job) if job["mode"] == "stream" else batch_run(job)
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
