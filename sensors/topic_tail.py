"""Tail a Kafka topic and launch runs over exact offset ranges (one run per source partition).

The cursor (see ``alert_platform.kafka.tailing``) holds the next offset per partition and every
range whose run has not succeeded; consumer-group commits play no part. Run keys are
``topic:partition:start-end``, so a re-evaluated tick never launches a range twice, and a failed
range is re-launched under ``...#retryN`` until it succeeds.
"""

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.storage.tags import RUN_KEY_TAG

from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import low_watermarks, probe_end_offsets
from alert_platform.kafka.tailing import RunState, TailCursor, plan_tick
from assets.resources import PlatformResource

SOURCE_TAG = "alert-platform/source"
RANGE_TAG = "alert-platform/range"

_DONE = {DagsterRunStatus.SUCCESS: RunState.SUCCEEDED}
_FAILED = {DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def current_hour_partition(now: float | None = None) -> str:
    """The hourly partition key (``YYYY-MM-DD-HH:00``, UTC) that live runs are filed under."""
    moment = datetime.fromtimestamp(now if now is not None else time.time(), tz=UTC)
    return moment.strftime("%Y-%m-%d-%H:00")


def run_states(instance: DagsterInstance, run_keys: Iterable[str]) -> dict[str, RunState]:
    """The state of the newest run launched under each run key (absent keys are missing)."""
    states: dict[str, RunState] = {}
    for key in run_keys:
        runs = instance.get_runs(filters=RunsFilter(tags={RUN_KEY_TAG: key}), limit=1)
        if not runs:
            continue
        status = runs[0].status
        if status in _DONE:
            states[key] = _DONE[status]
        elif status in _FAILED:
            states[key] = RunState.FAILED
        else:
            states[key] = RunState.IN_PROGRESS
    return states


def range_run_config(op_name: str, ranges: list[Mapping[str, object]]) -> dict[str, object]:
    """Run config that hands ``ranges`` to the asset ``op_name``."""
    return {"ops": {op_name: {"config": {"ranges": ranges}}}}


def make_topic_tail_sensor(
    *,
    name: str,
    topic: str,
    job_name: str,
    op_name: str,
    partitioned: bool,
    max_records_per_run: int = 200_000,
    max_runs_per_tick: int = 16,
    minimum_interval_seconds: int = 5,
    description: str = "",
) -> SensorDefinition:
    """A sensor that tails ``topic`` and requests ``job_name`` runs over offset ranges."""

    @sensor(
        name=name,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=description or f"Tails `{topic}` and launches `{job_name}` per offset range.",
    )
    def _tail(context: SensorEvaluationContext, platform: PlatformResource) -> SensorResult:
        settings = platform.settings()
        cursor = TailCursor.from_json(context.cursor)
        consumer = make_consumer(settings)
        try:
            ends = probe_end_offsets(consumer, topic)
            lows = low_watermarks(consumer, topic, list(ends))
        finally:
            consumer.close()
        now = time.time()
        plan = plan_tick(
            cursor,
            topic,
            ends=ends,
            lows=lows,
            run_states=run_states(context.instance, (p.run_key for p in cursor.pending)),
            now=now,
            max_records_per_run=max_records_per_run,
            max_runs_per_tick=max_runs_per_tick,
        )
        for note in plan.notes:
            context.log.warning(note)
        partition_key = current_hour_partition(now) if partitioned else None
        requests = [
            RunRequest(
                run_key=req.run_key,
                run_config=range_run_config(op_name, [req.range.as_dict()]),
                partition_key=partition_key,
                tags={
                    SOURCE_TAG: f"{topic}:{req.range.partition}",
                    RANGE_TAG: f"{req.range.start}-{req.range.end}",
                },
            )
            for req in plan.requests
        ]
        if requests:
            return SensorResult(run_requests=requests, cursor=plan.cursor.to_json())
        pending = len(plan.cursor.pending)
        return SensorResult(
            skip_reason=SkipReason(f"No new records on {topic}; {pending} range(s) pending"),
            cursor=plan.cursor.to_json(),
        )

    return _tail
