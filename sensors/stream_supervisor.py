"""``stream_supervisor``: keeps one ``alert_stream_job`` run alive per stream, and reports the
streams' ``stream_lag`` and ``stream_freshness`` checks.

In stream mode (``ALERT_PLATFORM_MODE=stream``, the default) each tick looks up the runs
tagged ``alert-platform/stream=<stream>`` that are queued, starting or started, and requests a
run for every stream without one: a worker run that crashed, was killed or terminated is
relaunched at the next tick (the run launcher places it: a process locally, a pod with the
Kubernetes run launcher). So "Terminate" in the UI restarts a worker (drained, then
relaunched); to stop the streams, stop this sensor or set ``ALERT_PLATFORM_MODE=batch`` (then
it launches nothing). The tag is not the batch runs' ``alert-platform/source``: a resident run
must not hold the per-source concurrency slot of the catch-up runs. Locally the code server
marks a run whose process died as failed; on Kubernetes enable run monitoring so that a lost
pod's run is too.

The checks are evaluated every tick but reported (``report_runless_asset_event``) only when a
verdict changes or ``CHECK_REPORT_EVERY_S`` after its last report; the sensor's cursor holds
what was last reported.
"""

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from alert_platform.stream.health import Verdict
from alert_platform.stream.names import all_streams
from assets.resources import PlatformResource
from assets.streams import STREAM_JOB, stream_run_config, stream_verdicts

STREAM_TAG = "alert-platform/stream"
ALIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]
CHECK_REPORT_EVERY_S = 300.0
# The lag and freshness are measured at most this often (each costs a probe of every stream's
# partitions): the supervisor's 5 s ticks only look at the runs.
CHECK_EVALUATE_EVERY_S = 60.0
MINIMUM_INTERVAL_S = 5  # the daemon's floor: a dead worker is replaced within seconds


def streams_to_launch(streams: Sequence[str], alive: Mapping[str, int]) -> list[str]:
    """The streams without a live run (``alive``: live runs per stream)."""
    return [stream for stream in streams if alive.get(stream, 0) <= 0]


def stream_run_request(stream: str, now: float) -> RunRequest:
    """The run of ``stream``'s worker; its run key is unique per launch."""
    return RunRequest(
        run_key=f"stream:{stream}@{now:.3f}",
        run_config=stream_run_config(stream),
        tags={STREAM_TAG: stream},
    )


def alive_runs(instance: DagsterInstance, stream: str) -> int:
    """How many runs of ``stream``'s worker are queued, starting or started."""
    runs = instance.get_runs(
        filters=RunsFilter(job_name=STREAM_JOB, tags={STREAM_TAG: stream}, statuses=ALIVE),
        limit=10,
    )
    return len(runs)


@dataclass(frozen=True)
class Reported:
    """A check's last reported verdict and when it was reported (epoch seconds)."""

    passed: bool
    at: float


def check_id(key: AssetCheckKey) -> str:
    return f"{key.asset_key.to_user_string()}:{key.name}"


def parse_cursor(raw: str | None) -> dict[str, Reported]:
    """The last reports by check id; an unreadable cursor is empty (everything is reported)."""
    try:
        data = json.loads(raw or "{}").get("checks", {})
        return {k: Reported(bool(v[0]), float(v[1])) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        return {}


def dump_cursor(reported: Mapping[str, Reported], evaluated_at: float = 0.0) -> str:
    checks = {k: [r.passed, r.at] for k, r in sorted(reported.items())}
    return json.dumps({"checks": checks, "evaluated_at": evaluated_at})


def evaluated_at(raw: str | None) -> float:
    """When the checks were last measured (0: never, or an unreadable cursor)."""
    try:
        return float(json.loads(raw or "{}").get("evaluated_at", 0.0))
    except (ValueError, TypeError, AttributeError):
        return 0.0


def reports_due(
    previous: Mapping[str, Reported],
    verdicts: Mapping[str, bool],
    now: float,
    every_s: float = CHECK_REPORT_EVERY_S,
) -> list[str]:
    """The checks to report now: never reported, verdict changed, or last reported
    ``every_s`` ago."""
    due = []
    for check, passed in verdicts.items():
        last = previous.get(check)
        if last is None or last.passed != passed or now - last.at >= every_s:
            due.append(check)
    return due


def report_checks(
    instance: DagsterInstance,
    verdicts: Mapping[AssetCheckKey, Verdict],
    previous: Mapping[str, Reported],
    now: float,
) -> tuple[dict[str, Reported], list[AssetCheckKey]]:
    """Report the due verdicts; the cursor's new state and the checks reported."""
    by_id = {check_id(key): key for key in verdicts}
    due = reports_due(previous, {check_id(k): v.passed for k, v in verdicts.items()}, now)
    state = dict(previous)
    for check in due:
        key = by_id[check]
        verdict = verdicts[key]
        instance.report_runless_asset_event(
            AssetCheckEvaluation(
                asset_key=key.asset_key,
                check_name=key.name,
                passed=verdict.passed,
                severity=AssetCheckSeverity.WARN,
                description=verdict.description,
            )
        )
        state[check] = Reported(verdict.passed, now)
    return state, [by_id[c] for c in due]


@sensor(
    name="stream_supervisor",
    job_name=STREAM_JOB,
    minimum_interval_seconds=MINIMUM_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description="Stream mode: keeps one alert_stream_job run per stream alive (relaunches a "
    "crashed or terminated worker at the next tick) and reports the streams' stream_lag and "
    "stream_freshness checks. Launches nothing with ALERT_PLATFORM_MODE=batch.",
)
def stream_supervisor(
    context: SensorEvaluationContext, platform: PlatformResource
) -> SensorResult | SkipReason:
    settings = platform.settings()
    if settings.mode != "stream":
        return SkipReason(
            f"ALERT_PLATFORM_MODE={settings.mode}: no stream workers (the tail sensors run "
            "every record)"
        )
    now = time.time()
    streams = all_streams()
    alive = {stream: alive_runs(context.instance, stream) for stream in streams}
    for stream, count in alive.items():
        if count > 1:
            context.log.warning(
                f"stream {stream}: {count} worker runs alive (they share its group)"
            )
    launch = streams_to_launch(streams, alive)
    state = parse_cursor(context.cursor)
    last_evaluated = evaluated_at(context.cursor)
    if now - last_evaluated >= CHECK_EVALUATE_EVERY_S or now < last_evaluated:
        verdicts = stream_verdicts(context.instance, settings, now)
        state, reported = report_checks(context.instance, verdicts, state, now)
        failing = sorted(check_id(k) for k, v in verdicts.items() if not v.passed)
        if reported:
            context.log.info(f"reported {len(reported)} check(s); failing: {failing or 'none'}")
        last_evaluated = now
    cursor = dump_cursor(state, last_evaluated)
    if launch:
        context.log.info(f"launching a worker run for {', '.join(launch)}")
        return SensorResult(
            run_requests=[stream_run_request(stream, now) for stream in launch], cursor=cursor
        )
    return SensorResult(
        skip_reason=SkipReason(f"every stream has a worker run ({', '.join(streams)})"),
        cursor=cursor,
    )


__all__ = [
    "STREAM_TAG",
    "Reported",
    "parse_cursor",
    "reports_due",
    "stream_run_request",
    "stream_supervisor",
    "streams_to_launch",
]
