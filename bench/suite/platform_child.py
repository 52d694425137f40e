"""Contender: alert-platform, as the Dagster run its tail sensor would launch.

    .venv/bin/python -m bench.suite.platform_child JOB.json

The environment (set by the suite) points the platform at the bench broker, a fresh data dir
holding the lookup-table snapshots, and a fresh ``DAGSTER_HOME``; inline delivery is off, so
Slack plays no part. The ``connector_failure_alerts_job`` from ``alert_platform.definitions`` is
executed in process over the job's offset ranges (the run config the sensor writes, on the
current hourly partition). Two clocks: ``seconds``, the run's own ``processing_s`` (from its
first input record to its last output flushed: the clock of the other contenders), and
``whole_run_s``, from the call to its return (Dagster's run bookkeeping, the table load from
snapshots caught up to their topics, reading, enriching, producing, flushing and the run-index
write). Imports and opening the instance's storage happen before either clock.

With ``"mode": "workers"`` the job instead calls ``run_enrichment`` directly (no Dagster) once
the parent writes a line to stdin, so that several of these processes start together.
"""

from __future__ import annotations

import sys
import time

import orjson


def _ranges(job: dict):
    from alert_platform.kafka.offsets import OffsetRange

    return [OffsetRange(job["input_topic"], int(p), 0, end) for p, end in job["ends"].items()]


def dagster_run(job: dict) -> dict:
    from dagster import DagsterInstance

    from alert_platform.definitions import defs
    from alert_platform.pipelines.connector_failure import CONNECTOR_FAILURE
    from assets.alerts import alerts_asset_name
    from sensors.topic_tail import current_hour_partition, range_run_config

    op_name = alerts_asset_name(CONNECTOR_FAILURE)
    job_def = defs.get_job_def(f"{CONNECTOR_FAILURE.name}_alerts_job")
    instance = DagsterInstance.get()
    instance.get_runs(limit=1)  # storage opened and migrated: deployment set-up, not a run
    run_config = range_run_config(op_name, [r.as_dict() for r in _ranges(job)])
    started = time.perf_counter()
    result = job_def.execute_in_process(
        run_config=run_config,
        instance=instance,
        partition_key=current_hour_partition(),
    )
    seconds = time.perf_counter() - started
    if not result.success:
        raise RuntimeError("the Dagster run failed")
    (materialization,) = result.asset_materializations_for_node(op_name)
    metadata = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    return {
        "seconds": metadata["processing_s"],
        "whole_run_s": seconds,
        "inputs": metadata.get("read"),
        "alerts": metadata.get("alerts"),
        "dead_lettered": metadata.get("dead_lettered"),
        "run_elapsed_s": metadata.get("elapsed_s"),
        "tables_s": metadata.get("tables_s"),
        "run_id": result.run_id,
    }


def workers_run(job: dict) -> dict:
    from alert_platform.pipelines.connector_failure import CONNECTOR_FAILURE
    from alert_platform.pipelines.runner import run_enrichment
    from alert_platform.settings import Settings

    settings = Settings.from_env()
    ranges = _ranges(job)
    print("ready", flush=True)
    sys.stdin.readline()
    started_wall = time.time()
    started = time.perf_counter()
    report = run_enrichment(settings, CONNECTOR_FAILURE, ranges)
    return {
        "seconds": time.perf_counter() - started,
        "started_wall": started_wall,
        "ended_wall": time.time(),
        "inputs": report.counts.read,
        "alerts": report.counts.alerts,
        "tables_s": report.tables_s,
    }


def main(job_path: str) -> None:
    with open(job_path, "rb") as handle:
        job = orjson.loads(handle.read())
    result = workers_run(job) if job.get("mode") == "workers" else dagster_run(job)
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
