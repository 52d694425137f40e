"""Stream mode in Dagster: the job whose run is one resident stream worker, the health it
reports on the stream's assets, and the ``stream_lag`` / ``stream_freshness`` checks.

``alert_stream_job`` runs one worker (``alert_platform.stream.worker.build_worker``) of the
stream in its config, with the run's resources (Kafka producer, delivery ledger, Slack client),
until it is stopped: ``max_seconds`` elapsed, or Dagster terminates the run (UI "Terminate",
SIGTERM to the run process). Dagster delivers termination as an interrupt in the run's main
thread (``DagsterExecutionInterruptedError`` inside the op, ``KeyboardInterrupt`` elsewhere):
the worker loop runs in a thread of its own, and the op's thread, told of the interrupt, sets
the stop event and waits (at most ``DRAIN_TIMEOUT_S``) while the worker stops fetching,
finishes the batch in hand, commits and leaves its group; then the interrupt goes on (the run
ends canceled). The ``stream_supervisor`` sensor keeps one such run per stream alive.

Health: at each worker report (``ALERT_PLATFORM_STREAM_HEALTH_INTERVAL_S``, default 60 s, plus
one when the worker starts and one when it stops) the op logs one ``AssetObservation`` on each
asset the stream materializes in batch mode: ``<pipeline>_alerts`` of every pipeline reading
the source topic, ``slack_deliveries`` for the delivery stream. Never one per micro-batch.
"""

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetObservation,
    Config,
    DagsterExecutionInterruptedError,
    DagsterInstance,
    Failure,
    MetadataValue,
    OpExecutionContext,
    in_process_executor,
    job,
    multi_asset_check,
    op,
)
from pydantic import Field

from alert_platform.pipelines.registry import PIPELINES
from alert_platform.settings import Settings
from alert_platform.stream.health import Verdict, figures, freshness_verdict
from alert_platform.stream.lag import GroupLag, group_lag, lag_check
from alert_platform.stream.loop import LoopStats, StreamHealth
from alert_platform.stream.names import DELIVERY_STREAM, all_streams, check_stream, stream_group
from alert_platform.stream.worker import StreamWorker, build_worker
from assets.alerts import alerts_asset_name
from assets.deliveries import NAME as SLACK_DELIVERIES
from assets.resources import (
    DeliveryLedgerResource,
    KafkaProducerResource,
    PlatformResource,
    SlackDeliveryResource,
)

STREAM_JOB = "alert_stream_job"
STREAM_OP = "alert_stream"
STREAM_LAG = "stream_lag"
STREAM_FRESHNESS = "stream_freshness"
# A worker is alive when it reported within this many health intervals.
FRESHNESS_INTERVALS = 3
# How long a stopped or terminated run waits for its worker to drain.
DRAIN_TIMEOUT_S = 10.0
_INTERRUPTS = (KeyboardInterrupt, DagsterExecutionInterruptedError)


def stream_asset_keys(stream: str) -> list[AssetKey]:
    """The assets whose health ``stream`` reports (observations, checks)."""
    if stream == DELIVERY_STREAM:
        return [AssetKey(SLACK_DELIVERIES)]
    return [
        AssetKey(alerts_asset_name(spec))
        for spec in PIPELINES.values()
        if spec.source_topic == stream
    ]


def stream_of_assets() -> dict[AssetKey, str]:
    """Each stream asset's stream."""
    return {key: stream for stream in all_streams() for key in stream_asset_keys(stream)}


def stream_run_config(stream: str, max_seconds: float = 0) -> dict[str, Any]:
    """Run config of ``alert_stream_job`` for ``stream``."""
    config: dict[str, Any] = {"stream": stream}
    if max_seconds:
        config["max_seconds"] = max_seconds
    return {"ops": {STREAM_OP: {"config": config}}}


# -- health observations ---------------------------------------------------------------------


def observation_metadata(
    health: StreamHealth | None, lag: GroupLag | None, status: str
) -> dict[str, Any]:
    """Metadata of one observation: the worker's figures (events/s, alerts/min, last event
    time) and the group's lag per partition measured from its committed offsets."""
    out: dict[str, Any] = {"status": status}
    if health is not None:
        f = figures(health)
        out |= {
            "member": f["member"],
            "group": f["group"],
            "events_per_s": f["events_per_s"],
            "alerts_per_min": f["outputs_per_min"],
            "records": f["records"],
            "alerts": f["outputs"],
            "batches": f["batches"],
            "failures": f["failures"],
            "interval_s": round(health.interval_s, 3),
            "partitions": MetadataValue.json(f["partitions"]),
            "in_flight_by_partition": MetadataValue.json(f["lag_by_partition"]),
        }
        if f["last_event_ms"] is not None:
            out["last_event_time"] = MetadataValue.timestamp(f["last_event_ms"] / 1000)
        if f["last_error"]:
            out["last_error"] = f["last_error"]
    if lag is not None:
        out["lag_records"] = lag.records
        out["lag_by_partition"] = MetadataValue.json(lag.by_partition())
        if lag.lag_s is not None:
            out["lag_s"] = round(lag.lag_s, 3)
    return out


def _measure_lag(settings: Settings, stream: str) -> GroupLag | None:
    try:
        return group_lag(settings, stream_group(settings.stream_group_prefix, stream), stream)
    except Exception:  # the observation goes out without it
        return None


def drive(
    worker: StreamWorker,
    stop: threading.Event,
    reports: queue.Queue[StreamHealth],
    on_report: Callable[[StreamHealth], None],
    *,
    max_seconds: float = 0,
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
) -> LoopStats:
    """Run ``worker`` in a thread until ``stop`` (or ``max_seconds``), handing each health
    report to ``on_report`` in this thread; an interrupt here (run terminated) sets ``stop``,
    waits for the drain, then goes on. A worker crash is raised here."""
    outcome: list[LoopStats] = []
    crash: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(worker.run(stop))
        except BaseException as exc:  # handed to the op's thread
            crash.append(exc)

    thread = threading.Thread(target=run, name=f"stream-{worker.stream}", daemon=True)
    deadline = time.monotonic() + max_seconds if max_seconds > 0 else None
    thread.start()
    try:
        while thread.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                stop.set()
            try:
                health = reports.get(timeout=0.2)
            except queue.Empty:
                continue
            on_report(health)
    except _INTERRUPTS:
        stop.set()
        _join(thread, drain_timeout_s)
        _flush(reports, on_report)
        raise
    _flush(reports, on_report)
    if crash:
        raise crash[0]
    return outcome[0]


def _join(thread: threading.Thread, timeout: float) -> None:
    """Wait for the drain, through further interrupts, at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            thread.join(min(0.2, max(0.0, deadline - time.monotonic())))
        except _INTERRUPTS:
            continue


def _flush(reports: queue.Queue[StreamHealth], on_report: Callable[[StreamHealth], None]) -> None:
    while True:
        try:
            health = reports.get_nowait()
        except queue.Empty:
            return
        try:
            on_report(health)
        except Exception:  # the last report must not hide how the run ended
            return


class StreamRunConfig(Config):
    """Which stream the run works, and for how long."""

    stream: str = Field(description="A source topic, or slack-messages (the delivery stream).")
    max_seconds: float = Field(
        default=0, ge=0, description="Stop (drain) after this many seconds; 0: until stopped."
    )


@op(
    name=STREAM_OP,
    description="One resident stream worker: consumes the stream in its consumer group, "
    "enriches or delivers each micro-batch, commits what is done; drains when terminated.",
    tags={"kind": "kafka"},
)
def alert_stream(
    context: OpExecutionContext,
    config: StreamRunConfig,
    platform: PlatformResource,
    slack: SlackDeliveryResource,
    kafka: KafkaProducerResource,
    ledger: DeliveryLedgerResource,
) -> None:
    stream = check_stream(config.stream)
    settings = platform.settings()
    keys = stream_asset_keys(stream)
    delivery = stream == DELIVERY_STREAM
    reports: queue.Queue[StreamHealth] = queue.Queue()
    worker = build_worker(
        settings,
        stream,
        producer=kafka.get_producer(),
        ledger=ledger.get_ledger() if delivery else None,
        client=slack.get_client() if delivery else None,
        on_health=reports.put,
        member=f"stream:{stream}:{context.run.run_id}",
    )

    def observe(health: StreamHealth | None, status: str) -> None:
        metadata = observation_metadata(health, _measure_lag(settings, stream), status)
        for key in keys:
            context.log_event(AssetObservation(asset_key=key, metadata=metadata))

    observe(None, "started")
    stop = threading.Event()
    context.log.info(f"stream {stream}: worker {worker.member} started")
    try:
        stats = drive(
            worker,
            stop,
            reports,
            lambda health: observe(health, "stopping" if stop.is_set() else "running"),
            max_seconds=config.max_seconds,
        )
    except _INTERRUPTS:
        context.log.info(f"stream {stream}: run terminated, worker drained")
        raise
    except Exception as exc:
        raise Failure(f"stream {stream}: worker crashed: {type(exc).__name__}: {exc}") from exc
    context.log.info(
        f"stream {stream}: stopped after {stats.records} record(s), {stats.outputs} "
        f"output(s), {stats.batches} batch(es), {stats.failures} failed batch(es)"
    )


@job(
    name=STREAM_JOB,
    executor_def=in_process_executor,  # the op runs in the run's main thread: interrupts reach it
    description="One resident stream worker per run (config: stream); the stream_supervisor "
    "sensor keeps one run per stream alive in stream mode.",
)
def alert_stream_job() -> None:
    alert_stream()


# -- checks ------------------------------------------------------------------------------------


def last_observed_at(instance: DagsterInstance, key: AssetKey) -> float | None:
    """When the latest observation of ``key`` was logged (epoch seconds)."""
    records = instance.fetch_observations(key, limit=1).records
    return records[0].timestamp if records else None


def stream_verdicts(
    instance: DagsterInstance,
    settings: Settings,
    now: float | None = None,
    streams: list[str] | None = None,
) -> dict[AssetCheckKey, Verdict]:
    """``stream_lag`` and ``stream_freshness`` of every stream asset; a lag that cannot be
    measured (broker trouble) fails its check with the reason."""
    now = time.time() if now is None else now
    silence = FRESHNESS_INTERVALS * settings.stream_health_interval_s
    out: dict[AssetCheckKey, Verdict] = {}
    for stream in streams or all_streams():
        group = stream_group(settings.stream_group_prefix, stream)
        try:
            lag = lag_check(
                group_lag(settings, group, stream, now=now), settings.stream_lag_bound_s
            )
        except Exception as exc:
            lag = Verdict(False, f"cannot measure the lag of group {group}: {exc}")
        for key in stream_asset_keys(stream):
            out[AssetCheckKey(key, STREAM_LAG)] = lag
            fresh = freshness_verdict(last_observed_at(instance, key), silence, now)
            out[AssetCheckKey(key, STREAM_FRESHNESS)] = fresh
    return out


def check_result(key: AssetCheckKey, verdict: Verdict) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=key.asset_key,
        check_name=key.name,
        passed=verdict.passed,
        severity=AssetCheckSeverity.WARN,
        description=verdict.description,
    )


def _check_specs() -> list[AssetCheckSpec]:
    specs = []
    for key in stream_of_assets():
        specs.append(
            AssetCheckSpec(
                STREAM_LAG,
                asset=key,
                description="Stream mode: the consumer group's oldest uncommitted record is at "
                "most ALERT_PLATFORM_STREAM_LAG_BOUND_S (default 30 s) old (reported by the "
                "stream_supervisor sensor when the verdict changes, else every 5 minutes).",
            )
        )
        specs.append(
            AssetCheckSpec(
                STREAM_FRESHNESS,
                asset=key,
                description="Stream mode: a worker of the stream reported its health within "
                f"{FRESHNESS_INTERVALS} health intervals "
                "(ALERT_PLATFORM_STREAM_HEALTH_INTERVAL_S, default 60 s).",
            )
        )
    return specs


@multi_asset_check(
    name="stream_health_checks",
    specs=_check_specs(),
    can_subset=True,
    description="The stream checks, evaluated now (the stream_supervisor sensor reports them "
    "without a run).",
)
def stream_health_checks(
    context: AssetCheckExecutionContext, platform: PlatformResource
) -> Iterator[AssetCheckResult]:
    wanted = context.selected_asset_check_keys
    streams = sorted({stream_of_assets()[key.asset_key] for key in wanted})
    for key, verdict in stream_verdicts(
        context.instance, platform.settings(), streams=streams
    ).items():
        if key in wanted:
            yield check_result(key, verdict)


STREAM_CHECKS = [stream_health_checks]

__all__ = [
    "STREAM_CHECKS",
    "STREAM_FRESHNESS",
    "STREAM_JOB",
    "STREAM_LAG",
    "alert_stream_job",
    "drive",
    "observation_metadata",
    "stream_asset_keys",
    "stream_run_config",
    "stream_verdicts",
]
