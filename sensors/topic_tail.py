"""Tail a Kafka topic and launch runs over exact offset ranges.

The cursor (see ``alert_platform.kafka.tailing``) holds the next offset per partition and every
range whose run has not succeeded; consumer-group commits play no part. Each tick launches as
few runs as possible, each holding at most one range per partition, tagged per partition with
the range's key (``topic:partition:start-end@<topic id>``). A re-evaluated tick never launches a
range twice (the run key is derived from its ranges), and a failed range is re-launched under
``...#retryN`` until it succeeds. One run per topic runs at a time (``alert-platform/source``
tag, limited in the instance's ``tag_concurrency_limits``), so runs of the same source
partition never overlap.

A cursor without history (first deploy, a new DAGSTER_HOME) starts per the start policy
(``ALERT_PLATFORM_START_POLICY``): ``latest`` (default) at each partition's end, or with
``ALERT_PLATFORM_START_LOOKBACK_MINUTES`` at the first record timestamped within the look-back;
``earliest`` at the low watermark. A partition added to a topic the cursor already tails starts
at its low watermark. The delivery sensor (``slack-messages``) under ``latest`` starts at the
first record within ``ALERT_MAX_AGE_HOURS`` (or the look-back, if longer): an alert produced
before its first tick is still delivered, and an older one would be stale anyway. Where the
broker does not answer ``offsets_for_times`` (the local broker), records are located by a
binary search over their timestamps (the tick's log says which).

Retention gaps found by the planner travel with the run request (config ``lost``) of the alert
sensors, whose runs report them; the delivery sensor (whose runs take only ``ranges``) posts
the ops notice itself. ``needs_no_run`` (the delivery sensor's: the ledger database's handled
ranges, no Kafka read) is asked about all ranges at once; if that fails, range by range, and a
range it cannot judge is logged and simply gets a run: a tick never fails because of it.

Stream mode (``ALERT_PLATFORM_MODE=stream``, read at every tick): resident workers consume the
topic in the stream's consumer group (``stream_group(prefix, topic)``). The sensor launches
nothing for the records the group's committed offsets cover and moves its cursor past them; a
record they do not cover gets a catch-up run once it has stayed uncovered for longer than
``ALERT_PLATFORM_STREAM_LAG_BOUND_S`` (see ``alert_platform.stream.handover``). The delivery
sensor's ``needs_no_run`` still applies to what is launched. Batch mode: as before stream mode.
"""

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

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

from alert_platform import topics
from alert_platform.kafka.admin import topic_id
from alert_platform.kafka.clients import make_admin, make_consumer
from alert_platform.kafka.groups import committed_offsets
from alert_platform.kafka.offsets import OffsetRange, first_offsets_at, probe_watermarks
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
from alert_platform.retention_gaps import notify_gaps
from alert_platform.settings import Settings
from alert_platform.stream import handover
from alert_platform.stream.names import stream_group
from alert_platform.stream.starts import StreamStarts
from assets.partitions import current_hour_partition
from assets.resources import PlatformResource

SOURCE_TAG = "alert-platform/source"
# Stream mode: the workers deliver, the sensor only catches up on what they leave beyond the
# lag bound, so it looks (probes, committed offsets) at most this often; ticks in between only
# read the cursor.
STREAM_TICK_S = 10.0
PLANNED_AT = "planned_at"  # in the cursor's hand-over state

_DONE = {DagsterRunStatus.SUCCESS: RunState.SUCCEEDED}
_FAILED = {DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}

# (settings, ranges, topic id) -> the ranges that need no run (e.g. already delivered inline)
RangeFilter = Callable[[Settings, Sequence[OffsetRange], str], set[OffsetRange]]


def range_tag(partition: int) -> str:
    """The run tag holding the key of the range a run reads from ``partition``."""
    return f"alert-platform/range-{partition}"


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


def start_lookback_s(settings: Settings, topic: str) -> float | None:
    """How far back a partition without history starts: ``None`` = at the low watermark
    (policy ``earliest``), 0 = at the end, else seconds before now."""
    if settings.start_policy == "earliest":
        return None
    lookback = settings.start_lookback_minutes * 60
    if topic == topics.SLACK_MESSAGES:
        return max(lookback, settings.max_alert_age_hours * 3600)
    return lookback


def locate_starts(
    settings: Settings,
    topic: str,
    marks: Mapping[int, tuple[int, int]],
    fresh: Sequence[int],
    now: float,
) -> tuple[dict[int, int] | None, bool, list[str]]:
    """``(start_offsets, start_at_latest, notes)`` for ``plan_tick`` from the start policy, for
    the partitions in ``fresh`` (no history in the cursor)."""
    lookback = start_lookback_s(settings, topic)
    if not fresh or lookback is None:
        return None, False, []
    if lookback <= 0:
        return None, True, [f"{topic}: no history for partition(s) {list(fresh)}: start at the end"]
    since_ms = int((now - lookback) * 1000)
    consumer = make_consumer(settings)
    try:
        starts, method = first_offsets_at(
            consumer, topic, {p: marks[p] for p in fresh if p in marks}, since_ms
        )
    except Exception as exc:  # broker trouble: the default (the end) rather than a failed tick
        return None, True, [f"{topic}: cannot locate the look-back start ({exc}): start at the end"]
    finally:
        consumer.close()
    how = {
        "offsets_for_times": "by offsets_for_times",
        "binary_search": "by a binary search over record timestamps (the broker does not "
        "answer offsets_for_times)",
    }.get(method, method)
    note = (
        f"{topic}: no history for partition(s) {list(fresh)}: start at the first record of the "
        f"last {lookback / 60:g} min, located {how}: {starts}"
    )
    return starts, True, [note]


def _handled(
    context: SensorEvaluationContext,
    needs_no_run: RangeFilter,
    settings: Settings,
    ranges: Sequence[OffsetRange],
    topic_id: str = "",
) -> set[OffsetRange]:
    """``needs_no_run`` over all ``ranges`` at once, else range by range: one that fails to be
    checked gets a run."""
    try:
        return set(needs_no_run(settings, ranges, topic_id)) & set(ranges)
    except Exception:
        pass
    handled: set[OffsetRange] = set()
    for rng in ranges:
        try:
            handled |= needs_no_run(settings, [rng], topic_id)
        except Exception as exc:
            context.log.warning(f"cannot tell whether {rng} needs a run, launching one: {exc}")
    return handled


def _run_request(
    topic: str,
    op_name: str,
    group: Sequence[RangeRequest],
    partition_key: str | None,
    reports_gaps: bool,
) -> RunRequest:
    config = range_run_config(op_name, [request.range.as_dict() for request in group])
    lost = [gap.as_dict() for request in group for gap in request.lost]
    if reports_gaps and lost:
        config["ops"][op_name]["config"]["lost"] = lost  # type: ignore[index]
    return RunRequest(
        run_key=group_run_key(topic, group),
        run_config=config,
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
    reports_gaps: bool | None = None,
    clock: Callable[[], float] = time.time,
    stream_tick_s: float = STREAM_TICK_S,
) -> SensorDefinition:
    """A sensor that tails ``topic`` and requests ``job_name`` runs over offset ranges.

    ``settle_one_tick`` and ``needs_no_run`` make a safety-net sensor: it waits a tick, then
    drops the ranges ``needs_no_run`` says were already handled. ``reports_gaps``: the op's
    config takes ``lost`` (retention gaps its run reports); default: every topic but
    ``slack-messages``, whose sensor notifies ops of gaps itself. ``clock``: the wall clock
    (tests move it to cross the stream lag bound). ``stream_tick_s``: in stream mode, a tick
    within this long of the last one that looked at the topic only keeps the cursor.
    """
    gaps_to_runs = topic != topics.SLACK_MESSAGES if reports_gaps is None else reports_gaps

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
        if settings.mode == "stream":
            since = clock() - float(cursor.handover.get(PLANNED_AT, 0.0))  # type: ignore[arg-type]
            if 0 <= since < stream_tick_s:  # the workers have it: a catch-up look now and then
                return SensorResult(
                    skip_reason=SkipReason(f"stream mode: {topic} looked at {since:.0f} s ago"),
                    cursor=context.cursor,
                )
        consumer = make_consumer(settings)
        admin = make_admin(settings)
        try:  # watermarks of every partition in one list_offsets call per side
            marks = probe_watermarks(consumer, topic, admin=admin)
        finally:
            consumer.close()
        now = clock()
        current_id = topic_id(settings, topic)  # "" when unknown: the cursor's is kept
        # The start policy applies to a cursor without history; a partition added to a topic
        # the cursor already tails holds only new records: it starts at its low watermark.
        fresh = [] if cursor.next_offsets else sorted(marks)
        start_offsets, start_at_latest, start_notes = locate_starts(
            settings, topic, marks, fresh, now
        )
        ends = {p: end for p, (_low, end) in marks.items()}
        lows = {p: low for p, (low, _end) in marks.items()}
        group_id = stream_group(settings.stream_group_prefix, topic)
        handing: handover.HandoverPlan | None = None
        if settings.mode == "stream":
            try:
                committed: dict[int, int] | None = committed_offsets(admin, group_id, topic, ends)
            except Exception as exc:  # nothing counts as covered; the bound still applies
                context.log.warning(str(exc))
                committed = None
            try:  # where the group's workers started (the catch-up trusts them from there)
                with StreamStarts(settings.effective_ledger_url) as recorded:
                    starts = recorded.starts(group_id, topic, current_id)
            except Exception as exc:  # only the first-seen commit is trusted this tick
                context.log.warning(f"stream starts of {group_id} unreadable: {exc}")
                starts = {}
            handing = handover.plan_handover(
                cursor, topic, ends=ends, lows=lows, committed=committed, now=now,
                bound_s=settings.stream_lag_bound_s, topic_id=current_id,
                start_offsets=start_offsets, start_at_latest=start_at_latest, starts=starts,
            )  # fmt: skip
            cursor = handing.cursor
        plan = plan_tick(
            cursor,
            topic,
            ends=handing.ends if handing is not None else ends,
            lows=lows,
            run_states=run_states(context.instance, cursor.pending),
            now=now,
            max_records_per_run=max_records_per_run,
            max_runs_per_tick=max_runs_per_tick,
            start_at_latest=start_at_latest,
            start_offsets=start_offsets,
            settle_one_tick=settle_one_tick,
            topic_id=current_id,
            retry_backoff_base_s=settings.retry_backoff_base_s,
        )
        for note in start_notes:
            context.log.info(note)
        for note in plan.notes:
            context.log.warning(note)
        if plan.gaps and not gaps_to_runs:
            notify_gaps(settings, plan.gaps, f"sensor {name}")
        requests = list(plan.requests)
        if handing is not None:
            next_cursor = handover.settle(plan.cursor, handing, ends)
            next_cursor = replace(next_cursor, handover={**next_cursor.handover, PLANNED_AT: now})
        else:
            next_cursor = handover.without_handover(plan.cursor)
        if needs_no_run is not None and requests:
            handled = _handled(
                context, needs_no_run, settings, [r.range for r in requests], next_cursor.topic_id
            )
            requests = [request for request in requests if request.range not in handled]
            next_cursor = drop_ranges(next_cursor, handled)
        if handing is not None:
            for note in handing.notes:
                context.log.warning(note)
            catch_up = [request.range for request in requests]
            if catch_up or handing.covered or handing.waiting or handing.dropped:
                context.log.info(handover.describe(topic, group_id, handing, catch_up))
        partition_key = current_hour_partition(now) if partitioned else None
        runs = [
            _run_request(topic, op_name, group, partition_key, gaps_to_runs)
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
