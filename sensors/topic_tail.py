"""Tail a Kafka topic and launch runs over exact offset ranges.

The cursor (see ``alert_platform.kafka.tailing``) holds the next offset per partition and every
range whose run has not succeeded; consumer-group commits play no part. Each tick launches as
few runs as possible, each holding at most one range per partition, tagged per partition with
the range's key (``topic:partition:start-end@<topic id>``). A re-evaluated tick never launches a
range twice (the run key is derived from its ranges), and a failed range is re-launched under
``...#retryN`` until it succeeds. One run per topic runs at a time (``alert-platform/source``
tag, limited in the instance's ``tag_concurrency_limits``), so runs of the same source
partition never overlap.
"""

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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

from alert_platform.kafka.admin import topic_id
from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import OffsetRange, probe_watermarks
from alert_platform.kafka.tailing import (
    PendingRange,
    RangeRequest,
    RunState,
    TailCursor,
    drop_ranges,
    group_into_runs,
    group_run_key,
    plan_tick,
)
from alert_platform.settings import Settings
from assets.resources import PlatformResource

SOURCE_TAG = "alert-platform/source"

_DONE = {DagsterRunStatus.SUCCESS: RunState.SUCCEEDED}
_FAILED = {DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}

# (settings, ranges) -> the ranges that need no run (e.g. already delivered inline)
RangeFilter = Callable[[Settings, Sequence[OffsetRange]], set[OffsetRange]]


def range_tag(partition: int) -> str:
    """The run tag holding the key of the range a run reads from ``partition``."""
    return f"alert-platform/range-{partition}"


def current_hour_partition(now: float | None = None) -> str:
    """The hourly partition key (``YYYY-MM-DD-HH:00``, UTC) that live runs are filed under."""
    moment = datetime.fromtimestamp(now if now is not None else time.time(), tz=UTC)
    return moment.strftime("%Y-%m-%d-%H:00")


def run_states(instance: DagsterInstance, pending: Iterable[PendingRange]) -> dict[str, RunState]:
    """The state of the newest run that read each pending range (absent keys are missing)."""
    states: dict[str, RunState] = {}
    for item in pending:
        tags = {range_tag(item.range.partition): item.run_key}
        runs = instance.get_runs(filters=RunsFilter(tags=tags), limit=1)
        if not runs:
            continue
        status = runs[0].status
        if status in _DONE:
            states[item.run_key] = _DONE[status]
        elif status in _FAILED:
            states[item.run_key] = RunState.FAILED
        else:
            states[item.run_key] = RunState.IN_PROGRESS
    return states


def range_run_config(op_name: str, ranges: list[Mapping[str, object]]) -> dict[str, object]:
    """Run config that hands ``ranges`` to the asset ``op_name``."""
    return {"ops": {op_name: {"config": {"ranges": ranges}}}}


def _run_request(
    topic: str, op_name: str, group: Sequence[RangeRequest], partition_key: str | None
) -> RunRequest:
    return RunRequest(
        run_key=group_run_key(topic, group),
        run_config=range_run_config(op_name, [request.range.as_dict() for request in group]),
        partition_key=partition_key,
        tags={
            SOURCE_TAG: topic,
            **{range_tag(request.range.partition): request.run_key for request in group},
        },
    )


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
    settle_one_tick: bool = False,
    needs_no_run: RangeFilter | None = None,
    description: str = "",
) -> SensorDefinition:
    """A sensor that tails ``topic`` and requests ``job_name`` runs over offset ranges.

    ``settle_one_tick`` and ``needs_no_run`` make a safety-net sensor: it waits a tick, then
    drops the ranges ``needs_no_run`` says were already handled.
    """

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
            marks = probe_watermarks(consumer, topic)
        finally:
            consumer.close()
        now = time.time()
        current_id = topic_id(settings, topic)  # "" when unknown: the cursor's is kept
        plan = plan_tick(
            cursor,
            topic,
            ends={p: end for p, (_low, end) in marks.items()},
            lows={p: low for p, (low, _end) in marks.items()},
            run_states=run_states(context.instance, cursor.pending),
            now=now,
            max_records_per_run=max_records_per_run,
            max_runs_per_tick=max_runs_per_tick,
            settle_one_tick=settle_one_tick,
            topic_id=current_id,
        )
        for note in plan.notes:
            context.log.warning(note)
        requests = list(plan.requests)
        next_cursor = plan.cursor
        if needs_no_run is not None and requests:
            handled = needs_no_run(settings, [request.range for request in requests])
            requests = [request for request in requests if request.range not in handled]
            next_cursor = drop_ranges(next_cursor, handled)
        partition_key = current_hour_partition(now) if partitioned else None
        runs = [
            _run_request(topic, op_name, group, partition_key)
            for group in group_into_runs(requests)
        ]
        if runs:
            return SensorResult(run_requests=runs, cursor=next_cursor.to_json())
        pending = len(next_cursor.pending)
        return SensorResult(
            skip_reason=SkipReason(f"No new records on {topic}; {pending} range(s) pending"),
            cursor=next_cursor.to_json(),
        )

    return _tail
