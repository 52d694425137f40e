"""Alert assets: one per pipeline spec, hourly-partitioned by source-event time.

A run either reads the exact offset ranges a tail sensor handed it (live), or, with no ranges
(a backfill launched from the UI or the CLI), re-derives every alert of its partitions' time
window. Either way its output is the records it produced to ``slack-messages``.

Offsets that retention deleted before they were read (handed over by the sensor in ``lost``, or
found by the reader) do not fail the run: they are counted (metadata ``lost_offsets`` and
``lost_ranges``), turn the asset check ``no_retention_gaps`` red, and each gap posts one ops
notice. Inline delivery of a live run posts nothing older than the maximum alert age (outcome
``stale``); a backfill run always delivers inline (also with inline delivery off), posts those
too and counts them (``inline_stale_posted``).
"""

from collections.abc import Mapping

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    Config,
    HourlyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from alert_platform import topics
from alert_platform.alert_partitions import PARTITIONS_END_OFFSET, alert_partitions_start
from alert_platform.backfill import backfill_pipeline, count_stale_posted
from alert_platform.delivery.deliverer import DeliveryReport
from alert_platform.delivery.runner import run_delivery
from alert_platform.kafka.offsets import OffsetRange
from alert_platform.pipelines.registry import PIPELINES
from alert_platform.pipelines.runner import EnrichmentReport, run_enrichment
from alert_platform.pipelines.spec import PipelineSpec
from alert_platform.retention_gaps import notify_gaps
from alert_platform.run_index import RunIndex
from alert_platform.settings import Settings
from assets.lookup_tables import table_asset_key
from assets.resources import PlatformResource, SlackDeliveryResource
from assets.topics import topic_asset_key

GROUP = "alerts"
NO_RETENTION_GAPS = "no_retention_gaps"
PARTITIONS_START = alert_partitions_start()

# end_offset=1: the current, still-open hour is a partition too (live runs are filed there).
HOURLY = HourlyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=PARTITIONS_END_OFFSET)


class OffsetRangeConfig(Config):
    """``[start, end)`` of one topic partition."""

    topic: str
    partition: int
    start: int
    end: int


class AlertRunConfig(Config):
    """Set by the tail sensor; leave empty to backfill the selected partitions' time window."""

    ranges: list[OffsetRangeConfig] = Field(
        default_factory=list,
        description="Exact source offset ranges. Empty: re-derive the partition time window.",
    )
    lost: list[OffsetRangeConfig] = Field(
        default_factory=list,
        description="Offsets before the ranges that retention deleted unread (set by the sensor).",
    )


def alerts_asset_name(spec: PipelineSpec) -> str:
    return f"{spec.name}_alerts"


def _metadata(report: EnrichmentReport) -> dict[str, object]:
    figures = report.metadata()
    return {
        **{k: v for k, v in figures.items() if isinstance(v, int | float)},
        "source_ranges": MetadataValue.json(figures["source_ranges"]),
        "lost_ranges": MetadataValue.json(figures["lost_ranges"]),
        "written_ranges": MetadataValue.json(figures["written_ranges"]),
        "table_rows": MetadataValue.json(figures["table_rows"]),
    }


def _deliver_inline(
    context: AssetExecutionContext,
    settings: Settings,
    slack: SlackDeliveryResource,
    report: EnrichmentReport,
    *,
    allow_stale: bool = False,
) -> dict[str, object]:
    """Post the alerts this run just wrote, saving a sensor hop of latency.

    Exactly once all the same (the delivery ledger); whatever fails here is delivered by the
    ``slack_delivery_tail`` sensor, which skips ranges already delivered. ``allow_stale``
    (backfill runs only) posts alerts older than the maximum alert age too.
    """
    written = [r for r in report.written if r.topic == topics.SLACK_MESSAGES]
    if not written:
        return {}
    try:
        delivery = run_delivery(
            settings,
            slack.get_client(),
            written,
            owner=context.run.run_id,
            allow_stale=allow_stale,
        )
    except Exception as exc:
        context.log.warning(f"inline delivery incomplete, the delivery sensor finishes it: {exc}")
        partial = getattr(exc, "report", None)  # the deliverer's errors carry what happened
        retries = partial.retries if isinstance(partial, DeliveryReport) else {}
        return {
            "inline_delivery": "incomplete",
            "inline_delivery_error": str(exc)[:500],
            **_inline_retries(retries),
        }
    summary = delivery.delivery.summary() if delivery.delivery else {}
    figures = {k: v for k, v in summary.items() if isinstance(v, int) and v}
    extra: dict[str, object] = {}
    if allow_stale:
        try:
            extra["inline_stale_posted"] = count_stale_posted(settings, written, delivery.delivery)
        except Exception as exc:  # a count for the summary must not fail a delivered run
            context.log.warning(f"cannot count the stale alerts posted: {exc}")
    return {
        "inline_delivery": "done",
        **{f"inline_{k}": v for k, v in figures.items()},
        **_inline_retries(summary.get("retries") or {}),
        **extra,
    }


def _inline_retries(retries: Mapping[str, int]) -> dict[str, object]:
    """Slack retries by cause (``rate_limited``, ``server_error``, ``timeout``, ...)."""
    return {f"inline_retries_{cause}": n for cause, n in retries.items() if n}


def _gap_check(report: EnrichmentReport) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=NO_RETENTION_GAPS,
        passed=not report.lost_offsets,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"{report.lost_offsets} source offset(s) deleted by retention before they were read"
            if report.lost_offsets
            else "every source offset handed to the run was read"
        ),
        metadata={
            "lost_offsets": report.lost_offsets,
            "lost_ranges": MetadataValue.json([str(r) for r in report.lost]),
        },
    )


def make_alerts_asset(spec: PipelineSpec) -> AssetsDefinition:
    """The asset that turns ``spec.source_topic`` records into ``slack-messages`` alerts."""
    tables = dict.fromkeys(join.table for join in spec.joins)

    @asset(
        name=alerts_asset_name(spec),
        partitions_def=HOURLY,
        backfill_policy=BackfillPolicy.single_run(),
        deps=[topic_asset_key(spec.source_topic), *(table_asset_key(t) for t in tables)],
        group_name=GROUP,
        kinds={"kafka", "python"},
        description=spec.description or f"Alerts of pipeline `{spec.name}`.",
        check_specs=[
            AssetCheckSpec(
                NO_RETENTION_GAPS,
                asset=alerts_asset_name(spec),
                description="The run read every source offset it was handed: none had been "
                "deleted by retention first (else: lost_offsets, an ops notice per gap).",
            )
        ],
    )
    def _alerts(
        context: AssetExecutionContext,
        config: AlertRunConfig,
        platform: PlatformResource,
        slack: SlackDeliveryResource,
    ) -> MaterializeResult:
        settings = platform.settings()
        index = RunIndex(settings.effective_ledger_url)
        try:
            if config.ranges:
                ranges = [OffsetRange(**r.model_dump()) for r in config.ranges]
                lost = [OffsetRange(**r.model_dump()) for r in config.lost]
                report = run_enrichment(
                    settings, spec, ranges, run_id=context.run.run_id, index=index, lost=lost
                )
                extra: dict[str, object] = {"mode": "live"}
            else:
                window = context.partition_time_window
                report, ranges, method = backfill_pipeline(
                    settings, spec, window.start, window.end, run_id=context.run.run_id, index=index
                )
                extra = {
                    "mode": "backfill",
                    "window": f"{window.start.isoformat()} .. {window.end.isoformat()}",
                    "located_by": method,
                }
        finally:
            index.close()
        context.log.info(f"{spec.name}: {report.counts.as_dict()}")
        if report.lost:
            context.log.error(
                f"{spec.name}: {report.lost_offsets} offset(s) deleted by retention before they "
                f"were read: {', '.join(map(str, report.lost))}"
            )
            where = f"pipeline {spec.name}"
            extra["ops_notices_posted"] = notify_gaps(settings, report.lost, where)
        # A backfill always delivers its own alerts: only it may post those older than the
        # maximum alert age (the delivery sensor would mark them stale).
        backfill = extra["mode"] == "backfill"
        if settings.inline_delivery or backfill:
            extra.update(_deliver_inline(context, settings, slack, report, allow_stale=backfill))
        return MaterializeResult(
            metadata={**_metadata(report), **extra}, check_results=[_gap_check(report)]
        )

    return _alerts


ALERT_ASSETS = {name: make_alerts_asset(spec) for name, spec in PIPELINES.items()}
