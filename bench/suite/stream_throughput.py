"""Stream throughput: one enrichment worker against the batch run, two workers against one.

Every measurement on a fresh broker with the same fixed-seed workload pre-produced round-robin
to the real 4-partition ``data-notifications-pipeline`` topic (``bench.suite.common.prepare``:
lookup-table topics and snapshots too). Each contender is a child process
(``bench/suite/stream_child.py``), set up (imports, tables) before the clock:

* batch: ``run_enrichment`` over the four partitions' ranges, one process (its
  ``processing_s``: first input record to last output flushed);
* stream, 1 and 2 workers: the group's offsets are committed at 0 first (a new group starts at
  the end of the topic), then the workers are released together; done when the group's
  committed offsets reach the ends. Clock: from the first micro-batch's processing start (any
  worker) to the last one's end, so the group join is not counted.

Throughput = workload events / clock. Checks: every event processed once (records and outputs
summed over the workers against the workload), ``slack-messages`` holding the expected alerts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import TopicPartition

from alert_platform import topics
from alert_platform.kafka.clients import make_consumer
from alert_platform.stream.names import stream_group
from bench.suite.common import (
    REPO,
    Workload,
    fresh_broker,
    log,
    platform_env,
    prepare,
    spread,
    topic_ends,
)

SOURCE = topics.NOTIFICATIONS
PARTITIONS = 4
DONE_TIMEOUT_S = 600.0


class Children:
    """Child processes of ``bench.suite.stream_child`` released and stopped together."""

    def __init__(self, settings, jobs: list[dict[str, Any]]) -> None:
        env = {**os.environ, **platform_env(settings, settings.data_dir), "PYTHONPATH": str(REPO)}
        self.processes: list[subprocess.Popen[str]] = []
        for k, job in enumerate(jobs):
            path = settings.data_dir / f"stream-job{k}.json"
            path.write_bytes(orjson.dumps(job))
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.suite.stream_child", str(path)],
                    cwd=REPO,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for child in self.processes:
            line = child.stdout.readline().strip() if child.stdout else ""
            if line != "ready":
                self.kill()
                raise RuntimeError(f"a child failed to start (said {line!r})")

    def say(self) -> None:
        for child in self.processes:
            if child.stdin:
                child.stdin.write("go\n")
                child.stdin.flush()

    def results(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        out = []
        for child in self.processes:
            output, _ = child.communicate(timeout=timeout)
            if child.returncode != 0:
                raise RuntimeError(f"a child exited {child.returncode}")
            out.append(orjson.loads(output.strip().splitlines()[-1]))
        return out

    def kill(self) -> None:
        for child in self.processes:
            if child.poll() is None:
                child.kill()
                child.wait(10)


def _commit_start(settings, group: str, partitions: int) -> None:
    consumer = make_consumer(settings, group_id=group)
    try:
        offsets = [TopicPartition(SOURCE, p, 0) for p in range(partitions)]
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def _wait_committed(settings, group: str, ends: dict[int, int], timeout: float) -> bool:
    consumer = make_consumer(settings, group_id=group)
    try:
        wanted = [TopicPartition(SOURCE, p) for p in sorted(ends)]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = {tp.partition: tp.offset for tp in consumer.committed(wanted, timeout=10)}
            if all(done.get(p, -1) >= end for p, end in ends.items()):
                return True
            time.sleep(0.05)
        return False
    finally:
        consumer.close()


def _check(row: dict[str, Any], workload: Workload, settings) -> None:
    problems = row.setdefault("problems", [])
    if row.get("records") != workload.size:
        problems.append(f"processed {row.get('records'):,} records of {workload.size:,}")
    if row.get("outputs") != workload.expected.alerts:
        problems.append(f"made {row.get('outputs')} alerts, expected {workload.expected.alerts:,}")
    out = sum(topic_ends(settings, topics.SLACK_MESSAGES).values())
    row["slack_messages"] = out
    if out != workload.expected.alerts:
        problems.append(f"slack-messages holds {out:,}, expected {workload.expected.alerts:,}")


def measure_batch(workload: Workload, root: Path, run_no: int) -> dict[str, Any]:
    row: dict[str, Any] = {"contender": "batch", "workers": 1, "run": run_no, "problems": []}
    try:
        with fresh_broker(root, f"batch-r{run_no}") as settings:
            ends = prepare(settings, workload, PARTITIONS)
            job = {"mode": "batch", "topic": SOURCE, "ends": {str(p): e for p, e in ends.items()}}
            children = Children(settings, [job])
            children.say()
            (result,) = children.results(DONE_TIMEOUT_S)
            row.update(result)
            row["events_s"] = workload.size / result["processing_s"]
            _check(row, workload, settings)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        row["problems"].append(f"error: {exc}")
    row["ok"] = not row["problems"]
    return row


def measure_stream(workload: Workload, root: Path, workers: int, run_no: int) -> dict[str, Any]:
    row: dict[str, Any] = {"contender": "stream", "workers": workers, "run": run_no, "problems": []}
    try:
        with fresh_broker(root, f"stream{workers}-r{run_no}") as settings:
            ends = prepare(settings, workload, PARTITIONS)
            group = stream_group(settings.stream_group_prefix, SOURCE)
            _commit_start(settings, group, PARTITIONS)
            children = Children(settings, [{"mode": "stream", "topic": SOURCE}] * workers)
            try:
                children.say()
                done = _wait_committed(settings, group, ends, DONE_TIMEOUT_S)
            finally:
                children.say()  # drain
            results = children.results()
            if not done:
                row["problems"].append(f"not every offset committed in {DONE_TIMEOUT_S:.0f} s")
            starts = [r["first_start"] for r in results if r["first_start"]]
            ends_at = [r["last_end"] for r in results if r["last_end"]]
            clock = max(ends_at) - min(starts) if starts and ends_at else float("nan")
            row.update(
                clock_s=clock,
                events_s=workload.size / clock,
                records=sum(r["records"] for r in results),
                outputs=sum(r["outputs"] or 0 for r in results),
                per_worker=[
                    {k: r[k] for k in ("partitions", "records", "batches", "join_s", "failures")}
                    for r in results
                ],
            )
            for r in results:
                if r["errors"] or not r["drained"]:
                    row["problems"].append(f"worker: {r['errors'] or 'did not drain'}")
            _check(row, workload, settings)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        row["problems"].append(f"error: {exc}")
    row["ok"] = not row["problems"]
    return row


def run_stream_throughput(workload: Workload, root: Path, runs: int) -> dict[str, Any]:
    """Batch, 1 worker, 2 workers; ``runs`` each (interleaved), medians and ratios."""
    rows: list[dict[str, Any]] = []
    for run_no in range(1, runs + 1):
        for name, workers in (("batch", 0), ("stream x1", 1), ("stream x2", 2)):
            if workers:
                row = measure_stream(workload, root, workers, run_no)
            else:
                row = measure_batch(workload, root, run_no)
            rows.append(row)
            figure = f"{row['events_s']:,.0f} events/s" if "events_s" in row else "no figure"
            log(f"  {name}, run {run_no}: {figure} {'; '.join(row['problems'])}")
    out: dict[str, Any] = {"events": workload.size, "partitions": PARTITIONS, "runs": rows}
    medians = {}
    for key, pick in (
        ("batch", ("batch", 1)),
        ("stream_1", ("stream", 1)),
        ("stream_2", ("stream", 2)),
    ):
        figures = [
            r["events_s"]
            for r in rows
            if (r["contender"], r["workers"]) == pick and "events_s" in r
        ]
        if figures:
            medians[key] = spread(figures)
    out["events_s"] = medians
    if "batch" in medians and "stream_1" in medians:
        out["stream_vs_batch"] = medians["stream_1"]["median"] / medians["batch"]["median"]
    if "stream_1" in medians and "stream_2" in medians:
        out["two_vs_one"] = medians["stream_2"]["median"] / medians["stream_1"]["median"]
    out["ok"] = all(r["ok"] for r in rows)
    return out
